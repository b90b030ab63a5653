//! The manager's side of the guest agent: one shared connection per running
//! instance (QEMU's chardev serves a single client; the client multiplexes
//! concurrent calls by id), reconnected on demand after a failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tine_agent_proto::client::{AgentClient, AgentError, ExecEvent, ExecOutput};
use tine_agent_proto::ExecRequest;
use tokio::sync::{mpsc, Mutex};

/// How long a call waits for an already-booted agent to reconnect.
const RECONNECT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct AgentSlot {
    /// Where the agent is, and the connection once made (calls connect
    /// lazily, one at a time: the chardev serves a single client).
    inner: Mutex<Option<(PathBuf, Option<Arc<AgentClient>>)>>,
}

impl AgentSlot {
    /// Forget the connection (the VM stopped or the link broke).
    pub(crate) async fn reset(&self) {
        *self.inner.lock().await = None;
    }

    async fn set(&self, path: &Path, client: AgentClient) -> Arc<AgentClient> {
        let c = Arc::new(client);
        *self.inner.lock().await = Some((path.to_path_buf(), Some(c.clone())));
        c
    }

    async fn get(&self) -> Result<Arc<AgentClient>, AgentError> {
        let mut g = self.inner.lock().await;
        let Some((path, client)) = g.as_ref() else {
            return Err(AgentError::Disconnected);
        };
        if let Some(client) = client {
            if client.ping().await.is_ok() {
                return Ok(client.clone());
            }
        }
        let path = path.clone();
        let (c, _) = AgentClient::wait_ready(&path, RECONNECT).await?;
        let c = Arc::new(c);
        *g = Some((path, Some(c.clone())));
        Ok(c)
    }
}

/// Wait until the agent at `path` answers, and keep the connection.
pub(crate) async fn wait_ready(
    slot: &AgentSlot,
    path: &Path,
    timeout: Duration,
) -> Result<(), AgentError> {
    slot.reset().await;
    let (client, _pong) = AgentClient::wait_ready(path, timeout).await?;
    slot.set(path, client).await;
    Ok(())
}

/// Re-attach after a daemon restart: remember where the agent is (calls
/// made meanwhile wait for the connection instead of failing), connect.
pub(crate) async fn remember(slot: &AgentSlot, path: &Path) {
    *slot.inner.lock().await = Some((path.to_path_buf(), None));
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
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        // Keep the client alive for as long as the stream runs.
        let _client = client;
        while let Some(ev) = stream.next().await {
            let item = ev.map_err(|e| crate::error::chain(&e));
            if tx.send(item).await.is_err() {
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
