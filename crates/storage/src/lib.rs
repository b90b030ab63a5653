//! tine's storage layer: the copy engine and the memory-file sharing
//! primitives every fork, snapshot and restore path goes through. It knows
//! files, not VMs.
//!
//! - [`copy_dir`] / [`copy_file`] / [`Copier`] (several files as one
//!   operation): reflink (FICLONE) first, so a copy costs metadata on XFS
//!   and btrfs; after the first "unsupported" answer of an operation, a
//!   sparse copy that walks data extents and keeps holes (optionally also
//!   turning zero blocks into holes). Real errors propagate with the path
//!   and never leave a half-written file.
//! - [`share`]: a second name for an immutable file by hardlink (one inode,
//!   one page cache for all forks), falling back to a copy when refused.
//! - [`ensure_exclusive`]: the guard of "never write into a memory file whose
//!   link count is above one" — gives a path a private inode before a write.
//! - [`write_atomic`]: crash-safe replacement of small records.
//! - [`resident_bytes`]: how much of a file the page cache holds.
//!
//! Ownership: each public call owns the files it creates until it returns;
//! on error it removes them. Callers own locking: calls that touch the same
//! path (above all `ensure_exclusive`) must be serialized by the caller.
//!
//! The system calls that can fail go through an internal trait so unit tests
//! can inject errnos; production code uses the real one via generics, at no
//! cost. Feature `testfs` exposes [`testfs`], loop-mounted filesystems for
//! tests of this and other crates.

#![warn(clippy::undocumented_unsafe_blocks)]

mod atomic;
mod copier;
mod dir;
mod engine;
mod errno;
mod error;
mod exclusive;
pub mod fiemap;
mod probe;
mod regions;
mod resident;
mod share;
mod sparse;
mod sys;

#[cfg(any(test, feature = "testfs"))]
pub mod testfs;

#[cfg(test)]
mod fault;
#[cfg(test)]
mod fault_tests;

pub use atomic::{sync_dir, write_atomic};
pub use copier::Copier;
pub use dir::{
    copy_dir, copy_file, is_temp_name, CopyOptions, CopyReport, SkipReason, Skipped, TEMP_SUFFIX,
};
pub use engine::{CopyMethod, FileCopyReport};
pub use errno::{Fallback, OsErrno};
pub use error::CopyError;
pub use exclusive::{ensure_exclusive, StorageError, Unshare, UnshareAction, UnshareError};
pub use probe::reflink_supported;
pub use regions::data_bytes;
pub use resident::resident_bytes;
pub use share::{share, ShareError, ShareMethod, ShareReport};
