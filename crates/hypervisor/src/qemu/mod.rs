//! QEMU backend: `microvm` machine, RAM in a `memory-backend-file`, QMP on a
//! Unix socket. QEMU runs in its own process group and outlives the daemon,
//! under its seccomp sandbox, with sockets and files 0600 (`confine.rs`).
//!
//! Device state is saved with migration to a file and `x-ignore-shared`, so
//! RAM stays in the memory file and only ~50 KB of device state is written.

mod cmdline;
mod confine;
mod qmp;

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use tracing::{debug, info, warn};

pub use cmdline::{
    root_drive, AGENT_PORT_NAME, AGENT_SOCKET, CONSOLE_LOG, MACHINE, PID_FILE, QEMU_LOG, QMP_SOCKET,
};
use qmp::Qmp;

use crate::{
    kill, process_alive, wait_exit, Boot, HvError, Hypervisor, MemoryMapping, RamSave, SaveReport,
    VmEndpoints, VmProcess, VmSpec,
};

/// Longest path a Unix socket address holds (sun_path minus the NUL).
const SUN_PATH_MAX: usize = 107;
const START_TIMEOUT: Duration = Duration::from_secs(30);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(600);
/// The name under which a save's open state file is handed to QEMU.
const STATE_FD: &str = "tine-state";

pub struct Qemu {
    binary: PathBuf,
    /// QMP connections of prestarted VMs, by run dir, until `load`.
    parked: Mutex<HashMap<PathBuf, Qmp>>,
    /// QEMU `-d` items (from `TINE_QEMU_LOG`), written to the VM's log.
    log_items: Option<String>,
}

/// Diagnostics only: e.g. `TINE_QEMU_LOG=cpu_reset` puts "Triple fault"
/// and the CPU state of every guest reset into `qemu.log`.
const LOG_ITEMS_ENV: &str = "TINE_QEMU_LOG";

impl Qemu {
    pub fn new(binary: impl Into<PathBuf>) -> Qemu {
        let log_items = std::env::var(LOG_ITEMS_ENV)
            .ok()
            .filter(|items| !items.is_empty() && !items.contains(char::is_whitespace));
        Qemu {
            binary: binary.into(),
            parked: Mutex::new(HashMap::new()),
            log_items,
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

    /// Start QEMU (in its own process group, so a terminal's signals to
    /// the daemon do not reach it) and return once its QMP monitor answers,
    /// i.e. its set-up is done. Start-up errors come from its log.
    async fn launch(
        &self,
        spec: &VmSpec,
        boot: &Boot,
        paused: bool,
    ) -> Result<(VmProcess, Qmp, u64), HvError> {
        let binary = self.find_binary().ok_or_else(|| HvError::BinaryMissing {
            binary: self.binary.display().to_string(),
        })?;
        let run = &spec.run_dir;
        for name in [QMP_SOCKET, AGENT_SOCKET] {
            check_socket_len(&run.join(name))?;
            remove_stale(&run.join(name))?;
        }
        self.parked.lock().expect("parked").remove(run);
        let mut args = cmdline::build(spec, boot, paused);
        if let Some(items) = &self.log_items {
            // To stderr, i.e. qemu.log opened for append (`-D FILE` would
            // truncate it at start, losing earlier runs' lines).
            args.extend(["-d".into(), items.clone()]);
        }
        debug!(?args, "starting qemu");
        let log_path = run.join(QEMU_LOG);
        let log = confine::open_log(&log_path).map_err(|e| HvError::io(&log_path, e))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let out = log.try_clone().map_err(|e| HvError::io(&log_path, e))?;
        let needs_tap = spec.network.is_some();
        // Files QEMU would create are made here, so it needs no right to
        // create any (see `confine::fence`).
        for name in [CONSOLE_LOG, PID_FILE] {
            confine::create_private(&run.join(name))
                .map_err(|e| HvError::io(&run.join(name), e))?;
        }
        let fence = confine::fence(&grants(spec, boot, &binary))?;
        let mut cmd = tokio::process::Command::new(&binary);
        confine::restrict(&mut cmd, needs_tap, fence);
        let mut child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| HvError::io(&binary, e))?;
        let pid = child.id().map(|p| p as i32);
        let qmp_path = Self::qmp_path(run);
        let started = Instant::now();
        let q = loop {
            if let Ok(q) = Qmp::connect(&qmp_path).await {
                break Ok(q);
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut said = read_from(&log_path, log_start);
                if said.is_empty() {
                    said = format!("QEMU ended ({status}) without saying why");
                }
                break Err(HvError::StartFailed { stderr: said });
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.start_kill();
                break Err(HvError::Timeout(START_TIMEOUT, "QEMU to start"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        // Reap it when it exits (the daemon is its parent until it restarts),
        // and say how it ended: a signal leaves nothing in QEMU's own log.
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                info!(pid = ?pid, %status, "QEMU exited");
            }
        });
        let q = q?;
        let proc =
            pid.and_then(|p| VmProcess::of_pid(p).ok())
                .ok_or_else(|| HvError::StartFailed {
                    stderr: format!(
                        "QEMU exited right after start: {}",
                        read_from(&log_path, log_start)
                    ),
                })?;
        Ok((proc, q, log_start))
    }
}

/// What a VM's QEMU may open (besides system files): see `confine`.
fn grants<'a>(spec: &'a VmSpec, boot: &'a Boot, binary: &'a Path) -> confine::Grants<'a> {
    let run = spec.run_dir.as_path();
    let mut read = vec![
        binary,
        spec.kernel.as_path(),
        spec.initrd.as_path(),
        // The root disk's read-only backing image lives beside the kernel.
        spec.kernel.parent().unwrap_or(&spec.kernel),
    ];
    let mut write = vec![spec.root_disk.as_path()];
    let logs = [CONSOLE_LOG, QEMU_LOG, PID_FILE];
    match boot {
        Boot::Restore {
            state_file,
            mapping,
            ..
        } => {
            read.push(state_file);
            match mapping {
                MemoryMapping::Private => read.push(&spec.memory_file),
                MemoryMapping::Shared => write.push(&spec.memory_file),
            }
        }
        Boot::Fresh => write.push(&spec.memory_file),
    }
    confine::Grants {
        run_dir: run,
        read,
        write,
        logs: logs.map(|l| run.join(l)),
        tap: spec.network.is_some(),
    }
}

/// Start loading a restore's saved state into a QEMU waiting for it.
async fn begin_load(q: &mut Qmp, boot: &Boot) -> Result<(), HvError> {
    let Boot::Restore {
        state_file,
        ram_in_state,
        ..
    } = boot
    else {
        return Ok(());
    };
    // Must match the save: QEMU refuses a stream whose capability differs.
    set_migration_caps(q, !ram_in_state).await?;
    let uri = format!("file:{}", state_file.display());
    q.execute("migrate-incoming", Some(json!({ "uri": uri })))
        .await?;
    Ok(())
}

fn log_len(run_dir: &Path) -> u64 {
    std::fs::metadata(run_dir.join(QEMU_LOG))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// A VM whose load or resume failed: kill it, and explain with its log.
async fn died(run_dir: &Path, proc: &VmProcess, log_start: u64, e: HvError) -> HvError {
    kill(proc);
    // Give QEMU a moment to write why it failed.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let log = read_from(&run_dir.join(QEMU_LOG), log_start);
    match e {
        HvError::QmpProtocol(m) | HvError::Qmp { message: m, .. } if !log.is_empty() => {
            HvError::StartFailed {
                stderr: format!("{m}; QEMU said: {log}"),
            }
        }
        e => e,
    }
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu::new("qemu-system-x86_64")
    }
}

/// Before every migration: `x-ignore-shared` is set explicitly each time
/// (capabilities persist in a QEMU process: an incoming load sets it on, a
/// later save may need it off); `events` makes QEMU announce migration
/// states, so a load's wait needs no polling.
async fn set_migration_caps(q: &mut Qmp, ignore_shared: bool) -> Result<(), HvError> {
    let caps = json!({ "capabilities": [
        { "capability": "x-ignore-shared", "state": ignore_shared },
        { "capability": "events", "state": true },
    ] });
    q.execute("migrate-set-capabilities", Some(caps)).await?;
    // A migration starts next: earlier ones' announcements are stale.
    q.drop_events("MIGRATION");
    Ok(())
}

/// With `-S`, QEMU (10.0+) leaves the disk inactive after a load until
/// `cont`, which then reopens it (qcow2 header and tables re-read): done
/// here, a claim's `cont` only starts the vCPUs. QEMU before 10.0 has no
/// such command and activates at the load's end anyway.
async fn activate_disks(q: &mut Qmp) -> Result<(), HvError> {
    match q
        .execute("blockdev-set-active", Some(json!({ "active": true })))
        .await
    {
        Err(HvError::Qmp { message, .. }) if message.contains("not found") => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Wait for an incoming load. QEMU announces each migration state (the
/// `events` capability) and sends "completed" from the main loop once the
/// load is done: waiting for that instead of polling keeps query-migrate
/// off the main loop while it loads. query-migrate still gives a failure's
/// reason, and runs every 20 ms without an event should one be missed.
async fn wait_incoming(q: &mut Qmp) -> Result<(), HvError> {
    let start = Instant::now();
    loop {
        if let Some(ev) = q.wait_event("MIGRATION", Duration::from_millis(20)).await? {
            match ev.pointer("/data/status").and_then(|s| s.as_str()) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {}
                // setup, active, …: keep waiting.
                _ => continue,
            }
        }
        if migration_done(q).await? {
            return Ok(());
        }
        if start.elapsed() > MIGRATE_TIMEOUT {
            return Err(HvError::Timeout(MIGRATE_TIMEOUT, "incoming migration"));
        }
    }
}

/// Wait for a save by polling. Not by its event: a saving QEMU announces
/// "completed" from its migration thread before the main loop has
/// finished the migration, and a `cont` then is refused ("Migration is not
/// finalized yet").
async fn wait_migration(q: &mut Qmp, what: &'static str) -> Result<(), HvError> {
    let start = Instant::now();
    // A device-state save takes a few ms: poll finely at first (a QMP
    // round trip is ~0.1 ms), then back off for long RAM-carrying streams.
    let mut nap = Duration::from_micros(100);
    loop {
        if migration_done(q).await? {
            return Ok(());
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

/// query-migrate: done, still going, or the failure's reason.
async fn migration_done(q: &mut Qmp) -> Result<bool, HvError> {
    let info = q.execute("query-migrate", None).await?;
    match info.get("status").and_then(|s| s.as_str()) {
        Some("completed") => Ok(true),
        Some("failed") | Some("cancelled") => Err(HvError::Qmp {
            command: "migrate".into(),
            message: info
                .get("error-desc")
                .and_then(|s| s.as_str())
                .unwrap_or("migration failed")
                .to_string(),
        }),
        _ => Ok(false),
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

    async fn start(&self, spec: &VmSpec, boot: Boot) -> Result<VmProcess, HvError> {
        let (proc, mut q, log_start) = self.launch(spec, &boot, false).await?;
        let loaded = async {
            begin_load(&mut q, &boot).await?;
            if matches!(boot, Boot::Restore { .. }) {
                wait_incoming(&mut q).await?;
                // The saved run state is "paused" (saves stop the VM first),
                // and a load restores it: resume explicitly.
                q.execute("cont", None).await?;
            }
            Ok(())
        };
        match loaded.await {
            Ok(()) => Ok(proc),
            Err(e) => Err(died(&spec.run_dir, &proc, log_start, e).await),
        }
    }

    async fn prestart(&self, spec: &VmSpec, boot: &Boot) -> Result<VmProcess, HvError> {
        let (proc, mut q, log_start) = self.launch(spec, boot, true).await?;
        // Loaded before it is handed back (no one waits on a prestart), so
        // `load` is a single `cont`.
        let loaded = async {
            begin_load(&mut q, boot).await?;
            if matches!(boot, Boot::Restore { .. }) {
                wait_incoming(&mut q).await?;
                activate_disks(&mut q).await?;
            }
            Ok(())
        };
        if let Err(e) = loaded.await {
            return Err(died(&spec.run_dir, &proc, log_start, e).await);
        }
        // Kept open for `load`: a claim is then one command on a live
        // connection, no connect or greeting in the fork's path.
        self.parked
            .lock()
            .expect("parked")
            .insert(spec.run_dir.clone(), q);
        Ok(proc)
    }

    async fn load(&self, run_dir: &Path, proc: &VmProcess, boot: &Boot) -> Result<(), HvError> {
        if !matches!(boot, Boot::Restore { .. }) {
            return Ok(());
        }
        let log_start = log_len(run_dir);
        let kept = self.parked.lock().expect("parked").remove(run_dir);
        let resumed = async {
            let mut q = match kept {
                // Kept by `prestart`, which returned once the load was done.
                Some(q) => q,
                None => {
                    let mut q = Self::qmp(run_dir).await?;
                    wait_incoming(&mut q).await?;
                    q
                }
            };
            q.execute("cont", None).await?;
            Ok(())
        }
        .await;
        match resumed {
            Ok(()) => Ok(()),
            Err(e) => Err(died(run_dir, proc, log_start, e).await),
        }
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
        saving: &(dyn Fn() + Sync),
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
        set_migration_caps(&mut q, ram == RamSave::InMemoryFile).await?;
        remove_stale(state_file)?;
        // QEMU may create no file (Landlock): it writes into ours.
        let file = confine::create_private(state_file).map_err(|e| HvError::io(state_file, e))?;
        let t1 = Instant::now();
        q.send_fd(STATE_FD, file.as_fd()).await?;
        drop(file);
        let uri = format!("fd:{STATE_FD}");
        q.execute("migrate", Some(json!({ "uri": uri }))).await?;
        saving();
        wait_migration(&mut q, "device state save").await?;
        let save_ms = t1.elapsed().as_secs_f64() * 1e3;
        let state_bytes = std::fs::metadata(state_file).map(|m| m.len()).unwrap_or(0);
        Ok(SaveReport {
            state_bytes,
            pause_ms,
            save_ms,
        })
    }

    async fn cancel_save(&self, run_dir: &Path) -> Result<(), HvError> {
        let mut q = Self::qmp(run_dir).await?;
        let start = Instant::now();
        let mut asked = false;
        loop {
            let info = q.execute("query-migrate", None).await?;
            match info.get("status").and_then(|s| s.as_str()) {
                // Completed: the VM is in "postmigrate", which `cont` leaves.
                None | Some("none" | "completed" | "failed" | "cancelled") => return Ok(()),
                // Resumed while still saving, QEMU would stop the vCPUs
                // again when the save completes.
                _ if !asked => {
                    q.execute("migrate_cancel", None).await?;
                    asked = true;
                }
                _ => {}
            }
            if start.elapsed() > MIGRATE_TIMEOUT {
                return Err(HvError::Timeout(MIGRATE_TIMEOUT, "a save to be cancelled"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
        // A prestarted VM's monitor is held open here (QMP serves one client).
        let kept = self.parked.lock().expect("parked").remove(run_dir);
        let q = match kept {
            Some(q) => Ok(q),
            None => Self::qmp(run_dir).await,
        };
        if let Ok(mut q) = q {
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
