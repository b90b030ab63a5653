//! The manager's side of the guest agent: one shared connection per running
//! instance (QEMU's chardev serves a single client; the client multiplexes
//! concurrent calls by id), reconnected on demand after a failure.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tine_agent_proto::client::{AgentClient, AgentError, ExecEvent, ExecOutput};
use tine_agent_proto::ExecRequest;
use tokio::sync::mpsc;

/// How long a call waits for an already-booted agent to reconnect.
const RECONNECT: Duration = Duration::from_secs(10);

/// Exec events buffered for a slow API client (each at most one agent frame).
const EXEC_EVENTS: usize = 16;

/// The agent connection of one instance.
///
/// `state` is a plain mutex never held across an await, so [`AgentSlot::reset`]
/// (called by stop, standby and failure paths under the instance's op lock)
/// never waits for a guest. Connecting is serialized by `connecting`, since
/// QEMU's chardev serves one client at a time. `epoch` changes on every reset
/// and every fresh connection, so a reconnect that raced with them is dropped.
#[derive(Default)]
pub(crate) struct AgentSlot {
    state: Mutex<Conn>,
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Conn {
    path: Option<PathBuf>,
    client: Option<Arc<AgentClient>>,
    epoch: u64,
}

impl AgentSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget the connection (the VM stopped or the link broke).
    pub(crate) fn reset(&self) {
        let mut s = self.lock();
        *s = Conn {
            epoch: s.epoch + 1,
            ..Conn::default()
        };
    }

    /// Keep `client` unless the slot was reset or reconnected since `epoch`.
    fn set(
        &self,
        epoch: u64,
        path: &Path,
        client: AgentClient,
    ) -> Result<Arc<AgentClient>, AgentError> {
        let mut s = self.lock();
        if s.epoch != epoch {
            return Err(AgentError::Disconnected);
        }
        let c = Arc::new(client);
        *s = Conn {
            path: Some(path.to_path_buf()),
            client: Some(c.clone()),
            epoch: epoch + 1,
        };
        Ok(c)
    }

    async fn get(&self) -> Result<Arc<AgentClient>, AgentError> {
        let current = self.lock().client.clone();
        if let Some(c) = &current {
            if c.ping().await.is_ok() {
                return Ok(c.clone());
            }
        }
        let _one = self.connecting.lock().await;
        let (path, epoch) = {
            let mut s = self.lock();
            match (&s.client, &current) {
                // Someone reconnected while we waited.
                (Some(now), Some(failed)) if !Arc::ptr_eq(now, failed) => return Ok(now.clone()),
                (Some(now), None) => return Ok(now.clone()),
                _ => {}
            }
            let path = s.path.clone().ok_or(AgentError::Disconnected)?;
            // Drop our hold on the broken connection so the chardev is free.
            s.client = None;
            (path, s.epoch)
        };
        drop(current);
        let (c, _) = AgentClient::wait_ready(&path, RECONNECT).await?;
        self.set(epoch, &path, c)
    }
}

/// Wait until the agent at `path` answers, and keep the connection.
pub(crate) async fn wait_ready(
    slot: &AgentSlot,
    path: &Path,
    timeout: Duration,
) -> Result<(), AgentError> {
    slot.reset();
    let epoch = slot.lock().epoch;
    let _one = slot.connecting.lock().await;
    let (client, _pong) = AgentClient::wait_ready(path, timeout).await?;
    slot.set(epoch, path, client)?;
    Ok(())
}

/// Re-attach after a daemon restart: remember where the agent is (calls
/// made meanwhile wait for the connection instead of failing), connect.
pub(crate) fn remember(slot: &AgentSlot, path: &Path) {
    let mut s = slot.lock();
    *s = Conn {
        path: Some(path.to_path_buf()),
        client: None,
        epoch: s.epoch + 1,
    };
}

/// Connect now (a remembered agent), or fail like a call would.
pub(crate) async fn connect(slot: &AgentSlot) -> Result<(), AgentError> {
    slot.get().await.map(|_| ())
}

pub(crate) async fn exec(slot: &AgentSlot, req: &ExecRequest) -> Result<ExecOutput, AgentError> {
    slot.get().await?.exec(req.clone()).await
}

/// Stream an exec's events; a failure mid-way arrives as `Err` and ends it.
pub(crate) async fn exec_stream(
    slot: &AgentSlot,
    req: &ExecRequest,
) -> Result<mpsc::Receiver<Result<ExecEvent, String>>, AgentError> {
    let client = slot.get().await?;
    let mut stream = client.exec_stream(req.clone()).await?;
    let (tx, rx) = mpsc::channel(EXEC_EVENTS);
    tokio::spawn(async move {
        // Keep the client alive for as long as the stream runs.
        let _client = client;
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                // The API client left: stop holding the connection, even if
                // the guest never sends another frame.
                () = tx.closed() => return,
            };
            let Some(ev) = ev else { return };
            if tx
                .send(ev.map_err(|e| crate::error::chain(&e)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

pub(crate) async fn sync(slot: &AgentSlot) -> Result<(), AgentError> {
    slot.get().await?.sync().await
}

pub(crate) async fn configure_network(
    slot: &AgentSlot,
    cfg: &tine_agent_proto::NetworkConfig,
) -> Result<(), AgentError> {
    slot.get().await?.configure_network(cfg).await
}

pub(crate) async fn set_clock(slot: &AgentSlot) -> Result<(), AgentError> {
    slot.get().await?.sync_clock().await
}

/// What makes a fork unique, applied by the agent right after resume.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub hostname: String,
    pub machine_id: String,
}

impl Identity {
    pub(crate) fn new(hostname: &str) -> Identity {
        Identity {
            hostname: hostname.into(),
            machine_id: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

/// Fresh entropy (reseeds the guest CRNG, so forks diverge), hostname,
/// machine-id and wall clock.
pub(crate) async fn make_unique(slot: &AgentSlot, id: &Identity) -> Result<(), AgentError> {
    let client = slot.get().await?;
    let mut seed = [0u8; 64];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..32].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[32..48].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[48..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let (a, b, c) = tokio::join!(
        client.add_entropy(&seed),
        client.set_identity(Some(&id.hostname), Some(&id.machine_id)),
        client.sync_clock()
    );
    a?;
    b?;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};

    /// A slot connected to a real socket whose peer reads requests and never answers.
    async fn silent_agent() -> (AgentSlot, UnixStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (client, peer) = tokio::join!(AgentClient::connect(&path), listener.accept());
        let slot = AgentSlot::default();
        let client = client.unwrap().with_op_timeout(Duration::from_millis(300));
        let epoch = slot.lock().epoch;
        slot.set(epoch, &path, client).unwrap();
        (slot, peer.unwrap().0, dir)
    }

    async fn next_request(peer: &mut BufReader<UnixStream>) -> String {
        loop {
            let mut line = String::new();
            assert!(
                peer.read_line(&mut line).await.unwrap() > 0,
                "client hung up"
            );
            if !line.trim().is_empty() {
                return line;
            }
        }
    }

    #[tokio::test]
    async fn reset_while_a_call_waits_on_a_silent_guest_leaves_the_slot_empty() {
        let (slot, peer, _dir) = silent_agent().await;
        let slot = Arc::new(slot);
        let mut peer = BufReader::new(peer);
        let s = slot.clone();
        let call = tokio::spawn(async move { sync(&s).await });
        assert!(next_request(&mut peer).await.contains("\"ping\""));

        slot.reset();
        let result = call.await.unwrap();

        assert!(
            matches!(result, Err(AgentError::Disconnected)),
            "{result:?}"
        );
        let state = slot.lock();
        assert!(state.client.is_none() && state.path.is_none());
    }

    #[tokio::test]
    async fn a_reconnect_that_raced_with_a_reset_is_dropped() {
        let (slot, _peer, dir) = silent_agent().await;
        let epoch = slot.lock().epoch;
        let path = dir.path().join("second.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let late = AgentClient::connect(&path).await.unwrap();

        slot.reset();
        let kept = slot.set(epoch, &path, late);

        assert!(matches!(kept, Err(AgentError::Disconnected)));
        assert!(slot.lock().client.is_none());
    }
}
