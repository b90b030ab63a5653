//! Reading requests off the port and writing replies back, session by session.
//!
//! A session is the time between a host connecting and the driver reporting EOF. Frames
//! are tagged with the session they belong to; once a session ends, its remaining frames
//! (output of commands still running) are dropped instead of being sent to the next host.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tine_agent_proto::{
    encode, parse_request, ErrorCode, LineSplitter, Op, Reply, Request, Response, MAX_LINE,
};

use crate::ops::{self, Failure};
use crate::{exec, port};

/// Requests handled at once; more get `busy`.
const MAX_IN_FLIGHT: usize = 256;

/// Stack for request threads: they only shuffle buffers.
pub const THREAD_STACK: usize = 256 * 1024;

/// The write side of the port, shared by all request threads.
pub struct Out {
    port: Mutex<Writer>,
    session: AtomicU64,
    in_flight: AtomicUsize,
}

struct Writer {
    file: File,
    /// Session of the last frame written; a new session starts with a bare newline.
    last_session: u64,
}

impl Out {
    pub fn new(file: File) -> Self {
        Out {
            port: Mutex::new(Writer {
                file,
                last_session: 0,
            }),
            session: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn session(&self) -> u64 {
        self.session.load(Ordering::SeqCst)
    }

    fn end_session(&self) {
        self.session.fetch_add(1, Ordering::SeqCst);
    }

    /// Send a frame if `session` is still current. Returns false once it is not (or the
    /// port failed), so callers can stop producing. Blocks while the host is not reading.
    pub fn send(&self, session: u64, id: Option<u64>, reply: Reply) -> bool {
        let mut line = encode(&Response { id, reply });
        if line.len() > MAX_LINE {
            line = encode(&Response {
                id,
                reply: failure_reply(too_large("reply")),
            });
        }
        let mut w = self.port.lock().unwrap_or_else(|p| p.into_inner());
        if session != self.session() {
            return false;
        }
        if w.last_session != session {
            // Ends a frame cut short when the previous host went away.
            if w.file.write_all(b"\n").is_err() {
                return false;
            }
            w.last_session = session;
        }
        match w.file.write_all(&line) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("tine-agent: write to port failed: {e}");
                false
            }
        }
    }
}

/// Serve requests forever.
pub fn serve(mut port: File) -> io::Result<()> {
    let out = Arc::new(Out::new(port.try_clone()?));
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut buf = vec![0u8; 64 * 1024];
    let mut connected = false;
    loop {
        match port.read(&mut buf) {
            Ok(0) => {
                // No host: the previous one (if any) is gone. Sleep until one connects.
                if connected {
                    connected = false;
                    out.end_session();
                    splitter = LineSplitter::new(MAX_LINE);
                }
                port::wait_sigio(Duration::from_secs(1));
            }
            Ok(n) => {
                connected = true;
                let session = out.session();
                splitter.push(&buf[..n], |line| handle_line(&out, session, line.ok()));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("tine-agent: read from port failed: {e}");
                thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// `None` is a line that went over the size limit.
fn handle_line(out: &Arc<Out>, session: u64, line: Option<&[u8]>) {
    let req = match line.map(parse_request) {
        None => return reply(out, session, None, Err(too_large("request line"))),
        Some(Err(e)) => {
            let failure = Failure {
                code: e.code,
                message: e.message,
            };
            return reply(out, session, e.id, Err(failure));
        }
        Some(Ok(req)) => req,
    };
    dispatch(out, session, req);
}

fn dispatch(out: &Arc<Out>, session: u64, Request { id, op }: Request) {
    // Quick answers inline; anything that can block or take long gets a thread.
    match op {
        Op::Ping => reply(out, session, Some(id), ops::ping()),
        Op::SetTime { unix_nanos } => reply(out, session, Some(id), ops::set_time(unix_nanos)),
        Op::SetIdentity {
            hostname,
            machine_id,
        } => {
            let result = ops::set_identity(hostname.as_deref(), machine_id.as_deref());
            reply(out, session, Some(id), result)
        }
        Op::AddEntropy { bytes } => reply(out, session, Some(id), ops::add_entropy(&bytes)),
        op => spawn_request(out, session, id, op),
    }
}

fn spawn_request(out: &Arc<Out>, session: u64, id: u64, op: Op) {
    if out.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
        out.in_flight.fetch_sub(1, Ordering::SeqCst);
        let busy = Failure {
            code: ErrorCode::Busy,
            message: "too many requests".into(),
        };
        return reply(out, session, Some(id), Err(busy));
    }
    let slot = InFlight(out.clone());
    let spawned = thread::Builder::new()
        .stack_size(THREAD_STACK)
        .spawn(move || run_request(&slot.0, session, id, op));
    // On failure the closure, and with it the slot, is already dropped.
    if let Err(e) = spawned {
        reply(out, session, Some(id), Err(Failure::io("spawn thread", &e)));
    }
}

/// One of the `MAX_IN_FLIGHT` slots; freed on drop, so also when a request panics.
struct InFlight(Arc<Out>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn run_request(out: &Arc<Out>, session: u64, id: u64, op: Op) {
    match op {
        Op::Exec(req) => exec::run(out, session, id, req),
        Op::ReadFile { path } => reply(out, session, Some(id), ops::read_file(&path)),
        Op::WriteFile { path, data, mode } => {
            reply(out, session, Some(id), ops::write_file(&path, &data, mode))
        }
        Op::Sync => reply(out, session, Some(id), ops::sync()),
        Op::ConfigureNetwork(cfg) => reply(out, session, Some(id), crate::net::configure(&cfg)),
        Op::Shutdown => {
            let synced = ops::sync();
            let power_off = synced.is_ok();
            reply(out, session, Some(id), synced);
            if power_off {
                ops::power_off();
            }
        }
        // Answered inline by `dispatch`.
        Op::Ping | Op::SetTime { .. } | Op::SetIdentity { .. } | Op::AddEntropy { .. } => {}
    }
}

pub fn reply(out: &Out, session: u64, id: Option<u64>, result: Result<Reply, Failure>) {
    let reply = result.unwrap_or_else(failure_reply);
    out.send(session, id, reply);
}

fn failure_reply(f: Failure) -> Reply {
    Reply::Error {
        code: f.code,
        message: f.message,
    }
}

fn too_large(what: &str) -> Failure {
    Failure {
        code: ErrorCode::TooLarge,
        message: format!("{what} exceeds {MAX_LINE} bytes"),
    }
}
