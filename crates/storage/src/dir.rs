//! Directory copy: the walk that feeds regular files to the engine.
//!
//! The walk never follows symlinks (it recreates them), creates each
//! directory private and gives it its source mode only after its contents are
//! in (so a read-only source directory still gets filled), and skips what a
//! fork must not inherit: sockets, FIFOs, device nodes, temp files, and the
//! caller's skip list. If `copy_dir` created the destination and then fails,
//! it removes the destination: the caller gets a complete tree or none.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, Permissions};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::{CopyMethod, Engine, FileCopyReport};
use crate::errno::Fallback;
use crate::error::CopyError;
use crate::sys::{Real, Sys};

/// Suffix of temp files. tine names every temp file it writes (atomic
/// writes, unshare copies, snapshot compression such as `memory.zst.tmp`) with
/// it, and `copy_dir` skips regular files whose name ends with it, so a copy
/// never carries a half-made file along.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Whether `copy_dir` treats a file name as a temp file (see [`TEMP_SUFFIX`]).
pub fn is_temp_name(name: &OsStr) -> bool {
    name.as_bytes().ends_with(TEMP_SUFFIX.as_bytes())
}

/// Options of [`copy_dir`].
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Paths relative to the source root that are not copied (a skipped
    /// directory skips its subtree), e.g. a memory file the caller links.
    pub skip: Vec<PathBuf>,
    /// fsync every file and directory written. Off by default: callers that
    /// commit a copy usually `syncfs` once instead.
    pub fsync: bool,
}

impl CopyOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a relative path to the skip list.
    pub fn skip(mut self, relative: impl Into<PathBuf>) -> Self {
        self.skip.push(relative.into());
        self
    }

    pub fn fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }
}

/// Why an entry was not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// In [`CopyOptions::skip`].
    Listed,
    /// Name ends with [`TEMP_SUFFIX`].
    TempFile,
    Socket,
    Fifo,
    Device,
}

/// One entry `copy_dir` left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Relative to the source root.
    pub path: PathBuf,
    pub reason: SkipReason,
}

/// What [`copy_dir`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    /// Regular files copied with FICLONE.
    pub reflinked: u64,
    /// Regular files copied by the sparse data copy.
    pub sparse_copied: u64,
    /// Entries left out (the details are in `skipped_entries`).
    pub skipped: u64,
    pub skipped_entries: Vec<Skipped>,
    pub symlinks: u64,
    /// Directories created below the root.
    pub dirs: u64,
    /// Logical bytes of the reflinked files (shared, not written).
    pub bytes_reflinked: u64,
    /// Data bytes written by the sparse copy.
    pub bytes_copied: u64,
    /// The first unsupported FICLONE answer, after which reflink was not tried.
    pub fallback: Option<Fallback>,
}

/// Copies the directory tree `src` to `dst`: reflink per regular file, sparse
/// copy after the first "unsupported" answer. `dst` is created, or must be an
/// existing directory; no existing file in it is overwritten.
pub fn copy_dir(src: &Path, dst: &Path, opts: &CopyOptions) -> Result<CopyReport, CopyError> {
    copy_dir_with(&Real, src, dst, opts)
}

/// Copies one regular file to the new path `dst` (which must not exist), with
/// its mode: reflink first, sparse copy on an "unsupported" answer. On error
/// no file is left at `dst`. To copy several files as one operation, use a
/// [`Copier`](crate::Copier).
pub fn copy_file(src: &Path, dst: &Path) -> Result<FileCopyReport, CopyError> {
    crate::Copier::new().copy_file(src, dst)
}

pub(crate) fn copy_dir_with<S: Sys>(
    sys: &S,
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
) -> Result<CopyReport, CopyError> {
    let meta = fs::symlink_metadata(src).map_err(CopyError::read(src))?;
    if !meta.is_dir() {
        return Err(CopyError::NotADirectory {
            path: src.to_path_buf(),
        });
    }
    // A destination inside the source would be walked into itself. An
    // existing destination is resolved itself (it may be a symlink).
    let inside = fs::canonicalize(src).map_err(CopyError::read(src))?;
    let target = fs::canonicalize(dst)
        .or_else(|_| fs::canonicalize(crate::atomic::parent(dst)))
        .map_err(CopyError::create_dir(dst))?;
    if target.starts_with(&inside) {
        return Err(CopyError::DestinationInsideSource {
            path: dst.to_path_buf(),
        });
    }
    let created = create_private_dir(dst)?;
    let mut walk = Walk {
        engine: Engine::new(sys, opts.fsync),
        opts,
        src,
        dst,
        report: CopyReport::default(),
    };
    let result = walk.dir(Path::new("")).and_then(|()| {
        if created {
            set_mode(dst, meta.mode())?;
        }
        Ok(())
    });
    match result {
        Ok(()) => {
            walk.report.fallback = walk.engine.reflink_off.take();
            Ok(walk.report)
        }
        Err(e) => {
            if created {
                // Best effort: the copy error is what the caller needs to see.
                let _ = fs::remove_dir_all(dst);
            }
            Err(e)
        }
    }
}

/// Creates `dir` with mode 0700; an existing directory is accepted.
/// Returns whether it was created.
fn create_private_dir(dir: &Path) -> Result<bool, CopyError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(CopyError::create_dir(dir)(e)),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CopyError> {
    fs::set_permissions(path, Permissions::from_mode(mode & 0o7777))
        .map_err(CopyError::set_mode(path))
}

struct Walk<'a, 's, S: Sys> {
    engine: Engine<'s, S>,
    opts: &'a CopyOptions,
    src: &'a Path,
    dst: &'a Path,
    report: CopyReport,
}

impl<S: Sys> Walk<'_, '_, S> {
    /// Copies the contents of the directory `rel` (relative to both roots).
    fn dir(&mut self, rel: &Path) -> Result<(), CopyError> {
        let src_dir = self.src.join(rel);
        let mut entries = fs::read_dir(&src_dir)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(CopyError::read_dir(&src_dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel.join(entry.file_name());
            let src = entry.path();
            let dst = self.dst.join(&rel);
            if self.opts.skip.contains(&rel) {
                self.skip(rel, SkipReason::Listed);
                continue;
            }
            // DirEntry::file_type does not follow symlinks.
            let ft = entry.file_type().map_err(CopyError::read(&src))?;
            if ft.is_dir() {
                let mode = entry.metadata().map_err(CopyError::read(&src))?.mode();
                DirBuilder::new()
                    .mode(0o700)
                    .create(&dst)
                    .map_err(CopyError::create_dir(&dst))?;
                self.report.dirs += 1;
                self.dir(&rel)?;
                set_mode(&dst, mode)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&src).map_err(CopyError::read(&src))?;
                std::os::unix::fs::symlink(&target, &dst).map_err(CopyError::symlink(&dst))?;
                self.report.symlinks += 1;
            } else if ft.is_file() && is_temp_name(&entry.file_name()) {
                self.skip(rel, SkipReason::TempFile);
            } else if ft.is_file() {
                let file = self.engine.copy_new(&src, &dst)?;
                match file.method {
                    CopyMethod::Reflink => {
                        self.report.reflinked += 1;
                        self.report.bytes_reflinked += file.size;
                    }
                    CopyMethod::Sparse => self.report.sparse_copied += 1,
                }
                self.report.bytes_copied += file.bytes_copied;
            } else if ft.is_socket() {
                self.skip(rel, SkipReason::Socket);
            } else if ft.is_fifo() {
                self.skip(rel, SkipReason::Fifo);
            } else {
                self.skip(rel, SkipReason::Device);
            }
        }
        if self.opts.fsync {
            let dst_dir = self.dst.join(rel);
            crate::atomic::sync_dir(&dst_dir).map_err(CopyError::sync(&dst_dir))?;
        }
        Ok(())
    }

    fn skip(&mut self, path: PathBuf, reason: SkipReason) {
        self.report.skipped += 1;
        self.report.skipped_entries.push(Skipped { path, reason });
    }
}
