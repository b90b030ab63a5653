//! Message types. Field names are the wire names; see the crate docs for the flow.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::b64;

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub op: Op,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Ping,
    Exec(ExecRequest),
    /// Set the guest's wall clock (CLOCK_REALTIME).
    SetTime {
        unix_nanos: u64,
    },
    /// Set the hostname and/or `/etc/machine-id` (32 lowercase hex digits).
    SetIdentity {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        machine_id: Option<String>,
    },
    /// Mix bytes into the kernel pool, credit them, and reseed the CRNG.
    AddEntropy {
        #[serde(with = "b64")]
        bytes: Vec<u8>,
    },
    ReadFile {
        path: String,
    },
    /// Atomically replace `path` (temp file + rename).
    WriteFile {
        path: String,
        #[serde(with = "b64")]
        data: Vec<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Flush all filesystems (before a snapshot).
    Sync,
    /// Give a network interface its identity: MAC, one IPv4 address (replacing the one it
    /// had), default route, DNS servers. Idempotent; used after boot and after a fork
    /// resumes with its source's identity.
    ConfigureNetwork(NetworkConfig),
    /// Sync, answer `ok`, then power off.
    Shutdown,
}

/// Run a command in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Added to a minimal default environment (`PATH`, `HOME`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Written to the command's stdin, which is then closed. Without it stdin is empty.
    #[serde(default, with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Vec<u8>>,
    /// Working directory; `/` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Kill the command's process group after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl ExecRequest {
    /// A request for `argv` with everything else defaulted.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

/// The network identity `configure_network` applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Interface name in the guest; the agent's default is `eth0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// `aa:bb:cc:dd:ee:ff`, unicast.
    pub mac: String,
    /// IPv4 address with prefix length, `10.209.0.2/16`.
    pub address: String,
    /// Default gateway (IPv4), inside `address`'s subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Name servers written to `/etc/resolv.conf` (left alone when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// A reply or event from the agent. `id` is `null` only for errors about a line whose id
/// could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: Option<u64>,
    #[serde(flatten)]
    pub reply: Reply,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Pong(Pong),
    Ok,
    Stdout {
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    Stderr {
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    Exit(ExitStatus),
    File {
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// The answer to `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub agent_version: String,
    pub protocol_version: u32,
    /// Guest uptime from `/proc/uptime`.
    pub uptime_ms: u64,
    /// `/proc/sys/kernel/random/boot_id`; forks of one boot share it.
    pub boot_id: String,
}

/// How an exec'd command ended: `code` if it exited, `signal` if it was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The agent killed it because `timeout_ms` passed.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line was not a valid request.
    BadRequest,
    /// The line or a payload exceeded its limit.
    TooLarge,
    /// An argument was out of range or malformed.
    InvalidArgument,
    /// Too many requests in flight.
    Busy,
    /// The command could not be started.
    SpawnFailed,
    /// A system call failed.
    Io,
    /// Sent by a newer agent; unknown to this version.
    #[serde(other)]
    Other,
}
