//! Errno paths real filesystems cannot produce on demand, injected through
//! [`Faulty`] over real loop-mounted filesystems. Unsupported answers must
//! fall back; real errors must propagate and leave no file behind.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::dir::copy_dir_with;
use crate::engine::{CopyMethod, Engine};
use crate::exclusive::ensure_exclusive_with;
use crate::fault::{Faulty, Op};
use crate::share::{share_with, ShareMethod};
use crate::testfs::{allocated_bytes, write_sparse, FsKind, TestFs};
use crate::{CopyError, CopyOptions, ShareError, UnshareError};

const MIB: u64 = 1 << 20;

/// 8 MiB file with 2 MiB of data in two regions.
fn sparse_source(dir: &Path) -> PathBuf {
    let path = dir.join("memory");
    write_sparse(&path, 8 * MIB, &[(0, MIB), (5 * MIB, MIB)], 7).unwrap();
    path
}

fn errno_of(err: &CopyError) -> Option<i32> {
    err.io().and_then(|e| e.raw_os_error())
}

macro_rules! unsupported_reflink_falls_back {
    ($($name:ident => $errno:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let fs = TestFs::new(FsKind::Xfs);
            let src = sparse_source(fs.path());
            let dst = fs.path().join("copy");
            let sys = Faulty::new().fail(Op::Ficlone, Errno::$errno);

            let report = Engine::new(&sys, false).copy_new(&src, &dst).unwrap();

            assert_eq!(report.method, CopyMethod::Sparse);
            assert_eq!(report.fallback.map(|f| f.errno.code), Some(Errno::$errno.raw_os_error()));
            assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
        }
    )*};
}

unsupported_reflink_falls_back!(
    eopnotsupp_reflink_falls_back_to_sparse => OPNOTSUPP,
    exdev_reflink_falls_back_to_sparse => XDEV,
    einval_reflink_falls_back_to_sparse => INVAL,
    enotty_reflink_falls_back_to_sparse => NOTTY,
    etxtbsy_reflink_falls_back_to_sparse => TXTBSY,
    eisdir_reflink_falls_back_to_sparse => ISDIR,
);

macro_rules! real_reflink_error_propagates {
    ($($name:ident => $errno:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let fs = TestFs::new(FsKind::Xfs);
            let src = sparse_source(fs.path());
            let dst = fs.path().join("copy");
            let sys = Faulty::new().fail(Op::Ficlone, Errno::$errno);

            let err = Engine::new(&sys, false).copy_new(&src, &dst).unwrap_err();

            assert!(matches!(err, CopyError::Reflink { .. }), "{err:?}");
            assert_eq!(errno_of(&err), Some(Errno::$errno.raw_os_error()));
            assert!(!dst.exists());
        }
    )*};
}

real_reflink_error_propagates!(
    eio_reflink_error_propagates_and_leaves_no_file => IO,
    enospc_reflink_error_propagates_and_leaves_no_file => NOSPC,
    eacces_reflink_error_propagates_and_leaves_no_file => ACCESS,
);

#[test]
fn eio_during_data_copy_propagates_and_leaves_no_file() {
    let fs = TestFs::new(FsKind::Ext4);
    let src = sparse_source(fs.path());
    let dst = fs.path().join("copy");
    let sys = Faulty::new().fail_nth(Op::CopyFileRange, 2, Errno::IO);

    let err = Engine::new(&sys, false).copy_new(&src, &dst).unwrap_err();

    assert_eq!(errno_of(&err), Some(Errno::IO.raw_os_error()));
    assert!(!dst.exists());
}

#[test]
fn enospc_during_buffered_write_propagates_and_leaves_no_file() {
    let fs = TestFs::new(FsKind::Ext4);
    let src = sparse_source(fs.path());
    let dst = fs.path().join("copy");
    let sys =
        Faulty::new()
            .fail(Op::CopyFileRange, Errno::XDEV)
            .fail_nth(Op::WriteAt, 2, Errno::NOSPC);

    let err = Engine::new(&sys, false).copy_new(&src, &dst).unwrap_err();

    assert_eq!(errno_of(&err), Some(Errno::NOSPC.raw_os_error()));
    assert!(!dst.exists());
}

#[test]
fn eio_reading_source_propagates_as_read_error_on_source() {
    let fs = TestFs::new(FsKind::Ext4);
    let src = sparse_source(fs.path());
    let dst = fs.path().join("copy");
    let sys = Faulty::new()
        .fail(Op::CopyFileRange, Errno::XDEV)
        .fail(Op::ReadAt, Errno::IO);

    let err = Engine::new(&sys, false).copy_new(&src, &dst).unwrap_err();

    assert!(
        matches!(&err, CopyError::Read { path, .. } if *path == src),
        "{err:?}"
    );
    assert!(!dst.exists());
}

#[test]
fn copy_dir_stops_trying_reflink_after_first_unsupported_answer() {
    let fs = TestFs::new(FsKind::Xfs);
    let src = fs.path().join("src");
    fs::create_dir(&src).unwrap();
    for name in ["a", "b", "c"] {
        write_sparse(&src.join(name), 2 * MIB, &[(0, MIB)], 3).unwrap();
    }
    let sys = Faulty::new().fail_nth(Op::Ficlone, 1, Errno::OPNOTSUPP);

    let report = copy_dir_with(&sys, &src, &fs.path().join("dst"), &CopyOptions::new()).unwrap();

    assert_eq!(sys.calls(Op::Ficlone), 1);
    assert_eq!((report.reflinked, report.sparse_copied), (0, 3));
    assert_eq!(
        report.fallback.map(|f| (f.errno.name, f.path)),
        Some(("EOPNOTSUPP", src.join("a")))
    );
}

#[test]
fn copy_dir_error_midway_removes_the_destination_it_created() {
    let fs = TestFs::new(FsKind::Ext4);
    let src = fs.path().join("src");
    fs::create_dir(&src).unwrap();
    for name in ["a", "b", "c"] {
        write_sparse(&src.join(name), MIB, &[(0, MIB)], 3).unwrap();
    }
    let dst = fs.path().join("dst");
    let sys = Faulty::new().fail_nth(Op::CopyFileRange, 2, Errno::IO);

    let err = copy_dir_with(&sys, &src, &dst, &CopyOptions::new()).unwrap_err();

    assert_eq!(errno_of(&err), Some(Errno::IO.raw_os_error()));
    assert!(!dst.exists());
}

#[test]
fn unsupported_copy_file_range_switches_once_to_buffered_copy_keeping_holes() {
    let fs = TestFs::new(FsKind::Ext4);
    let src = sparse_source(fs.path());
    let dst = fs.path().join("copy");
    let sys = Faulty::new().fail(Op::CopyFileRange, Errno::XDEV);

    let report = Engine::new(&sys, false).copy_new(&src, &dst).unwrap();

    assert_eq!(sys.calls(Op::CopyFileRange), 1);
    assert_eq!(report.bytes_copied, 2 * MIB);
    assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
    assert!(allocated_bytes(&dst).unwrap() <= 2 * MIB + 64 * 1024);
}

#[test]
fn filesystem_without_seek_data_still_gets_a_correct_copy() {
    let fs = TestFs::new(FsKind::Ext4);
    let src = sparse_source(fs.path());
    let dst = fs.path().join("copy");
    let sys = Faulty::new().fail(Op::SeekData, Errno::INVAL);

    Engine::new(&sys, false).copy_new(&src, &dst).unwrap();

    assert_eq!(fs::metadata(&dst).unwrap().len(), 8 * MIB);
    assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
}

#[test]
fn without_seek_data_the_buffered_path_still_leaves_zero_blocks_as_holes() {
    let fs = TestFs::new(FsKind::Ext4);
    let src = sparse_source(fs.path());
    let dst = fs.path().join("copy");
    let sys = Faulty::new()
        .fail(Op::SeekData, Errno::INVAL)
        .fail(Op::CopyFileRange, Errno::OPNOTSUPP);

    Engine::new(&sys, false).copy_new(&src, &dst).unwrap();

    assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
    assert!(allocated_bytes(&dst).unwrap() <= 2 * MIB + 64 * 1024);
}

macro_rules! refused_link_falls_back_to_copy {
    ($($name:ident => $errno:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let fs = TestFs::new(FsKind::Ext4);
            let src = sparse_source(fs.path());
            let dst = fs.path().join("fork-memory");
            let sys = Faulty::new().fail(Op::Link, Errno::$errno);

            let report = share_with(&sys, &src, &dst).unwrap();

            assert_eq!(report.method, ShareMethod::Copy(CopyMethod::Sparse));
            assert_eq!(report.link_errno.map(|e| e.code), Some(Errno::$errno.raw_os_error()));
            assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
        }
    )*};
}

refused_link_falls_back_to_copy!(
    eperm_link_falls_back_to_copy => PERM,
    emlink_link_falls_back_to_copy => MLINK,
    exdev_link_falls_back_to_copy => XDEV,
);

#[test]
fn eio_link_error_propagates_without_copying() {
    let fs = TestFs::new(FsKind::Ext4);
    let src = sparse_source(fs.path());
    let dst = fs.path().join("fork-memory");
    let sys = Faulty::new().fail(Op::Link, Errno::IO);

    let err = share_with(&sys, &src, &dst).unwrap_err();

    assert!(matches!(err, ShareError::Link { .. }), "{err:?}");
    assert_eq!(sys.calls(Op::Ficlone), 0);
    assert!(!dst.exists());
}

#[test]
fn failed_fallback_copy_of_share_leaves_no_file() {
    let fs = TestFs::new(FsKind::Ext4);
    let src = sparse_source(fs.path());
    let dst = fs.path().join("fork-memory");
    let sys = Faulty::new()
        .fail(Op::Link, Errno::XDEV)
        .fail(Op::CopyFileRange, Errno::NOSPC);

    let err = share_with(&sys, &src, &dst).unwrap_err();

    assert!(matches!(err, ShareError::Copy { .. }), "{err:?}");
    assert!(!dst.exists());
}

#[test]
fn failed_fsync_during_unshare_keeps_the_shared_inode_and_no_temp() {
    let fs = TestFs::new(FsKind::Xfs);
    let path = sparse_source(fs.path());
    let other = fs.path().join("fork-memory");
    fs::hard_link(&path, &other).unwrap();
    let sys = Faulty::new().fail(Op::Fsync, Errno::IO);

    let err = ensure_exclusive_with(&sys, &path).unwrap_err();

    assert!(matches!(err, UnshareError::Copy { .. }), "{err:?}");
    assert_eq!(
        fs::metadata(&path).unwrap().ino(),
        fs::metadata(&other).unwrap().ino()
    );
    assert!(!fs.path().join(".memory.unshare.tmp").exists());
}

#[test]
fn enospc_during_unshare_copy_keeps_the_shared_inode_and_no_temp() {
    let fs = TestFs::new(FsKind::Ext4);
    let path = sparse_source(fs.path());
    let other = fs.path().join("fork-memory");
    fs::hard_link(&path, &other).unwrap();
    let sys = Faulty::new().fail(Op::CopyFileRange, Errno::NOSPC);

    let err = ensure_exclusive_with(&sys, &path).unwrap_err();

    assert_eq!(
        err.to_string(),
        format!("cannot make a private copy of {}", path.display())
    );
    assert_eq!(fs::metadata(&path).unwrap().nlink(), 2);
    assert!(!fs.path().join(".memory.unshare.tmp").exists());
}
