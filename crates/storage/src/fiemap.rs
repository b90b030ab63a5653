//! FIEMAP: where a file's extents are and whether they are shared. Tests use
//! it to prove a reflink really shares extents; callers can use it to report
//! how much of a copy costs no disk.

use std::fs::File;
use std::io;

use rustix::ioctl::{opcode, Updater};

const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// Extents fetched per ioctl.
const BATCH: usize = 128;

/// `struct fiemap` without its flexible array (linux/fiemap.h).
#[repr(C)]
#[derive(Default)]
struct Header {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
}

/// `struct fiemap_extent`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Request {
    header: Header,
    extents: [RawExtent; BATCH],
}

/// FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap): the size field covers the
/// header only; the kernel reads `extent_count` entries after it.
const FS_IOC_FIEMAP: rustix::ioctl::Opcode = opcode::read_write::<Header>(b'f', 11);

/// One extent of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    /// `FIEMAP_EXTENT_*` flags.
    pub flags: u32,
}

impl Extent {
    /// Whether another file (a reflink) shares this extent.
    pub fn shared(&self) -> bool {
        self.flags & FIEMAP_EXTENT_SHARED != 0
    }
}

/// All extents of `file`, after flushing its dirty data (FIEMAP_FLAG_SYNC).
pub fn extents(file: &File) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let mut req = Request {
            header: Header {
                start,
                length: u64::MAX - start,
                flags: FIEMAP_FLAG_SYNC,
                extent_count: BATCH as u32,
                ..Header::default()
            },
            extents: [RawExtent::default(); BATCH],
        };
        // SAFETY: FS_IOC_FIEMAP reads a `struct fiemap` header and writes at
        // most `extent_count` (= BATCH) `struct fiemap_extent`s after it;
        // `Request` is that exact repr(C) layout, exclusively borrowed for
        // the call.
        unsafe {
            rustix::ioctl::ioctl(file, Updater::<FS_IOC_FIEMAP, Request>::new(&mut req))?;
        }
        let mapped = (req.header.mapped_extents as usize).min(BATCH);
        if mapped == 0 {
            return Ok(out);
        }
        for raw in &req.extents[..mapped] {
            out.push(Extent {
                logical: raw.logical,
                physical: raw.physical,
                length: raw.length,
                flags: raw.flags,
            });
        }
        let last = req.extents[mapped - 1];
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            return Ok(out);
        }
        start = last.logical + last.length;
    }
}

/// Bytes of `file` that live in shared extents.
pub fn shared_bytes(file: &File) -> io::Result<u64> {
    Ok(extents(file)?
        .iter()
        .filter(|e| e.shared())
        .map(|e| e.length)
        .sum())
}
