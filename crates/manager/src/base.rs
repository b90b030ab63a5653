//! Capturing the parked state of an instance into another directory — the
//! base of forks and the content of snapshots — and putting a snapshot's
//! state back into an instance.
//!
//! What a capture holds: `overlay.qcow2` (copy engine: reflink or sparse),
//! for the standby kind also `vmstate` (copied) and `memory`. The memory file
//! is linked when its owner never writes it again (a standby instance: its
//! restore unshares first; a privately mapped VM: never writes it), and
//! copied while paused when a running VM maps it shared (it keeps writing).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tine_hypervisor::{MemoryMapping, RamSave};
use tine_storage::Copier;
use tracing::info;

use crate::error::{chain, ManagerError};
use crate::ops::{ms, MEMORY_FILE, ROOT_DISK, STATE_FILE};
use crate::record::InstanceRecord;
use crate::snapshot::{SnapSlot, SnapshotKind};
use crate::state::{Op, State};
use crate::{InstanceInfo, Manager, Slot};

/// What a capture produced.
pub(crate) struct Captured {
    pub ram_in_state: bool,
    /// How long a running source was paused.
    pub pause_ms: Option<f64>,
}

fn failed(e: impl std::error::Error + 'static) -> ManagerError {
    ManagerError::Failed(chain(&e))
}

/// One file of a capture; the files of one capture share a `Copier`, so
/// reflink is asked once per capture on a filesystem without it.
fn copy(copier: &mut Copier, src: &Path, dst: &Path) -> Result<(), ManagerError> {
    copier.copy_file(src, dst).map(|_| ()).map_err(failed)
}

fn copy_one(src: &Path, dst: &Path) -> Result<(), ManagerError> {
    copy(&mut Copier::new(), src, dst)
}

fn link(src: &Path, dst: &Path) -> Result<(), ManagerError> {
    tine_storage::share(src, dst).map(|_| ()).map_err(failed)
}

impl Manager {
    /// Capture `slot`'s state into `dest` (which exists and is empty). The
    /// caller holds the slot's op lock.
    pub(crate) async fn capture(
        &self,
        slot: &Slot,
        rec: &InstanceRecord,
        dest: &Path,
        kind: SnapshotKind,
    ) -> Result<Captured, ManagerError> {
        let (src, dest) = (slot.dir.clone(), dest.to_path_buf());
        match (rec.state, kind) {
            (State::Running | State::Paused, SnapshotKind::Standby) => {
                let pause_ms = self.capture_running(slot, rec, &dest).await?;
                Ok(Captured {
                    ram_in_state: false,
                    pause_ms: Some(pause_ms),
                })
            }
            (State::Running | State::Paused, SnapshotKind::Stopped) => {
                let was_running = rec.state == State::Running;
                let t0 = Instant::now();
                if was_running {
                    // QEMU flushes the disk when it stops the vCPUs.
                    self.hv.pause(&slot.dir).await?;
                }
                let copied = match crate::failpoint::hit("capture-paused", &rec.name) {
                    Ok(()) => {
                        blocking(move || copy_one(&src.join(ROOT_DISK), &dest.join(ROOT_DISK)))
                            .await
                    }
                    Err(e) => Err(e),
                };
                if was_running {
                    self.hv.resume(&slot.dir).await?;
                }
                copied?;
                Ok(Captured {
                    ram_in_state: false,
                    pause_ms: Some(ms(t0)),
                })
            }
            (State::Standby, SnapshotKind::Standby) => {
                let ram_in_state = rec.ram_in_state;
                blocking(move || {
                    let mut copier = Copier::new();
                    copy(&mut copier, &src.join(ROOT_DISK), &dest.join(ROOT_DISK))?;
                    copy(&mut copier, &src.join(STATE_FILE), &dest.join(STATE_FILE))?;
                    if src.join(MEMORY_FILE).exists() {
                        link(&src.join(MEMORY_FILE), &dest.join(MEMORY_FILE))?;
                    }
                    Ok(())
                })
                .await?;
                Ok(Captured {
                    ram_in_state,
                    pause_ms: None,
                })
            }
            (State::Standby | State::Stopped | State::Error, SnapshotKind::Stopped) => {
                blocking(move || copy_one(&src.join(ROOT_DISK), &dest.join(ROOT_DISK))).await?;
                Ok(Captured {
                    ram_in_state: false,
                    pause_ms: None,
                })
            }
            // Callers pass `state::check` first; nothing else gets here.
            (state, kind) => Err(ManagerError::Failed(format!(
                "internal: no {kind:?} capture of {}, which is {state}",
                rec.name
            ))),
        }
    }

    /// Pause, save device state, capture disk and memory into `dest`,
    /// continue. Returns the pause time in ms.
    async fn capture_running(
        &self,
        slot: &Slot,
        rec: &InstanceRecord,
        dest: &Path,
    ) -> Result<f64, ManagerError> {
        let was_running = rec.state == State::Running;
        if was_running {
            // Not required for consistency (QEMU flushes its disk on stop),
            // but it puts the guest's dirty page cache on the disk we copy.
            let _ = crate::agent::sync(&slot.agent).await;
        }
        if rec.memory == MemoryMapping::Shared {
            let memory = slot.dir.join(MEMORY_FILE);
            blocking(move || {
                drop_unmapped_cache(&memory);
                Ok(())
            })
            .await?;
        }
        let t0 = Instant::now();
        // x-ignore-shared either way: loads use the same capability (a
        // privately mapped source's RAM is not "shared", so it is saved).
        let saving = || crate::failpoint::reach("state-saving", &rec.name);
        let saved = self
            .hv
            .save_state(
                &slot.dir,
                &dest.join(STATE_FILE),
                RamSave::InMemoryFile,
                &saving,
            )
            .await;
        let saved = saved
            .map_err(ManagerError::from)
            .and_then(|r| crate::failpoint::hit("capture-paused", &rec.name).map(|()| r));
        let captured = match saved {
            Ok(_) => {
                let (src, dest, mapping) = (slot.dir.clone(), dest.to_path_buf(), rec.memory);
                blocking(move || {
                    let mut copier = Copier::new();
                    copy(&mut copier, &src.join(ROOT_DISK), &dest.join(ROOT_DISK))?;
                    match mapping {
                        MemoryMapping::Private => {
                            link(&src.join(MEMORY_FILE), &dest.join(MEMORY_FILE))
                        }
                        // SEEK_DATA calls every cached page of the fallocated
                        // file data, zero or not: write only non-zero blocks,
                        // so the copy follows what the guest wrote. Whoever
                        // maps the copy shared fallocates it first.
                        MemoryMapping::Shared => {
                            copier.detect_zeros(true);
                            copy(&mut copier, &src.join(MEMORY_FILE), &dest.join(MEMORY_FILE))
                        }
                    }
                })
                .await
            }
            Err(e) => Err(e),
        };
        if was_running {
            self.hv.resume(&slot.dir).await?;
        }
        let pause_ms = ms(t0);
        captured?;
        info!(name = rec.name, pause_ms, "captured a running instance");
        Ok(pause_ms)
    }

    /// Put a snapshot's state into an existing instance that has no VM
    /// process. Its old disk and memory are replaced; nothing of the
    /// snapshot is written (the memory file is linked, mapped privately).
    pub(crate) async fn replace_state(
        self: &Arc<Self>,
        snap: &Arc<SnapSlot>,
        into: &str,
    ) -> Result<InstanceInfo, ManagerError> {
        let slot = self.slot(into)?;
        let _g = slot.op.lock().await;
        let rec = slot.record();
        // A snapshot's kind never changes: checked before it is touched.
        let standby = snap.record().kind == SnapshotKind::Standby;
        self.transition(
            &rec,
            match standby {
                true => Op::RestoreSnapshot,
                false => Op::RestoreDiskSnapshot,
            },
        )?;
        let _r = snap.op.clone().read_owned().await;
        snap.ensure_raw_memory().await?;
        let srec = snap.record();
        if standby {
            crate::integrity::verify_state(&snap.dir.join(STATE_FILE), srec.state_digest)?;
        }
        let _files = slot.own_files().await;
        let (src, dst) = (snap.dir.clone(), slot.dir.clone());
        // Saved device state fixes whether there is a NIC; a boot does not.
        let nic = if standby {
            srec.network
        } else {
            rec.network.is_some()
        };
        let (network, dropped) = self.network_for_state(&rec, nic)?;
        let copied = blocking(move || {
            let tmp = dst.join("restore.tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir(&tmp)
                .map_err(|e| ManagerError::io("create restore directory", e))?;
            let mut copier = Copier::new();
            copy(&mut copier, &src.join(ROOT_DISK), &tmp.join(ROOT_DISK))?;
            if standby {
                copy(&mut copier, &src.join(STATE_FILE), &tmp.join(STATE_FILE))?;
                if src.join(MEMORY_FILE).exists() {
                    link(&src.join(MEMORY_FILE), &tmp.join(MEMORY_FILE))?;
                }
            }
            // Unlink first: never write into the old inode (forks may share it).
            for f in [MEMORY_FILE, STATE_FILE] {
                let _ = std::fs::remove_file(dst.join(f));
            }
            for f in [ROOT_DISK, STATE_FILE, MEMORY_FILE] {
                if tmp.join(f).exists() {
                    std::fs::rename(tmp.join(f), dst.join(f))
                        .map_err(|e| ManagerError::io(format!("move {f}"), e))?;
                }
            }
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        })
        .await;
        if let Err(e) = copied {
            if rec.network.is_none() {
                self.network_release(network.as_ref()).await;
            }
            return Err(e);
        }
        slot.update(|r| {
            r.state = if standby {
                State::Standby
            } else {
                State::Stopped
            };
            r.process = None;
            r.error = None;
            r.image = srec.image.clone();
            r.memory_mib = srec.memory_mib;
            r.vcpus = srec.vcpus;
            r.memory = MemoryMapping::Private;
            r.ram_in_state = srec.ram_in_state;
            r.state_digest = srec.state_digest;
            r.parent = Some(srec.name.clone());
            r.network = network.clone();
        })?;
        self.network_release(dropped.as_ref()).await;
        Ok(slot.info())
    }
}

/// Drops the clean page-cache pages of a running VM's shared memory file
/// that QEMU does not map: mostly zeros read ahead around the guest's page
/// faults. SEEK_DATA counts them as data, so the copy taken while the VM is
/// paused would read them all; dropping them first keeps that copy to the
/// pages the guest uses. Only a hint: dirty and mapped pages always stay
/// (the kernel starts writeback of dirty ones, as it would soon anyway).
fn drop_unmapped_cache(memory: &Path) {
    if let Ok(file) = std::fs::File::open(memory) {
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ManagerError> + Send + 'static,
) -> Result<T, ManagerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ManagerError::Failed(format!("storage task: {e}")))?
}
