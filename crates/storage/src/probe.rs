//! Does a filesystem clone extents? Asked by callers that estimate what a
//! copy will cost before they make it.

use std::io;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// Whether FICLONE works between two files in `dir`. The files are empty
/// (the probe works on a full disk) and unnamed (O_TMPFILE: nothing is
/// left behind). `Err` when the probe itself could not run.
pub fn reflink_supported(dir: &Path) -> io::Result<bool> {
    let open = || {
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        rustix::fs::open(dir, flags, Mode::from_raw_mode(0o600))
    };
    let (src, dst) = (open()?, open()?);
    Ok(rustix::fs::ioctl_ficlone(&dst, &src).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testfs::{FsKind, TestFs};

    #[test]
    fn xfs_and_btrfs_clone_ext4_and_tmpfs_do_not() {
        for (kind, clones) in [
            (FsKind::Xfs, true),
            (FsKind::Btrfs, true),
            (FsKind::Ext4, false),
            (FsKind::Tmpfs, false),
        ] {
            let fs = TestFs::new(kind);
            assert_eq!(reflink_supported(fs.path()).unwrap(), clones, "{kind:?}");
        }
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        assert!(reflink_supported(Path::new("/nonexistent/tine-probe")).is_err());
    }
}
