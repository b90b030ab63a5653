//! The protocol between the tine host and `tine-agent`, the agent inside every guest.
//!
//! # Channel
//! A virtio-serial port named [`PORT_NAME`]. On the host it is a QEMU chardev Unix socket
//! (`-device virtserialport,chardev=agent,name=tine.agent`); in the guest it is the
//! `/dev/vportNpM` whose `/sys/class/virtio-ports/*/name` is `tine.agent`.
//!
//! # Framing
//! Newline-delimited JSON, one object per line, at most [`MAX_LINE`] bytes including the
//! newline. Binary data is base64 (standard alphabet, padded). Empty lines are ignored:
//! the host writes a bare `\n` right after connecting so that a partial line left by an
//! earlier session is terminated and discarded, and the agent does the same before the
//! first frame of each new session. A line that does not parse is discarded; the agent
//! answers it with an `error` frame (with the request's `id` when it could read one).
//! A line longer than [`MAX_LINE`] is discarded by the agent (with an error frame) and is
//! fatal to the host's connection: the host treats the guest as untrusted.
//!
//! # Requests and replies
//! Every request ([`Request`]) carries an `id` chosen by the host; every reply or event
//! ([`Response`]) echoes it. Ids must not repeat within one agent's lifetime, across
//! reconnects too, because frames of an earlier session may still arrive after a
//! reconnect: the client starts from a random base. The host ignores frames whose id it
//! is not waiting for.
//!
//! | request (`op`)  | replies (`type`)                                    |
//! |-----------------|-----------------------------------------------------|
//! | `ping`          | `pong`                                              |
//! | `exec`          | any number of `stdout` / `stderr`, then one `exit`  |
//! | `set_time`      | `ok`                                                |
//! | `set_identity`  | `ok`                                                |
//! | `add_entropy`   | `ok`                                                |
//! | `read_file`     | `file`                                              |
//! | `write_file`    | `ok`                                                |
//! | `sync`          | `ok`                                                |
//! | `configure_network` | `ok`                                            |
//! | `shutdown`      | `ok`, then the guest powers off                     |
//!
//! Any request may instead get one `error` frame. Example session:
//!
//! ```text
//! > {"id":7,"op":"exec","argv":["sh","-c","echo hi; exit 3"]}
//! < {"id":7,"type":"stdout","data":"aGkK"}
//! < {"id":7,"type":"exit","code":3,"signal":null,"timed_out":false}
//! ```
//!
//! When the host disconnects, the agent keeps running commands but drops their remaining
//! output; a new connection is a new session.

mod b64;
mod frame;
mod msg;

#[cfg(feature = "client")]
pub mod client;

pub use frame::{
    encode, parse_request, parse_response, LineSplitter, Oversized, ParseError, ReplyDecoder,
};
pub use msg::{
    ErrorCode, ExecRequest, ExitStatus, NetworkConfig, Op, Pong, Reply, Request, Response,
};

#[cfg(feature = "client")]
pub use client::{AgentClient, AgentError, ExecEvent, ExecOutput, ExecStream};

/// Version of this protocol, reported in `pong`. Bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Name of the virtio-serial port the agent listens on.
pub const PORT_NAME: &str = "tine.agent";

/// Longest frame either side accepts, newline included.
pub const MAX_LINE: usize = 1 << 20;

/// Largest payload (stdin, file contents) that fits a request line once base64-encoded.
pub const MAX_PAYLOAD: usize = 512 * 1024;

/// Largest `add_entropy` input the agent accepts.
pub const MAX_ENTROPY: usize = 4096;
