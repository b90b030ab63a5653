//! The serial console log's cap. QEMU appends to `console.log` (a guest
//! may print forever); a sweep drops the file's oldest part in place once
//! it is over the cap, keeping the newest half. Collapsing the range keeps
//! the file small; where the filesystem cannot (tmpfs, btrfs), punching a
//! hole keeps its disk use small while its apparent size grows. Either way
//! the partial line the cut leaves first is overwritten with NUL bytes,
//! and readers start at [`first_byte`], past holes and NULs.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{fallocate, seek, FallocateFlags};
use rustix::io::Errno;

pub const DEFAULT_MAX: u64 = 8 << 20;

/// How far past the cut the partial line's end is looked for.
const LINE_MAX: u64 = 4096;

/// What one [`trim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trimmed {
    /// At or under the cap.
    No,
    /// This many bytes removed from the file's start (offsets moved).
    Collapsed(u64),
    /// This many bytes made a hole (offsets kept).
    Punched(u64),
}

/// Trims of one instance's log, so a follower can tell how far offsets
/// moved: a seqlock (odd `seq` while a trim runs) around `dropped`.
#[derive(Debug, Default)]
pub struct Trims {
    seq: AtomicU64,
    dropped: AtomicU64,
    logged: AtomicBool,
}

impl Trims {
    /// (stamp, bytes collapsed so far), or `None` while a trim runs.
    pub fn stamp(&self) -> Option<(u64, u64)> {
        let s = self.seq.load(Ordering::SeqCst);
        let d = self.dropped.load(Ordering::SeqCst);
        (s.is_multiple_of(2) && self.seq.load(Ordering::SeqCst) == s).then_some((s, d))
    }

    /// Whether no trim began since `stamp` returned `s`.
    pub fn unchanged(&self, s: u64) -> bool {
        self.seq.load(Ordering::SeqCst) == s
    }

    /// Trim `path` to `max`; true the first time this log needed it.
    pub(crate) fn trim(&self, path: &Path, max: u64) -> io::Result<(Trimmed, bool)> {
        let mut began = false;
        let r = trim_with(path, max, || {
            began = true;
            self.seq.fetch_add(1, Ordering::SeqCst);
        });
        if let Ok(Trimmed::Collapsed(n)) = r {
            self.dropped.fetch_add(n, Ordering::SeqCst);
        }
        if began {
            self.seq.fetch_add(1, Ordering::SeqCst);
        }
        let t = r?;
        let first = t != Trimmed::No && !self.logged.swap(true, Ordering::Relaxed);
        Ok((t, first))
    }
}

/// Keep roughly the newest `max / 2` bytes of `path` once its content is
/// over `max`. The cut is at a block boundary (collapse requires it).
pub fn trim(path: &Path, max: u64) -> io::Result<Trimmed> {
    trim_with(path, max, || {})
}

/// [`trim`], calling `begin` just before the file changes.
fn trim_with(path: &Path, max: u64, begin: impl FnOnce()) -> io::Result<Trimmed> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let st = rustix::fs::fstat(&f)?;
    let len = st.st_size as u64;
    let start = data_start(&f, len)?;
    if len - start <= max {
        return Ok(Trimmed::No);
    }
    let block = (st.st_blksize as u64).max(4096);
    let cut = (len - max / 2) / block * block;
    if cut <= start {
        return Ok(Trimmed::No);
    }
    begin();
    match fallocate(&f, FallocateFlags::COLLAPSE_RANGE, 0, cut) {
        Ok(()) => {
            blank_partial_line(&f, 0)?;
            Ok(Trimmed::Collapsed(cut))
        }
        Err(Errno::OPNOTSUPP | Errno::INVAL) => {
            let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            fallocate(&f, punch, start, cut - start)?;
            blank_partial_line(&f, cut)?;
            Ok(Trimmed::Punched(cut - start))
        }
        Err(e) => Err(e.into()),
    }
}

/// Where the file's data begins: past a hole an earlier punch left.
fn data_start(f: &File, len: u64) -> io::Result<u64> {
    match seek(f, rustix::fs::SeekFrom::Data(0)) {
        Ok(o) => Ok(o),
        Err(Errno::NXIO) => Ok(len),
        Err(e) => Err(e.into()),
    }
}

/// NUL out `at`.. through the first newline (within `LINE_MAX`): the rest
/// of a line whose start was cut off.
fn blank_partial_line(f: &File, at: u64) -> io::Result<()> {
    let mut buf = vec![0u8; LINE_MAX as usize];
    let n = f.read_at(&mut buf, at)?;
    if let Some(i) = buf[..n].iter().position(|b| *b == b'\n') {
        f.write_all_at(&vec![0u8; i + 1], at)?;
    }
    Ok(())
}

/// The offset of the log's first byte worth showing: past a punched hole
/// and the NULs of a cut line.
pub fn first_byte(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut at = data_start(&f, len)?;
    f.seek(SeekFrom::Start(at))?;
    let mut buf = [0u8; 4096];
    loop {
        let n = f.read(&mut buf)?;
        match buf[..n].iter().position(|b| *b != 0) {
            Some(i) => return Ok(at + i as u64),
            None if n == 0 => return Ok(at),
            None => at += n as u64,
        }
    }
}

/// How often live VMs' logs are checked: a TCG guest's console writes a
/// few MB/s at most, so a log outgrows its cap by little between sweeps.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// One task for all instances, ending with the manager.
pub(crate) fn spawn_sweep(mgr: &std::sync::Arc<crate::Manager>) {
    let weak = std::sync::Arc::downgrade(mgr);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let Some(mgr) = weak.upgrade() else { return };
            let _ = tokio::task::spawn_blocking(move || sweep(&mgr)).await;
        }
    });
}

fn sweep(mgr: &crate::Manager) {
    let max = mgr.cfg.console_log_max;
    let slots: Vec<_> = mgr.slots.read().expect("slots").values().cloned().collect();
    for slot in slots {
        let rec = slot.record();
        if rec.process.is_none() {
            continue;
        }
        let path = mgr.hv.endpoints(&slot.dir).console_log;
        match slot.console.trim(&path, max) {
            Ok((Trimmed::No, _)) => {}
            Ok((t, first)) => {
                mgr.metrics.console_trims.fetch_add(1, Ordering::Relaxed);
                if first {
                    tracing::info!(
                        name = rec.name,
                        max,
                        ?t,
                        "console log over its cap: dropping its oldest output"
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(name = rec.name, error = %e, "cannot trim the console log"),
        }
    }
}

#[cfg(test)]
#[path = "console_tests.rs"]
mod tests;
