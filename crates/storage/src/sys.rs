//! The system calls whose failures the engine must handle, behind a trait.
//!
//! Production code calls [`Real`] through generics, so the indirection is
//! monomorphised away and costs nothing. Unit tests substitute a wrapper that
//! forwards to [`Real`] on a real filesystem and injects errnos that real
//! filesystems cannot be made to produce on demand (EIO, EACCES as root …).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

pub(crate) trait Sys {
    /// FICLONE: make `dst` share all of `src`'s extents.
    fn ficlone(&self, dst: &File, src: &File) -> io::Result<()>;
    /// Start of the next data region at or after `from`; `None` past the last.
    fn seek_data(&self, file: &File, from: u64) -> io::Result<Option<u64>>;
    /// Start of the next hole at or after `from` (end of file counts).
    fn seek_hole(&self, file: &File, from: u64) -> io::Result<u64>;
    fn copy_file_range(
        &self,
        src: &File,
        src_off: u64,
        dst: &File,
        dst_off: u64,
        len: usize,
    ) -> io::Result<usize>;
    fn read_at(&self, file: &File, buf: &mut [u8], off: u64) -> io::Result<usize>;
    fn write_at(&self, file: &File, buf: &[u8], off: u64) -> io::Result<usize>;
    fn link(&self, src: &Path, dst: &Path) -> io::Result<()>;
    fn fsync(&self, file: &File) -> io::Result<()>;
}

/// The kernel, unmodified.
pub(crate) struct Real;

impl Sys for Real {
    #[inline]
    fn ficlone(&self, dst: &File, src: &File) -> io::Result<()> {
        Ok(rustix::fs::ioctl_ficlone(dst, src)?)
    }

    #[inline]
    fn seek_data(&self, file: &File, from: u64) -> io::Result<Option<u64>> {
        match rustix::fs::seek(file, SeekFrom::Data(from)) {
            Ok(off) => Ok(Some(off)),
            Err(Errno::NXIO) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    #[inline]
    fn seek_hole(&self, file: &File, from: u64) -> io::Result<u64> {
        Ok(rustix::fs::seek(file, SeekFrom::Hole(from))?)
    }

    #[inline]
    fn copy_file_range(
        &self,
        src: &File,
        mut src_off: u64,
        dst: &File,
        mut dst_off: u64,
        len: usize,
    ) -> io::Result<usize> {
        Ok(rustix::fs::copy_file_range(
            src,
            Some(&mut src_off),
            dst,
            Some(&mut dst_off),
            len,
        )?)
    }

    #[inline]
    fn read_at(&self, file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
        file.read_at(buf, off)
    }

    #[inline]
    fn write_at(&self, file: &File, buf: &[u8], off: u64) -> io::Result<usize> {
        file.write_at(buf, off)
    }

    #[inline]
    fn link(&self, src: &Path, dst: &Path) -> io::Result<()> {
        std::fs::hard_link(src, dst)
    }

    #[inline]
    fn fsync(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }
}
