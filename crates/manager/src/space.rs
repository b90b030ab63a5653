//! Disk-space checks before standby, snapshot and fork: estimate the bytes
//! the operation will write into the data directory and refuse up front
//! when the filesystem (statvfs) would keep less than `disk_reserve` free.
//!
//! Estimates are upper bounds of what the copy engine writes: a file copy
//! costs its allocated blocks, or nothing where the filesystem clones
//! extents (probed once); a hardlink costs nothing; device state without
//! RAM is small; a fork's RAM saved into its device state costs up to the
//! guest's memory. Concurrent operations are not summed: the reserve is the
//! slack for them, and a real ENOSPC still fails cleanly (nothing half-made).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tine_hypervisor::MemoryMapping;

use crate::admission::LimitError;
use crate::fork::{ForkFrom, ForkRequest, ForkTarget};
use crate::ops::{MEMORY_FILE, ROOT_DISK, STATE_FILE};
use crate::record::InstanceRecord;
use crate::snapshot::{SnapshotKind, MEMORY_ZST};
use crate::state::State;
use crate::{ForkMemory, Manager, ManagerError};

/// Device state without RAM (QEMU writes ~50–100 KB), rounded up.
const STATE_BYTES: u64 = 1 << 20;

const MIB: u64 = 1 << 20;

/// Bytes a file takes on disk; 0 if it is missing.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What forks of one source cost, and how big each one's VM is.
pub(crate) struct ForkCost {
    pub disk_bytes: u64,
    pub memory_mib: u32,
    pub vcpus: u32,
}

impl Manager {
    /// Refuse `what` if writing `need` bytes would eat into the reserve.
    pub(crate) fn check_disk(&self, what: &str, need: u64) -> Result<(), ManagerError> {
        if crate::failpoint::hit("disk-check", what).is_err() {
            // Tests turn the check off to reach real ENOSPC in the writes.
            return Ok(());
        }
        let dir = &self.cfg.data_dir;
        let st = rustix::fs::statvfs(dir)
            .map_err(|e| ManagerError::io(format!("statvfs {}", dir.display()), e.into()))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let reserve = self.cfg.limits.disk_reserve;
        if free < need.saturating_add(reserve) {
            return Err(LimitError::Disk {
                what: what.into(),
                need,
                reserve,
                free,
                path: dir.display().to_string(),
            }
            .into());
        }
        Ok(())
    }

    pub(crate) fn reflinks(&self) -> bool {
        if let Some(r) = self.admission.reflink.get() {
            return *r;
        }
        match tine_storage::reflink_supported(&self.cfg.data_dir) {
            Ok(r) => *self.admission.reflink.get_or_init(|| r),
            // No answer (no inode left…): assume copies cost bytes; ask again later.
            Err(_) => false,
        }
    }

    /// What the copy engine writes to copy `path` here.
    fn copy_bytes(&self, path: &Path) -> u64 {
        if self.reflinks() {
            0
        } else {
            allocated(path)
        }
    }

    /// Standby writes the device state; a privately mapped VM (a fork)
    /// writes its RAM into it too.
    pub(crate) fn standby_bytes(rec: &InstanceRecord) -> u64 {
        match rec.memory {
            MemoryMapping::Private => STATE_BYTES + rec.memory_mib as u64 * MIB,
            MemoryMapping::Shared => STATE_BYTES,
        }
    }

    /// What `base::capture` of the instance in `dir` writes.
    pub(crate) fn capture_bytes(
        &self,
        dir: &Path,
        rec: &InstanceRecord,
        kind: SnapshotKind,
    ) -> u64 {
        let disk = self.copy_bytes(&dir.join(ROOT_DISK));
        match (rec.state, kind) {
            (State::Running | State::Paused, SnapshotKind::Standby) => {
                // A shared mapping is copied (the VM keeps writing it); a private one linked.
                let memory = match rec.memory {
                    MemoryMapping::Shared => self.copy_bytes(&dir.join(MEMORY_FILE)),
                    MemoryMapping::Private => 0,
                };
                STATE_BYTES + disk + memory
            }
            (State::Standby, SnapshotKind::Standby) => {
                disk + self.copy_bytes(&dir.join(STATE_FILE))
            }
            _ => disk,
        }
    }

    /// What a fork burst of `count` writes, and the size of each VM.
    /// `None` when the source cannot be forked as asked: `fork_base` says why.
    pub(crate) fn fork_cost(
        &self,
        req: &ForkRequest,
        count: u32,
    ) -> Result<Option<ForkCost>, ManagerError> {
        let (dir, memory_mib, vcpus, capture, raw_memory) = match req.from {
            ForkFrom::Instance => {
                let slot = self.slot(&req.source)?;
                let rec = slot.record();
                let capture = match rec.state {
                    State::Running | State::Paused if req.from_running => {
                        self.capture_bytes(&slot.dir, &rec, SnapshotKind::Standby)
                    }
                    // A parked fork is materialized first: its standby checks itself.
                    State::Standby => 0,
                    _ => return Ok(None),
                };
                (slot.dir.clone(), rec.memory_mib, rec.vcpus, capture, 0)
            }
            ForkFrom::Snapshot | ForkFrom::Template => {
                let snap = self.snap(&req.source, req.from == ForkFrom::Template)?;
                let r = snap.record();
                let compressed_only =
                    !snap.dir.join(MEMORY_FILE).exists() && snap.dir.join(MEMORY_ZST).exists();
                let raw = if compressed_only {
                    r.memory_mib as u64 * MIB
                } else {
                    0
                };
                (snap.dir.clone(), r.memory_mib, r.vcpus, 0, raw)
            }
        };
        let with_state = req.target != ForkTarget::Stopped;
        let mut each = self.copy_bytes(&dir.join(ROOT_DISK));
        if with_state {
            each += STATE_BYTES.max(self.copy_bytes(&dir.join(STATE_FILE)));
            each += match self.cfg.fork_memory {
                ForkMemory::Link => 0,
                ForkMemory::Copy => self.copy_bytes(&dir.join(MEMORY_FILE)),
                // A plain copy writes every byte, holes too.
                ForkMemory::FullCopy => len(&dir.join(MEMORY_FILE)),
            };
        }
        let disk_bytes = capture + raw_memory + each * count as u64;
        Ok(Some(ForkCost {
            disk_bytes,
            memory_mib,
            vcpus,
        }))
    }
}
