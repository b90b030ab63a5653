//! Fork: N independent copies of a VM that continue from one instant.
//!
//! How a fork is made (MISSION.md items 2–4):
//! 1. A *base* is fixed: the files of a parked VM (memory file, device
//!    state, disk). A standby instance, a snapshot or a template is its own
//!    base. A running source is paused just long enough to capture one into
//!    a staging directory (see `base.rs`), then continues; the staging
//!    directory is removed once the forks hold their links.
//! 2. Each fork gets a directory made by the copy engine (disk and device
//!    state: reflink or sparse copy), and its memory file is a *hardlink*
//!    to the base's, made by `tine_storage::share`: no memory I/O at fork
//!    time, one inode and one page cache for all siblings.
//! 3. The fork maps that file privately (copy-on-write): guest writes never
//!    reach it. Its record says so (`memory: private`).
//! 4. After resume the agent reseeds the guest's entropy, sets hostname,
//!    machine-id and clock; only then is the fork reported ready.
//!
//! A fork that fails at any step is removed entirely. A template's fork
//! count is the number of instance records naming it: it rises when a fork
//! reserves its record (before it is committed) and falls when a failed
//! fork is discarded or a fork is removed. Forks hold the base snapshot's
//! lock shared, so a template cannot be removed while one is being made.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tine_hypervisor::{Accel, Boot, MemoryMapping};
use tokio::sync::{OwnedRwLockReadGuard, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::agent::Identity;
use crate::base::blocking;
use crate::error::{chain, ManagerError};
use crate::image;
use crate::ops::{ms, remove_dir, BootTimes, MEMORY_FILE, ROOT_DISK, STATE_FILE};
use crate::record::{InstanceRecord, SCHEMA};
use crate::snapshot::SnapshotKind;
use crate::state::{Op, State};
use crate::{names, now_unix, ForkMemory, InstanceInfo, Manager};

pub const MAX_FORKS_PER_REQUEST: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkTarget {
    #[default]
    Running,
    Standby,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkFrom {
    #[default]
    Instance,
    Snapshot,
    Template,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForkRequest {
    /// The source: an instance, snapshot or template name (see `from`).
    pub source: String,
    #[serde(default)]
    pub from: ForkFrom,
    /// Name of the fork; with `count` > 1 the forks are NAME-1 … NAME-N,
    /// unless the name contains `{i}`, which is replaced by 1 … N.
    pub name: Option<String>,
    #[serde(default)]
    pub count: Option<u32>,
    /// Required to fork a running (or paused) instance.
    #[serde(default)]
    pub from_running: bool,
    #[serde(default)]
    pub target: ForkTarget,
    /// Forks made at once (default 4).
    #[serde(default)]
    pub parallel: Option<u32>,
}

impl ForkRequest {
    /// The forks' names, checked: NAME-1 … NAME-N, or a template with `{i}`
    /// placed where the caller wants it.
    pub fn names(&self) -> Result<Vec<String>, ManagerError> {
        let count = self.count.unwrap_or(1);
        if !(1..=MAX_FORKS_PER_REQUEST).contains(&count) {
            return Err(ManagerError::InvalidArgument(format!(
                "count {count} is out of range (1..={MAX_FORKS_PER_REQUEST})"
            )));
        }
        let base = match &self.name {
            Some(n) => n.clone(),
            None => format!("{}-fork-{}", self.source, &names::new_id()[..4]),
        };
        // Every `{i}` gives at least one character, so a longer template
        // cannot give a valid name; refuse it before expanding it N times.
        if base.len() > 3 * names::MAX_NAME_LEN {
            return Err(ManagerError::InvalidArgument(format!(
                "fork name of {} bytes is too long",
                base.len()
            )));
        }
        let names: Vec<String> = if base.contains("{i}") {
            (1..=count)
                .map(|i| base.replace("{i}", &i.to_string()))
                .collect()
        } else if count == 1 {
            vec![base]
        } else {
            (1..=count).map(|i| format!("{base}-{i}")).collect()
        };
        if names.iter().collect::<std::collections::HashSet<_>>().len() != names.len() {
            return Err(ManagerError::InvalidArgument(
                "the name template gives duplicate names".into(),
            ));
        }
        for n in &names {
            names::validate_name(n).map_err(ManagerError::InvalidArgument)?;
        }
        Ok(names)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkOutcome {
    pub name: String,
    pub instance: Option<InstanceInfo>,
    pub error: Option<String>,
    /// Request start → this fork's vCPUs running.
    pub running_ms: Option<f64>,
    /// Request start → agent answered and identity applied.
    pub ready_ms: Option<f64>,
    /// Where this fork's time went (a fork that reached running).
    #[serde(default)]
    pub phases: Option<ForkPhases>,
}

impl ForkOutcome {
    fn new(name: &str) -> ForkOutcome {
        ForkOutcome {
            name: name.to_string(),
            instance: None,
            error: None,
            running_ms: None,
            ready_ms: None,
            phases: None,
        }
    }
}

/// A running fork has consumed its device state: it no longer matches RAM.
fn state_consumed(slot: &crate::Slot) {
    let _ = std::fs::remove_file(slot.dir.join(STATE_FILE));
    let _ = slot.update(|r| r.ram_in_state = false);
}

/// One fork's time by phase, in ms; they add up to its `ready_ms`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ForkPhases {
    /// Request start → this fork's work began (source capture, base checks,
    /// waiting for a `--parallel` slot).
    pub waited_ms: f64,
    /// Its directory: disk and device state copied, memory file linked
    /// (0 for a warm pool entry: made ahead).
    pub files_ms: f64,
    /// VM start and state load until its vCPUs run (a warm entry: resume).
    pub vm_ms: f64,
    /// vCPUs running → the guest agent answers.
    pub agent_ms: f64,
    /// Agent → ready: entropy, hostname, machine-id, clock, network.
    pub identity_ms: f64,
    /// Made from a warm pool entry.
    pub pooled: bool,
}

impl ForkPhases {
    fn of(began_ms: f64, files_ms: f64, t: &BootTimes, pooled: bool) -> ForkPhases {
        ForkPhases {
            waited_ms: began_ms,
            files_ms,
            vm_ms: t.running_ms - t.start_ms,
            agent_ms: t.agent_ms - t.running_ms,
            identity_ms: t.ready_ms - t.agent_ms,
            pooled,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkReport {
    pub source: String,
    /// How long a running source was paused (None for a parked source).
    pub source_pause_ms: Option<f64>,
    pub wall_ms: f64,
    pub ok: usize,
    pub failed: usize,
    pub forks: Vec<ForkOutcome>,
}

/// The parked files forks are made from.
pub(crate) struct Base {
    pub(crate) dir: PathBuf,
    pub(crate) label: String,
    pub(crate) image: String,
    pub(crate) memory_mib: u32,
    pub(crate) vcpus: u32,
    pub(crate) accel: Accel,
    /// Device state present (a stopped-kind snapshot has only a disk).
    pub(crate) has_state: bool,
    pub(crate) ram_in_state: bool,
    pub(crate) template: Option<String>,
    pub(crate) state_digest: Option<crate::integrity::StateDigest>,
    /// The source has a NIC; its forks must too (same device layout).
    pub(crate) network: bool,
    /// The request's source and kind, and what identifies this exact
    /// parked state (warm-pool entries are only valid for the same key).
    pub(crate) from: ForkFrom,
    pub(crate) source: String,
    pub(crate) key: String,
    /// A staging directory to delete when done (fork from running).
    staging: Option<PathBuf>,
    /// Keeps a snapshot/template from being removed while forks are made.
    _hold: Option<OwnedRwLockReadGuard<()>>,
}

impl Base {
    fn of_instance(
        dir: PathBuf,
        r: &InstanceRecord,
        staging: Option<PathBuf>,
        source: &str,
    ) -> Base {
        // A standby's digest changes with every standby: a new parked state.
        let key = match &staging {
            Some(s) => format!("staging:{}", s.display()),
            None => format!("instance:{}:{:?}", r.id, r.state_digest.map(|d| d.crc32)),
        };
        Base {
            from: ForkFrom::Instance,
            source: source.to_string(),
            key,
            dir,
            label: r.name.clone(),
            image: r.image.clone(),
            memory_mib: r.memory_mib,
            vcpus: r.vcpus,
            accel: r.accel,
            has_state: true,
            ram_in_state: r.ram_in_state,
            template: None,
            state_digest: r.state_digest,
            network: r.network.is_some(),
            staging,
            _hold: None,
        }
    }
}

impl Base {
    /// Keep `slot`'s parked files from being restored or removed while
    /// forks are made from them.
    async fn holding(mut self, slot: &crate::Slot) -> Base {
        self._hold = Some(slot.files.clone().read_owned().await);
        self
    }

    /// The record of a new fork (or warm-pool entry) of this base.
    pub(crate) fn new_record(
        &self,
        id: String,
        name: String,
        memory: MemoryMapping,
        pooled: bool,
        network: Option<crate::network::Lease>,
    ) -> InstanceRecord {
        InstanceRecord {
            schema: SCHEMA,
            id,
            name,
            state: State::Created,
            image: self.image.clone(),
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            accel: self.accel,
            created_at: now_unix(),
            process: None,
            error: None,
            boot_ms: None,
            memory,
            ram_in_state: self.ram_in_state,
            parent: Some(self.label.clone()),
            template: self.template.clone(),
            pending_standby: false,
            state_digest: self.state_digest,
            pooled,
            network,
        }
    }

    /// Refuse a corrupt or truncated base before any fork loads it.
    fn verify(&self) -> Result<(), ManagerError> {
        if !self.has_state {
            return Ok(());
        }
        crate::integrity::verify_state(&self.dir.join(STATE_FILE), self.state_digest)?;
        let memory = self.dir.join(MEMORY_FILE);
        if memory.exists() {
            crate::integrity::verify_memory(&memory, self.memory_mib)?;
        }
        Ok(())
    }
}

impl Manager {
    pub async fn fork(self: &Arc<Self>, req: ForkRequest) -> Result<ForkReport, ManagerError> {
        self.fork_with_progress(req, None).await
    }

    /// Like [`fork`](Self::fork), sending each fork's outcome on `progress`
    /// as soon as it is known (for a CLI progress display).
    pub async fn fork_with_progress(
        self: &Arc<Self>,
        req: ForkRequest,
        progress: Option<tokio::sync::mpsc::Sender<ForkOutcome>>,
    ) -> Result<ForkReport, ManagerError> {
        let t0 = Instant::now();
        let names = self.fork_names(&req)?;
        let ticket = self.admit_fork(&req, names.len() as u32)?;
        let (base, pause_ms) = self.fork_base(&req).await?;
        if !base.has_state && req.target == ForkTarget::Standby {
            return Err(ManagerError::InvalidArgument(
                "a stopped-kind snapshot has no memory to park: use --target running or stopped"
                    .into(),
            ));
        }
        let image = image::load(&self.cfg.images_dir, &base.image)?;
        let parallel = req.parallel.unwrap_or(4).clamp(1, 32) as usize;
        let sem = Arc::new(Semaphore::new(parallel));
        // Refills of the source's pool wait until the burst is done.
        let burst = self.pool_burst(&base);
        let base = Arc::new(base);
        let mut tasks = Vec::new();
        for name in names {
            let (mgr, base, image, sem) = (self.clone(), base.clone(), image.clone(), sem.clone());
            let (target, progress, ticket) = (req.target, progress.clone(), ticket.clone());
            tasks.push(tokio::spawn(async move {
                let permit = sem.acquire_owned().await.expect("semaphore");
                let out = mgr.fork_one(&base, &image, name, target, t0, permit).await;
                // Running (and counted) or gone: its share of the admission is done.
                if let Some(t) = &ticket {
                    t.release_one();
                }
                if let Some(p) = progress {
                    let _ = p.send(out.clone()).await;
                }
                out
            }));
        }
        let mut forks = Vec::new();
        for t in tasks {
            forks.push(
                t.await
                    .map_err(|e| ManagerError::Failed(format!("fork task: {e}")))?,
            );
        }
        drop(burst);
        if let Some(staging) = &base.staging {
            // Forks hold their own links and copies now.
            let _ = remove_dir(staging);
        }
        let ok = forks.iter().filter(|f| f.error.is_none()).count();
        let m = &self.metrics;
        m.forks
            .fetch_add(forks.len() as u64, std::sync::atomic::Ordering::Relaxed);
        m.forks_failed.fetch_add(
            (forks.len() - ok) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        for f in &forks {
            if let (Some(r), Some(d)) = (f.running_ms, f.ready_ms) {
                m.fork_running.observe_ms(r);
                m.fork_ready.observe_ms(d);
            }
        }
        let report = ForkReport {
            source: req.source.clone(),
            source_pause_ms: pause_ms,
            wall_ms: ms(t0),
            ok,
            failed: forks.len() - ok,
            forks,
        };
        info!(
            source = req.source,
            ok,
            failed = report.failed,
            wall_ms = report.wall_ms,
            "fork done"
        );
        Ok(report)
    }

    fn fork_names(&self, req: &ForkRequest) -> Result<Vec<String>, ManagerError> {
        let names = req.names()?;
        for n in &names {
            if self.slot(n).is_ok() {
                return Err(ManagerError::AlreadyExists(n.clone()));
            }
        }
        Ok(names)
    }

    /// Fix the files forks are made from.
    pub(crate) async fn fork_base(
        self: &Arc<Self>,
        req: &ForkRequest,
    ) -> Result<(Base, Option<f64>), ManagerError> {
        match req.from {
            ForkFrom::Instance => self.instance_base(req).await,
            ForkFrom::Snapshot | ForkFrom::Template => {
                let template = req.from == ForkFrom::Template;
                let snap = self.snap(&req.source, template)?;
                let hold = snap.op.clone().read_owned().await;
                snap.ensure_raw_memory().await?;
                let r = snap.record();
                let base = Base {
                    from: req.from,
                    source: req.source.clone(),
                    key: format!("snapshot:{}", r.id),
                    dir: snap.dir.clone(),
                    label: r.name.clone(),
                    image: r.image,
                    memory_mib: r.memory_mib,
                    vcpus: r.vcpus,
                    accel: r.accel,
                    has_state: r.kind == SnapshotKind::Standby,
                    ram_in_state: r.ram_in_state,
                    template: template.then_some(r.id),
                    state_digest: r.state_digest,
                    network: r.network,
                    staging: None,
                    _hold: Some(hold),
                };
                base.verify()?;
                Ok((base, None))
            }
        }
    }

    async fn instance_base(
        self: &Arc<Self>,
        req: &ForkRequest,
    ) -> Result<(Base, Option<f64>), ManagerError> {
        let (base, pause) = self.instance_base_unchecked(req).await?;
        if base.staging.is_none() {
            base.verify()?;
        }
        Ok((base, pause))
    }

    async fn instance_base_unchecked(
        self: &Arc<Self>,
        req: &ForkRequest,
    ) -> Result<(Base, Option<f64>), ManagerError> {
        let slot = self.slot(&req.source)?;
        let _g = slot.op.lock().await;
        let rec = slot.record();
        self.transition(
            &rec,
            match req.from_running {
                true => Op::ForkFromRunning,
                false => Op::Fork,
            },
        )?;
        if rec.state == State::Standby && rec.ram_in_state {
            // A parked fork keeps its RAM in its device state; forks need
            // it in a memory file they can share. Materialize it once:
            // restore (the load writes the file) and park again.
            info!(
                name = rec.name,
                "materializing the memory file of a parked fork before forking it"
            );
            self.restore_locked(&slot).await?;
            self.standby_locked(&slot).await?;
            let base = Base::of_instance(slot.dir.clone(), &slot.record(), None, &req.source);
            return Ok((base.holding(&slot).await, None));
        }
        if rec.state == State::Standby {
            let base = Base::of_instance(slot.dir.clone(), &rec, None, &req.source);
            return Ok((base.holding(&slot).await, None));
        }
        // Running or paused, and the caller asked for it.
        let staging = self.cfg.data_dir.join("staging").join(names::new_id());
        crate::ops::create_private_dir(&staging)?;
        match self
            .capture(&slot, &rec, &staging, SnapshotKind::Standby)
            .await
        {
            Ok(c) => Ok((
                Base::of_instance(staging.clone(), &rec, Some(staging), &req.source),
                c.pause_ms,
            )),
            Err(e) => {
                let _ = remove_dir(&staging);
                Err(e)
            }
        }
    }

    async fn fork_one(
        self: &Arc<Self>,
        base: &Base,
        image: &image::Image,
        name: String,
        target: ForkTarget,
        t0: Instant,
        permit: OwnedSemaphorePermit,
    ) -> ForkOutcome {
        let mut permit = Some(permit);
        let mut out = ForkOutcome::new(&name);
        if target == ForkTarget::Running && base.has_state {
            tracing::debug!(name, before_claim_ms = ms(t0), "fork ready to claim");
            if let Some((slot, proc, boot)) = self.pool_take(base) {
                match self.claim(slot, proc, boot, &name, t0, &mut permit).await {
                    Ok((slot, times)) => {
                        state_consumed(&slot);
                        out.running_ms = Some(times.running_ms);
                        out.ready_ms = Some(times.ready_ms);
                        // The entry's files were made ahead; what the
                        // claim waited for before resuming counts as waiting.
                        out.phases = Some(ForkPhases::of(times.start_ms, 0.0, &times, true));
                        out.instance = Some(slot.info());
                    }
                    Err((slot, e)) => {
                        // A broken entry (its VM died while waiting…) must
                        // not fail the fork: drop it and make one cold.
                        warn!(name, error = %chain(&e), "pool entry failed; forking without it");
                        self.discard(&slot).await;
                        return self.fork_cold(base, image, name, target, t0, permit).await;
                    }
                }
                return out;
            }
        }
        self.fork_cold(base, image, name, target, t0, permit).await
    }

    async fn fork_cold(
        self: &Arc<Self>,
        base: &Base,
        image: &image::Image,
        name: String,
        target: ForkTarget,
        t0: Instant,
        permit: Option<OwnedSemaphorePermit>,
    ) -> ForkOutcome {
        let mut out = ForkOutcome::new(&name);
        // Without device state the fork boots fresh and owns its RAM file.
        let memory = if base.has_state {
            MemoryMapping::Private
        } else {
            MemoryMapping::Shared
        };
        let id = names::new_id();
        // A new address and MAC: the guest is told them before it is ready.
        let network = match self.network_lease_if(base.network, &id) {
            Ok(l) => l,
            Err(e) => {
                out.error = Some(chain(&e));
                return out;
            }
        };
        let record = base.new_record(id, name.clone(), memory, false, network.clone());
        let slot = match self.reserve(record) {
            Ok(s) => s,
            Err(e) => {
                self.network_release(network.as_ref()).await;
                out.error = Some(chain(&e));
                return out;
            }
        };
        let guard = slot.op.lock().await;
        if let Err(e) = crate::failpoint::hit("fork-name", &name) {
            drop(guard);
            self.discard(&slot).await;
            out.error = Some(chain(&e));
            return out;
        }
        let with_state = base.has_state && target != ForkTarget::Stopped;
        let began_ms = ms(t0);
        let made = self.fork_files(base, &slot.dir, with_state).await;
        let result: Result<Option<BootTimes>, ManagerError> = match (made, target) {
            (Err(e), _) => Err(e),
            (Ok(()), ForkTarget::Standby) => {
                slot.update(|r| r.state = State::Standby).map(|()| None)
            }
            (Ok(()), ForkTarget::Stopped) => slot
                .update(|r| {
                    r.state = State::Stopped;
                    r.memory = MemoryMapping::Shared;
                    r.ram_in_state = false;
                })
                .map(|()| None),
            (Ok(()), ForkTarget::Running) => {
                let boot = if base.has_state {
                    Boot::Restore {
                        state_file: slot.dir.join(STATE_FILE),
                        mapping: MemoryMapping::Private,
                        ram_in_state: base.ram_in_state,
                    }
                } else {
                    Boot::Fresh
                };
                let offset = t0.elapsed();
                self.boot(&slot, image, boot, Some(Identity::new(&name)), permit)
                    .await
                    .map(|t| Some(shift(t, offset)))
            }
        };
        drop(guard);
        match result {
            Ok(times) => {
                if target == ForkTarget::Running {
                    state_consumed(&slot);
                }
                out.running_ms = times.map(|t| t.running_ms);
                out.ready_ms = times.map(|t| t.ready_ms);
                // Files: the fork's directory, memory-file checks, TAP.
                out.phases =
                    times.map(|t| ForkPhases::of(began_ms, t.start_ms - began_ms, &t, false));
                out.instance = Some(slot.info());
            }
            Err(e) => {
                warn!(name, error = %chain(&e), "fork failed; removing it");
                self.discard(&slot).await;
                out.error = Some(chain(&e));
            }
        }
        out
    }

    /// Disk (and device state) copied, memory file linked.
    pub(crate) async fn fork_files(
        &self,
        base: &Base,
        dst: &Path,
        with_state: bool,
    ) -> Result<(), ManagerError> {
        let (src, dst) = (base.dir.clone(), dst.to_path_buf());
        let mode = self.cfg.fork_memory;
        let metrics = self.metrics.clone();
        blocking(move || {
            // One operation: reflink is asked once, not once per file.
            let mut copier = tine_storage::Copier::new();
            let mut copy = |f: &str| {
                copier
                    .copy_file(&src.join(f), &dst.join(f))
                    .map(|_| ())
                    .map_err(|e| ManagerError::Failed(chain(&e)))
            };
            copy(ROOT_DISK)?;
            if !with_state {
                return Ok(());
            }
            copy(STATE_FILE)?;
            let (from, to) = (src.join(MEMORY_FILE), dst.join(MEMORY_FILE));
            if !from.exists() {
                // The state carries the RAM; QEMU makes an empty file.
                return Ok(());
            }
            match mode {
                ForkMemory::Link => {
                    let report = tine_storage::share(&from, &to)
                        .map_err(|e| ManagerError::Failed(chain(&e)))?;
                    match &report.link_errno {
                        Some(errno) => {
                            warn!(
                                ?report,
                                "memory file could not be hardlinked; copied instead"
                            );
                            metrics
                                .shares_copied
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            metrics.fallback(errno.name);
                        }
                        None => {
                            metrics
                                .shares_linked
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    Ok(())
                }
                ForkMemory::Copy => copy(MEMORY_FILE),
                ForkMemory::FullCopy => {
                    full_copy(&from, &to).map_err(|e| ManagerError::io("copy memory file", e))
                }
            }
        })
        .await
    }
}

fn shift(t: BootTimes, offset: Duration) -> BootTimes {
    let o = offset.as_secs_f64() * 1e3;
    BootTimes {
        start_ms: t.start_ms + o,
        running_ms: t.running_ms + o,
        agent_ms: t.agent_ms + o,
        ready_ms: t.ready_ms + o,
    }
}

/// A plain read/write copy (no reflink, no hole detection): the naive way
/// to give every fork its own memory file, kept only as a baseline.
fn full_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut r = std::fs::File::open(from)?;
    let mut w = std::fs::File::create(to)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])?;
    }
    w.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, count: u32) -> ForkRequest {
        ForkRequest {
            source: "src".into(),
            name: Some(name.into()),
            count: Some(count),
            ..Default::default()
        }
    }

    #[test]
    fn names_are_numbered_or_templated() {
        assert_eq!(req("w", 2).names().unwrap(), ["w-1", "w-2"]);
        assert_eq!(req("a{i}b", 2).names().unwrap(), ["a1b", "a2b"]);
        assert_eq!(req("one", 1).names().unwrap(), ["one"]);
    }

    #[test]
    fn a_template_too_long_to_give_a_valid_name_is_refused_before_expansion() {
        let err = req(&"{i}".repeat(300_000), MAX_FORKS_PER_REQUEST)
            .names()
            .unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn out_of_range_counts_and_invalid_names_are_refused() {
        assert!(req("x", 0).names().is_err());
        assert!(req("x", MAX_FORKS_PER_REQUEST + 1).names().is_err());
        assert!(req("Bad", 1).names().is_err());
    }
}
