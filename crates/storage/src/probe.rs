//! Does a filesystem clone extents? Asked once by callers that estimate
//! what a copy will cost before they make it.

use std::io::Write;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// Whether FICLONE works between two files in `dir`. Uses unnamed
/// (O_TMPFILE) files, so nothing is left behind whatever happens.
pub fn reflink_supported(dir: &Path) -> bool {
    let open = || {
        rustix::fs::open(
            dir,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map(std::fs::File::from)
    };
    let (Ok(mut src), Ok(dst)) = (open(), open()) else {
        return false;
    };
    if src
        .write_all(&[0x5a; 4096])
        .and_then(|()| src.sync_all())
        .is_err()
    {
        return false;
    }
    rustix::fs::ioctl_ficlone(&dst, &src).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testfs::{FsKind, TestFs};

    #[test]
    fn xfs_clones_and_ext4_does_not() {
        let xfs = TestFs::new(FsKind::Xfs);
        let ext4 = TestFs::new(FsKind::Ext4);
        assert!(reflink_supported(xfs.path()));
        assert!(!reflink_supported(ext4.path()));
    }

    #[test]
    fn a_missing_directory_is_no() {
        assert!(!reflink_supported(Path::new("/nonexistent/tine-probe")));
    }
}
