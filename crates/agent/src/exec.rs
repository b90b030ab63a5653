//! `exec`: run a command, stream its output, report how it ended.
//!
//! Threads per command: this one waits for the child (and enforces the timeout through a
//! pidfd), one per output pipe, and one feeding stdin if there is any. The command gets
//! its own process group so a timeout kills everything it started in that group.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{kill_process_group, pidfd_open, Pid, PidfdFlags, Signal};
use rustix::time::Timespec;
use tine_agent_proto::{ErrorCode, ExecRequest, ExitStatus, Reply};

use crate::ops::Failure;
use crate::session::{reply, Out, THREAD_STACK};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Output is sent in frames of at most this many bytes (base64 grows it by a third).
const CHUNK: usize = 32 * 1024;

/// After the command exits, how long to wait for its pipes to close. Background jobs that
/// keep them open would otherwise hold the `exit` back until they end.
const PIPE_GRACE: Duration = Duration::from_secs(1);

pub fn run(out: &Arc<Out>, session: u64, id: u64, req: ExecRequest) {
    let mut child = match spawn(&req) {
        Ok(child) => child,
        Err(f) => return reply(out, session, Some(id), Err(f)),
    };
    if let (Some(data), Some(mut stdin)) = (req.stdin, child.stdin.take()) {
        // A command that never reads its stdin must not block us: write from a thread.
        let _ = thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || stdin.write_all(&data));
    }
    let finished = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel();
    let mut readers = 0;
    if let Some(stdout) = child.stdout.take() {
        readers += spawn_reader(out, session, id, Pipe::Stdout(stdout), &finished, &done_tx);
    }
    if let Some(stderr) = child.stderr.take() {
        readers += spawn_reader(out, session, id, Pipe::Stderr(stderr), &finished, &done_tx);
    }

    let timeout = req.timeout_ms.map(Duration::from_millis);
    let (status, timed_out) = match wait(&mut child, timeout) {
        Ok(r) => r,
        Err(f) => return reply(out, session, Some(id), Err(f)),
    };

    let grace_end = Instant::now() + PIPE_GRACE;
    for _ in 0..readers {
        let left = grace_end.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    // Readers still blocked on a pipe held open by a background job send nothing more.
    finished.store(true, Ordering::SeqCst);
    let exit = ExitStatus {
        code: status.code(),
        signal: status.signal(),
        timed_out,
    };
    out.send(session, Some(id), Reply::Exit(exit));
}

fn spawn(req: &ExecRequest) -> Result<Child, Failure> {
    let Some(program) = req.argv.first() else {
        return Err(Failure::invalid("argv is empty"));
    };
    let cwd = req.cwd.as_deref().unwrap_or("/");
    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..])
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", "/root")
        .envs(&req.env)
        .current_dir(cwd)
        .process_group(0)
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().map_err(|e| Failure {
        code: ErrorCode::SpawnFailed,
        message: format!("cannot run {program:?} in {cwd:?}: {e}"),
    })
}

/// Wait for the child, killing its process group if `timeout` passes first.
fn wait(
    child: &mut Child,
    timeout: Option<Duration>,
) -> Result<(std::process::ExitStatus, bool), Failure> {
    let mut timed_out = false;
    if let Some(timeout) = timeout {
        if !exits_within(child, timeout) {
            timed_out = true;
            // The unreaped child keeps its pid (and so the group id) from being reused.
            let _ = kill_process_group(Pid::from_child(child), Signal::KILL);
        }
    }
    let status = child.wait().map_err(|e| Failure::io("wait", &e))?;
    Ok((status, timed_out))
}

fn exits_within(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    if let Ok(pidfd) = pidfd_open(Pid::from_child(child), PidfdFlags::empty()) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            };
            let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return false,
                Ok(_) => return true,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            }
        }
    }
    // No pidfd (old kernel): poll the child instead.
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

enum Pipe {
    Stdout(ChildStdout),
    Stderr(ChildStderr),
}

/// Returns how many readers were started (0 or 1).
fn spawn_reader(
    out: &Arc<Out>,
    session: u64,
    id: u64,
    pipe: Pipe,
    finished: &Arc<AtomicBool>,
    done: &mpsc::Sender<()>,
) -> usize {
    let (out, finished, done) = (out.clone(), finished.clone(), done.clone());
    let spawned = thread::Builder::new()
        .stack_size(THREAD_STACK)
        .spawn(move || {
            let (mut pipe, is_stdout): (Box<dyn Read>, bool) = match pipe {
                Pipe::Stdout(p) => (Box::new(p), true),
                Pipe::Stderr(p) => (Box::new(p), false),
            };
            let mut buf = vec![0u8; CHUNK];
            // Keep draining after the session ends so the command never blocks on a full pipe.
            let mut live = true;
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if live && !finished.load(Ordering::SeqCst) {
                    let data = buf[..n].to_vec();
                    let frame = if is_stdout {
                        Reply::Stdout { data }
                    } else {
                        Reply::Stderr { data }
                    };
                    live = out.send(session, Some(id), frame);
                }
            }
            let _ = done.send(());
        });
    usize::from(spawned.is_ok())
}
