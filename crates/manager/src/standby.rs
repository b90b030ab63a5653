//! Standby and restore: park a VM on disk (device state saved, RAM left in
//! its memory file, process gone) and bring it back where it was.
//!
//! Crash safety: see `standby_locked` for the order of steps and
//! `recover.rs` for how a crash at any step resolves to the old state (the
//! VM running) or the new one (parked), never a half-written standby.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tine_hypervisor::{Boot, MemoryMapping, RamSave};
use tracing::info;

use crate::error::ManagerError;
use crate::ops::{MEMORY_FILE, STATE_FILE};
use crate::state::{Op, State};
use crate::{agent, image, InstanceInfo, Manager, Slot};

const STATE_TMP: &str = "vmstate.tmp";

impl Manager {
    pub async fn standby(self: &Arc<Self>, name: &str) -> Result<InstanceInfo, ManagerError> {
        let slot = self.slot(name)?;
        let _g = slot.op.lock().await;
        self.transition(&slot.record(), Op::Standby)?;
        self.standby_locked(&slot).await?;
        Ok(slot.info())
    }

    /// Standby with the op lock held.
    ///
    /// Order (each step durable before the next; `recover.rs` finishes or
    /// undoes a standby a crash interrupted, guided by `pending_standby`):
    /// 1. record `pending_standby`;
    /// 2. pause + save device state to `vmstate.tmp`, fsync, rename to
    ///    `vmstate` (a crash before: the VM is resumed, old state);
    /// 3. stop QEMU (a crash before: resumed; after: the standby completes);
    /// 4. settle the memory file, digest the state, record Standby.
    pub(crate) async fn standby_locked(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
    ) -> Result<(), ManagerError> {
        let rec = slot.record();
        let proc = rec
            .process
            .ok_or_else(|| ManagerError::Failed("no VM process recorded".into()))?;
        self.check_disk(
            &format!("standby of {}", rec.name),
            Self::standby_bytes(&rec),
        )?;
        let t0 = Instant::now();
        if rec.state == State::Running {
            // Durable guest disk first: the overlay is part of what we park.
            let _ = agent::sync(&slot.agent).await;
        }
        slot.update(|r| r.pending_standby = true)?;
        // A privately mapped VM (a fork) has its RAM in no file: it goes
        // into the state, and the link to the shared inode is dropped later.
        let ram = if rec.memory == MemoryMapping::Private {
            RamSave::InState
        } else {
            RamSave::InMemoryFile
        };
        let tmp = slot.dir.join(STATE_TMP);
        let saved = async {
            let saving = || crate::failpoint::reach("state-saving", &rec.name);
            let report = self.hv.save_state(&slot.dir, &tmp, ram, &saving).await?;
            crate::failpoint::hit("standby-saved", &rec.name)?;
            sync_file(&tmp)?;
            std::fs::rename(&tmp, slot.dir.join(STATE_FILE))
                .map_err(|e| ManagerError::io("rename device state into place", e))?;
            sync_file(&slot.dir)?;
            Ok::<_, ManagerError>(report)
        }
        .await;
        let report = match saved {
            Ok(r) => r,
            Err(e) => {
                // Disk full, QEMU error…: the VM is paused at worst; let it run on.
                self.undo_standby(slot, rec.state).await;
                if !tine_hypervisor::process_alive(&proc) {
                    // What QEMU's end did to the save (a reset socket…) says less.
                    tracing::warn!(name = rec.name, error = %crate::error::chain(&e), "state save failed");
                    return Err(ManagerError::Failed(format!(
                        "the VM process of {} exited while its state was saved",
                        rec.name
                    )));
                }
                return Err(e);
            }
        };
        crate::failpoint::hit("standby-renamed", &rec.name)?;
        self.hv
            .stop(&slot.dir, &proc, Duration::from_secs(10))
            .await?;
        slot.agent.reset();
        crate::failpoint::hit("standby-stopped", &rec.name)?;
        finish_standby(slot)?;
        info!(
            name = rec.name,
            total_ms = t0.elapsed().as_secs_f64() * 1e3,
            pause_ms = report.pause_ms,
            save_ms = report.save_ms,
            state_bytes = report.state_bytes,
            "instance in standby"
        );
        Ok(())
    }

    /// A standby that failed before QEMU stopped: drop the saved state and
    /// let the VM continue in the state it was in. A save a daemon crash
    /// left under way is cancelled first.
    pub(crate) async fn undo_standby(&self, slot: &Slot, was: State) {
        if let Err(e) = self.hv.cancel_save(&slot.dir).await {
            tracing::warn!(error = %crate::error::chain(&e), "could not cancel the state save of a failed standby");
        }
        let _ = std::fs::remove_file(slot.dir.join(STATE_TMP));
        let _ = std::fs::remove_file(slot.dir.join(STATE_FILE));
        if was == State::Running {
            if let Err(e) = self.hv.resume(&slot.dir).await {
                tracing::warn!(error = %crate::error::chain(&e), "could not resume after a failed standby");
            }
        }
        let _ = slot.update(|r| r.pending_standby = false);
    }

    pub async fn restore(self: &Arc<Self>, name: &str) -> Result<InstanceInfo, ManagerError> {
        let slot = self.slot(name)?;
        let _g = slot.op.lock().await;
        self.transition(&slot.record(), Op::Restore)?;
        self.restore_locked(&slot).await?;
        Ok(slot.info())
    }

    /// Restore with the op lock held. An instance that owns its RAM file maps
    /// it shared, so `memfile::prepare` makes it exclusive first (forks keep
    /// their inode); a fork maps its shared file privately (copy-on-write).
    pub(crate) async fn restore_locked(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
    ) -> Result<(), ManagerError> {
        let _files = slot.own_files().await;
        let rec = slot.record();
        // Warm forks of this parked state would outlive it: drop them.
        self.pool_invalidate(crate::ForkFrom::Instance, &rec.name)
            .await;
        self.pool_invalidate(crate::ForkFrom::Instance, &rec.id)
            .await;
        let state_file = slot.dir.join(STATE_FILE);
        if !state_file.is_file() || (!rec.ram_in_state && !slot.dir.join(MEMORY_FILE).is_file()) {
            return Err(ManagerError::Failed(format!(
                "standby files of {} are missing; the instance cannot be restored",
                rec.name
            )));
        }
        crate::integrity::verify_state(&state_file, rec.state_digest)?;
        if !rec.ram_in_state {
            crate::integrity::verify_memory(&slot.dir.join(MEMORY_FILE), rec.memory_mib)?;
        }
        let _ticket = self.admit_instance("restore", &rec)?;
        let image = image::load(&self.cfg.images_dir, &rec.image)?;
        let boot = Boot::Restore {
            state_file: state_file.clone(),
            mapping: rec.memory,
            ram_in_state: rec.ram_in_state,
        };
        if let Err(e) = self.boot(slot, &image, boot, None, None).await {
            if slot.record().process.is_some() {
                // The guest ran: its memory file moved on, the parked state is gone.
                self.fail(slot, &e).await;
                let _ = std::fs::remove_file(&state_file);
                return Err(e);
            }
            // Nothing ran: the parked files are intact, stay in Standby.
            let _ = slot.update(|r| {
                r.state = State::Standby;
                r.process = None;
                r.error = Some(crate::error::chain(&e));
            });
            return Err(e);
        }
        // The memory file now moves on; the saved state no longer matches it.
        let _ = std::fs::remove_file(&state_file);
        slot.update(|r| {
            r.ram_in_state = false;
            r.state_digest = None;
        })?;
        Ok(())
    }
}

/// The last step of a standby, once QEMU is gone and `vmstate` is durable
/// (also run by recovery after a crash right there).
pub(crate) fn finish_standby(slot: &Slot) -> Result<(), ManagerError> {
    let rec = slot.record();
    let private = rec.memory == MemoryMapping::Private;
    let memory = slot.dir.join(MEMORY_FILE);
    if private {
        // The parked fork depends on nobody: its RAM is in its state.
        let _ = std::fs::remove_file(&memory);
    } else {
        sync_file(&memory)?;
    }
    let digest = crate::integrity::digest(&slot.dir.join(STATE_FILE))?;
    slot.update(|r| {
        r.state = State::Standby;
        r.process = None;
        // Restore maps a file shared; with the RAM in the state, a new one.
        r.memory = MemoryMapping::Shared;
        r.ram_in_state = private;
        r.pending_standby = false;
        r.state_digest = Some(digest);
    })
}

fn sync_file(path: &std::path::Path) -> Result<(), ManagerError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| ManagerError::io(format!("fsync {}", path.display()), e))
}
