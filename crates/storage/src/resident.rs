//! How much of a file the page cache holds: the measure of what forks
//! share (a memory file, the guest image) and of what evicts it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Bytes of `path` resident in the page cache, and its size. mincore over a
/// read-only shared mapping: mapping faults nothing in.
pub fn resident_bytes(path: &Path) -> io::Result<(u64, u64)> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    if size == 0 {
        return Ok((0, 0));
    }
    let len = size as usize;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: a fresh read-only mapping of an open file, unmapped below;
    // mincore writes exactly one byte per page of it into `vec`.
    let r = unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let r = libc::mincore(addr, len, vec.as_mut_ptr());
        let err = io::Error::last_os_error();
        libc::munmap(addr, len);
        (r == 0).then_some(()).ok_or(err)
    };
    r?;
    let pages = vec.iter().filter(|b| **b & 1 == 1).count() as u64;
    Ok(((pages * page as u64).min(size), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testfs::{FsKind, TestFs};

    #[test]
    fn a_file_just_written_is_resident_and_an_evicted_one_is_not() {
        // A disk filesystem: tmpfs pages cannot be evicted.
        let fs = TestFs::new(FsKind::Ext4);
        let p = fs.path().join("f");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        assert_eq!(resident_bytes(&p).unwrap(), (1 << 20, 1 << 20));

        let f = File::open(&p).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let (resident, size) = resident_bytes(&p).unwrap();

        assert_eq!(size, 1 << 20);
        assert!(resident < 1 << 19, "{resident}");
    }
}
