//! VM process identity. A pid alone is not an identity (pids are reused),
//! so records carry the process start time from /proc/PID/stat as well.

use std::io;
use std::os::fd::OwnedFd;

use rustix::process::{kill_process, pidfd_open, Pid, PidfdFlags, Signal};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmProcess {
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
}

impl VmProcess {
    /// Identify a live pid now.
    pub fn of_pid(pid: i32) -> io::Result<VmProcess> {
        Ok(VmProcess {
            pid,
            start_time: process_start_time(pid)?,
        })
    }
}

/// Start time of a process, or an error if it does not exist.
pub fn process_start_time(pid: i32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces and parens; fields after
    // the last ')' are space-separated, field 3 (state) first.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("");
    if state == "Z" || state == "X" {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "process is a zombie",
        ));
    }
    fields
        .get(19)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))
}

/// True if the recorded process still exists and is the same process.
pub fn process_alive(proc: &VmProcess) -> bool {
    process_start_time(proc.pid).is_ok_and(|t| t == proc.start_time)
}

/// SIGKILL a VM process if (and only if) it is still the recorded one. Every
/// backend's VM is a process, so this is not a backend's business.
pub fn kill(proc: &VmProcess) {
    if !process_alive(proc) {
        return;
    }
    if let Some(pid) = Pid::from_raw(proc.pid) {
        if let Err(e) = kill_process(pid, Signal::KILL) {
            tracing::warn!(pid = proc.pid, error = %e, "kill failed");
        }
    }
}

/// Resolve when the process exits. Works for processes that are not our
/// children (QEMU outlives a daemon restart), via a pidfd.
pub async fn wait_exit(proc: VmProcess) -> io::Result<()> {
    let Some(pid) = Pid::from_raw(proc.pid) else {
        return Ok(());
    };
    let fd: OwnedFd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // The pid may have been reused between recording and opening the pidfd.
    if !process_alive(&proc) {
        return Ok(());
    }
    // SAFETY: `fd` is an owned pidfd that the AsyncFd takes ownership of; it
    // is closed only when the AsyncFd drops, after deregistration.
    let afd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
    let _ready = afd.readable().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_identified() {
        let me = VmProcess::of_pid(std::process::id() as i32).unwrap();
        assert!(process_alive(&me));
    }

    #[test]
    fn different_start_time_is_not_the_same_process() {
        let me = VmProcess::of_pid(std::process::id() as i32).unwrap();
        let other = VmProcess {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!process_alive(&other));
    }

    #[tokio::test]
    async fn wait_exit_resolves_when_a_process_dies() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let proc = VmProcess::of_pid(child.id() as i32).unwrap();
        let waiter = tokio::spawn(wait_exit(proc));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished());
        child.wait().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
