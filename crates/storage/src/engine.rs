//! One copy operation: reflink first, sparse copy after the first
//! "unsupported" answer.
//!
//! An [`Engine`] lives for one public operation (one `copy_dir`, one
//! `copy_file`, one unshare). It remembers the first unsupported FICLONE answer
//! and stops asking for the rest of that operation, because a filesystem that
//! cannot reflink one file will not reflink the next. The data path (sparse
//! walk, copy_file_range, buffered fallback) is in `sparse.rs`.

use std::fs::{self, File, OpenOptions, Permissions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::Serialize;

use crate::errno::{reflink_unsupported, Fallback};
use crate::error::CopyError;
use crate::sys::Sys;

/// How one file's bytes reached its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    /// FICLONE: the copy shares the source's extents; no data was written.
    Reflink,
    /// Data regions copied, holes preserved.
    Sparse,
}

/// What [`copy_file`](crate::copy_file) did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileCopyReport {
    pub method: CopyMethod,
    /// Logical size of the file.
    pub size: u64,
    /// Data bytes written (0 for a reflink).
    pub bytes_copied: u64,
    /// Set when this file's FICLONE answer switched the operation to sparse.
    pub fallback: Option<Fallback>,
}

pub(crate) struct Engine<'s, S: Sys> {
    pub(crate) sys: &'s S,
    /// The first unsupported FICLONE answer; once set, reflink is not tried.
    pub(crate) reflink_off: Option<Fallback>,
    /// Cleared by the first unsupported copy_file_range answer.
    pub(crate) range_ok: bool,
    /// Buffer of the read/write path, allocated on first use.
    pub(crate) buf: Vec<u8>,
    /// fsync every file written.
    pub(crate) fsync: bool,
    /// Write all-zero blocks as holes (forces the buffered path).
    pub(crate) zeros: bool,
}

impl<'s, S: Sys> Engine<'s, S> {
    pub(crate) fn new(sys: &'s S, fsync: bool) -> Self {
        Self {
            sys,
            reflink_off: None,
            range_ok: true,
            buf: Vec::new(),
            fsync,
            zeros: false,
        }
    }

    /// Copies the regular file `src` to the new file `dst` (which must not
    /// exist) with `src`'s mode. On any error `dst` is removed.
    pub(crate) fn copy_new(&mut self, src: &Path, dst: &Path) -> Result<FileCopyReport, CopyError> {
        // Checked before opening: opening a device node can have effects.
        let lstat = fs::symlink_metadata(src).map_err(CopyError::read(src))?;
        if !lstat.is_file() {
            return Err(CopyError::NotAFile {
                path: src.to_path_buf(),
            });
        }
        // O_NOFOLLOW and O_NONBLOCK: never follow a symlink swapped in, never
        // block on a FIFO swapped in; both are no-ops on a regular file.
        let src_file = OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(src)
            .map_err(CopyError::read(src))?;
        let meta = src_file.metadata().map_err(CopyError::read(src))?;
        if !meta.is_file() {
            return Err(CopyError::NotAFile {
                path: src.to_path_buf(),
            });
        }
        let dst_file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dst)
            .map_err(CopyError::create(dst))?;
        let result = self
            .fill(&src_file, src, &dst_file, dst, meta.len())
            .and_then(|report| {
                let mode = Permissions::from_mode(meta.mode() & 0o7777);
                dst_file
                    .set_permissions(mode)
                    .map_err(CopyError::set_mode(dst))?;
                if self.fsync {
                    self.sys.fsync(&dst_file).map_err(CopyError::sync(dst))?;
                }
                Ok(report)
            });
        if result.is_err() {
            drop(dst_file);
            // Best effort: the copy error is what the caller needs to see.
            let _ = fs::remove_file(dst);
        }
        result
    }

    /// Fills the empty file `dst` with `src`'s contents: FICLONE unless an
    /// earlier file of this operation was refused, else a sparse copy.
    pub(crate) fn fill(
        &mut self,
        src: &File,
        src_path: &Path,
        dst: &File,
        dst_path: &Path,
        size: u64,
    ) -> Result<FileCopyReport, CopyError> {
        let mut fallback = None;
        if self.reflink_off.is_none() {
            match self.sys.ficlone(dst, src) {
                Ok(()) => {
                    return Ok(FileCopyReport {
                        method: CopyMethod::Reflink,
                        size,
                        bytes_copied: 0,
                        fallback: None,
                    })
                }
                Err(e) if reflink_unsupported(&e) => {
                    let why = Fallback::new(&e, src_path);
                    self.reflink_off = Some(why.clone());
                    fallback = Some(why);
                    // A refused clone writes nothing; check rather than
                    // assume. Never truncate an empty file: on ext4 that
                    // arms the flush-on-close meant for files replaced by
                    // truncate-and-rewrite, which costs a whole writeback
                    // in close().
                    let len = dst.metadata().map_err(CopyError::write(dst_path))?.len();
                    if len != 0 {
                        dst.set_len(0).map_err(CopyError::write(dst_path))?;
                    }
                }
                Err(e) => return Err(CopyError::reflink(dst_path)(e)),
            }
        }
        let bytes_copied = self.sparse_copy(src, src_path, dst, dst_path, size)?;
        Ok(FileCopyReport {
            method: CopyMethod::Sparse,
            size,
            bytes_copied,
            fallback,
        })
    }
}
