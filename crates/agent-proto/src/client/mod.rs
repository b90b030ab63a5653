//! Host-side async client (feature `client`).
//!
//! One [`AgentClient`] is one connection to the agent's chardev socket. Calls may run
//! concurrently (replies are routed by id). QEMU's socket chardev serves one connection at
//! a time, so a second client connecting to the same socket waits until the first is
//! dropped.

mod conn;
mod error;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UnixStream;

use crate::msg::{ExecRequest, ExitStatus, NetworkConfig, Op, Pong, Reply};
use conn::{Conn, Pending};
pub use error::AgentError;

/// Default limit for calls other than `exec`.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Most output [`AgentClient::exec`] collects; use [`AgentClient::exec_stream`] for more.
pub const EXEC_OUTPUT_LIMIT: usize = 64 << 20;

/// Extra time the client allows past an exec's own `timeout_ms` for the kill and the
/// last frames to arrive.
const EXEC_TIMEOUT_GRACE: Duration = Duration::from_secs(30);

pub struct AgentClient {
    conn: Conn,
    op_timeout: Duration,
}

/// Collected result of [`AgentClient::exec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

/// One event of a streamed exec; `Exit` is always last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitStatus),
}

/// Live output of one command. Must be polled: an unread stream stalls the connection.
pub struct ExecStream {
    pending: Pending,
    deadline: Option<(Instant, Duration)>,
    done: bool,
}

impl ExecStream {
    /// The next event, or `None` after `Exit`.
    pub async fn next(&mut self) -> Option<Result<ExecEvent, AgentError>> {
        if self.done {
            return None;
        }
        let reply = match self.deadline {
            Some((at, limit)) => tokio::time::timeout_at(at.into(), self.pending.recv())
                .await
                .unwrap_or(Err(AgentError::Timeout(limit))),
            None => self.pending.recv().await,
        };
        let event = match reply {
            Ok(Reply::Stdout { data }) => Ok(ExecEvent::Stdout(data)),
            Ok(Reply::Stderr { data }) => Ok(ExecEvent::Stderr(data)),
            Ok(Reply::Exit(status)) => Ok(ExecEvent::Exit(status)),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        };
        self.done = !matches!(event, Ok(ExecEvent::Stdout(_) | ExecEvent::Stderr(_)));
        Some(event)
    }
}

impl AgentClient {
    /// Connect to the agent's chardev socket. Does not wait for the agent to answer; see
    /// [`AgentClient::wait_ready`].
    pub async fn connect(path: &Path) -> Result<AgentClient, AgentError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| AgentError::Connect {
                path: path.to_owned(),
                source,
            })?;
        Ok(AgentClient {
            conn: Conn::new(stream).await?,
            op_timeout: DEFAULT_OP_TIMEOUT,
        })
    }

    /// Retry connect + ping until the agent answers or `timeout` passes. For use after
    /// boot and after a fork resumes.
    pub async fn wait_ready(
        path: &Path,
        timeout: Duration,
    ) -> Result<(AgentClient, Pong), AgentError> {
        const RETRY: Duration = Duration::from_millis(10);
        const PING_EVERY: Duration = Duration::from_secs(1);
        let start = Instant::now();
        let mut last = AgentError::Timeout(timeout);
        while start.elapsed() < timeout {
            let client = match AgentClient::connect(path).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            // Unanswered pings stay queued; their late answers are ignored by id.
            loop {
                let left = timeout.saturating_sub(start.elapsed());
                if left.is_zero() {
                    break;
                }
                match client.ping_within(left.min(PING_EVERY)).await {
                    Ok(pong) => return Ok((client, pong)),
                    Err(e @ AgentError::Timeout(_)) => last = e,
                    Err(e) => {
                        last = e;
                        tokio::time::sleep(RETRY).await;
                        break;
                    }
                }
            }
        }
        Err(AgentError::NotReady {
            waited: start.elapsed(),
            last: Box::new(last),
        })
    }

    /// Limit for calls other than `exec` (default [`DEFAULT_OP_TIMEOUT`]).
    pub fn with_op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    pub async fn ping(&self) -> Result<Pong, AgentError> {
        self.ping_within(self.op_timeout).await
    }

    async fn ping_within(&self, limit: Duration) -> Result<Pong, AgentError> {
        match self.call(Op::Ping, limit).await? {
            Reply::Pong(pong) => Ok(pong),
            other => Err(unexpected(other)),
        }
    }

    /// Run a command and collect its output (at most [`EXEC_OUTPUT_LIMIT`] bytes).
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecOutput, AgentError> {
        let mut stream = self.exec_stream(req).await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(event) = stream.next().await {
            match event? {
                ExecEvent::Stdout(d) => stdout.extend_from_slice(&d),
                ExecEvent::Stderr(d) => stderr.extend_from_slice(&d),
                ExecEvent::Exit(status) => {
                    return Ok(ExecOutput {
                        stdout,
                        stderr,
                        status,
                    })
                }
            }
            if stdout.len() + stderr.len() > EXEC_OUTPUT_LIMIT {
                return Err(AgentError::OutputTooLarge(EXEC_OUTPUT_LIMIT));
            }
        }
        Err(AgentError::Disconnected)
    }

    /// Start a command and stream its output as it comes.
    pub async fn exec_stream(&self, req: ExecRequest) -> Result<ExecStream, AgentError> {
        let deadline = req.timeout_ms.map(|ms| {
            let limit = Duration::from_millis(ms) + EXEC_TIMEOUT_GRACE;
            (Instant::now() + limit, limit)
        });
        let pending = self.conn.send(Op::Exec(req), self.op_timeout).await?;
        Ok(ExecStream {
            pending,
            deadline,
            done: false,
        })
    }

    /// Set the guest wall clock.
    pub async fn set_time(&self, unix_nanos: u64) -> Result<(), AgentError> {
        self.call_ok(Op::SetTime { unix_nanos }).await
    }

    /// Set the guest wall clock to the host's.
    pub async fn sync_clock(&self) -> Result<(), AgentError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.set_time(u64::try_from(now.as_nanos()).unwrap_or(u64::MAX))
            .await
    }

    /// Set the hostname and/or machine id (32 lowercase hex digits).
    pub async fn set_identity(
        &self,
        hostname: Option<&str>,
        machine_id: Option<&str>,
    ) -> Result<(), AgentError> {
        self.call_ok(Op::SetIdentity {
            hostname: hostname.map(str::to_owned),
            machine_id: machine_id.map(str::to_owned),
        })
        .await
    }

    /// Credit `bytes` (at most [`crate::MAX_ENTROPY`]) to the guest's entropy pool and
    /// reseed its CRNG.
    pub async fn add_entropy(&self, bytes: &[u8]) -> Result<(), AgentError> {
        self.call_ok(Op::AddEntropy {
            bytes: bytes.to_vec(),
        })
        .await
    }

    /// Read a small guest file (at most [`crate::MAX_PAYLOAD`] bytes).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        match self
            .call(
                Op::ReadFile {
                    path: path.to_owned(),
                },
                self.op_timeout,
            )
            .await?
        {
            Reply::File { data } => Ok(data),
            other => Err(unexpected(other)),
        }
    }

    /// Atomically replace a small guest file.
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
    ) -> Result<(), AgentError> {
        self.call_ok(Op::WriteFile {
            path: path.to_owned(),
            data: data.to_vec(),
            mode,
        })
        .await
    }

    /// Apply a network identity (MAC, address, route, DNS) inside the guest.
    pub async fn configure_network(&self, config: &NetworkConfig) -> Result<(), AgentError> {
        self.call_ok(Op::ConfigureNetwork(config.clone())).await
    }

    /// Flush the guest's filesystems.
    pub async fn sync(&self) -> Result<(), AgentError> {
        self.call_ok(Op::Sync).await
    }

    /// Ask the guest to sync and power off; returns once the agent acknowledged.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        self.call_ok(Op::Shutdown).await
    }

    async fn call_ok(&self, op: Op) -> Result<(), AgentError> {
        match self.call(op, self.op_timeout).await? {
            Reply::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Send `op` and wait for its single reply, all within `limit`; `error`
    /// replies become [`AgentError::Remote`].
    async fn call(&self, op: Op, limit: Duration) -> Result<Reply, AgentError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pending = self.conn.send(op, limit).await?;
        match tokio::time::timeout_at(deadline, pending.recv()).await {
            Err(_) => Err(AgentError::Timeout(limit)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(reply @ Reply::Error { .. })) => Err(unexpected(reply)),
            Ok(Ok(reply)) => Ok(reply),
        }
    }
}

/// Longest text from the guest kept in an error: errors end up in logs, API
/// answers and instance records, which must stay small.
pub const MAX_GUEST_TEXT: usize = 1024;

fn unexpected(reply: Reply) -> AgentError {
    let kind = match reply {
        Reply::Error { code, message } => {
            return AgentError::Remote {
                code,
                message: clip(message),
            }
        }
        Reply::Pong(_) => "pong",
        Reply::Ok => "ok",
        Reply::Stdout { .. } => "stdout",
        Reply::Stderr { .. } => "stderr",
        Reply::Exit(_) => "exit",
        Reply::File { .. } => "file",
    };
    AgentError::Protocol(format!("a {kind} frame"))
}

/// `text` cut to at most [`MAX_GUEST_TEXT`] bytes, on a character boundary.
fn clip(mut text: String) -> String {
    if text.len() > MAX_GUEST_TEXT {
        let mut end = MAX_GUEST_TEXT - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, parse_request, ErrorCode, Request, Response, MAX_LINE};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::UnixListener;

    /// A scripted peer on a real socket, standing in for the agent.
    struct Peer {
        lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
        write: OwnedWriteHalf,
    }

    impl Peer {
        async fn request(&mut self) -> Request {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("client hung up");
                if !line.is_empty() {
                    return parse_request(line.as_bytes()).unwrap();
                }
            }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.write.write_all(bytes).await.unwrap();
        }
    }

    async fn pair() -> (AgentClient, Peer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (client, accepted) = tokio::join!(AgentClient::connect(&path), listener.accept());
        let (read, write) = accepted.unwrap().0.into_split();
        let peer = Peer {
            lines: BufReader::new(read).lines(),
            write,
        };
        (
            client.unwrap().with_op_timeout(Duration::from_secs(5)),
            peer,
            dir,
        )
    }

    fn frame(id: Option<u64>, reply: Reply) -> Vec<u8> {
        encode(&Response { id, reply })
    }

    #[tokio::test]
    async fn unknown_ids_and_garbage_lines_are_skipped() {
        let (client, mut peer, _dir) = pair().await;
        let call = tokio::spawn(async move { client.sync().await });
        let id = peer.request().await.id;

        peer.send(b"tail of an old frame\"}\n").await;
        peer.send(b"\xff\xfe\x00{\"id\":\n").await;
        peer.send(&frame(Some(id + 1000), Reply::Ok)).await;
        peer.send(&frame(
            None,
            Reply::Error {
                code: ErrorCode::BadRequest,
                message: "x".into(),
            },
        ))
        .await;
        peer.send(&frame(Some(id), Reply::Ok)).await;

        call.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn oversized_line_from_guest_fails_the_connection() {
        let (client, mut peer, _dir) = pair().await;
        let call = tokio::spawn(async move { client.ping().await });
        peer.request().await;

        // The client may hang up before reading it all.
        let _ = peer.write.write_all(&vec![b'{'; MAX_LINE + 1]).await;

        assert!(matches!(
            call.await.unwrap(),
            Err(AgentError::FrameTooLarge)
        ));
    }

    #[tokio::test]
    async fn remote_error_and_wrong_reply_type_are_reported() {
        let (client, mut peer, _dir) = pair().await;
        let client = std::sync::Arc::new(client);
        let c = client.clone();
        let refused = tokio::spawn(async move { c.add_entropy(&[1]).await });
        let id = peer.request().await.id;
        peer.send(&frame(
            Some(id),
            Reply::Error {
                code: ErrorCode::Io,
                message: "no".into(),
            },
        ))
        .await;
        let c = client.clone();
        let confused = tokio::spawn(async move { c.ping().await });
        let id = peer.request().await.id;
        peer.send(&frame(Some(id), Reply::Ok)).await;

        let refused = refused.await.unwrap().unwrap_err();
        let confused = confused.await.unwrap().unwrap_err();

        assert!(
            matches!(
                refused,
                AgentError::Remote {
                    code: ErrorCode::Io,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(matches!(confused, AgentError::Protocol(_)), "{confused:?}");
    }

    #[tokio::test]
    async fn exec_collects_interleaved_streams_until_exit() {
        let (client, mut peer, _dir) = pair().await;
        let call = tokio::spawn(async move { client.exec(ExecRequest::new(["x"])).await });
        let id = peer.request().await.id;

        peer.send(&frame(
            Some(id),
            Reply::Stdout {
                data: b"a".to_vec(),
            },
        ))
        .await;
        peer.send(&frame(
            Some(id),
            Reply::Stderr {
                data: b"e".to_vec(),
            },
        ))
        .await;
        peer.send(&frame(
            Some(id),
            Reply::Stdout {
                data: b"b".to_vec(),
            },
        ))
        .await;
        let status = ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: true,
        };
        peer.send(&frame(Some(id), Reply::Exit(status))).await;

        let out = call.await.unwrap().unwrap();
        assert_eq!(
            (out.stdout, out.stderr, out.status),
            (b"ab".to_vec(), b"e".to_vec(), status)
        );
    }

    #[tokio::test]
    async fn hang_up_fails_pending_and_later_calls() {
        let (client, mut peer, _dir) = pair().await;
        let client = std::sync::Arc::new(client);
        let c = client.clone();
        let pending = tokio::spawn(async move { c.ping().await });
        peer.request().await;

        drop(peer);

        assert!(matches!(
            pending.await.unwrap(),
            Err(AgentError::Disconnected)
        ));
        assert!(client.ping().await.is_err());
    }

    #[tokio::test]
    async fn silent_agent_times_out() {
        let (client, mut peer, _dir) = pair().await;
        let client = client.with_op_timeout(Duration::from_millis(50));
        let call = tokio::spawn(async move { client.ping().await });
        peer.request().await;

        assert!(matches!(call.await.unwrap(), Err(AgentError::Timeout(_))));
    }

    #[tokio::test]
    async fn a_guest_that_stops_reading_cannot_hold_a_call() {
        let (client, _peer, _dir) = pair().await;
        let client = client.with_op_timeout(Duration::from_millis(200));
        let big = vec![7u8; crate::MAX_PAYLOAD];

        // The socket buffer takes a few lines; then a write blocks.
        let mut first_err = None;
        for _ in 0..256 {
            if let Err(e) = client.write_file("/x", &big, None).await {
                first_err = Some(e);
                break;
            }
        }
        let later = client.ping().await.unwrap_err();

        assert!(
            matches!(first_err, Some(AgentError::Timeout(_))),
            "{first_err:?}"
        );
        assert!(matches!(later, AgentError::Stalled), "{later:?}");
    }

    #[tokio::test]
    async fn a_huge_error_message_from_the_guest_is_clipped() {
        let (client, mut peer, _dir) = pair().await;
        let call = tokio::spawn(async move { client.sync().await });
        let id = peer.request().await.id;

        peer.send(&frame(
            Some(id),
            Reply::Error {
                code: ErrorCode::Io,
                message: "é".repeat(300_000),
            },
        ))
        .await;

        let err = call.await.unwrap().unwrap_err();
        let AgentError::Remote { message, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(message.len() <= MAX_GUEST_TEXT, "{}", message.len());
        assert!(message.ends_with('…'));
    }

    #[tokio::test]
    async fn a_file_reply_to_a_ping_names_the_frame_not_its_bytes() {
        let (client, mut peer, _dir) = pair().await;
        let call = tokio::spawn(async move { client.ping().await });
        let id = peer.request().await.id;

        peer.send(&frame(
            Some(id),
            Reply::File {
                data: vec![0; 100_000],
            },
        ))
        .await;

        let err = call.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, AgentError::Protocol(m) if m == "a file frame"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn the_largest_exec_timeout_an_api_client_can_ask_for_is_accepted() {
        let (client, mut peer, _dir) = pair().await;
        let mut req = ExecRequest::new(["true"]);
        req.timeout_ms = Some(u64::MAX);
        let call = tokio::spawn(async move { client.exec(req).await });
        let id = peer.request().await.id;

        let status = ExitStatus {
            code: Some(0),
            signal: None,
            timed_out: false,
        };
        peer.send(&frame(Some(id), Reply::Exit(status))).await;

        assert_eq!(call.await.unwrap().unwrap().status, status);
    }

    #[tokio::test]
    async fn requests_over_the_frame_limit_are_refused_locally() {
        let (client, _peer, _dir) = pair().await;

        let err = client
            .write_file("/x", &vec![0; MAX_LINE], None)
            .await
            .unwrap_err();

        assert!(matches!(err, AgentError::RequestTooLarge(_)), "{err:?}");
    }
}
