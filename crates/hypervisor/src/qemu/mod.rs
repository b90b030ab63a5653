//! QEMU backend: `microvm` machine, RAM in a `memory-backend-file`, QMP on a
//! Unix socket, daemonized process (so VMs outlive the tine daemon).
//!
//! Device state is saved with migration to a file and `x-ignore-shared`, so
//! RAM stays in the memory file and only ~50 KB of device state is written.

mod cmdline;
mod qmp;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rustix::process::{kill_process, Pid, Signal};
use serde_json::json;
use tracing::{debug, warn};

pub use cmdline::{AGENT_PORT_NAME, AGENT_SOCKET, CONSOLE_LOG, PID_FILE, QEMU_LOG, QMP_SOCKET};
use qmp::Qmp;

use crate::{
    process_alive, wait_exit, Boot, HvError, Hypervisor, RamSave, SaveReport, VmEndpoints,
    VmProcess, VmSpec,
};

/// Longest path a Unix socket address holds (sun_path minus the NUL).
const SUN_PATH_MAX: usize = 107;
const START_TIMEOUT: Duration = Duration::from_secs(30);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Qemu {
    binary: PathBuf,
}

impl Qemu {
    pub fn new(binary: impl Into<PathBuf>) -> Qemu {
        Qemu {
            binary: binary.into(),
        }
    }

    fn qmp_path(run_dir: &Path) -> PathBuf {
        run_dir.join(QMP_SOCKET)
    }

    async fn qmp(run_dir: &Path) -> Result<Qmp, HvError> {
        Qmp::connect(&Self::qmp_path(run_dir)).await
    }

    fn find_binary(&self) -> Option<PathBuf> {
        if self.binary.components().count() > 1 {
            return self.binary.is_file().then(|| self.binary.clone());
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(&self.binary))
            .find(|c| c.is_file())
    }

    async fn incoming(
        run_dir: &Path,
        state_file: &Path,
        ram_in_state: bool,
    ) -> Result<(), HvError> {
        let t0 = Instant::now();
        let mut q = Qmp::connect_retry(&Self::qmp_path(run_dir), START_TIMEOUT).await?;
        let connected = t0.elapsed();
        // Must match the save: QEMU refuses a stream whose capability differs.
        set_ignore_shared(&mut q, !ram_in_state).await?;
        let uri = format!("file:{}", state_file.display());
        q.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await?;
        let started = t0.elapsed();
        wait_migration(&mut q, "incoming migration").await?;
        let loaded = t0.elapsed();
        q.execute("cont", None).await?;
        debug!(?connected, ?started, ?loaded, total = ?t0.elapsed(), "incoming state loaded");
        Ok(())
    }
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu::new("qemu-system-x86_64")
    }
}

/// Set explicitly every time: capabilities persist in a QEMU process (an
/// incoming load sets it on; a later save may need it off).
async fn set_ignore_shared(q: &mut Qmp, on: bool) -> Result<(), HvError> {
    let caps = json!({ "capabilities": [ { "capability": "x-ignore-shared", "state": on } ] });
    q.execute("migrate-set-capabilities", Some(caps)).await?;
    Ok(())
}

async fn wait_migration(q: &mut Qmp, what: &'static str) -> Result<(), HvError> {
    let start = Instant::now();
    // A device-state load takes a few ms: poll finely at first (a QMP
    // round trip is ~0.1 ms), then back off for long RAM-carrying streams.
    let mut nap = Duration::from_micros(100);
    loop {
        let info = q.execute("query-migrate", None).await?;
        match info.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let msg = info
                    .get("error-desc")
                    .and_then(|s| s.as_str())
                    .unwrap_or("migration failed")
                    .to_string();
                return Err(HvError::Qmp {
                    command: "migrate".into(),
                    message: msg,
                });
            }
            _ => {}
        }
        if start.elapsed() > MIGRATE_TIMEOUT {
            return Err(HvError::Timeout(MIGRATE_TIMEOUT, what));
        }
        tokio::time::sleep(nap).await;
        if start.elapsed() > Duration::from_millis(20) {
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }
}

fn check_socket_len(path: &Path) -> Result<(), HvError> {
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(HvError::SocketPathTooLong {
            path: path.into(),
            len,
        });
    }
    Ok(())
}

fn remove_stale(path: &Path) -> Result<(), HvError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HvError::io(path, e)),
    }
}

/// What QEMU wrote to its log since `from`, trimmed, at most 4 KiB.
fn read_from(path: &Path, from: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let tail = &bytes[(from as usize).min(bytes.len())..];
    let text = String::from_utf8_lossy(&tail[tail.len().saturating_sub(4096)..]);
    text.trim().to_string()
}

/// SIGKILL a process if (and only if) it is still the recorded one.
pub fn kill(proc: &VmProcess) {
    if !process_alive(proc) {
        return;
    }
    if let Some(pid) = Pid::from_raw(proc.pid) {
        if let Err(e) = kill_process(pid, Signal::KILL) {
            warn!(pid = proc.pid, error = %e, "kill failed");
        }
    }
}

#[async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn check(&self) -> Result<(), HvError> {
        match self.find_binary() {
            Some(_) => Ok(()),
            None => Err(HvError::BinaryMissing {
                binary: self.binary.display().to_string(),
            }),
        }
    }

    async fn prestart(&self, spec: &VmSpec, boot: &Boot) -> Result<VmProcess, HvError> {
        let binary = self.find_binary().ok_or_else(|| HvError::BinaryMissing {
            binary: self.binary.display().to_string(),
        })?;
        let run = &spec.run_dir;
        for name in [QMP_SOCKET, AGENT_SOCKET] {
            check_socket_len(&run.join(name))?;
            remove_stale(&run.join(name))?;
        }
        remove_stale(&run.join(PID_FILE))?;
        let args = cmdline::build(spec, boot);
        debug!(?args, "starting qemu");
        // With -daemonize the launcher exits once the VM is set up, reporting
        // start-up errors on stderr and leaving the VM outside our process
        // tree. stderr goes to a file (QEMU keeps it open after daemonizing
        // because -D is given), so later errors are kept too.
        let log_path = run.join(QEMU_LOG);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| HvError::io(&log_path, e))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let status = tokio::process::Command::new(&binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| HvError::io(&binary, e))?;
        if !status.success() {
            let mut said = read_from(&log_path, log_start);
            if said.is_empty() {
                said = format!("QEMU ended ({status}) without saying why");
            }
            return Err(HvError::StartFailed { stderr: said });
        }
        let pid_path = run.join(PID_FILE);
        let pid_text = std::fs::read_to_string(&pid_path).map_err(|e| HvError::io(&pid_path, e))?;
        let pid: i32 = pid_text.trim().parse().map_err(|_| HvError::StartFailed {
            stderr: format!("bad pid file: {pid_text:?}"),
        })?;
        VmProcess::of_pid(pid).map_err(|_| HvError::StartFailed {
            stderr: "QEMU exited right after start".into(),
        })
    }

    async fn load(&self, run_dir: &Path, proc: &VmProcess, boot: &Boot) -> Result<(), HvError> {
        let Boot::Restore {
            state_file,
            ram_in_state,
            ..
        } = boot
        else {
            return Ok(());
        };
        let log_path = run_dir.join(QEMU_LOG);
        let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        if let Err(e) = Self::incoming(run_dir, state_file, *ram_in_state).await {
            kill(proc);
            // Give QEMU a moment to write why it died.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let log = read_from(&log_path, log_start);
            return Err(match e {
                HvError::QmpProtocol(m) if !log.is_empty() => HvError::StartFailed {
                    stderr: format!("{m}; QEMU said: {log}"),
                },
                e => e,
            });
        }
        Ok(())
    }

    fn endpoints(&self, run_dir: &Path) -> VmEndpoints {
        VmEndpoints {
            agent_socket: run_dir.join(AGENT_SOCKET),
            console_log: run_dir.join(CONSOLE_LOG),
            hypervisor_log: run_dir.join(QEMU_LOG),
        }
    }

    async fn pause(&self, run_dir: &Path) -> Result<(), HvError> {
        Self::qmp(run_dir).await?.execute("stop", None).await?;
        Ok(())
    }

    async fn resume(&self, run_dir: &Path) -> Result<(), HvError> {
        Self::qmp(run_dir).await?.execute("cont", None).await?;
        Ok(())
    }

    async fn save_state(
        &self,
        run_dir: &Path,
        state_file: &Path,
        ram: RamSave,
    ) -> Result<SaveReport, HvError> {
        let mut q = Self::qmp(run_dir).await?;
        let t0 = Instant::now();
        let status = q.execute("query-status", None).await?;
        if status.get("status").and_then(|s| s.as_str()) == Some("postmigrate") {
            // A paused VM saved before: QEMU refuses to migrate it again
            // until its vCPUs have run, so let them run for an instant.
            q.execute("cont", None).await?;
        }
        q.execute("stop", None).await?;
        let pause_ms = t0.elapsed().as_secs_f64() * 1e3;
        set_ignore_shared(&mut q, ram == RamSave::InMemoryFile).await?;
        remove_stale(state_file)?;
        let uri = format!("file:{}", state_file.display());
        let t1 = Instant::now();
        q.execute("migrate", Some(json!({ "uri": uri }))).await?;
        wait_migration(&mut q, "device state save").await?;
        let save_ms = t1.elapsed().as_secs_f64() * 1e3;
        let state_bytes = std::fs::metadata(state_file).map(|m| m.len()).unwrap_or(0);
        Ok(SaveReport {
            state_bytes,
            pause_ms,
            save_ms,
        })
    }

    fn find_process(&self, run_dir: &Path) -> Option<VmProcess> {
        let text = std::fs::read_to_string(run_dir.join(PID_FILE)).ok()?;
        let proc = VmProcess::of_pid(text.trim().parse().ok()?).ok()?;
        // A reused pid is some other process: it must name this directory.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", proc.pid)).ok()?;
        let pid_file = run_dir.join(PID_FILE);
        let named = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == pid_file.as_os_str().as_encoded_bytes());
        named.then_some(proc)
    }

    async fn vcpus_running(&self, run_dir: &Path) -> Result<bool, HvError> {
        let status = Self::qmp(run_dir)
            .await?
            .execute("query-status", None)
            .await?;
        Ok(status
            .get("running")
            .and_then(|r| r.as_bool())
            .unwrap_or(false))
    }

    async fn stop(&self, run_dir: &Path, proc: &VmProcess, grace: Duration) -> Result<(), HvError> {
        if !process_alive(proc) {
            return Ok(());
        }
        // `quit` flushes and closes block devices before exiting.
        if let Ok(mut q) = Self::qmp(run_dir).await {
            let _ = q.execute("quit", None).await;
        }
        if tokio::time::timeout(grace, wait_exit(*proc)).await.is_err() {
            warn!(pid = proc.pid, "QEMU did not exit after quit; killing");
            kill(proc);
            let _ = tokio::time::timeout(Duration::from_secs(5), wait_exit(*proc)).await;
        }
        Ok(())
    }
}
