//! `share`: give a second name to a file that nobody writes (a snapshot or
//! template memory file), by hardlink.
//!
//! A hardlink costs no data and keeps one inode, so every fork faults against
//! one page cache. Where linking is impossible (another filesystem, no
//! hardlink support, the link limit) the caller still needs a file at `dst`,
//! so `share` copies it (reflink, then sparse) and reports why it had to.
//! Writers must call [`ensure_exclusive`](crate::ensure_exclusive) first.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::{CopyMethod, Engine};
use crate::errno::{link_unsupported, OsErrno};
use crate::error::CopyError;
use crate::sys::{Real, Sys};

/// How `dst` came to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareMethod {
    /// Same inode as the source.
    Hardlink,
    /// A new inode, copied because linking was refused.
    Copy(CopyMethod),
}

/// What [`share`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShareReport {
    pub method: ShareMethod,
    /// link(2)'s answer when the fallback copy ran.
    pub link_errno: Option<OsErrno>,
    /// Data bytes written by a sparse fallback copy.
    pub bytes_copied: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    #[error("cannot link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Linking was refused and the fallback copy failed too; no file is left
    /// at the destination.
    #[error("fallback copy to {path} failed")]
    Copy {
        path: PathBuf,
        #[source]
        source: CopyError,
    },
}

/// Makes `dst` (which must not exist) name the same bytes as `src`: a
/// hardlink, or a copy where the link is refused with EXDEV, EPERM, EMLINK or
/// EOPNOTSUPP. Other link errors (ENOENT, EEXIST, ENOSPC …) are returned.
/// Nothing is fsynced: the caller syncs once when it commits the fork.
pub fn share(src: &Path, dst: &Path) -> Result<ShareReport, ShareError> {
    share_with(&Real, src, dst)
}

pub(crate) fn share_with<S: Sys>(
    sys: &S,
    src: &Path,
    dst: &Path,
) -> Result<ShareReport, ShareError> {
    let link_err = match sys.link(src, dst) {
        Ok(()) => {
            return Ok(ShareReport {
                method: ShareMethod::Hardlink,
                link_errno: None,
                bytes_copied: 0,
            })
        }
        Err(e) if link_unsupported(&e) => e,
        Err(source) => {
            return Err(ShareError::Link {
                path: dst.to_path_buf(),
                source,
            })
        }
    };
    let file = Engine::new(sys, false)
        .copy_new(src, dst)
        .map_err(|source| ShareError::Copy {
            path: dst.to_path_buf(),
            source,
        })?;
    Ok(ShareReport {
        method: ShareMethod::Copy(file.method),
        link_errno: OsErrno::of(&link_err),
        bytes_copied: file.bytes_copied,
    })
}
