//! The data regions of a file, found a little ahead of the copy.
//!
//! The copy asks for readahead of the next `WINDOW` bytes of data, across
//! region boundaries: a cold copy of many small scattered extents (a disk
//! overlay) otherwise waits for each extent's read in turn. Only regions
//! within that window are held, so memory stays small whatever the file.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::num::NonZeroU64;

use crate::errno::seek_unsupported;
use crate::sys::Sys;

/// Largest piece handed out at once (one copy_file_range request).
pub(crate) const CHUNK: u64 = 8 << 20;
/// Data requested for readahead beyond the piece being copied.
const WINDOW: u64 = 16 << 20;

pub(crate) struct Regions {
    size: u64,
    /// Found and not yet copied, in file order; the front is being copied.
    queue: VecDeque<(u64, u64)>,
    /// Where the next SEEK_DATA starts; `size` once every region is found.
    scan: u64,
    /// Readahead was requested for the data below this offset.
    fetched: u64,
    /// Index in `queue` of the region holding `fetched`.
    fetch_idx: usize,
    /// Data bytes in `[copy position, fetched)`.
    ahead: u64,
}

impl Regions {
    pub(crate) fn new(size: u64) -> Self {
        Self {
            size,
            queue: VecDeque::new(),
            scan: 0,
            fetched: 0,
            fetch_idx: 0,
            ahead: 0,
        }
    }

    /// The next piece to copy (at most `CHUNK` bytes of one region), after
    /// asking for readahead of the data that follows; `None` at the end.
    pub(crate) fn next<S: Sys>(&mut self, sys: &S, file: &File) -> io::Result<Option<(u64, u64)>> {
        if self.queue.is_empty() && !self.find(sys, file)? {
            return Ok(None);
        }
        self.prefetch(sys, file)?;
        let (start, end) = self.queue[0];
        Ok(Some((start, end.min(start + CHUNK))))
    }

    /// Marks the first `n` bytes of the current piece as copied.
    pub(crate) fn advance(&mut self, n: u64) {
        self.ahead = self.ahead.saturating_sub(n);
        let front = &mut self.queue[0];
        front.0 += n;
        if front.0 >= front.1 {
            self.queue.pop_front();
            self.fetch_idx = self.fetch_idx.saturating_sub(1);
        }
    }

    fn prefetch<S: Sys>(&mut self, sys: &S, file: &File) -> io::Result<()> {
        while self.ahead < WINDOW {
            if self.fetch_idx == self.queue.len() && !self.find(sys, file)? {
                return Ok(());
            }
            let (start, end) = self.queue[self.fetch_idx];
            let from = start.max(self.fetched);
            let to = end.min(from + CHUNK);
            if let Some(len) = NonZeroU64::new(to - from) {
                // Only a hint: a filesystem that ignores it still gets a
                // correct copy.
                let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::WillNeed);
            }
            self.ahead += to - from;
            self.fetched = to;
            if to >= end {
                self.fetch_idx += 1;
            }
        }
        Ok(())
    }

    /// Appends the next data region; false when there is none. A file
    /// system without SEEK_DATA gives the rest of the file as one region.
    fn find<S: Sys>(&mut self, sys: &S, file: &File) -> io::Result<bool> {
        if self.scan >= self.size {
            return Ok(false);
        }
        let (start, end) = match sys.seek_data(file, self.scan) {
            Ok(Some(off)) if off < self.size => (off, sys.seek_hole(file, off)?),
            Ok(_) => {
                self.scan = self.size;
                return Ok(false);
            }
            Err(e) if seek_unsupported(&e) => (self.scan, self.size),
            Err(e) => return Err(e),
        };
        // An empty region would never advance: take the rest instead.
        let end = if end > start {
            end.min(self.size)
        } else {
            self.size
        };
        self.queue.push_back((start, end));
        self.scan = end;
        Ok(true)
    }
}
