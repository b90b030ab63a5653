//! `ensure_exclusive`: the one guard of tine's memory-file invariant,
//! "nothing ever writes into a memory file whose link count is above one".
//!
//! Forks share a memory file by hardlink, so a write through any name would
//! reach every sibling. Before any in-place write the owner calls
//! `ensure_exclusive`, which gives this name a private inode: copy to
//! `.{name}.unshare.tmp` beside it (reflink, then sparse), fsync, rename over,
//! fsync the directory. The other names keep the old inode and its bytes.
//!
//! Ordering: a crash before the rename leaves the old file in place plus a
//! temp file, which the next call sweeps; a crash after it leaves the new
//! file. Callers serialize calls for one path (the manager holds the
//! instance's lock); the fixed temp name is what makes the sweep exact.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::atomic::{parent, sync_dir, temp_path};
use crate::engine::{CopyMethod, Engine};
use crate::errno::Fallback;
use crate::error::CopyError;
use crate::sys::{Real, Sys};

/// What [`ensure_exclusive`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unshare {
    pub action: UnshareAction,
    /// A temp file left by an interrupted earlier call was removed.
    pub swept_stale_temp: bool,
}

impl Unshare {
    /// Whether the file got a new inode.
    pub fn unshared(&self) -> bool {
        matches!(self.action, UnshareAction::Unshared { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnshareAction {
    /// No file at the path: nothing to guard.
    Missing,
    /// Link count was already one.
    AlreadyExclusive,
    /// The path now names a private copy.
    Unshared {
        method: CopyMethod,
        /// Link count of the old inode before the call.
        links_before: u64,
        /// Data bytes written (0 for a reflink).
        bytes_copied: u64,
        /// Why reflink was not used, for a sparse copy.
        fallback: Option<Fallback>,
    },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnshareError {
    #[error("cannot remove stale temp file {path}")]
    Sweep {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot inspect {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("cannot make a private copy of {path}")]
    Copy {
        path: PathBuf,
        #[source]
        source: CopyError,
    },
    #[error("cannot replace {path}")]
    Replace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Name kept from the first API sketch; the enum is [`UnshareError`].
pub type StorageError = UnshareError;

/// Makes `path` the only name of its inode (see the module docs). No-op when
/// the link count is one or the file is missing. On error the path still
/// names the old inode, and no temp file is left.
pub fn ensure_exclusive(path: &Path) -> Result<Unshare, UnshareError> {
    ensure_exclusive_with(&Real, path)
}

pub(crate) fn ensure_exclusive_with<S: Sys>(sys: &S, path: &Path) -> Result<Unshare, UnshareError> {
    let stat_err = |source| UnshareError::Stat {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temp_path(path, "unshare").map_err(stat_err)?;
    let swept_stale_temp = match fs::remove_file(&tmp) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(source) => return Err(UnshareError::Sweep { path: tmp, source }),
    };
    let done = |action| {
        Ok(Unshare {
            action,
            swept_stale_temp,
        })
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return done(UnshareAction::Missing),
        Err(source) => return Err(stat_err(source)),
    };
    if !meta.is_file() {
        return Err(UnshareError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if meta.nlink() <= 1 {
        return done(UnshareAction::AlreadyExclusive);
    }
    let copy_err = |source| UnshareError::Copy {
        path: path.to_path_buf(),
        source,
    };
    let src = File::open(path).map_err(|e| copy_err(CopyError::read(path)(e)))?;
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| copy_err(CopyError::create(&tmp)(e)))?;
    let filled = private_copy(sys, &src, path, &dst, &tmp, &meta);
    drop(dst);
    let file = match filled {
        Ok(file) => file,
        Err(e) => {
            // Best effort: the copy error is what the caller needs to see.
            let _ = fs::remove_file(&tmp);
            return Err(copy_err(e));
        }
    };
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(UnshareError::Replace {
            path: path.to_path_buf(),
            source,
        });
    }
    // The new inode is in place; only durability of the rename is at stake.
    sync_dir(parent(path)).map_err(|source| UnshareError::Replace {
        path: path.to_path_buf(),
        source,
    })?;
    done(UnshareAction::Unshared {
        method: file.method,
        links_before: meta.nlink(),
        bytes_copied: file.bytes_copied,
        fallback: file.fallback,
    })
}

/// Fills the temp file: same bytes, mode and owner as the original, fsynced.
fn private_copy<S: Sys>(
    sys: &S,
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    meta: &fs::Metadata,
) -> Result<crate::FileCopyReport, CopyError> {
    let file = Engine::new(sys, false).fill(src, src_path, dst, dst_path, meta.len())?;
    let own = dst.metadata().map_err(CopyError::read(dst_path))?;
    if (own.uid(), own.gid()) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::fchown(dst, Some(meta.uid()), Some(meta.gid()))
            .map_err(CopyError::set_mode(dst_path))?;
    }
    // After chown, which clears setuid/setgid.
    dst.set_permissions(Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(CopyError::set_mode(dst_path))?;
    sys.fsync(dst).map_err(CopyError::sync(dst_path))?;
    Ok(file)
}
