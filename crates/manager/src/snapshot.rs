//! The snapshot store: named, immutable copies of an instance's parked
//! state (disk, device state, memory file) under `DATA_DIR/snapshots/ID/`.
//!
//! - Creation captures into `ID.tmp/` and renames it into place after the
//!   files and the record are durable: a crash leaves either no snapshot or
//!   a complete one (`*.tmp` directories are swept at start).
//! - The memory file is linked from its source, never copied, when the
//!   source does not write it (a standby instance); a running source that
//!   owns its file is paused while a private copy is taken.
//! - Snapshot files are never written after creation; forks and restores
//!   link or copy them. Deleting a snapshot never strands a fork.
//! - Templates are snapshots flagged `template`: only forked, never
//!   restored, and not deletable while forks made from them exist (counted
//!   from instance records, so the count cannot drift).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tine_hypervisor::Accel;
use tokio::sync::RwLock;
use tracing::{info, warn};

use crate::compress;
use crate::error::{chain, ManagerError};
use crate::names;
use crate::ops::{remove_dir, MEMORY_FILE};
use crate::state::Op;
use crate::{now_unix, Manager};

pub const SNAPSHOT_SCHEMA: u32 = 1;
pub const SNAPSHOT_RECORD: &str = "snapshot.json";
pub(crate) const MEMORY_ZST: &str = "memory.zst";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// Memory, device state and disk: forks and restores continue the VM.
    #[default]
    Standby,
    /// Disk only: forks and restores boot it.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressState {
    #[default]
    None,
    Compressing,
    Compressed,
    Error,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Compression {
    pub state: CompressState,
    pub level: Option<i32>,
    pub raw_bytes: Option<u64>,
    pub compressed_bytes: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub schema: u32,
    pub id: String,
    pub name: String,
    pub kind: SnapshotKind,
    pub template: bool,
    /// Name of the instance it was taken from.
    pub source: String,
    pub image: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: Accel,
    /// The device state carries the RAM (saved without x-ignore-shared).
    pub ram_in_state: bool,
    pub created_at: u64,
    #[serde(default)]
    pub compression: Compression,
    /// Digest of the device state, checked before forks or restores load it.
    #[serde(default)]
    pub state_digest: Option<crate::integrity::StateDigest>,
    /// The source had a NIC: forks get one (and a lease) so their device
    /// layout matches the saved state.
    #[serde(default)]
    pub network: bool,
}

/// What clients see of a snapshot or template.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotInfo {
    #[serde(flatten)]
    pub record: SnapshotRecord,
    /// Live instances forked from this template.
    pub forks: usize,
    /// Bytes allocated on disk by the snapshot's files.
    pub disk_bytes: u64,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// The instance to snapshot.
    pub instance: String,
    pub name: String,
    #[serde(default)]
    pub kind: SnapshotKind,
    /// zstd level (1–19) to compress the memory file with, after the fact.
    #[serde(default)]
    pub compress: Option<i32>,
}

impl SnapshotRequest {
    /// Name and compression level: what can be checked before anything is made.
    pub fn validate(&self) -> Result<(), ManagerError> {
        names::validate_name(&self.name).map_err(ManagerError::InvalidArgument)?;
        if let Some(level) = self.compress {
            if !(1..=19).contains(&level) {
                return Err(ManagerError::InvalidArgument(format!(
                    "zstd level {level} is out of range (1..=19)"
                )));
            }
        }
        Ok(())
    }
}

impl SnapshotRecord {
    /// Parse `snapshot.json` (what `save` wrote): schema first, then the
    /// record, then the id and name it is stored and looked up by.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotRecord, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed: {e}"))?;
        match v.get("schema").and_then(|s| s.as_u64()) {
            Some(s) if s == u64::from(SNAPSHOT_SCHEMA) => {}
            other => return Err(format!("unsupported schema {other:?}")),
        }
        let rec: SnapshotRecord =
            serde_json::from_value(v).map_err(|e| format!("malformed: {e}"))?;
        if !names::looks_like_id(&rec.id) {
            return Err("malformed: id is not 12 hex digits".into());
        }
        names::validate_name(&rec.name).map_err(|e| format!("malformed: {e}"))?;
        Ok(rec)
    }
}

pub(crate) struct SnapSlot {
    pub(crate) id: String,
    pub(crate) dir: PathBuf,
    /// Forks hold it shared for their whole run; rm takes it exclusive.
    pub(crate) op: Arc<RwLock<()>>,
    pub(crate) rec: Mutex<SnapshotRecord>,
    job: Mutex<Option<(Arc<AtomicBool>, tokio::task::JoinHandle<()>)>>,
}

impl SnapSlot {
    pub(crate) fn new(dir: PathBuf, rec: SnapshotRecord) -> SnapSlot {
        SnapSlot {
            id: rec.id.clone(),
            dir,
            op: Arc::new(RwLock::new(())),
            rec: Mutex::new(rec),
            job: Mutex::new(None),
        }
    }

    pub(crate) fn record(&self) -> SnapshotRecord {
        self.rec.lock().expect("snapshot record").clone()
    }

    fn update(&self, f: impl FnOnce(&mut SnapshotRecord)) -> Result<(), ManagerError> {
        let mut rec = self.rec.lock().expect("snapshot record");
        let mut next = rec.clone();
        f(&mut next);
        save(&self.dir, &next)?;
        *rec = next;
        Ok(())
    }

    /// Stop a running compression and wait for it; the raw file stays.
    pub(crate) async fn cancel_compression(&self) {
        let job = self.job.lock().expect("job").take();
        if let Some((cancel, handle)) = job {
            cancel.store(true, Ordering::Relaxed);
            let _ = handle.await;
        }
    }

    /// Make sure the raw memory file exists (decompressing if needed).
    pub(crate) async fn ensure_raw_memory(&self) -> Result<(), ManagerError> {
        self.cancel_compression().await;
        let (raw, zst) = (self.dir.join(MEMORY_FILE), self.dir.join(MEMORY_ZST));
        if raw.exists() || !zst.exists() {
            return Ok(());
        }
        info!(
            snapshot = self.record().name,
            "decompressing memory file for use"
        );
        let expected = u64::from(self.record().memory_mib) << 20;
        tokio::task::spawn_blocking(move || compress::decompress(&zst, &raw, expected))
            .await
            .map_err(|e| ManagerError::Failed(format!("decompress task: {e}")))?
            .map_err(|e| ManagerError::Failed(chain(&e)))
    }
}

pub(crate) fn save(dir: &Path, rec: &SnapshotRecord) -> Result<(), ManagerError> {
    let bytes = serde_json::to_vec_pretty(rec).expect("record serializes");
    tine_storage::write_atomic(&dir.join(SNAPSHOT_RECORD), &bytes)
        .map_err(|e| ManagerError::io(format!("save snapshot record in {}", dir.display()), e))
}

pub(crate) fn load(dir: &Path) -> Result<SnapshotRecord, ManagerError> {
    let path = dir.join(SNAPSHOT_RECORD);
    let meta = std::fs::metadata(&path)
        .map_err(|e| ManagerError::io(format!("read {}", path.display()), e))?;
    if meta.len() > 1 << 20 {
        return Err(ManagerError::Failed(format!(
            "{} is too large",
            path.display()
        )));
    }
    let bytes = std::fs::read(&path)
        .map_err(|e| ManagerError::io(format!("read {}", path.display()), e))?;
    SnapshotRecord::decode(&bytes)
        .map_err(|e| ManagerError::Failed(format!("{}: {e}", path.display())))
}

fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

impl Manager {
    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("snapshots")
    }

    pub(crate) fn snap(
        &self,
        name_or_id: &str,
        template: bool,
    ) -> Result<Arc<SnapSlot>, ManagerError> {
        let snaps = self.snaps.read().expect("snaps");
        let found = snaps
            .values()
            .find(|s| {
                let r = s.rec.lock().expect("rec");
                r.template == template && (r.name == name_or_id || r.id == name_or_id)
            })
            .cloned();
        found.ok_or_else(|| {
            let what = if template { "template" } else { "snapshot" };
            ManagerError::NotFound(format!("{what} {name_or_id}"))
        })
    }

    fn snap_info(&self, s: &SnapSlot) -> SnapshotInfo {
        let record = s.record();
        let forks = if record.template {
            self.template_forks(&record.id)
        } else {
            0
        };
        SnapshotInfo {
            forks,
            disk_bytes: disk_bytes(&s.dir),
            dir: s.dir.clone(),
            record,
        }
    }

    pub(crate) fn template_forks(&self, template_id: &str) -> usize {
        let slots = self.slots.read().expect("slots");
        slots
            .values()
            .filter(|s| {
                let r = s.rec.lock().expect("rec");
                !r.pooled && r.template.as_deref() == Some(template_id)
            })
            .count()
    }

    pub fn snapshots(&self, templates: bool) -> Vec<SnapshotInfo> {
        let snaps: Vec<Arc<SnapSlot>> = self
            .snaps
            .read()
            .expect("snaps")
            .values()
            .cloned()
            .collect();
        let mut v: Vec<SnapshotInfo> = snaps
            .iter()
            .map(|s| self.snap_info(s))
            .filter(|i| i.record.template == templates)
            .collect();
        v.sort_by(|a, b| {
            (a.record.created_at, &a.record.name).cmp(&(b.record.created_at, &b.record.name))
        });
        v
    }

    pub fn snapshot(&self, name: &str, template: bool) -> Result<SnapshotInfo, ManagerError> {
        let snap = self.snap(name, template)?;
        Ok(self.snap_info(&snap))
    }

    pub async fn snapshot_create(
        self: &Arc<Self>,
        req: SnapshotRequest,
    ) -> Result<SnapshotInfo, ManagerError> {
        self.snapshot_create_inner(req, false).await
    }

    pub(crate) async fn snapshot_create_inner(
        self: &Arc<Self>,
        req: SnapshotRequest,
        template: bool,
    ) -> Result<SnapshotInfo, ManagerError> {
        req.validate()?;
        if self.snap(&req.name, template).is_ok() {
            return Err(ManagerError::AlreadyExists(req.name));
        }
        let slot = self.slot(&req.instance)?;
        let _g = slot.op.lock().await;
        let rec = slot.record();
        let op = match (template, req.kind) {
            (true, _) => Op::Promote,
            (false, SnapshotKind::Standby) => Op::Snapshot,
            (false, SnapshotKind::Stopped) => Op::SnapshotDisk,
        };
        self.transition(&rec, op)?;
        self.check_disk(
            &format!("snapshot of {}", rec.name),
            self.capture_bytes(&slot.dir, &rec, req.kind),
        )?;
        let id = names::new_id();
        let final_dir = self.snapshots_dir().join(&id);
        let staging = self.snapshots_dir().join(format!("{id}.tmp"));
        crate::ops::create_private_dir(&staging)?;
        let result = async {
            let captured = self.capture(&slot, &rec, &staging, req.kind).await?;
            let record = SnapshotRecord {
                schema: SNAPSHOT_SCHEMA,
                id: id.clone(),
                name: req.name.clone(),
                kind: req.kind,
                template,
                source: rec.name.clone(),
                image: rec.image.clone(),
                memory_mib: rec.memory_mib,
                vcpus: rec.vcpus,
                accel: rec.accel,
                ram_in_state: captured.ram_in_state,
                created_at: now_unix(),
                compression: Compression::default(),
                network: rec.network.is_some(),
                state_digest: match staging.join(crate::ops::STATE_FILE).exists() {
                    true => Some(crate::integrity::digest(
                        &staging.join(crate::ops::STATE_FILE),
                    )?),
                    false => None,
                },
            };
            crate::failpoint::hit("snapshot-captured", &req.name)?;
            sync_tree(&staging)?;
            save(&staging, &record)?;
            std::fs::rename(&staging, &final_dir)
                .map_err(|e| ManagerError::io("move snapshot into place", e))?;
            tine_storage::sync_dir(&self.snapshots_dir())
                .map_err(|e| ManagerError::io("fsync snapshots", e))?;
            Ok::<_, ManagerError>(record)
        }
        .await;
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = remove_dir(&staging);
                return Err(e);
            }
        };
        let snap = Arc::new(SnapSlot::new(final_dir, record));
        self.snaps
            .write()
            .expect("snaps")
            .insert(snap.id.clone(), snap.clone());
        info!(
            snapshot = req.name,
            instance = rec.name,
            template,
            "snapshot created"
        );
        if let Some(level) = req.compress {
            self.start_compression(snap.clone(), level)?;
        }
        Ok(self.snap_info(&snap))
    }

    fn start_compression(&self, snap: Arc<SnapSlot>, level: i32) -> Result<(), ManagerError> {
        let raw = snap.dir.join(MEMORY_FILE);
        if !raw.exists() {
            return Err(ManagerError::InvalidArgument(
                "this snapshot has no memory file to compress".into(),
            ));
        }
        let raw_bytes = std::fs::metadata(&raw).ok().map(|m| m.len());
        snap.update(|r| {
            r.compression = Compression {
                state: CompressState::Compressing,
                level: Some(level),
                raw_bytes,
                ..Default::default()
            }
        })?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (c, s) = (cancel.clone(), snap.clone());
        let handle = tokio::spawn(async move {
            let (src, dst) = (s.dir.join(MEMORY_FILE), s.dir.join(MEMORY_ZST));
            let c2 = c.clone();
            let res =
                tokio::task::spawn_blocking(move || compress::compress(&src, &dst, level, &c2))
                    .await;
            let outcome = match res {
                Ok(Ok(bytes)) => {
                    crate::failpoint::reach("compress-done", &s.record().name);
                    // Compressed copy is durable: drop our link to the raw file.
                    let _ = std::fs::remove_file(s.dir.join(MEMORY_FILE));
                    Ok(bytes)
                }
                Ok(Err(compress::CompressError::Cancelled)) => Err(None),
                Ok(Err(e)) => Err(Some(chain(&e))),
                Err(e) => Err(Some(format!("compression task: {e}"))),
            };
            let _ = s.update(|r| match outcome {
                Ok(bytes) => {
                    r.compression.state = CompressState::Compressed;
                    r.compression.compressed_bytes = Some(bytes);
                }
                Err(None) => r.compression.state = CompressState::None,
                Err(Some(e)) => {
                    warn!(snapshot = r.name, error = e, "compression failed");
                    r.compression.state = CompressState::Error;
                    r.compression.error = Some(e);
                }
            });
        });
        *snap.job.lock().expect("job") = Some((cancel, handle));
        Ok(())
    }

    /// Wait until a snapshot's compression has finished (for tests/scripts).
    pub async fn snapshot_wait_compressed(&self, name: &str) -> Result<SnapshotInfo, ManagerError> {
        let snap = self.snap(name, false)?;
        let job = snap.job.lock().expect("job").take();
        if let Some((_, handle)) = job {
            let _ = handle.await;
        }
        Ok(self.snap_info(&snap))
    }

    pub async fn snapshot_remove(
        self: &Arc<Self>,
        name: &str,
        template: bool,
    ) -> Result<SnapshotInfo, ManagerError> {
        let snap = self.snap(name, template)?;
        let from = if template {
            crate::ForkFrom::Template
        } else {
            crate::ForkFrom::Snapshot
        };
        let rec = snap.record();
        // The pools go with it, under this lock (see `remove_pools`).
        let _w = snap.op.write().await;
        let info = self.snap_info(&snap);
        if template && info.forks > 0 {
            return Err(ManagerError::Busy {
                name: name.into(),
                detail: format!(
                    "{} live forks share its memory; remove them first",
                    info.forks
                ),
            });
        }
        self.remove_pools(from, [&rec.name, &rec.id]).await;
        snap.cancel_compression().await;
        self.snaps.write().expect("snaps").remove(&snap.id);
        remove_dir(&snap.dir)?;
        Ok(info)
    }

    /// `tine template promote`: a standby instance becomes a template (its
    /// files move into the store by link; the instance is removed).
    pub async fn template_promote(
        self: &Arc<Self>,
        instance: &str,
    ) -> Result<SnapshotInfo, ManagerError> {
        let rec = self.slot(instance)?.record();
        let req = SnapshotRequest {
            instance: rec.name.clone(),
            name: rec.name.clone(),
            ..Default::default()
        };
        let info = self.snapshot_create_inner(req, true).await?;
        self.remove(&rec.name, false).await?;
        self.snapshot(&info.record.name, true)
    }

    /// Replace a stopped/standby instance's state with a snapshot's, or
    /// create a new instance (in standby) from it.
    pub async fn snapshot_restore(
        self: &Arc<Self>,
        name: &str,
        into: &str,
    ) -> Result<crate::InstanceInfo, ManagerError> {
        let snap = self.snap(name, false)?;
        if self.slot(into).is_err() {
            let target = match snap.record().kind {
                SnapshotKind::Standby => crate::ForkTarget::Standby,
                SnapshotKind::Stopped => crate::ForkTarget::Stopped,
            };
            let req = crate::ForkRequest {
                source: name.into(),
                from: crate::ForkFrom::Snapshot,
                name: Some(into.into()),
                target,
                ..Default::default()
            };
            let report = self.fork(req).await?;
            let f = report.forks.into_iter().next().expect("one fork");
            return f
                .instance
                .ok_or_else(|| ManagerError::Failed(f.error.unwrap_or_default()));
        }
        self.replace_state(&snap, into).await
    }
}

/// fsync every file in a directory, then the directory.
pub(crate) fn sync_tree(dir: &Path) -> Result<(), ManagerError> {
    for e in std::fs::read_dir(dir)
        .map_err(|e| ManagerError::io("read staging", e))?
        .flatten()
    {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::File::open(e.path())
                .and_then(|f| f.sync_all())
                .map_err(|err| ManagerError::io(format!("fsync {}", e.path().display()), err))?;
        }
    }
    tine_storage::sync_dir(dir).map_err(|e| ManagerError::io("fsync directory", e))
}

/// Load the store at daemon start: sweep unfinished creations and settle
/// compressions a crash interrupted.
pub(crate) fn load_store(dir: &Path) -> Result<HashMap<String, Arc<SnapSlot>>, ManagerError> {
    crate::ops::create_private_dir(dir)?;
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir)
        .map_err(|e| ManagerError::io("read snapshots directory", e))?
        .flatten()
    {
        let path = e.path();
        if tine_storage::is_temp_name(&e.file_name()) {
            let _ = remove_dir(&path);
            continue;
        }
        let mut rec = match load(&path) {
            Ok(r) => r,
            Err(err) => {
                warn!(dir = %path.display(), error = %chain(&err), "skipping unreadable snapshot");
                continue;
            }
        };
        crate::recover::sweep_temp(&path);
        if rec.compression.state == CompressState::Compressing {
            // `memory.zst` appears complete or not at all (renamed from a
            // temp file, swept above).
            match std::fs::metadata(path.join(MEMORY_ZST)) {
                Ok(zst) => {
                    let _ = std::fs::remove_file(path.join(MEMORY_FILE));
                    rec.compression.state = CompressState::Compressed;
                    rec.compression.compressed_bytes = Some(zst.len());
                }
                Err(_) => rec.compression.state = CompressState::None,
            }
            save(&path, &rec)?;
        }
        let slot = Arc::new(SnapSlot::new(path, rec));
        out.insert(slot.id.clone(), slot);
    }
    Ok(out)
}
