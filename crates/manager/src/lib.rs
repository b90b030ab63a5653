//! The instance manager: names, records, the state machine and lifecycle.
//!
//! Ownership and ordering: the manager owns one [`Slot`] per instance. Every
//! state-changing operation holds the slot's `op` lock for its whole
//! duration, checks the transition with [`state::check`] first (so an illegal
//! request changes nothing), and persists the record after each durable step.
//! Reads (`list`, `get`) only take the short `rec` lock and never wait for an
//! operation. The manager knows neither HTTP nor QEMU: it talks to a
//! [`Hypervisor`] and to the guest agent.

pub mod admission;
mod agent;
mod base;
pub mod compress;
pub mod console;
mod datalock;
pub mod error;
pub mod failpoint;
pub mod fork;
pub mod image;
pub mod integrity;
mod memfile;
pub mod metrics;
pub mod names;
pub mod network;
mod ops;
pub mod pool;
pub mod record;
mod recover;
mod snapshot;
mod space;
mod standby;
pub mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tine_hypervisor::{AccelChoice, Hypervisor};

pub use error::ManagerError;
pub use fork::{ForkFrom, ForkOutcome, ForkPhases, ForkReport, ForkRequest, ForkTarget};
pub use pool::{PoolInfo, PoolSpec};
pub use record::InstanceRecord;
pub use snapshot::{
    CompressState, Compression, SnapshotInfo, SnapshotKind, SnapshotRecord, SnapshotRequest,
};
pub use state::State;
pub use tine_agent_proto::client::{ExecEvent, ExecOutput};
pub use tine_agent_proto::{ExecRequest, ExitStatus};
pub use tine_hypervisor::{Accel, HvError};

pub const MIN_MEMORY_MIB: u32 = 64;
pub const DEFAULT_MEMORY_MIB: u32 = 256;
pub const MAX_MEMORY_MIB: u32 = 64 * 1024;
pub const MAX_VCPUS: u32 = 64;

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub images_dir: PathBuf,
    /// `None`: detect (KVM if usable, TCG otherwise).
    pub accel: Option<Accel>,
    /// Process start → guest agent answers.
    pub boot_timeout: Duration,
    /// How forks get their memory file. `Link` is tine's design; the others
    /// exist so benchmarks can compare against them in one run.
    pub fork_memory: ForkMemory,
    /// Bridge, subnet and DNS for instances' networks.
    pub network: network::NetworkOptions,
    /// Caps, the memory budget and the disk reserve (`admission.rs`).
    pub limits: admission::Limits,
    /// Most bytes a live VM's console log keeps (`console.rs`).
    pub console_log_max: u64,
}

/// How a fork gets its memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkMemory {
    /// Hardlink to the source's file (shared inode and page cache).
    #[default]
    Link,
    /// Per-fork copy by the copy engine (reflink where the fs can, else sparse).
    Copy,
    /// Per-fork byte-for-byte copy, never a reflink (the naive baseline).
    FullCopy,
}

impl std::str::FromStr for ForkMemory {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "link" => Ok(ForkMemory::Link),
            "copy" => Ok(ForkMemory::Copy),
            "full-copy" => Ok(ForkMemory::FullCopy),
            o => Err(format!(
                "unknown fork memory mode {o:?} (link, copy or full-copy)"
            )),
        }
    }
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Config {
        let images_dir = data_dir.join("images");
        Config {
            data_dir,
            images_dir,
            accel: None,
            boot_timeout: Duration::from_secs(180),
            fork_memory: ForkMemory::Link,
            network: network::NetworkOptions::default(),
            limits: admission::Limits::detect(),
            console_log_max: console::DEFAULT_MAX,
        }
    }
}

/// A request to create and boot an instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRequest {
    pub name: Option<String>,
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u32>,
    pub image: Option<String>,
    pub accel: Option<Accel>,
    /// `None`: the daemon's default (a network unless it runs without).
    #[serde(default)]
    pub network: Option<network::NetworkMode>,
}

impl RunRequest {
    /// Memory, vCPUs and name: what can be checked before anything is made.
    pub fn validate(&self) -> Result<(), ManagerError> {
        ops::validate_size(
            self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            self.vcpus.unwrap_or(1),
        )?;
        if let Some(n) = &self.name {
            names::validate_name(n).map_err(ManagerError::InvalidArgument)?;
        }
        Ok(())
    }
}

/// Every exec needs a command; the agent bounds the rest.
pub fn validate_exec(req: &ExecRequest) -> Result<(), ManagerError> {
    if req.argv.is_empty() {
        return Err(ManagerError::InvalidArgument("exec needs a command".into()));
    }
    Ok(())
}

/// What clients see of an instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub name: String,
    pub state: State,
    pub image: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: Accel,
    pub created_at: u64,
    pub pid: Option<i32>,
    pub error: Option<String>,
    pub boot_ms: Option<f64>,
    pub dir: PathBuf,
    /// Address, MAC and TAP (none: no network).
    #[serde(default)]
    pub network: Option<network::Lease>,
}

struct Slot {
    id: String,
    dir: PathBuf,
    /// Held for the whole of every state-changing operation.
    op: tokio::sync::Mutex<()>,
    /// Held shared by forks made from this instance's parked files until
    /// they have their own; restore and rm take it exclusive first.
    files: Arc<tokio::sync::RwLock<()>>,
    rec: Mutex<InstanceRecord>,
    agent: agent::AgentSlot,
    /// Trims of its console log (see `console.rs`).
    console: Arc<console::Trims>,
}

impl Slot {
    /// Wait until no fork is still reading this instance's parked files
    /// (restore rewrites them, rm deletes them).
    async fn own_files(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        match self.files.try_write() {
            Ok(g) => g,
            Err(_) => {
                let name = self.record().name;
                tracing::info!(name, "waiting for forks being made from its parked files");
                self.files.write().await
            }
        }
    }

    fn record(&self) -> InstanceRecord {
        self.rec.lock().expect("record lock").clone()
    }

    fn info(&self) -> InstanceInfo {
        let r = self.record();
        InstanceInfo {
            id: r.id,
            name: r.name,
            state: r.state,
            image: r.image,
            memory_mib: r.memory_mib,
            vcpus: r.vcpus,
            accel: r.accel,
            created_at: r.created_at,
            pid: r.process.map(|p| p.pid),
            error: r.error,
            boot_ms: r.boot_ms,
            dir: self.dir.clone(),
            network: r.network,
        }
    }

    /// Apply a change to the record and persist it before anyone sees it.
    fn update(&self, f: impl FnOnce(&mut InstanceRecord)) -> Result<(), ManagerError> {
        let mut rec = self.rec.lock().expect("record lock");
        let mut next = rec.clone();
        f(&mut next);
        next.save(&self.dir)
            .map_err(|e| ManagerError::io(format!("save record of {}", next.name), e))?;
        *rec = next;
        Ok(())
    }
}

pub struct Manager {
    /// This daemon's claim on its data directory.
    _lock: datalock::DataDirLock,
    cfg: Config,
    hv: Arc<dyn Hypervisor>,
    accel: AccelChoice,
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    snaps: RwLock<HashMap<String, Arc<snapshot::SnapSlot>>>,
    pools: pool::Pools,
    net: network::Network,
    metrics: Arc<metrics::Metrics>,
    admission: admission::Admission,
}

impl Manager {
    /// Open the data directory, re-attach to running VMs and mark dead ones.
    pub async fn open(cfg: Config, hv: Arc<dyn Hypervisor>) -> Result<Arc<Manager>, ManagerError> {
        let accel = match cfg.accel {
            Some(a) => AccelChoice {
                accel: a,
                warning: None,
            },
            None => tine_hypervisor::detect_accel(),
        };
        ops::create_private_dir(&cfg.data_dir.join("instances"))?;
        let lock = datalock::DataDirLock::take(&cfg.data_dir)?;
        let snaps = snapshot::load_store(&cfg.data_dir.join("snapshots"))?;
        let net = network::Network::open(&cfg.network, &cfg.data_dir)?;
        let mgr = Arc::new(Manager {
            cfg,
            hv,
            accel,
            slots: RwLock::new(HashMap::new()),
            snaps: RwLock::new(snaps),
            pools: Default::default(),
            net,
            metrics: Default::default(),
            admission: Default::default(),
            _lock: lock,
        });
        // Probe now, while there is room for the probe's inodes.
        mgr.reflinks();
        recover::load_all(&mgr).await?;
        mgr.network_recover().await?;
        mgr.load_pools();
        console::spawn_sweep(&mgr);
        Ok(mgr)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The accelerator new instances get by default, and why.
    pub fn accel(&self) -> &AccelChoice {
        &self.accel
    }

    /// Prometheus text of the daemon's counters.
    pub fn metrics_text(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for i in self.list() {
            match counts.iter_mut().find(|(s, _)| *s == i.state.as_str()) {
                Some((_, n)) => *n += 1,
                None => counts.push((i.state.as_str(), 1)),
            }
        }
        self.metrics.render(&counts)
    }

    pub fn instances_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("instances")
    }

    pub fn list(&self) -> Vec<InstanceInfo> {
        let mut v: Vec<InstanceInfo> = self
            .slots
            .read()
            .expect("slots")
            .values()
            .filter(|s| !s.rec.lock().expect("rec").pooled)
            .map(|s| s.info())
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        v
    }

    pub fn get(&self, name_or_id: &str) -> Result<InstanceInfo, ManagerError> {
        Ok(self.slot(name_or_id)?.info())
    }

    /// Path of the serial console log of an instance, and its trims.
    pub fn console_log(
        &self,
        name_or_id: &str,
    ) -> Result<(PathBuf, Arc<console::Trims>), ManagerError> {
        let slot = self.slot(name_or_id)?;
        Ok((
            self.hv.endpoints(&slot.dir).console_log,
            slot.console.clone(),
        ))
    }

    fn slot(&self, name_or_id: &str) -> Result<Arc<Slot>, ManagerError> {
        let slots = self.slots.read().expect("slots");
        let visible = |s: &&Arc<Slot>| !s.rec.lock().expect("rec").pooled;
        if let Some(s) = slots
            .values()
            .filter(visible)
            .find(|s| s.rec.lock().expect("rec").name == name_or_id)
        {
            return Ok(s.clone());
        }
        if names::looks_like_id(name_or_id) {
            if let Some(s) = slots.get(name_or_id).filter(visible) {
                return Ok(s.clone());
            }
        }
        Err(ManagerError::NotFound(name_or_id.to_string()))
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.instances_dir().join(id)
    }
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
