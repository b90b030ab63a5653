//! Everything the benchmark creates lives under one work directory
//! (`WORK/tine-bench-PID/`): daemons' data dirs, loop images and mounts,
//! bare QEMU run dirs. Cleanup is keyed on that directory, so it can be run
//! from the normal path, a panic (drop guard), Ctrl-C/SIGTERM, and — for a
//! run that was SIGKILLed — by the next run (`sweep_stale`):
//! 1. daemons we started: SIGTERM, then SIGKILL;
//! 2. every QEMU process whose command line names the work directory (they
//!    are ours: started by us or by our daemons), by pid: SIGKILL;
//! 3. mounts under the work directory: umount (lazy as a last resort), and
//!    their loop devices detached;
//! 4. the work directory removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

pub const DIR_PREFIX: &str = "tine-bench-";

#[derive(Default)]
struct Registry {
    work: Option<PathBuf>,
    daemons: Vec<u32>,
    done: bool,
}

static REG: Mutex<Registry> = Mutex::new(Registry {
    work: None,
    daemons: Vec::new(),
    done: false,
});

pub fn set_work_dir(dir: &Path) {
    REG.lock().unwrap().work = Some(dir.to_path_buf());
}

pub fn add_daemon(pid: u32) {
    REG.lock().unwrap().daemons.push(pid);
}

pub fn remove_daemon(pid: u32) {
    REG.lock().unwrap().daemons.retain(|p| *p != pid);
}

/// Idempotent: the first call cleans, later calls do nothing.
pub fn cleanup_all() {
    let (work, daemons) = {
        let mut r = match REG.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        if r.done {
            return;
        }
        r.done = true;
        (r.work.clone(), std::mem::take(&mut r.daemons))
    };
    for pid in daemons {
        terminate(pid as i32, Duration::from_secs(10));
    }
    if let Some(work) = work {
        clean_dir(&work);
    }
}

/// Clean what a dead earlier run left in `base` (its owner pid is gone).
pub fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        eprintln!(
            "tine-bench: cleaning up after dead run {pid}: {}",
            e.path().display()
        );
        clean_dir(&e.path());
    }
}

fn clean_dir(work: &Path) {
    let needle = work.to_string_lossy().into_owned();
    // Daemons of a dead run, then all QEMUs naming the work dir.
    let procs = procs_naming(&needle);
    for (pid, comm) in &procs {
        if comm == "tine" {
            terminate(*pid, Duration::from_secs(5));
        }
    }
    let procs = procs_naming(&needle);
    for (pid, comm) in &procs {
        if comm.starts_with("qemu") {
            signal(*pid, Signal::KILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs.iter().any(|(p, _)| pid_alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    unmount_under(work);
    if let Err(e) = std::fs::remove_dir_all(work) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("tine-bench: cannot remove {}: {e}", work.display());
        }
    }
}

/// Unmount every mount under `dir` (deepest first) and detach loop devices
/// whose backing file is under `dir`.
pub fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut targets: Vec<(String, PathBuf)> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (src, tgt) = (f.next()?, f.next()?);
            let tgt = PathBuf::from(tgt.replace("\\040", " "));
            tgt.starts_with(dir).then(|| (src.to_string(), tgt))
        })
        .collect();
    targets.sort_by_key(|(_, t)| std::cmp::Reverse(t.components().count()));
    for (_, t) in &targets {
        umount(t);
    }
    detach_loops_under(dir);
}

pub fn umount(target: &Path) {
    for attempt in 0..20 {
        if Command::new("umount")
            .arg(target)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
    }
    eprintln!("tine-bench: {} busy; lazy unmount", target.display());
    let _ = Command::new("umount").arg("-l").arg(target).output();
}

pub fn detach_loops_under(dir: &Path) {
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "-O", "NAME,BACK-FILE"])
        .output();
    let Ok(out) = out else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(back)) = (f.next(), f.next()) else {
            continue;
        };
        if Path::new(back).starts_with(dir) {
            let _ = Command::new("losetup").arg("-d").arg(dev).output();
        }
    }
}

/// (pid, comm) of processes whose command line contains `needle`.
fn procs_naming(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if !cmd.contains(needle) {
                return None;
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, comm.trim().to_string()))
        })
        .collect()
}

fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = kill_process(p, sig);
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn terminate(pid: i32, grace: Duration) {
    if !pid_alive(pid) {
        return;
    }
    signal(pid, Signal::TERM);
    let deadline = Instant::now() + grace;
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pid_alive(pid) {
        signal(pid, Signal::KILL);
    }
}

/// Alive and not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
