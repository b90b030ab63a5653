//! Daemon start: load every instance record, re-attach to live VM processes
//! and settle what a crash left behind.
//!
//! - Running/Paused with its process alive: re-attached and watched.
//! - Running/Paused with its process gone: Error ("exited while the daemon
//!   was down").
//! - Created: a `run` that never finished; removed entirely (a crash leaves
//!   nothing half-made), killing its process if one was recorded.
//! - Unreadable records are left on disk untouched and reported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tine_hypervisor::process_alive;
use tracing::{error, info, warn};

use crate::error::ManagerError;
use crate::ops::remove_dir;
use crate::record::InstanceRecord;
use crate::state::State;
use crate::{agent, Manager, Slot};

pub(crate) async fn load_all(mgr: &Arc<Manager>) -> Result<(), ManagerError> {
    // Fork bases of forks from running that never finished: their forks are
    // removed below (still Created) or hold their own links.
    remove_dir(&mgr.config().data_dir.join("staging"))?;
    let dir = mgr.instances_dir();
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| ManagerError::io(format!("read {}", dir.display()), e))?;
    let mut loaded = HashMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let rec = match InstanceRecord::load(&path) {
            Ok(r) => r,
            Err(e) => {
                error!(dir = %path.display(), error = %crate::error::chain(&e), "skipping unreadable instance");
                continue;
            }
        };
        if rec.state == State::Created {
            warn!(
                name = rec.name,
                "removing an instance whose creation never finished"
            );
            if let Some(p) = rec.process {
                tine_hypervisor::qemu::kill(&p);
            }
            remove_dir(&path)?;
            continue;
        }
        let alive = rec.process.is_some_and(|p| process_alive(&p));
        let slot = Arc::new(Slot {
            id: rec.id.clone(),
            dir: path.clone(),
            op: tokio::sync::Mutex::new(()),
            rec: Mutex::new(rec.clone()),
            agent: agent::AgentSlot::default(),
        });
        if rec.state.has_process() && rec.pending_standby {
            settle_standby(mgr, &slot, alive).await?;
            loaded.insert(slot.id.clone(), slot);
            continue;
        }
        if rec.state.has_process() && !alive {
            warn!(
                name = rec.name,
                "VM process exited while the daemon was down"
            );
            slot.update(|r| {
                r.state = State::Error;
                r.process = None;
                r.error = Some("VM process exited while the daemon was down".into());
            })?;
        } else if !rec.state.has_process() && alive {
            // A process we no longer account for (crash mid-stop): end it.
            if let Some(p) = rec.process {
                tine_hypervisor::qemu::kill(&p);
            }
            slot.update(|r| r.process = None)?;
        }
        if let (true, Some(p)) = (alive && rec.state.has_process(), rec.process) {
            info!(name = rec.name, pid = p.pid, "re-attached to running VM");
            mgr.watch(slot.clone(), p);
            if rec.state == State::Running {
                let agent_socket = mgr.hv.endpoints(&slot.dir).agent_socket;
                let s = slot.clone();
                // Connect in the background: a slow guest must not hold up the daemon.
                tokio::spawn(async move {
                    if let Err(e) = agent::attach(&s.agent, &agent_socket).await {
                        warn!(error = %crate::error::chain(&e), "agent did not answer after re-attach");
                    }
                });
            }
        }
        loaded.insert(slot.id.clone(), slot);
    }
    *mgr.slots.write().expect("slots") = loaded;
    Ok(())
}

/// A standby the daemon did not finish: complete it if QEMU already exited
/// after the state was durable (new state), else resume the VM (old state).
async fn settle_standby(
    mgr: &Arc<Manager>,
    slot: &Arc<Slot>,
    alive: bool,
) -> Result<(), ManagerError> {
    let rec = slot.record();
    let state_file = slot.dir.join(crate::ops::STATE_FILE);
    match (alive, state_file.is_file()) {
        (false, true) => {
            info!(
                name = rec.name,
                "completing a standby interrupted after QEMU stopped"
            );
            crate::standby::finish_standby(slot)
        }
        (true, _) => {
            info!(
                name = rec.name,
                "resuming a VM whose standby was interrupted"
            );
            mgr.undo_standby(slot, rec.state).await;
            if let Some(p) = rec.process {
                mgr.watch(slot.clone(), p);
            }
            let agent_socket = mgr.hv.endpoints(&slot.dir).agent_socket;
            let s = slot.clone();
            tokio::spawn(async move {
                let _ = agent::attach(&s.agent, &agent_socket).await;
            });
            Ok(())
        }
        (false, false) => slot.update(|r| {
            r.state = State::Error;
            r.process = None;
            r.pending_standby = false;
            r.error = Some("VM process exited during a standby, before its state was saved".into());
        }),
    }
}
