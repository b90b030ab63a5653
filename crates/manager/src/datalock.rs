//! One daemon per data directory: two would recover, remove and rewrite
//! each other's instances. The daemon holds an exclusive `flock` on
//! `DATA_DIR/daemon.lock` for its life; the kernel drops it when the process
//! ends, however it ends, so a crash never blocks the restart. The file
//! names the holder's pid for the error a second daemon gets.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use crate::error::ManagerError;

const LOCK_FILE: &str = "daemon.lock";

/// Held while the daemon runs.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub(crate) fn take(data_dir: &Path) -> Result<DataDirLock, ManagerError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |e: std::io::Error| ManagerError::io(format!("lock {}", path.display()), e);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(ManagerError::Failed(format!(
                    "another tine daemon (pid {}) serves {}; stop it first or use another --data-dir",
                    pid.trim(),
                    data_dir.display()
                )));
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_and_the_first_drop_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::take(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open
        // in this process conflicts like another daemon's would.
        let err = DataDirLock::take(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDirLock::take(dir.path()).unwrap();
    }
}
