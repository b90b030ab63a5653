//! The data path of a copy: walk the source's data regions with
//! SEEK_DATA/SEEK_HOLE and copy only those, so holes stay holes.
//!
//! Each region goes through copy_file_range (in-kernel, and a remap on
//! filesystems that can), with readahead requested one chunk ahead, until the kernel answers "unsupported" once; from
//! then on this operation uses pread/pwrite with a large buffer, writing only
//! non-zero blocks. A filesystem without SEEK_DATA is copied as one data
//! region, and the zero-block skip still leaves holes where the data is zero.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::path::Path;

use crate::engine::Engine;
use crate::errno::{range_unsupported, seek_unsupported};
use crate::error::CopyError;
use crate::sys::Sys;

/// Buffer of the read/write path.
const BUF_LEN: usize = 1 << 20;
/// Largest request handed to copy_file_range at once, and the readahead
/// window kept in flight ahead of it.
const CHUNK: u64 = 8 << 20;
/// Granularity of the zero-block skip (the page and usual block size).
const BLOCK: usize = 4096;

impl<S: Sys> Engine<'_, S> {
    /// Copies `src`'s data regions into `dst` at the same offsets and sets
    /// `dst`'s size to `size`. Returns the data bytes copied.
    pub(crate) fn sparse_copy(
        &mut self,
        src: &File,
        src_path: &Path,
        dst: &File,
        dst_path: &Path,
        size: u64,
    ) -> Result<u64, CopyError> {
        // Doubles readahead on a cold source, as cp does. Only a hint: a
        // filesystem that ignores it still gets a correct copy.
        let _ = rustix::fs::fadvise(src, 0, None, rustix::fs::Advice::Sequential);
        let mut copied = 0;
        let mut pos = 0;
        while pos < size {
            let start = match self.sys.seek_data(src, pos) {
                Ok(Some(off)) if off < size => off,
                Ok(_) => break,
                Err(e) if seek_unsupported(&e) => {
                    copied += self.copy_range(src, src_path, dst, dst_path, pos, size)?;
                    break;
                }
                Err(e) => return Err(CopyError::read(src_path)(e)),
            };
            let end = self
                .sys
                .seek_hole(src, start)
                .map_err(CopyError::read(src_path))?
                .min(size);
            copied += self.copy_range(src, src_path, dst, dst_path, start, end)?;
            pos = end;
        }
        dst.set_len(size).map_err(CopyError::write(dst_path))?;
        Ok(copied)
    }

    /// Copies `[start, end)` to the same offsets. Stops early only if the
    /// source shrank under us (its owner broke the no-writer contract).
    fn copy_range(
        &mut self,
        src: &File,
        src_path: &Path,
        dst: &File,
        dst_path: &Path,
        start: u64,
        end: u64,
    ) -> Result<u64, CopyError> {
        let mut off = start;
        let mut fetched = start;
        while off < end {
            // Ask for the next chunk before copying this one. Without it a
            // cold copy_file_range reads in small synchronous pieces: about
            // 3x slower than pread/pwrite on scattered 256 KiB extents.
            let ahead = (off + 2 * CHUNK).min(end);
            if fetched < ahead {
                let len = std::num::NonZeroU64::new(ahead - fetched);
                let _ = rustix::fs::fadvise(src, fetched, len, rustix::fs::Advice::WillNeed);
                fetched = ahead;
            }
            let want = (end - off).min(CHUNK) as usize;
            let n = if self.range_ok {
                match self.sys.copy_file_range(src, off, dst, off, want) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if range_unsupported(&e) => {
                        self.range_ok = false;
                        continue;
                    }
                    Err(e) => return Err(CopyError::write(dst_path)(e)),
                }
            } else {
                self.copy_buffered(src, src_path, dst, dst_path, off, want)?
            };
            if n == 0 {
                break;
            }
            off += n as u64;
        }
        Ok(off - start)
    }

    /// One buffer's worth through pread/pwrite; all-zero blocks are not
    /// written, so they stay holes in the fresh destination.
    fn copy_buffered(
        &mut self,
        src: &File,
        src_path: &Path,
        dst: &File,
        dst_path: &Path,
        off: u64,
        want: usize,
    ) -> Result<usize, CopyError> {
        if self.buf.is_empty() {
            self.buf = vec![0; BUF_LEN];
        }
        let len = want.min(self.buf.len());
        let buf = &mut self.buf[..len];
        let n = loop {
            match self.sys.read_at(src, buf, off) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other.map_err(CopyError::read(src_path))?,
            }
        };
        let data = &buf[..n];
        let mut run_start = None;
        for (i, block) in data.chunks(BLOCK).enumerate() {
            let zero = block.iter().all(|&b| b == 0);
            match (zero, run_start) {
                (false, None) => run_start = Some(i * BLOCK),
                (true, Some(s)) => {
                    write_all_at(self.sys, dst, &data[s..i * BLOCK], off + s as u64)
                        .map_err(CopyError::write(dst_path))?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run_start {
            write_all_at(self.sys, dst, &data[s..], off + s as u64)
                .map_err(CopyError::write(dst_path))?;
        }
        Ok(n)
    }
}

fn write_all_at<S: Sys>(sys: &S, file: &File, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match sys.write_at(file, buf, off) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
