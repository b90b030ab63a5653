//! Manager errors. The API maps each variant to an HTTP status in one place.

use crate::image::ImageError;
use crate::state::IllegalTransition;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no instance named {0:?}")]
    NotFound(String),
    #[error("an instance named {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("instance {name:?}: {source}")]
    Conflict {
        name: String,
        #[source]
        source: IllegalTransition,
    },
    #[error("instance {name:?} is busy: {detail}")]
    Busy { name: String, detail: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Limit(#[from] crate::admission::LimitError),
    #[error("hypervisor")]
    Hypervisor(#[from] tine_hypervisor::HvError),
    #[error("guest agent of {name:?}")]
    Agent {
        name: String,
        #[source]
        source: tine_agent_proto::client::AgentError,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

impl ManagerError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ManagerError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The full cause chain as one line, for API answers and logs.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Longest error text kept in an instance record: records stay far under
/// their 1 MiB limit whatever a guest printed.
pub(crate) const MAX_RECORDED_ERROR: usize = 4096;

/// `text` cut to at most `max` bytes on a character boundary, marked `…`.
pub(crate) fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}
