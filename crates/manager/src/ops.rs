//! Lifecycle operations. Each one: take the slot's op lock, check the
//! transition, act, persist. On failure the record says what is true.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

use tine_hypervisor::{Boot, VmProcess, VmSpec};
use tracing::{info, warn};

use crate::error::{chain, ManagerError};
use crate::image::{self, Image};
use crate::record::{InstanceRecord, SCHEMA};
use crate::state::{check, Op, State};
use crate::{
    agent, memfile, names, now_unix, ExecRequest, InstanceInfo, Manager, RunRequest, Slot,
};

pub(crate) const ROOT_DISK: &str = "overlay.qcow2";
pub(crate) const MEMORY_FILE: &str = "memory";
pub(crate) const STATE_FILE: &str = "vmstate";
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Manager {
    /// Create and boot an instance; returns once the guest agent answers.
    /// On any failure the half-made instance is removed entirely.
    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<InstanceInfo, ManagerError> {
        req.validate()?;
        let memory_mib = req.memory_mib.unwrap_or(crate::DEFAULT_MEMORY_MIB);
        let vcpus = req.vcpus.unwrap_or(1);
        let _ticket = self.admit(crate::admission::Demand {
            what: "run",
            count: 1,
            memory_mib,
            vcpus,
        })?;
        let image_name = req.image.clone().unwrap_or_else(|| "default".into());
        let image = image::load(&self.cfg.images_dir, &image_name)?;
        self.hv.check()?;
        let id = names::new_id();
        let name = match req.name {
            Some(n) => n,
            None => format!("vm-{}", &id[..6]),
        };
        let network = self.network_lease(req.network, &id)?;
        let record = InstanceRecord {
            schema: SCHEMA,
            id: id.clone(),
            name: name.clone(),
            state: State::Created,
            image: image_name,
            memory_mib,
            vcpus,
            accel: req.accel.unwrap_or(self.accel.accel),
            created_at: now_unix(),
            process: None,
            error: None,
            boot_ms: None,
            memory: tine_hypervisor::MemoryMapping::Shared,
            ram_in_state: false,
            parent: None,
            template: None,
            pending_standby: false,
            state_digest: None,
            pooled: false,
            network: network.clone(),
        };
        let slot = match self.reserve(record) {
            Ok(s) => s,
            Err(e) => {
                self.network_release(network.as_ref()).await;
                return Err(e);
            }
        };
        let guard = slot.op.lock().await;
        let result = self.create_and_boot(&slot, &image).await;
        drop(guard);
        match result {
            Ok(()) => Ok(slot.info()),
            Err(e) => {
                warn!(name, error = %chain(&e), "run failed; removing the half-made instance");
                self.discard(&slot).await;
                Err(e)
            }
        }
    }

    /// Insert a new slot under a unique name, with its directory and record.
    pub(crate) fn reserve(&self, record: InstanceRecord) -> Result<Arc<Slot>, ManagerError> {
        let mut slots = self.slots.write().expect("slots");
        if slots
            .values()
            .any(|s| s.rec.lock().expect("rec").name == record.name)
        {
            return Err(ManagerError::AlreadyExists(record.name));
        }
        let dir = self.instance_dir(&record.id);
        create_private_dir(&dir)?;
        record
            .save(&dir)
            .map_err(|e| ManagerError::io(format!("save record in {}", dir.display()), e))?;
        let slot = Arc::new(Slot {
            id: record.id.clone(),
            dir,
            op: tokio::sync::Mutex::new(()),
            files: Default::default(),
            rec: Mutex::new(record),
            agent: agent::AgentSlot::default(),
            console: Default::default(),
        });
        slots.insert(slot.id.clone(), slot.clone());
        Ok(slot)
    }

    pub(crate) async fn create_and_boot(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        image: &Image,
    ) -> Result<(), ManagerError> {
        create_overlay(&image.rootfs, &slot.dir.join(ROOT_DISK)).await?;
        self.boot(slot, image, Boot::Fresh, None, None)
            .await
            .map(|_| ())
    }

    /// Start the VM process (the only caller of `Hypervisor::start`), record
    /// it, wait for the agent, and (after a restore) fix the guest's clock
    /// and, for a fork, make it unique.
    pub(crate) async fn boot(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        image: &Image,
        boot: Boot,
        identity: Option<agent::Identity>,
        until_ready: Option<OwnedSemaphorePermit>,
    ) -> Result<BootTimes, ManagerError> {
        let t0 = Instant::now();
        let rec = slot.record();
        let spec = self.spec(slot, &rec, image);
        memfile::prepare(&spec.memory_file, &boot, rec.memory_mib, &self.metrics)?;
        self.network_prepare(&rec).await?;
        let restoring = matches!(boot, Boot::Restore { .. });
        let start_ms = ms(t0);
        let proc = self.hv.start(&spec, boot).await?;
        // A burst's concurrency slot is held until this fork is ready: on a
        // busy host, forks whose agents and identity calls compete with
        // ever more starting VMs all finish late (measured on 25- and
        // 100-bursts: ready p50 -24..-50%, wall -10..-20% against releasing
        // it once the vCPUs run; BENCHMARKS.md).
        let _slot = until_ready;
        // The VM runs (a restore: state loaded, resumed) but no record names it yet.
        crate::failpoint::hit("vm-started", &rec.name)
            .inspect_err(|_| tine_hypervisor::kill(&proc))?;
        let running_ms = ms(t0);
        let clock = BootClock {
            t0,
            start_ms,
            running_ms,
        };
        self.finish_boot(slot, proc, clock, identity, restoring)
            .await
    }

    /// Everything after the VM's vCPUs run: record the process, watch it,
    /// wait for the agent, clock/identity, commit.
    pub(crate) async fn finish_boot(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        proc: VmProcess,
        clock: BootClock,
        identity: Option<agent::Identity>,
        restoring: bool,
    ) -> Result<BootTimes, ManagerError> {
        let BootClock {
            t0,
            start_ms,
            running_ms,
        } = clock;
        let rec = slot.record();
        // A new instance (run, fork) stays Created until it is ready, so a
        // daemon crash before then leaves nothing that looks finished: the
        // restart kills its VM and removes it.
        let creating = rec.state == State::Created;
        slot.update(|r| {
            if !creating {
                r.state = State::Running;
            }
            r.process = Some(proc);
            r.error = None;
        })?;
        self.watch(slot.clone(), proc);
        let endpoints = self.hv.endpoints(&slot.dir);
        // A VM that dies while booting fails the boot now, not at the timeout.
        let ready = tokio::select! {
            r = agent::wait_ready(&slot.agent, &endpoints.agent_socket, self.cfg.boot_timeout) => {
                r.map_err(|e| format!("guest agent did not answer: {}", chain(&e)))
            }
            Ok(()) = tine_hypervisor::wait_exit(proc) => Err("the VM process exited while the guest was booting".to_string()),
        };
        let agent_ms = ms(t0);
        if let Err(why) = ready {
            let console = console_tail(&endpoints.console_log, 8);
            let hv = console_tail(&endpoints.hypervisor_log, 8);
            return Err(ManagerError::Failed(format!(
                "{why}; last console lines:\n{console}\nlast hypervisor log lines:\n{hv}"
            )));
        }
        // The guest takes its network identity (a fork: its own, not its
        // source's) before it is reported ready. Sent first: the agent runs
        // it on a thread while it answers the identity calls (which wait on
        // the guest's disk).
        let network = self.network_up(slot, &rec);
        if let Some(id) = identity {
            let (network, unique) = tokio::join!(network, agent::make_unique(&slot.agent, &id));
            unique.map_err(|e| self.agent_err(slot, e))?;
            network?;
        } else {
            if restoring {
                if let Err(e) = agent::set_clock(&slot.agent).await {
                    warn!(error = %chain(&e), "could not correct the guest clock");
                }
            }
            network.await?;
        }
        crate::failpoint::hit("boot-ready", &rec.name)?;
        let ready_ms = ms(t0);
        slot.update(|r| {
            r.state = State::Running;
            r.boot_ms = Some(ready_ms);
        })?;
        info!(name = rec.name, running_ms, ready_ms, "instance running");
        Ok(BootTimes {
            start_ms,
            running_ms,
            agent_ms,
            ready_ms,
        })
    }

    pub(crate) fn spec(&self, slot: &Slot, rec: &InstanceRecord, image: &Image) -> VmSpec {
        VmSpec {
            run_dir: slot.dir.clone(),
            memory_mib: rec.memory_mib,
            vcpus: rec.vcpus,
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            cmdline: image.cmdline.clone(),
            root_disk: slot.dir.join(ROOT_DISK),
            memory_file: slot.dir.join(MEMORY_FILE),
            accel: rec.accel,
            network: rec.network.as_ref().map(|l| tine_hypervisor::NetDevice {
                tap: l.tap.clone(),
                mac: l.mac.clone(),
            }),
        }
    }

    /// Mark the instance Error if its process dies while it should be alive.
    pub(crate) fn watch(self: &Arc<Self>, slot: Arc<Slot>, proc: VmProcess) {
        tokio::spawn(async move {
            if let Err(e) = tine_hypervisor::wait_exit(proc).await {
                warn!(pid = proc.pid, error = %e, "cannot watch VM process");
                return;
            }
            // Operations that stop the process hold the op lock until the
            // record no longer names it, so an expected exit is never flagged.
            let _g = slot.op.lock().await;
            let rec = slot.record();
            if rec.process == Some(proc) && rec.state.has_process() {
                warn!(
                    name = rec.name,
                    pid = proc.pid,
                    "VM process exited unexpectedly"
                );
                slot.agent.reset();
                let _ = slot.update(|r| {
                    r.state = State::Error;
                    r.process = None;
                    r.error = Some("VM process exited unexpectedly".into());
                });
            }
        });
    }

    pub async fn start(self: &Arc<Self>, name: &str) -> Result<InstanceInfo, ManagerError> {
        let slot = self.slot(name)?;
        let _g = slot.op.lock().await;
        let rec = slot.record();
        self.transition(&rec, Op::Start)?;
        if rec.state == State::Standby {
            return self.restore_locked(&slot).await.map(|()| slot.info());
        }
        let _ticket = self.admit_instance("start", &rec)?;
        let image = image::load(&self.cfg.images_dir, &rec.image)?;
        if let Err(e) = self.boot(&slot, &image, Boot::Fresh, None, None).await {
            self.fail(&slot, &e).await;
            return Err(e);
        }
        Ok(slot.info())
    }

    pub async fn stop(self: &Arc<Self>, name: &str) -> Result<InstanceInfo, ManagerError> {
        let slot = self.slot(name)?;
        let _g = slot.op.lock().await;
        let rec = slot.record();
        self.transition(&rec, Op::Stop)?;
        if rec.state == State::Running {
            // Flush the guest's page cache to its disk before QEMU closes it.
            if let Err(e) = agent::sync(&slot.agent).await {
                warn!(name = rec.name, error = %chain(&e), "guest sync failed; stopping anyway");
            }
        }
        self.halt(&slot, &rec).await?;
        slot.update(|r| {
            r.state = State::Stopped;
            r.process = None;
        })?;
        // The RAM of a stopped VM is garbage: drop our link to it.
        let _ = std::fs::remove_file(slot.dir.join(MEMORY_FILE));
        Ok(slot.info())
    }

    pub async fn pause(self: &Arc<Self>, name: &str) -> Result<InstanceInfo, ManagerError> {
        let slot = self.slot(name)?;
        let _g = slot.op.lock().await;
        self.transition(&slot.record(), Op::Pause)?;
        self.hv.pause(&slot.dir).await?;
        slot.update(|r| r.state = State::Paused)?;
        Ok(slot.info())
    }

    pub async fn resume(self: &Arc<Self>, name: &str) -> Result<InstanceInfo, ManagerError> {
        let slot = self.slot(name)?;
        let _g = slot.op.lock().await;
        self.transition(&slot.record(), Op::Resume)?;
        self.hv.resume(&slot.dir).await?;
        slot.update(|r| r.state = State::Running)?;
        Ok(slot.info())
    }

    pub async fn remove(
        self: &Arc<Self>,
        name: &str,
        force: bool,
    ) -> Result<InstanceInfo, ManagerError> {
        let slot = self.slot(name)?;
        let _g = slot.op.lock().await;
        let rec = slot.record();
        self.transition(&rec, if force { Op::ForceRemove } else { Op::Remove })?;
        let _files = slot.own_files().await;
        self.remove_pools(crate::ForkFrom::Instance, [&rec.name, &rec.id])
            .await;
        self.halt(&slot, &rec).await?;
        let info = slot.info();
        self.slots.write().expect("slots").remove(&slot.id);
        remove_dir(&slot.dir)?;
        self.network_release(rec.network.as_ref()).await;
        Ok(info)
    }

    pub async fn exec(
        &self,
        name: &str,
        req: ExecRequest,
    ) -> Result<crate::ExecOutput, ManagerError> {
        let slot = self.exec_slot(name, &req)?;
        let before = slot.record();
        match agent::exec(&slot.agent, &req).await {
            Ok(out) => Ok(out),
            Err(e) => Err(self.exec_err(&slot, &before, e).await),
        }
    }

    /// Like [`exec`](Self::exec), streaming output events as they arrive.
    pub async fn exec_stream(
        &self,
        name: &str,
        req: ExecRequest,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<crate::ExecEvent, String>>, ManagerError> {
        let slot = self.exec_slot(name, &req)?;
        let before = slot.record();
        match agent::exec_stream(&slot.agent, &req).await {
            Ok(rx) => Ok(rx),
            Err(e) => Err(self.exec_err(&slot, &before, e).await),
        }
    }

    /// An exec whose VM was stopped, parked or removed under it is refused
    /// (409), not reported as a broken agent (502).
    async fn exec_err(
        &self,
        slot: &Slot,
        before: &InstanceRecord,
        source: tine_agent_proto::client::AgentError,
    ) -> ManagerError {
        // Let the operation that interrupted the call finish first.
        let _g = slot.op.lock().await;
        let now = slot.record();
        let removed = !self.slots.read().expect("slots").contains_key(&slot.id);
        let detail = match (removed, now.state) {
            (true, _) => "it was removed while the command ran".to_string(),
            (false, State::Running) if now.process == before.process => {
                return self.agent_err(slot, source);
            }
            (false, State::Running) => "it was restarted while the command ran".to_string(),
            (false, state) => format!("it became {state} while the command ran"),
        };
        ManagerError::Busy {
            name: now.name,
            detail,
        }
    }

    fn exec_slot(&self, name: &str, req: &ExecRequest) -> Result<Arc<Slot>, ManagerError> {
        crate::validate_exec(req)?;
        let slot = self.slot(name)?;
        self.transition(&slot.record(), Op::Exec)?;
        Ok(slot)
    }

    pub(crate) fn agent_err(
        &self,
        slot: &Slot,
        source: tine_agent_proto::client::AgentError,
    ) -> ManagerError {
        ManagerError::Agent {
            name: slot.record().name,
            source,
        }
    }

    pub(crate) fn transition(
        &self,
        rec: &InstanceRecord,
        op: Op,
    ) -> Result<Option<State>, ManagerError> {
        check(rec.state, op).map_err(|source| ManagerError::Conflict {
            name: rec.name.clone(),
            source,
        })
    }

    /// Stop the VM process if there is one (flushing disks), and forget it.
    pub(crate) async fn halt(&self, slot: &Slot, rec: &InstanceRecord) -> Result<(), ManagerError> {
        slot.agent.reset();
        if let Some(proc) = rec.process {
            self.hv.stop(&slot.dir, &proc, STOP_GRACE).await?;
        }
        Ok(())
    }

    /// Record a failed operation: kill whatever is left and enter Error.
    pub(crate) async fn fail(&self, slot: &Slot, err: &ManagerError) {
        let rec = slot.record();
        if let Some(proc) = rec.process {
            let _ = self.hv.stop(&slot.dir, &proc, Duration::from_secs(2)).await;
        }
        slot.agent.reset();
        let _ = slot.update(|r| {
            r.state = State::Error;
            r.process = None;
            r.error = Some(crate::error::clip(
                chain(err),
                crate::error::MAX_RECORDED_ERROR,
            ));
        });
    }

    /// Remove a half-made instance entirely: process, directory, slot.
    pub(crate) async fn discard(&self, slot: &Slot) {
        let rec = slot.record();
        let _ = self.halt(slot, &rec).await;
        self.slots.write().expect("slots").remove(&slot.id);
        match remove_dir(&slot.dir) {
            // The record still names the address: keep it taken.
            Err(e) => warn!(error = %chain(&e), "could not remove {}", slot.dir.display()),
            Ok(()) => self.network_release(rec.network.as_ref()).await,
        }
    }
}

pub(crate) fn validate_size(memory_mib: u32, vcpus: u32) -> Result<(), ManagerError> {
    if !(crate::MIN_MEMORY_MIB..=crate::MAX_MEMORY_MIB).contains(&memory_mib) {
        return Err(ManagerError::InvalidArgument(format!(
            "memory {memory_mib} MiB is out of range ({}..={} MiB)",
            crate::MIN_MEMORY_MIB,
            crate::MAX_MEMORY_MIB
        )));
    }
    if !(1..=crate::MAX_VCPUS).contains(&vcpus) {
        return Err(ManagerError::InvalidArgument(format!(
            "vcpus {vcpus} is out of range (1..={})",
            crate::MAX_VCPUS
        )));
    }
    Ok(())
}

/// The per-instance writable disk: a qcow2 overlay over the shared,
/// read-only base image (only written blocks take space).
async fn create_overlay(
    base: &std::path::Path,
    overlay: &std::path::Path,
) -> Result<(), ManagerError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .await
        .map_err(|e| ManagerError::io("run qemu-img (apt-get install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(ManagerError::Failed(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Create a directory (and missing parents) only its owner can enter: an
/// instance's sockets, RAM and disk are nobody else's business.
pub(crate) fn create_private_dir(dir: &std::path::Path) -> Result<(), ManagerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| ManagerError::io(format!("create {}", dir.display()), e))
}

pub(crate) fn remove_dir(dir: &std::path::Path) -> Result<(), ManagerError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ManagerError::io(format!("remove {}", dir.display()), e)),
    }
}

/// The last `lines` lines of a log the guest writes (console) or can make
/// QEMU write: only its last 16 KiB are read and each line is cut to 200
/// bytes, since the text ends up in error messages and records.
pub(crate) fn console_tail(path: &std::path::Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 16 << 10;
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).is_ok() {
            let _ = f.take(TAIL).read_to_end(&mut buf);
        }
    }
    // A trimmed console log starts with NULs (`console.rs`).
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim_start_matches('\0');
    let all: Vec<String> = text
        .lines()
        .map(|l| crate::error::clip(l.to_string(), 200))
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A boot's timing so far: when it began, and (ms after that) when the VM
/// start began and when its vCPUs ran.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BootClock {
    pub(crate) t0: Instant,
    pub(crate) start_ms: f64,
    pub(crate) running_ms: f64,
}

/// How long a boot took: to vCPUs running, and to the agent answering.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct BootTimes {
    /// When the VM's start (or a warm VM's resume) began.
    pub start_ms: f64,
    pub running_ms: f64,
    /// When the guest agent first answered.
    pub agent_ms: f64,
    pub ready_ms: f64,
}

pub(crate) fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_tail_of_a_flooded_log_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut text = "x".repeat(8 << 20);
        text.push_str("\nlast words\n");
        std::fs::write(&log, text).unwrap();

        let tail = console_tail(&log, 8);

        assert!(tail.len() <= 2 * 200, "{}", tail.len());
        assert!(tail.ends_with("last words"), "{tail}");
    }

    #[test]
    fn a_recorded_error_is_clipped_on_a_character_boundary() {
        let text = crate::error::clip("é".repeat(10_000), MAX);
        assert!(text.len() <= MAX && text.ends_with('…'));
    }

    const MAX: usize = crate::error::MAX_RECORDED_ERROR;
}
