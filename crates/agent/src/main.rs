//! tine-agent: the guest side of the tine agent protocol (see `tine-agent-proto`).
//!
//! Started and respawned by the guest's init. Serves the virtio-serial port named
//! `tine.agent` forever; host disconnects are normal and never make it exit.

mod exec;
mod net;
mod ops;
mod port;
mod session;

use std::process::ExitCode;
use std::thread;
use std::time::Duration;

fn main() -> ExitCode {
    let result = port::block_sigio()
        .and_then(|()| port::open(tine_agent_proto::PORT_NAME))
        .and_then(session::serve);
    if let Err(e) = result {
        eprintln!("tine-agent: {e}");
    }
    // init respawns us; do not let that turn into a hot loop.
    thread::sleep(Duration::from_secs(1));
    ExitCode::FAILURE
}
