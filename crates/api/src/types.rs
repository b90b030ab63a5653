//! Wire types that are the API's own (the rest are the manager's serde types).

use base64::Engine;
use serde::{Deserialize, Serialize};

pub use tine_manager::network::{CleanupReport, Lease, NetworkMode};
pub use tine_manager::{
    CompressState, ExecRequest, ForkFrom, ForkOutcome, ForkPhases, ForkReport, ForkRequest,
    ForkTarget, InstanceInfo, PoolInfo, PoolSpec, RunRequest, SnapshotInfo, SnapshotKind,
    SnapshotRequest, State,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// Instance to restore into (created in standby if it does not exist).
    pub into: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromoteRequest {
    /// The standby instance that becomes a template.
    pub instance: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub version: String,
    pub accel: String,
    pub accel_warning: Option<String>,
    pub instances: usize,
}

/// The whole output of a finished command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecResult {
    #[serde(with = "b64")]
    pub stdout: Vec<u8>,
    #[serde(with = "b64")]
    pub stderr: Vec<u8>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

/// One line of a streamed exec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecFrame {
    Stdout {
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    Stderr {
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    },
    Error {
        error: String,
    },
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub kind: String,
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// Map an agent exec event to its wire frame.
pub fn frame_of(ev: Result<tine_manager::ExecEvent, String>) -> ExecFrame {
    use tine_manager::ExecEvent as E;
    match ev {
        Ok(E::Stdout(data)) => ExecFrame::Stdout { data },
        Ok(E::Stderr(data)) => ExecFrame::Stderr { data },
        Ok(E::Exit(s)) => ExecFrame::Exit {
            exit_code: s.code,
            signal: s.signal,
            timed_out: s.timed_out,
        },
        Err(error) => ExecFrame::Error { error },
    }
}
