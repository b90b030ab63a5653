//! The data path of a copy: walk the source's data regions with
//! SEEK_DATA/SEEK_HOLE and copy only those, so holes stay holes.
//!
//! Each region goes through copy_file_range (in-kernel, and a remap on
//! filesystems that can), with readahead requested across regions (see
//! `regions.rs`), until the kernel answers "unsupported" once; from then on
//! this operation uses pread/pwrite with a large buffer, writing only
//! non-zero blocks. The buffered path is also the one taken when the caller
//! asks for zero detection. A filesystem without SEEK_DATA is copied as one
//! data region, and the zero-block skip still leaves holes where the data
//! is zero.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::path::Path;

use crate::engine::Engine;
use crate::errno::range_unsupported;
use crate::error::CopyError;
use crate::regions::Regions;
use crate::sys::Sys;

/// Buffer of the read/write path.
const BUF_LEN: usize = 1 << 20;
/// Granularity of the zero-block skip (the page and usual block size).
const BLOCK: usize = 4096;

impl<S: Sys> Engine<'_, S> {
    /// Copies `src`'s data regions into `dst` at the same offsets and sets
    /// `dst`'s size to `size`. Returns the data bytes written.
    pub(crate) fn sparse_copy(
        &mut self,
        src: &File,
        src_path: &Path,
        dst: &File,
        dst_path: &Path,
        size: u64,
    ) -> Result<u64, CopyError> {
        // Sequential doubles the kernel's readahead on a cold source, as cp
        // does. Zero detection is for files mostly cached and mostly zeros
        // (guest RAM): there readahead past a region's end would only cache
        // more zero pages, which SEEK_DATA then reports as data, so only
        // `regions` asks for readahead, of exactly the data regions.
        let advice = if self.zeros {
            rustix::fs::Advice::Random
        } else {
            rustix::fs::Advice::Sequential
        };
        // Only a hint: a filesystem that ignores it still gets a correct copy.
        let _ = rustix::fs::fadvise(src, 0, None, advice);
        let mut regions = Regions::new(size);
        let mut written = 0;
        while let Some((off, end)) = regions
            .next(self.sys, src)
            .map_err(CopyError::read(src_path))?
        {
            let want = (end - off) as usize;
            let (n, w) = if self.range_ok && !self.zeros {
                match self.sys.copy_file_range(src, off, dst, off, want) {
                    Ok(n) => (n, n),
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
                // The source shrank under us (its owner broke the
                // no-writer contract): copy what there is.
                break;
            }
            regions.advance(n as u64);
            written += w as u64;
        }
        dst.set_len(size).map_err(CopyError::write(dst_path))?;
        Ok(written)
    }

    /// One buffer's worth through pread/pwrite; all-zero blocks are not
    /// written, so they stay holes in the fresh destination. Returns the
    /// bytes read and the bytes written.
    fn copy_buffered(
        &mut self,
        src: &File,
        src_path: &Path,
        dst: &File,
        dst_path: &Path,
        off: u64,
        want: usize,
    ) -> Result<(usize, usize), CopyError> {
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
        let (mut run_start, mut written) = (None, 0);
        for (i, block) in data.chunks(BLOCK).enumerate() {
            match (is_zero(block), run_start) {
                (false, None) => run_start = Some(i * BLOCK),
                (true, Some(s)) => {
                    write_all_at(self.sys, dst, &data[s..i * BLOCK], off + s as u64)
                        .map_err(CopyError::write(dst_path))?;
                    written += i * BLOCK - s;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run_start {
            write_all_at(self.sys, dst, &data[s..], off + s as u64)
                .map_err(CopyError::write(dst_path))?;
            written += n - s;
        }
        Ok((n, written))
    }
}

/// OR-folds 64 bytes at a time: vectorized on zeros, and data is usually
/// told apart by its first 64 bytes.
fn is_zero(block: &[u8]) -> bool {
    block
        .chunks(64)
        .all(|c| c.iter().fold(0, |acc, &b| acc | b) == 0)
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
