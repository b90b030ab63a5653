//! [`Copier`]: one copy operation over several files that a caller names
//! one by one (a fork's disk, device state and memory file), with the same
//! rule as [`copy_dir`](crate::copy_dir): after the first "unsupported"
//! FICLONE answer, the remaining files go straight to the sparse copy.

use std::path::Path;

use crate::engine::{Engine, FileCopyReport};
use crate::errno::Fallback;
use crate::error::CopyError;
use crate::sys::Real;

/// Copies regular files one at a time, remembering across them whether
/// reflink works. One `Copier` per operation: a new operation (perhaps on
/// another filesystem) starts with a new one.
pub struct Copier {
    engine: Engine<'static, Real>,
}

impl Copier {
    pub fn new() -> Self {
        Self {
            engine: Engine::new(&Real, false),
        }
    }

    /// Write all-zero blocks as holes, as `cp --sparse=always` does, instead
    /// of copying every byte the filesystem reports as data. For guest RAM:
    /// a fallocated memory file whose page cache is full of zero pages is
    /// all "data", but only what the guest wrote needs writing. Reads still
    /// cover the data regions; a reflink is still tried first.
    /// Applies to the files copied after this call.
    pub fn detect_zeros(&mut self, on: bool) {
        self.engine.zeros = on;
    }

    /// Copies the regular file `src` to the new path `dst` (which must not
    /// exist), with its mode. On error no file is left at `dst`.
    pub fn copy_file(&mut self, src: &Path, dst: &Path) -> Result<FileCopyReport, CopyError> {
        self.engine.copy_new(src, dst)
    }

    /// The "unsupported" FICLONE answer that turned reflink off for the rest
    /// of this operation, if any.
    pub fn fallback(&self) -> Option<&Fallback> {
        self.engine.reflink_off.as_ref()
    }
}

impl Default for Copier {
    fn default() -> Self {
        Self::new()
    }
}
