//! One connection: a reader task that routes replies to waiting requests by id.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::AgentError;
use crate::frame::{encode, ReplyDecoder};
use crate::msg::{Op, Reply, Request, Response};
use crate::MAX_LINE;

/// Replies buffered per request before the reader task waits for the caller
/// (backpressure). Each is at most one line, so this bounds what a guest can
/// make the host hold per request: 16 × [`MAX_LINE`].
const REPLY_QUEUE: usize = 16;

/// Why the reader task stopped; every later call reports it.
#[derive(Debug, Clone)]
enum Closed {
    Eof,
    TooLarge,
    /// A request could not be written in time: the guest stopped reading, and
    /// the half-written line would corrupt every later one.
    Stalled,
    Io(Arc<io::Error>),
}

impl Closed {
    fn to_error(&self) -> AgentError {
        match self {
            Closed::Eof => AgentError::Disconnected,
            Closed::TooLarge => AgentError::FrameTooLarge,
            Closed::Stalled => AgentError::Stalled,
            Closed::Io(e) => AgentError::Io(e.clone()),
        }
    }
}

#[derive(Default)]
struct Routes {
    waiting: HashMap<u64, mpsc::Sender<Reply>>,
    closed: Option<Closed>,
}

pub(super) struct Conn {
    routes: Arc<Mutex<Routes>>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

/// A sent request; yields its replies. Dropping it stops routing its id.
pub(super) struct Pending {
    pub id: u64,
    rx: mpsc::Receiver<Reply>,
    routes: Arc<Mutex<Routes>>,
}

impl Pending {
    /// The next reply, or the reason the connection closed.
    pub async fn recv(&mut self) -> Result<Reply, AgentError> {
        match self.rx.recv().await {
            Some(reply) => Ok(reply),
            None => Err(lock(&self.routes)
                .closed
                .as_ref()
                .map_or(AgentError::Disconnected, Closed::to_error)),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.routes).waiting.remove(&self.id);
    }
}

impl Conn {
    pub async fn new(stream: UnixStream) -> Result<Conn, AgentError> {
        let (read, mut write) = stream.into_split();
        // Terminate any partial line an earlier session left in the agent's buffer.
        write.write_all(b"\n").await?;
        let routes = Arc::new(Mutex::new(Routes::default()));
        let reader = tokio::spawn(read_loop(read, routes.clone()));
        Ok(Conn {
            routes,
            writer: tokio::sync::Mutex::new(write),
            next_id: AtomicU64::new(random_id_base()),
            reader,
        })
    }

    /// Register a fresh id, then send the request. A guest that does not read
    /// cannot hold the caller past `limit`: the write is abandoned and the
    /// connection closed.
    pub async fn send(&self, op: Op, limit: Duration) -> Result<Pending, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = encode(&Request { id, op });
        if line.len() > MAX_LINE {
            return Err(AgentError::RequestTooLarge(line.len()));
        }
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        {
            let mut routes = lock(&self.routes);
            if let Some(closed) = &routes.closed {
                return Err(closed.to_error());
            }
            routes.waiting.insert(id, tx);
        }
        let pending = Pending {
            id,
            rx,
            routes: self.routes.clone(),
        };
        let write = async {
            let mut writer = self.writer.lock().await;
            // Armed from the first byte: a caller that gives up mid-line
            // (timeout or cancellation) leaves the stream unusable.
            let guard = CloseOnDrop(&self.routes);
            let result = writer.write_all(&line).await;
            std::mem::forget(guard);
            result
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => Ok(pending),
            Ok(Err(e)) => {
                let e = Arc::new(e);
                close(&self.routes, Closed::Io(e.clone()));
                Err(AgentError::Io(e))
            }
            Err(_) => Err(AgentError::Timeout(limit)),
        }
    }
}

/// Closes the connection as [`Closed::Stalled`] unless forgotten.
struct CloseOnDrop<'a>(&'a Mutex<Routes>);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        close(self.0, Closed::Stalled);
    }
}

/// Fail every waiting request and every later call with `why` (the first
/// reason wins).
fn close(routes: &Mutex<Routes>, why: Closed) {
    let mut routes = lock(routes);
    routes.closed.get_or_insert(why);
    routes.waiting.clear();
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(mut read: OwnedReadHalf, routes: Arc<Mutex<Routes>>) {
    let mut decoder = ReplyDecoder::new(MAX_LINE);
    let mut buf = vec![0u8; 64 * 1024];
    let mut replies = Vec::new();
    let closed = loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => break Closed::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Closed::Io(Arc::new(e)),
        };
        if decoder.push(&buf[..n], &mut replies).is_err() {
            break Closed::TooLarge;
        }
        for resp in replies.drain(..) {
            route(&routes, resp).await;
        }
    };
    close(&routes, closed);
}

/// Deliver to the waiting request, if any; frames with unknown ids are dropped.
async fn route(routes: &Mutex<Routes>, resp: Response) {
    let Some(id) = resp.id else { return };
    let Some(tx) = lock(routes).waiting.get(&id).cloned() else {
        return;
    };
    // Waits when the caller is slow: backpressure reaches the guest through the socket.
    if tx.send(resp.reply).await.is_err() {
        lock(routes).waiting.remove(&id);
    }
}

fn lock(routes: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    routes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Ids must not repeat across sessions with one agent (late frames of an earlier session
/// would be misrouted), so each connection starts at a random point below 2^52.
fn random_id_base() -> u64 {
    let random = RandomState::new().hash_one(std::process::id());
    (random & ((1 << 52) - 1)).max(1)
}
