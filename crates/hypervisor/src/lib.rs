//! Hypervisor backends for tine.
//!
//! The manager talks to a [`Hypervisor`] and never sees a backend's own types
//! (QMP commands, command lines). A backend owns the VM *process*: it starts
//! it from a [`VmSpec`], finds it again after a daemon restart from a
//! [`VmProcess`] record, pauses, resumes, saves device state and stops it.
//! What an instance *is* (names, states, metadata) belongs to the manager.
//!
//! Guest RAM always lives in a file (`VmSpec::memory_file`) so standby,
//! snapshots and forks can share it. How the file is mapped is part of the
//! start request ([`MemoryMapping`]); the caller is responsible for the
//! memory-file invariant (never map a file with nlink > 1 shared/writable).

mod accel;
mod process;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use accel::{detect_accel, Accel, AccelChoice};
pub use process::{kill, process_alive, process_start_time, wait_exit, VmProcess};

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Directory for the backend's runtime files (sockets, pid file, logs).
    pub run_dir: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The writable root disk (a qcow2 overlay over the read-only base).
    pub root_disk: PathBuf,
    /// Guest RAM backing file.
    pub memory_file: PathBuf,
    pub accel: Accel,
    /// A virtio-net NIC on a host TAP device, or none.
    pub network: Option<NetDevice>,
}

/// A NIC backed by an existing host TAP device (the caller creates it and
/// attaches it to a bridge). After a restore the device's MAC is the one in
/// the saved state, not `mac`: the guest keeps the MAC it had until told
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    pub tap: String,
    /// `aa:bb:cc:dd:ee:ff`
    pub mac: String,
}

/// How guest RAM maps its backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryMapping {
    /// MAP_SHARED: guest writes reach the file. Only for a file with one link.
    Shared,
    /// MAP_PRIVATE: copy-on-write, the file is never written.
    Private,
}

/// How the VM begins.
#[derive(Debug, Clone)]
pub enum Boot {
    /// Boot the kernel from scratch.
    Fresh,
    /// Load device state saved by [`Hypervisor::save_state`], mapping the
    /// memory file as given. With `ram_in_state` the state carries the RAM
    /// (saved with [`RamSave::InState`]) and loading writes it into the
    /// mapping; otherwise RAM is what the memory file holds. The VM is left
    /// running.
    Restore {
        state_file: PathBuf,
        mapping: MemoryMapping,
        ram_in_state: bool,
    },
}

/// Where a save puts guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamSave {
    /// RAM stays in the (shared-mapped) memory file; the state file holds
    /// devices only. QEMU: `x-ignore-shared`.
    InMemoryFile,
    /// RAM is written into the state file (a VM whose mapping is private:
    /// its RAM is not in any file).
    InState,
}

/// Files a running VM exposes to the manager.
#[derive(Debug, Clone)]
pub struct VmEndpoints {
    pub agent_socket: PathBuf,
    pub console_log: PathBuf,
    /// The hypervisor's own log (its errors and warnings).
    pub hypervisor_log: PathBuf,
}

/// Timings of a save, for metrics and reports.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SaveReport {
    pub state_bytes: u64,
    pub pause_ms: f64,
    pub save_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("{binary} not found; install it (Debian: apt-get install qemu-system-x86)")]
    BinaryMissing { binary: String },
    #[error("socket path too long ({len} bytes, limit 107): {path}")]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("VM process failed to start: {stderr}")]
    StartFailed { stderr: String },
    #[error("VM process is not running")]
    NotRunning,
    #[error("QMP command {command} failed: {message}")]
    Qmp { command: String, message: String },
    #[error("QMP protocol error: {0}")]
    QmpProtocol(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("{op} is not supported by the {backend} backend")]
    Unsupported {
        backend: &'static str,
        op: &'static str,
    },
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HvError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        HvError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A hypervisor backend.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    fn name(&self) -> &'static str;

    /// Check that the backend can run at all (binary present, version ok).
    fn check(&self) -> Result<(), HvError>;

    /// Start a VM process. Returns once its vCPUs run (fresh boot: the
    /// kernel is starting; restore: the saved state is loaded and resumed).
    async fn start(&self, spec: &VmSpec, boot: Boot) -> Result<VmProcess, HvError> {
        let proc = self.prestart(spec, &boot).await?;
        if matches!(boot, Boot::Restore { .. }) {
            self.load(&spec.run_dir, &proc, &boot).await?;
        }
        Ok(proc)
    }

    /// Start the VM process; for a restore, load its state but leave its
    /// vCPUs stopped (so a warm pool can start processes ahead of a fork
    /// request, and a claim only resumes them).
    async fn prestart(&self, spec: &VmSpec, boot: &Boot) -> Result<VmProcess, HvError>;

    /// Resume a prestarted VM once its saved state is loaded. On failure
    /// the process is killed.
    async fn load(&self, run_dir: &Path, proc: &VmProcess, boot: &Boot) -> Result<(), HvError>;

    /// Paths of the agent socket and console log for a spec.
    fn endpoints(&self, run_dir: &Path) -> VmEndpoints;

    async fn pause(&self, run_dir: &Path) -> Result<(), HvError>;
    async fn resume(&self, run_dir: &Path) -> Result<(), HvError>;

    /// Pause the VM and write its device state to `state_file`, with RAM
    /// where `ram` says. The VM stays paused. The backend creates
    /// `state_file` and hands the VM process an open descriptor: the VM
    /// itself cannot create files. `saving` is called once the write is
    /// under way and before it is seen complete (tests inject faults
    /// there: a crash of either process mid-save).
    async fn save_state(
        &self,
        run_dir: &Path,
        state_file: &Path,
        ram: RamSave,
        saving: &(dyn Fn() + Sync),
    ) -> Result<SaveReport, HvError>;

    /// End a device-state save still under way (one whose caller failed
    /// or crashed) and wait until QEMU has: the VM can then be resumed
    /// and saved again. A VM that is not saving is left as it is.
    async fn cancel_save(&self, run_dir: &Path) -> Result<(), HvError>;

    /// Ask the process to exit (flushing disks), then kill it if it has not
    /// exited within `grace`.
    async fn stop(&self, run_dir: &Path, proc: &VmProcess, grace: Duration) -> Result<(), HvError>;

    /// The live VM process started for `run_dir`, recorded or not (a crash
    /// between start and record leaves one only the run directory names).
    fn find_process(&self, run_dir: &Path) -> Option<VmProcess>;

    /// Whether the VM's vCPUs run (false: paused, or waiting for its state).
    async fn vcpus_running(&self, run_dir: &Path) -> Result<bool, HvError>;
}
