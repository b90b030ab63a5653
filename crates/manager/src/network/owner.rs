//! One daemon per bridge. Two daemons with separate data directories on one
//! bridge would hand out the same addresses from their separate pools, so a
//! daemon with networking claims its bridge for its whole life: an exclusive
//! `flock` on `/run/tine/BRIDGE@netINODE.lock` (bridges are per network
//! namespace, so the namespace's inode is part of the name). The kernel drops
//! the lock when the process ends, however it ends: a crashed daemon never
//! blocks its own restart. The file names the owner (data dir, pid) for the
//! error a second daemon gets.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use super::error::NetworkError;

const RUN_DIR: &str = "/run/tine";

/// Held while the daemon runs; dropping it releases the bridge.
#[derive(Debug)]
pub struct BridgeClaim {
    path: PathBuf,
    file: File,
}

impl BridgeClaim {
    /// Claim `bridge` in this network namespace for `data_dir`, or say which
    /// daemon has it.
    pub fn take(bridge: &str, data_dir: &Path) -> Result<BridgeClaim, NetworkError> {
        Self::take_in(Path::new(RUN_DIR), bridge, data_dir)
    }

    fn take_in(dir: &Path, bridge: &str, data_dir: &Path) -> Result<BridgeClaim, NetworkError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| NetworkError::Io { what, path, source }
        };
        let ns = Path::new("/proc/self/ns/net");
        let ns = std::fs::metadata(ns).map_err(io("cannot read", ns))?.ino();
        std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        let path = dir.join(format!("{bridge}@net{ns}.lock"));
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&path)
                .map_err(io("cannot open", &path))?;
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    let mut owner = String::new();
                    let _ = file.read_to_string(&mut owner);
                    if owner.trim().is_empty() {
                        owner = "another data directory".into();
                    }
                    return Err(NetworkError::BridgeInUse {
                        bridge: bridge.to_string(),
                        owner: owner.trim().to_string(),
                    });
                }
                Err(e) => return Err(io("cannot lock", &path)(e.into())),
            }
            // A previous owner may have unlinked the file between our open
            // and our lock: only a lock on the file the path names counts.
            let named = std::fs::metadata(&path).map(|m| m.ino()).ok();
            let held = file.metadata().map_err(io("cannot read", &path))?.ino();
            if named != Some(held) {
                continue;
            }
            let owner = format!("{} (pid {})\n", data_dir.display(), std::process::id());
            file.set_len(0).map_err(io("cannot write", &path))?;
            file.write_all(owner.as_bytes())
                .map_err(io("cannot write", &path))?;
            return Ok(BridgeClaim { path, file });
        }
    }
}

impl Drop for BridgeClaim {
    fn drop(&mut self) {
        // Unlinked while still locked, so no one locks a file about to go.
        let _ = std::fs::remove_file(&self.path);
        let _ = flock(&self.file, FlockOperation::Unlock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_on_a_bridge_names_the_first_owner_and_succeeds_once_it_is_released() {
        let run = tempfile::tempdir().unwrap();
        let bridge = "tine0";

        let first = BridgeClaim::take_in(run.path(), bridge, Path::new("/data/one")).unwrap();
        let other = BridgeClaim::take_in(run.path(), "tine1", Path::new("/data/two"));
        let refused = BridgeClaim::take_in(run.path(), bridge, Path::new("/data/two")).unwrap_err();
        drop(first);
        let again = BridgeClaim::take_in(run.path(), bridge, Path::new("/data/two"));

        let msg = refused.to_string();
        assert!(
            msg.contains(&format!(
                "bridge {bridge} is in use by the tine daemon of /data/one (pid {})",
                std::process::id()
            )),
            "{msg}"
        );
        assert!(other.is_ok(), "another bridge is free: {other:?}");
        assert!(again.is_ok(), "{again:?}");
    }
}
