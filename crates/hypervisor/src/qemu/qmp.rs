//! A minimal QMP client: one connection per operation sequence (a
//! prestarted VM's is kept open until it is resumed).
//!
//! QEMU's QMP socket serves one client at a time; callers serialize their
//! operations per VM, so a short-lived connection is enough and leaves no
//! state to recover after a daemon restart.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::io::Interest;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::HvError;

/// QEMU is outside our trust boundary (a guest may own it): bound lines.
const MAX_LINE: usize = 4 << 20;

/// Longest the greeting or one command may take to answer. tine's commands
/// are all quick (a migration runs in the background and is polled), so a
/// QEMU that does not answer is hung or hostile: fail rather than hold the
/// instance's op lock forever.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    limit: Duration,
    /// Events that arrived while a command waited for its reply.
    events: VecDeque<Value>,
    /// A message read in part when a wait timed out (reads are resumable).
    partial: Vec<u8>,
}

/// Events kept for [`Qmp::wait_event`]; older ones are dropped.
const KEPT_EVENTS: usize = 32;

impl Qmp {
    /// Connect, read the greeting and enter command mode.
    pub async fn connect(socket: &Path) -> Result<Qmp, HvError> {
        Qmp::connect_within(socket, COMMAND_TIMEOUT).await
    }

    /// Like [`Qmp::connect`]; the greeting and every command must answer
    /// within `limit`.
    pub async fn connect_within(socket: &Path, limit: Duration) -> Result<Qmp, HvError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| HvError::io(socket, e))?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
            limit,
            events: VecDeque::new(),
            partial: Vec::new(),
        };
        // A monitor busy with another client accepts but never greets.
        let greeting = tokio::time::timeout(limit, qmp.read_message())
            .await
            .map_err(|_| HvError::Timeout(limit, "the QMP greeting"))??;
        if greeting.get("QMP").is_none() {
            return Err(HvError::QmpProtocol(format!(
                "unexpected greeting: {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Run one command and return its `return` value. Events are skipped.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, HvError> {
        let limit = self.limit;
        tokio::time::timeout(limit, self.execute_unbounded(command, args))
            .await
            .map_err(|_| HvError::Timeout(limit, "QMP command"))?
    }

    async fn execute_unbounded(
        &mut self,
        command: &str,
        args: Option<Value>,
    ) -> Result<Value, HvError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).expect("json");
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .map_err(|e| HvError::QmpProtocol(format!("write {command}: {e}")))?;
        self.reply(command).await
    }

    /// Hand QEMU an open file as `name` (QMP `getfd`, the descriptor rides
    /// along as SCM_RIGHTS), for a later `fd:NAME` URI. QEMU keeps its own
    /// copy; the caller may close `fd`.
    pub async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), HvError> {
        let limit = self.limit;
        tokio::time::timeout(limit, self.send_fd_unbounded(name, fd))
            .await
            .map_err(|_| HvError::Timeout(limit, "QMP getfd"))?
    }

    async fn send_fd_unbounded(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), HvError> {
        let msg = json!({ "execute": "getfd", "arguments": { "fdname": name } });
        let mut line = serde_json::to_vec(&msg).expect("json");
        line.push(b'\n');
        let fail = |e: std::io::Error| HvError::QmpProtocol(format!("write getfd: {e}"));
        let sock = self.writer.as_ref();
        let fds = [fd];
        loop {
            sock.writable().await.map_err(fail)?;
            let sent = sock.try_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut cmsg = SendAncillaryBuffer::new(&mut space);
                cmsg.push(SendAncillaryMessage::ScmRights(&fds));
                sendmsg(sock, &[IoSlice::new(&line)], &mut cmsg, SendFlags::empty())
                    .map_err(std::io::Error::from)
            });
            match sent {
                // A short line on a fresh socket does not split; if it
                // ever did, the rest would go without the descriptor.
                Ok(n) if n == line.len() => break,
                Ok(n) => return Err(fail(std::io::Error::other(format!("short write {n}")))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(fail(e)),
            }
        }
        self.reply("getfd").await.map(|_| ())
    }

    /// The answer to the command just sent; events are skipped.
    async fn reply(&mut self, command: &str) -> Result<Value, HvError> {
        loop {
            let reply = self.read_message().await?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let message = err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(HvError::Qmp {
                    command: command.into(),
                    message: message.into(),
                });
            }
            // An asynchronous event: kept for `wait_event`.
            self.keep_event(reply);
        }
    }

    fn keep_event(&mut self, msg: Value) {
        if msg.get("event").is_some() {
            if self.events.len() == KEPT_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(msg);
        }
    }

    /// Forget kept events named `name`.
    pub fn drop_events(&mut self, name: &str) {
        self.events
            .retain(|m| m.get("event").and_then(Value::as_str) != Some(name));
    }

    /// The next event named `name` (one that came during an earlier command
    /// first), or None if none arrives within `within`.
    pub async fn wait_event(
        &mut self,
        name: &str,
        within: Duration,
    ) -> Result<Option<Value>, HvError> {
        let is = |m: &Value| m.get("event").and_then(Value::as_str) == Some(name);
        if let Some(i) = self.events.iter().position(is) {
            return Ok(self.events.remove(i));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.read_message()).await {
                Err(_) => return Ok(None),
                Ok(m) => m?,
            };
            if is(&msg) {
                return Ok(Some(msg));
            }
            self.keep_event(msg);
        }
    }

    /// Cancel-safe: what was read of a line stays in `partial`.
    async fn read_message(&mut self) -> Result<Value, HvError> {
        loop {
            let chunk = self
                .reader
                .fill_buf()
                .await
                .map_err(|e| HvError::QmpProtocol(format!("read: {e}")))?;
            if chunk.is_empty() {
                return Err(HvError::QmpProtocol("connection closed".into()));
            }
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            self.partial.extend_from_slice(&chunk[..take]);
            self.reader.consume(take);
            if self.partial.len() > MAX_LINE {
                return Err(HvError::QmpProtocol("message too large".into()));
            }
            if done {
                let line = std::mem::take(&mut self.partial);
                return serde_json::from_slice(&line)
                    .map_err(|e| HvError::QmpProtocol(format!("bad json: {e}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn a_qemu_that_stops_answering_fails_the_command_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let peer = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\":{}}\n").await.unwrap();
            lines.next_line().await.unwrap(); // qmp_capabilities
            w.write_all(b"{\"return\":{}}\n").await.unwrap();
            lines.next_line().await.unwrap(); // then silence
            (lines, w)
        });

        let mut q = Qmp::connect_within(&path, Duration::from_millis(200))
            .await
            .unwrap();
        let err = q.execute("stop", None).await.unwrap_err();

        assert!(matches!(err, HvError::Timeout(_, _)), "{err:?}");
        drop(peer.await.unwrap());
    }

    #[tokio::test]
    async fn events_during_a_command_are_kept_and_a_wait_that_times_out_mid_line_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (more_tx, more_rx) = tokio::sync::oneshot::channel::<()>();
        let peer = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\":{}}\n").await.unwrap();
            lines.next_line().await.unwrap(); // qmp_capabilities
            w.write_all(b"{\"return\":{}}\n").await.unwrap();
            lines.next_line().await.unwrap(); // migrate-incoming
            w.write_all(
                b"{\"event\":\"MIGRATION\",\"data\":{\"status\":\"setup\"}}\n{\"return\":{}}\n",
            )
            .await
            .unwrap();
            // Half an event, then the rest once the client has given up once.
            w.write_all(b"{\"event\":\"MIGRATION\",\"data\":")
                .await
                .unwrap();
            more_rx.await.unwrap();
            w.write_all(b"{\"status\":\"completed\"}}\n").await.unwrap();
            (lines, w)
        });

        let mut q = Qmp::connect_within(&path, Duration::from_secs(5))
            .await
            .unwrap();
        q.execute("migrate-incoming", None).await.unwrap();
        let first = q
            .wait_event("MIGRATION", Duration::from_secs(5))
            .await
            .unwrap();
        let none = q
            .wait_event("MIGRATION", Duration::from_millis(50))
            .await
            .unwrap();
        more_tx.send(()).unwrap();
        let second = q
            .wait_event("MIGRATION", Duration::from_secs(5))
            .await
            .unwrap();

        assert_eq!(first.unwrap()["data"]["status"], "setup");
        assert!(none.is_none());
        assert_eq!(second.unwrap()["data"]["status"], "completed");
        drop(peer.await.unwrap());
    }
}
