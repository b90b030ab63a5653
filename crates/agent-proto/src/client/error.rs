use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::msg::ErrorCode;

/// Everything that can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to agent socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("agent connection failed")]
    Io(#[source] Arc<io::Error>),
    #[error("agent connection closed")]
    Disconnected,
    #[error("agent sent a line over {} bytes", crate::MAX_LINE)]
    FrameTooLarge,
    #[error("agent stopped reading requests; connection closed")]
    Stalled,
    #[error("unexpected reply from agent: {0}")]
    Protocol(String),
    #[error("agent refused ({code:?}): {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("request of {0} bytes exceeds the frame limit")]
    RequestTooLarge(usize),
    #[error("command output exceeded {0} bytes")]
    OutputTooLarge(usize),
    #[error("agent not ready after {waited:?}")]
    NotReady {
        waited: Duration,
        #[source]
        last: Box<AgentError>,
    },
}

impl From<io::Error> for AgentError {
    fn from(e: io::Error) -> Self {
        AgentError::Io(Arc::new(e))
    }
}
