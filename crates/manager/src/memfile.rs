//! The one place that decides how a VM may touch its memory file.
//!
//! Invariant (MISSION.md): nothing ever writes into a memory file whose link
//! count is above one. Every VM start goes through [`prepare`]:
//! - a fresh boot gets a new file: the old name is unlinked (other links of
//!   the inode keep their bytes) and QEMU creates a new inode;
//! - a shared (writable) mapping of an existing file first makes the inode
//!   exclusive with `ensure_exclusive` (private copy + rename when nlink > 1);
//! - a shared mapping that the saved state will fill (RAM in the state) gets
//!   a new file, like a fresh boot;
//! - a private (copy-on-write) mapping never writes, so the file is used as is.
//!
//! Shared-mapped files get all their blocks reserved (fallocate) first.

use std::path::Path;

use tine_hypervisor::{Boot, MemoryMapping};
use tracing::info;

use crate::error::ManagerError;

pub fn prepare(
    path: &Path,
    boot: &Boot,
    memory_mib: u32,
    metrics: &crate::metrics::Metrics,
) -> Result<(), ManagerError> {
    let bytes = u64::from(memory_mib) << 20;
    match boot {
        Boot::Fresh => unlink(path).and_then(|()| reserve(path, bytes)),
        // The saved state carries the RAM: the load fills a brand-new file.
        Boot::Restore {
            mapping: MemoryMapping::Shared,
            ram_in_state: true,
            ..
        } => unlink(path).and_then(|()| reserve(path, bytes)),
        Boot::Restore {
            mapping: MemoryMapping::Shared,
            ram_in_state: false,
            ..
        } => {
            let outcome = tine_storage::ensure_exclusive(path)
                .map_err(|e| ManagerError::Failed(crate::error::chain(&e)))?;
            info!(path = %path.display(), ?outcome, "memory file made exclusive before a shared mapping");
            if let tine_storage::UnshareAction::Unshared { fallback, .. } = &outcome.action {
                metrics
                    .unshares
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(f) = fallback {
                    metrics.fallback(f.errno.name);
                }
            }
            reserve(path, bytes)
        }
        Boot::Restore {
            mapping: MemoryMapping::Private,
            ..
        } => Ok(()),
    }
}

/// Allocate every block of a shared-mapped memory file up front (creating
/// it if needed). A guest write into a hole of a full filesystem would kill
/// QEMU with SIGBUS; this turns that into a clear error before start.
fn reserve(path: &Path, bytes: u64) -> Result<(), ManagerError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Guest RAM: for the daemon's eyes only.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ManagerError::io(format!("create memory file {}", path.display()), e))?;
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, bytes).map_err(|e| {
        ManagerError::io(
            format!(
                "reserve {} MiB for memory file {}",
                bytes >> 20,
                path.display()
            ),
            e.into(),
        )
    })
}

/// Drop this name of the file; other links keep the inode and its bytes.
fn unlink(path: &Path) -> Result<(), ManagerError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ManagerError::io(
            format!("remove old memory file {}", path.display()),
            e,
        )),
    }
}
