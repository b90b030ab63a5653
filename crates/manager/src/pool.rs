//! Warm pools: forks prepared ahead of the request.
//!
//! A pool entry is a fork whose files are made (disk and device state
//! copied, memory file linked) and whose QEMU process is already started
//! and waiting for its state (`-incoming defer`). A fork request for the
//! same base claims an entry and only has to load the ~100 KB device state
//! and resume: the QEMU start-up (the bulk of a cold fork) is off the
//! critical path. Entries are refilled in the background.
//!
//! Entries are instance records in state Created with `pooled` set: hidden
//! from listings, removed with their VM by the restart logic like any
//! unfinished creation, and never counted as template forks. A pool is
//! keyed by its base (the standby instance or snapshot id); it is dropped
//! when the base changes (restored, removed). Pool specs persist in
//! `DATA_DIR/pools.json` and are refilled at daemon start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tine_hypervisor::{Boot, MemoryMapping, VmProcess};
use tracing::{info, warn};

use crate::error::{chain, ManagerError};
use crate::fork::{Base, ForkFrom, ForkRequest};
use crate::ops::STATE_FILE;
use crate::{image, names, now_unix, Manager, Slot};

pub const MAX_POOL_SIZE: u32 = 64;
const POOLS_FILE: &str = "pools.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    #[serde(default)]
    pub from: ForkFrom,
    pub source: String,
    pub size: u32,
}

impl PoolSpec {
    /// Size and source name: what can be checked without the daemon's state.
    pub fn validate(&self) -> Result<(), ManagerError> {
        if !(1..=MAX_POOL_SIZE).contains(&self.size) {
            return Err(ManagerError::InvalidArgument(format!(
                "pool size {} is out of range (1..={MAX_POOL_SIZE})",
                self.size
            )));
        }
        names::validate_name(&self.source).map_err(ManagerError::InvalidArgument)
    }
}

/// Parse `pools.json` (what `save_pools` wrote); every spec must be valid.
pub fn parse_pools(bytes: &[u8]) -> Result<Vec<PoolSpec>, ManagerError> {
    let specs: Vec<PoolSpec> = serde_json::from_slice(bytes)
        .map_err(|e| ManagerError::Failed(format!("malformed pools.json: {e}")))?;
    for spec in &specs {
        spec.validate()?;
    }
    Ok(specs)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolInfo {
    #[serde(flatten)]
    pub spec: PoolSpec,
    /// Entries ready to be claimed now.
    pub ready: usize,
    pub hits: u64,
    pub misses: u64,
    /// Resident memory of the waiting QEMU processes (sum of RSS).
    pub rss_bytes: u64,
}

pub(crate) struct Pool {
    spec: PoolSpec,
    /// Base identity the entries were made from.
    key: Mutex<Option<String>>,
    entries: Mutex<Vec<(Arc<Slot>, VmProcess)>>,
    filling: AtomicBool,
    /// Fork bursts from this pool's source under way: refills wait for
    /// them, so new QEMUs do not compete with the claims for the CPU.
    bursts: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Marks a fork burst from a pooled source; when it ends, the pool refills.
pub(crate) struct Burst {
    mgr: Arc<Manager>,
    pool: Arc<Pool>,
}

impl Drop for Burst {
    fn drop(&mut self) {
        self.pool.bursts.fetch_sub(1, Ordering::AcqRel);
        self.mgr.refill(self.pool.clone());
    }
}

fn pool_id(from: ForkFrom, source: &str) -> String {
    format!("{from:?}:{source}").to_lowercase()
}

fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

impl Manager {
    fn pool_info(&self, p: &Pool) -> PoolInfo {
        let entries = p.entries.lock().expect("pool");
        PoolInfo {
            spec: p.spec.clone(),
            ready: entries.len(),
            hits: p.hits.load(Ordering::Relaxed),
            misses: p.misses.load(Ordering::Relaxed),
            rss_bytes: entries.iter().map(|(_, proc)| rss_bytes(proc.pid)).sum(),
        }
    }

    pub fn pools(&self) -> Vec<PoolInfo> {
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .expect("pools")
            .values()
            .cloned()
            .collect();
        pools.iter().map(|p| self.pool_info(p)).collect()
    }

    /// Create or resize a pool; entries are made in the background.
    pub async fn pool_set(self: &Arc<Self>, spec: PoolSpec) -> Result<PoolInfo, ManagerError> {
        spec.validate()?;
        // The source must be forkable now (fails early with a clear error).
        let probe = ForkRequest {
            source: spec.source.clone(),
            from: spec.from,
            ..Default::default()
        };
        let (base, _) = self.fork_base(&probe).await?;
        drop(base);
        let id = pool_id(spec.from, &spec.source);
        let old = self.pools.lock().expect("pools").remove(&id);
        if let Some(old) = old {
            self.drain(&old).await;
        }
        let pool = Arc::new(Pool {
            spec,
            key: Mutex::new(None),
            entries: Mutex::new(Vec::new()),
            filling: AtomicBool::new(false),
            bursts: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        });
        self.pools.lock().expect("pools").insert(id, pool.clone());
        self.save_pools()?;
        self.refill(pool.clone());
        Ok(self.pool_info(&pool))
    }

    pub async fn pool_remove(
        self: &Arc<Self>,
        from: ForkFrom,
        source: &str,
    ) -> Result<PoolInfo, ManagerError> {
        let pool = self
            .pools
            .lock()
            .expect("pools")
            .remove(&pool_id(from, source))
            .ok_or_else(|| ManagerError::NotFound(format!("pool for {source}")))?;
        let info = self.pool_info(&pool);
        self.drain(&pool).await;
        self.save_pools()?;
        Ok(info)
    }

    /// Remove the pools built on a source that is going away, by any of
    /// its names. The caller holds the source's lock exclusively, so no
    /// refill is half-way and later ones fail: no entry outlives this.
    pub(crate) async fn remove_pools(self: &Arc<Self>, from: ForkFrom, names: [&str; 2]) {
        for name in names {
            // NotFound: no pool on this name.
            let _ = self.pool_remove(from, name).await;
        }
    }

    /// Drop every pool built on `source` (it changed or is going away).
    pub(crate) async fn pool_invalidate(self: &Arc<Self>, from: ForkFrom, source: &str) {
        let pool = self
            .pools
            .lock()
            .expect("pools")
            .get(&pool_id(from, source))
            .cloned();
        if let Some(pool) = pool {
            // Key first: an entry being made now is then refused, not kept.
            *pool.key.lock().expect("key") = None;
            self.drain(&pool).await;
        }
    }

    async fn drain(&self, pool: &Pool) {
        let entries: Vec<_> = std::mem::take(&mut *pool.entries.lock().expect("pool"));
        for (slot, _) in entries {
            self.discard(&slot).await;
        }
    }

    fn save_pools(&self) -> Result<(), ManagerError> {
        let specs: Vec<PoolSpec> = self
            .pools
            .lock()
            .expect("pools")
            .values()
            .map(|p| p.spec.clone())
            .collect();
        let bytes = serde_json::to_vec_pretty(&specs).expect("pools serialize");
        tine_storage::write_atomic(&self.cfg.data_dir.join(POOLS_FILE), &bytes)
            .map_err(|e| ManagerError::io("save pools.json", e))
    }

    /// Re-create the pools of a previous daemon run.
    pub(crate) fn load_pools(self: &Arc<Self>) {
        let Ok(bytes) = std::fs::read(self.cfg.data_dir.join(POOLS_FILE)) else {
            return;
        };
        let specs = match parse_pools(&bytes) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "ignoring a malformed pools.json");
                return;
            }
        };
        for spec in specs {
            let mgr = self.clone();
            tokio::spawn(async move {
                if let Err(e) = mgr.pool_set(spec.clone()).await {
                    warn!(source = spec.source, error = %chain(&e), "could not re-create a pool");
                }
            });
        }
    }

    /// Top the pool up to its size in the background (one filler at a time).
    pub(crate) fn refill(self: &Arc<Self>, pool: Arc<Pool>) {
        if pool.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let mgr = self.clone();
        tokio::spawn(async move {
            loop {
                let have = pool.entries.lock().expect("pool").len();
                let current = mgr
                    .pools
                    .lock()
                    .expect("pools")
                    .get(&pool_id(pool.spec.from, &pool.spec.source))
                    .cloned();
                if have >= pool.spec.size as usize
                    || !current.is_some_and(|c| Arc::ptr_eq(&c, &pool))
                {
                    break;
                }
                if pool.bursts.load(Ordering::Acquire) > 0 {
                    // The burst's end starts another refill.
                    break;
                }
                if let Err(e) = mgr.prefill_one(&pool).await {
                    warn!(source = pool.spec.source, error = %chain(&e), "pool refill failed");
                    break;
                }
            }
            pool.filling.store(false, Ordering::Release);
        });
    }

    async fn prefill_one(self: &Arc<Self>, pool: &Arc<Pool>) -> Result<(), ManagerError> {
        let req = ForkRequest {
            source: pool.spec.source.clone(),
            from: pool.spec.from,
            ..Default::default()
        };
        let (base, _) = self.fork_base(&req).await?;
        if !base.has_state {
            return Err(ManagerError::InvalidArgument(
                "a pool needs a source with memory (standby kind)".into(),
            ));
        }
        let stale = {
            let mut key = pool.key.lock().expect("key");
            let stale = key.as_deref() != Some(base.key.as_str());
            *key = Some(base.key.clone());
            stale
        };
        if stale {
            // A new parked state of the source: entries of the old one go.
            self.drain(pool).await;
        }
        let image = image::load(&self.cfg.images_dir, &base.image)?;
        let id = names::new_id();
        let network = self.network_lease_if(base.network, &id)?;
        let record = base.new_record(
            id.clone(),
            format!("pool-{id}"),
            MemoryMapping::Private,
            true,
            network.clone(),
        );
        let slot = match self.reserve(record) {
            Ok(s) => s,
            Err(e) => {
                self.network_release(network.as_ref()).await;
                return Err(e);
            }
        };
        let made = async {
            self.fork_files(&base, &slot.dir, true).await?;
            let rec = slot.record();
            let spec = self.spec(&slot, &rec, &image);
            self.network_prepare(&rec).await?;
            let boot = self.pool_boot(&slot, &base);
            let proc = self.hv.prestart(&spec, &boot).await?;
            slot.update(|r| r.process = Some(proc))?;
            Ok::<_, ManagerError>(proc)
        }
        .await;
        match made {
            Ok(proc) => {
                // The source may have moved on (restore, rm) or the pool been
                // removed while this entry was made: then it is stale.
                let kept = {
                    let mut entries = pool.entries.lock().expect("pool");
                    let same_key =
                        pool.key.lock().expect("key").as_deref() == Some(base.key.as_str());
                    let current = self.pool_of(&base).is_some_and(|c| Arc::ptr_eq(&c, pool));
                    if same_key && current {
                        entries.push((slot.clone(), proc));
                    }
                    same_key && current
                };
                if !kept {
                    self.discard(&slot).await;
                }
                Ok(())
            }
            Err(e) => {
                self.discard(&slot).await;
                Err(e)
            }
        }
    }

    fn pool_boot(&self, slot: &Slot, base: &Base) -> Boot {
        Boot::Restore {
            state_file: slot.dir.join(STATE_FILE),
            mapping: MemoryMapping::Private,
            ram_in_state: base.ram_in_state,
        }
    }

    fn pool_of(&self, base: &Base) -> Option<Arc<Pool>> {
        self.pools
            .lock()
            .expect("pools")
            .get(&pool_id(base.from, &base.source))
            .cloned()
    }

    /// Mark a fork burst from `base`'s source, if it has a pool.
    pub(crate) fn pool_burst(self: &Arc<Self>, base: &Base) -> Option<Burst> {
        let pool = self.pool_of(base)?;
        pool.bursts.fetch_add(1, Ordering::AcqRel);
        Some(Burst {
            mgr: self.clone(),
            pool,
        })
    }

    /// Take a ready entry made from `base`, if any (a miss triggers nothing
    /// but the count; every take triggers a refill).
    pub(crate) fn pool_take(self: &Arc<Self>, base: &Base) -> Option<(Arc<Slot>, VmProcess, Boot)> {
        let pool = self.pool_of(base)?;
        let fresh = pool.key.lock().expect("key").as_deref() == Some(base.key.as_str());
        let taken = if fresh {
            pool.entries.lock().expect("pool").pop()
        } else {
            None
        };
        match &taken {
            Some(_) => {
                pool.hits.fetch_add(1, Ordering::Relaxed);
                self.metrics.pool_hits.fetch_add(1, Ordering::Relaxed)
            }
            None => {
                pool.misses.fetch_add(1, Ordering::Relaxed);
                self.metrics.pool_misses.fetch_add(1, Ordering::Relaxed)
            }
        };
        self.refill(pool);
        taken.map(|(slot, proc)| {
            let boot = self.pool_boot(&slot, base);
            (slot, proc, boot)
        })
    }

    /// Turn a claimed entry into the named fork: load, resume, rename.
    /// Loading comes first: it is what the caller waits for, and the entry
    /// is already out of the pool, so nobody else can touch it.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        slot: Arc<Slot>,
        proc: VmProcess,
        boot: Boot,
        name: &str,
        t0: std::time::Instant,
        permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(Arc<Slot>, crate::ops::BootTimes), (Arc<Slot>, ManagerError)> {
        let _g = slot.op.lock().await;
        let taken_ms = crate::ops::ms(t0);
        if let Err(e) = self.hv.load(&slot.dir, &proc, &boot).await {
            return Err((slot.clone(), e.into()));
        }
        // Held until this fork is ready, as a cold fork holds it (see
        // `Manager::boot`): released at running, a burst's claims all resume
        // at once and their agents and identity calls compete on the cores.
        let _slot = permit.take();
        let running_ms = crate::ops::ms(t0);
        let renamed = {
            let slots = self.slots.read().expect("slots");
            if slots.values().any(|s| {
                let r = s.rec.lock().expect("rec");
                !r.pooled && r.name == name
            }) {
                Err(ManagerError::AlreadyExists(name.into()))
            } else {
                slot.update(|r| {
                    r.name = name.into();
                    r.pooled = false;
                    r.created_at = now_unix();
                })
            }
        };
        if let Err(e) = renamed {
            return Err((slot.clone(), e));
        }
        info!(name, taken_ms, running_ms, "fork claimed a warm pool entry");
        match self
            .finish_boot(
                &slot,
                proc,
                crate::ops::BootClock {
                    t0,
                    start_ms: taken_ms,
                    running_ms,
                },
                Some(crate::agent::Identity::new(name)),
                true,
            )
            .await
        {
            Ok(times) => Ok((slot.clone(), times)),
            Err(e) => Err((slot.clone(), e)),
        }
    }
}

pub(crate) type Pools = Mutex<HashMap<String, Arc<Pool>>>;
