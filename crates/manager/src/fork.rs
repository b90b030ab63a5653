//! Fork: N independent copies of a VM that continue from one instant.
//!
//! How a fork is made (MISSION.md items 3 and 4):
//! 1. A *base* is fixed: the files of a parked VM (memory file, device
//!    state, disk). A Standby source is its own base. A running source is
//!    paused just long enough to save device state, copy its disk and — if
//!    it maps its RAM file shared — take a private copy of that file for the
//!    forks (reflink where possible), then it continues. The base lives in a
//!    staging directory that is removed once the forks hold their links.
//! 2. Each fork gets a directory made by the copy engine (disk and device
//!    state: reflink or sparse copy), and its memory file is a *hardlink*
//!    to the base's, made by `tine_storage::share`: no memory I/O at fork
//!    time, one inode and one page cache for all siblings.
//! 3. The fork maps that file privately (copy-on-write): guest writes never
//!    reach it. Its record says so (`memory: private`), and every later
//!    restore of it maps privately as well.
//! 4. After resume the agent reseeds the guest's entropy, sets hostname,
//!    machine-id and clock; only then is the fork reported ready.
//! A fork that fails at any step is removed entirely.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tine_hypervisor::{Boot, MemoryMapping, RamSave};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::agent::Identity;
use crate::error::{chain, ManagerError};
use crate::image;
use crate::ops::{ms, remove_dir, BootTimes, MEMORY_FILE, ROOT_DISK, STATE_FILE};
use crate::record::{InstanceRecord, SCHEMA};
use crate::state::State;
use crate::{names, now_unix, InstanceInfo, Manager};

pub const MAX_FORKS_PER_REQUEST: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkTarget {
    #[default]
    Running,
    Standby,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForkRequest {
    /// The source instance (name or id).
    pub source: String,
    /// Name of the fork; with `count` > 1 the forks are NAME-1 … NAME-N.
    pub name: Option<String>,
    #[serde(default)]
    pub count: Option<u32>,
    /// Required to fork a running (or paused) source.
    #[serde(default)]
    pub from_running: bool,
    #[serde(default)]
    pub target: ForkTarget,
    /// Forks made at once (default 4).
    #[serde(default)]
    pub parallel: Option<u32>,
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
struct Base {
    dir: PathBuf,
    record: InstanceRecord,
    /// A staging directory to delete when done (fork from running).
    staging: Option<PathBuf>,
}

const BASE_SKIP: [&str; 6] = [MEMORY_FILE, crate::record::RECORD_FILE, "console.log", "qemu.pid", "qmp.sock", "agent.sock"];

impl Manager {
    pub async fn fork(self: &Arc<Self>, req: ForkRequest) -> Result<ForkReport, ManagerError> {
        let t0 = Instant::now();
        let names = self.fork_names(&req)?;
        let (base, pause_ms) = self.fork_base(&req).await?;
        let image = image::load(&self.cfg.images_dir, &base.record.image)?;
        let parallel = req.parallel.unwrap_or(4).clamp(1, 32) as usize;
        let sem = Arc::new(Semaphore::new(parallel));
        let base = Arc::new(base);
        let mut tasks = Vec::new();
        for name in names {
            let (mgr, base, image, sem) = (self.clone(), base.clone(), image.clone(), sem.clone());
            let target = req.target;
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.expect("semaphore");
                mgr.fork_one(&base, &image, name, target, t0).await
            }));
        }
        let mut forks = Vec::new();
        for t in tasks {
            forks.push(t.await.map_err(|e| ManagerError::Failed(format!("fork task: {e}")))?);
        }
        if let Some(staging) = &base.staging {
            // Forks hold their own links and copies now.
            let _ = remove_dir(staging);
        }
        let ok = forks.iter().filter(|f| f.error.is_none()).count();
        let report = ForkReport {
            source: req.source.clone(),
            source_pause_ms: pause_ms,
            wall_ms: ms(t0),
            ok,
            failed: forks.len() - ok,
            forks,
        };
        info!(source = req.source, ok, failed = report.failed, wall_ms = report.wall_ms, "fork done");
        Ok(report)
    }

    fn fork_names(&self, req: &ForkRequest) -> Result<Vec<String>, ManagerError> {
        let count = req.count.unwrap_or(1);
        if !(1..=MAX_FORKS_PER_REQUEST).contains(&count) {
            return Err(ManagerError::InvalidArgument(format!(
                "count {count} is out of range (1..={MAX_FORKS_PER_REQUEST})"
            )));
        }
        let base = match &req.name {
            Some(n) => n.clone(),
            None => format!("{}-fork-{}", req.source, &names::new_id()[..4]),
        };
        let names: Vec<String> = if count == 1 {
            vec![base]
        } else {
            (1..=count).map(|i| format!("{base}-{i}")).collect()
        };
        for n in &names {
            names::validate_name(n).map_err(ManagerError::InvalidArgument)?;
            if self.slot(n).is_ok() {
                return Err(ManagerError::AlreadyExists(n.clone()));
            }
        }
        Ok(names)
    }

    /// Fix the files forks are made from; for a running source, pause it only
    /// while they are captured.
    async fn fork_base(self: &Arc<Self>, req: &ForkRequest) -> Result<(Base, Option<f64>), ManagerError> {
        let slot = self.slot(&req.source)?;
        let _g = slot.op.lock().await;
        let rec = slot.record();
        match rec.state {
            State::Standby if rec.ram_in_state => {
                // A parked fork keeps its RAM in its device state; forks need
                // it in a memory file they can share. Materialize it once:
                // restore (the load writes the file) and park again.
                info!(name = rec.name, "materializing the memory file of a parked fork before forking it");
                self.restore_locked(&slot).await?;
                self.standby_locked(&slot).await?;
                return Ok((Base { dir: slot.dir.clone(), record: slot.record(), staging: None }, None));
            }
            State::Standby => {
                return Ok((Base { dir: slot.dir.clone(), record: rec, staging: None }, None));
            }
            State::Running | State::Paused if req.from_running => {}
            State::Running | State::Paused => {
                return Err(ManagerError::InvalidArgument(format!(
                    "{} is {}: pass --from-running to pause it briefly and fork it, or put it in standby first",
                    rec.name, rec.state
                )))
            }
            other => {
                return Err(ManagerError::InvalidArgument(format!(
                    "cannot fork {}: it is {other} (fork a standby or running instance)",
                    rec.name
                )))
            }
        }
        let staging = self.cfg.data_dir.join("staging").join(names::new_id());
        std::fs::create_dir_all(&staging).map_err(|e| ManagerError::io("create staging directory", e))?;
        let result = self.capture_running(&slot, &rec, &staging).await;
        match result {
            Ok(pause_ms) => Ok((Base { dir: staging.clone(), record: rec, staging: Some(staging) }, Some(pause_ms))),
            Err(e) => {
                let _ = remove_dir(&staging);
                Err(e)
            }
        }
    }

    /// Pause, save device state, capture disk and memory into `staging`,
    /// continue. Returns the pause time in ms.
    async fn capture_running(
        &self,
        slot: &crate::Slot,
        rec: &InstanceRecord,
        staging: &Path,
    ) -> Result<f64, ManagerError> {
        let was_running = rec.state == State::Running;
        if was_running {
            // Not required for consistency (QEMU flushes its disk on stop),
            // but it puts the guest's dirty page cache on the disk we copy.
            let _ = crate::agent::sync(&slot.agent).await;
        }
        let t0 = Instant::now();
        // x-ignore-shared either way: forks load it with the same capability
        // (a privately mapped source's RAM is not "shared", so it is saved).
        let saved = self.hv.save_state(&slot.dir, &staging.join(STATE_FILE), RamSave::InMemoryFile).await;
        let captured = match saved {
            Ok(_) => capture_files(&slot.dir, staging, rec.memory),
            Err(e) => Err(e.into()),
        };
        if was_running {
            self.hv.resume(&slot.dir).await?;
        }
        let pause_ms = ms(t0);
        captured?;
        info!(name = rec.name, pause_ms, "captured running source for fork");
        Ok(pause_ms)
    }

    async fn fork_one(
        self: &Arc<Self>,
        base: &Base,
        image: &image::Image,
        name: String,
        target: ForkTarget,
        t0: Instant,
    ) -> ForkOutcome {
        let mut out = ForkOutcome { name: name.clone(), instance: None, error: None, running_ms: None, ready_ms: None };
        let src = &base.record;
        let record = InstanceRecord {
            schema: SCHEMA,
            id: names::new_id(),
            name: name.clone(),
            state: State::Created,
            image: src.image.clone(),
            memory_mib: src.memory_mib,
            vcpus: src.vcpus,
            accel: src.accel,
            created_at: now_unix(),
            process: None,
            error: None,
            boot_ms: None,
            memory: MemoryMapping::Private,
            ram_in_state: false,
            parent: Some(src.name.clone()),
        };
        let slot = match self.reserve(record) {
            Ok(s) => s,
            Err(e) => {
                out.error = Some(chain(&e));
                return out;
            }
        };
        let guard = slot.op.lock().await;
        let made = self.fork_files(base, &slot.dir).await;
        let result: Result<Option<BootTimes>, ManagerError> = match (made, target) {
            (Err(e), _) => Err(e),
            (Ok(()), ForkTarget::Standby) => slot.update(|r| r.state = State::Standby).map(|()| None),
            (Ok(()), ForkTarget::Running) => {
                let boot = Boot::Restore {
                    state_file: slot.dir.join(STATE_FILE),
                    mapping: MemoryMapping::Private,
                    ram_in_state: false,
                };
                let started = Instant::now();
                let offset = started.duration_since(t0);
                self.boot(&slot, image, boot, Some(Identity::new(&name)))
                    .await
                    .map(|t| Some(shift(t, offset)))
            }
        };
        drop(guard);
        match result {
            Ok(times) => {
                if target == ForkTarget::Running {
                    // The device state was consumed; it no longer matches RAM.
                    let _ = std::fs::remove_file(slot.dir.join(STATE_FILE));
                }
                out.running_ms = times.map(|t| t.running_ms);
                out.ready_ms = times.map(|t| t.ready_ms);
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

    /// Disk and device state copied (reflink or sparse), memory file linked.
    async fn fork_files(&self, base: &Base, dst: &Path) -> Result<(), ManagerError> {
        let (src, dst) = (base.dir.clone(), dst.to_path_buf());
        let mode = self.cfg.fork_memory;
        tokio::task::spawn_blocking(move || -> Result<(), ManagerError> {
            let opts = BASE_SKIP.iter().fold(tine_storage::CopyOptions::new(), |o, s| o.skip(*s));
            let tmp = dst.join("files.tmp");
            // Copy into a temp dir, then move into the fork's directory, so a
            // half-copied fork never has files that look complete.
            tine_storage::copy_dir(&src, &tmp, &opts).map_err(|e| ManagerError::Failed(chain(&e)))?;
            for f in [ROOT_DISK, STATE_FILE] {
                std::fs::rename(tmp.join(f), dst.join(f))
                    .map_err(|e| ManagerError::io(format!("move {f} into the fork"), e))?;
            }
            let _ = std::fs::remove_dir_all(&tmp);
            let (from, to) = (src.join(MEMORY_FILE), dst.join(MEMORY_FILE));
            match mode {
                crate::ForkMemory::Link => {}
                crate::ForkMemory::Copy => {
                    tine_storage::copy_file(&from, &to).map_err(|e| ManagerError::Failed(chain(&e)))?;
                    return Ok(());
                }
                crate::ForkMemory::FullCopy => {
                    full_copy(&from, &to).map_err(|e| ManagerError::io("copy memory file", e))?;
                    return Ok(());
                }
            }
            let report = tine_storage::share(&from, &to).map_err(|e| ManagerError::Failed(chain(&e)))?;
            if report.link_errno.is_some() {
                warn!(?report, "memory file could not be hardlinked; copied instead");
            }
            Ok(())
        })
        .await
        .map_err(|e| ManagerError::Failed(format!("fork copy task: {e}")))?
    }
}

/// Capture a paused source's files for forking: disk and device state by
/// the copy engine; the memory file linked if the source never writes it
/// (private mapping), else copied so the source can continue writing its own.
fn capture_files(src: &Path, staging: &Path, mapping: MemoryMapping) -> Result<(), ManagerError> {
    let disk = tine_storage::copy_file(&src.join(ROOT_DISK), &staging.join(ROOT_DISK))
        .map_err(|e| ManagerError::Failed(chain(&e)))?;
    let mem = match mapping {
        MemoryMapping::Private => tine_storage::share(&src.join(MEMORY_FILE), &staging.join(MEMORY_FILE))
            .map(|_| ())
            .map_err(|e| ManagerError::Failed(chain(&e))),
        MemoryMapping::Shared => tine_storage::copy_file(&src.join(MEMORY_FILE), &staging.join(MEMORY_FILE))
            .map(|_| ())
            .map_err(|e| ManagerError::Failed(chain(&e))),
    };
    info!(?disk, "captured source disk");
    mem
}

fn shift(t: BootTimes, offset: Duration) -> BootTimes {
    let o = offset.as_secs_f64() * 1e3;
    BootTimes { running_ms: t.running_ms + o, ready_ms: t.ready_ms + o }
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
