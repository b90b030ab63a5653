//! Daemon start: load every instance record, re-attach to live VM processes
//! and settle what a crash left behind.
//!
//! - Running/Paused with its process alive: re-attached and watched.
//! - Running/Paused with its process gone: Error ("exited while the daemon
//!   was down").
//! - A standby that never finished (`pending_standby`): with QEMU alive,
//!   a save still under way is cancelled and the VM resumes; with QEMU
//!   gone, the standby completes if `vmstate` is durable, else Error.
//! - Created: a `run` that never finished; removed entirely (a crash leaves
//!   nothing half-made), killing its process if one was recorded.
//! - A VM process the record does not name (a crash between starting QEMU
//!   and recording it, found by its pid file): a restore whose guest
//!   already runs is adopted (Running; its parked state moved on), any
//!   other such process is killed.
//! - A live VM whose vCPUs disagree with its record (a crash while it was
//!   paused for a capture, or mid pause/resume) is made to match the record.
//! - Temp files (`*.tmp`) in instance directories are removed.
//! - Unreadable records are left on disk untouched and reported.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tine_hypervisor::{process_alive, VmProcess};
use tracing::{error, info, warn};

use crate::error::ManagerError;
use crate::ops::remove_dir;
use crate::record::InstanceRecord;
use crate::state::State;
use crate::{agent, Manager, Slot};

/// How long recovery waits for a VM to answer or to exit.
const QMP_WAIT: Duration = Duration::from_secs(5);

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
        let unrecorded = mgr
            .hv
            .find_process(&path)
            .filter(|p| Some(*p) != rec.process);
        if rec.state == State::Created {
            warn!(
                name = rec.name,
                "removing an instance whose creation never finished"
            );
            for p in rec.process.iter().chain(&unrecorded) {
                kill_and_wait(p).await;
            }
            remove_dir(&path)?;
            continue;
        }
        sweep_temp(&path);
        let slot = Arc::new(Slot {
            id: rec.id.clone(),
            dir: path.clone(),
            op: tokio::sync::Mutex::new(()),
            files: Default::default(),
            rec: Mutex::new(rec),
            agent: agent::AgentSlot::default(),
            console: Default::default(),
        });
        if let Some(p) = unrecorded {
            settle_unrecorded(mgr, &slot, p).await?;
        }
        let rec = slot.record();
        let alive = rec.process.is_some_and(|p| process_alive(&p));
        if rec.state.has_process() && rec.pending_standby {
            settle_standby(mgr, &slot, alive).await?;
            loaded.insert(slot.id.clone(), slot);
            continue;
        }
        if rec.state != State::Standby {
            drop_consumed_state(&slot)?;
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
                tine_hypervisor::kill(&p);
            }
            slot.update(|r| r.process = None)?;
        }
        if let (true, Some(p)) = (alive && rec.state.has_process(), rec.process) {
            info!(name = rec.name, pid = p.pid, "re-attached to running VM");
            match_vcpus(mgr, &slot).await;
            mgr.watch(slot.clone(), p);
            if rec.state == State::Running {
                reattach_agent(mgr, &slot).await;
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
            reattach_agent(mgr, slot).await;
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

/// A VM process no record names. The only one worth keeping is a restored
/// guest that already runs: its memory file moved on, so the parked state is
/// gone and the VM is what is left of the instance. Anything else is killed
/// (a restore still loading leaves the parked files untouched).
async fn settle_unrecorded(
    mgr: &Arc<Manager>,
    slot: &Slot,
    proc: VmProcess,
) -> Result<(), ManagerError> {
    let rec = slot.record();
    let running = tokio::time::timeout(QMP_WAIT, mgr.hv.vcpus_running(&slot.dir)).await;
    if rec.state == State::Standby && matches!(running, Ok(Ok(true))) {
        warn!(
            name = rec.name,
            pid = proc.pid,
            "adopting a VM whose restore a crash interrupted after it resumed"
        );
        let _ = std::fs::remove_file(slot.dir.join(crate::ops::STATE_FILE));
        return slot.update(|r| {
            r.state = State::Running;
            r.process = Some(proc);
            r.error = None;
            r.ram_in_state = false;
            r.state_digest = None;
        });
    }
    warn!(name = rec.name, pid = proc.pid, state = %rec.state, "killing a VM process no record names");
    kill_and_wait(&proc).await;
    Ok(())
}

/// Device state outside Standby was consumed by a restore or fork that a
/// crash interrupted after the guest ran: it no longer matches anything.
fn drop_consumed_state(slot: &Slot) -> Result<(), ManagerError> {
    let rec = slot.record();
    let _ = std::fs::remove_file(slot.dir.join(crate::ops::STATE_FILE));
    if rec.ram_in_state || rec.state_digest.is_some() {
        slot.update(|r| {
            r.ram_in_state = false;
            r.state_digest = None;
        })?;
    }
    Ok(())
}

/// Make a live VM's vCPUs match its record: Running runs, Paused is paused.
async fn match_vcpus(mgr: &Arc<Manager>, slot: &Slot) {
    let rec = slot.record();
    let want = rec.state == State::Running;
    let running = match tokio::time::timeout(QMP_WAIT, mgr.hv.vcpus_running(&slot.dir)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return warn!(name = rec.name, error = %crate::error::chain(&e), "cannot ask the VM whether it runs")
        }
        Err(_) => return warn!(name = rec.name, "the VM did not say whether it runs"),
    };
    if running == want {
        return;
    }
    warn!(name = rec.name, state = %rec.state, "the VM's vCPUs disagree with its record (a crash mid-operation); fixing");
    let fixed = if want {
        // A capture's save a crash left under way would stop it again.
        match mgr.hv.cancel_save(&slot.dir).await {
            Ok(()) => mgr.hv.resume(&slot.dir).await,
            Err(e) => Err(e),
        }
    } else {
        mgr.hv.pause(&slot.dir).await
    };
    if let Err(e) = fixed {
        warn!(name = rec.name, error = %crate::error::chain(&e), "cannot make the VM match its record");
    }
}

/// Connect to the agent of a re-attached VM in the background (a slow
/// guest must not hold up the daemon); calls meanwhile wait for it.
async fn reattach_agent(mgr: &Arc<Manager>, slot: &Arc<Slot>) {
    agent::remember(&slot.agent, &mgr.hv.endpoints(&slot.dir).agent_socket);
    let s = slot.clone();
    tokio::spawn(async move {
        if let Err(e) = agent::connect(&s.agent).await {
            warn!(error = %crate::error::chain(&e), "agent did not answer after re-attach");
        }
    });
}

async fn kill_and_wait(proc: &VmProcess) {
    tine_hypervisor::kill(proc);
    let _ = tokio::time::timeout(QMP_WAIT, tine_hypervisor::wait_exit(*proc)).await;
}

/// Temp files of operations a crash interrupted (at start: nothing runs yet).
pub(crate) fn sweep_temp(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if tine_storage::is_temp_name(&e.file_name()) {
            info!(path = %e.path().display(), "removing a temp file a crash left");
            let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
        }
    }
}
