//! `share` on real filesystems: a hardlink where possible, a reported copy
//! where the kernel refuses the link.

mod common;

use std::fs;

use common::*;
use tine_storage::testfs::{write_sparse, FsKind, TestFs};
use tine_storage::{share, CopyMethod, ShareError, ShareMethod};

fn share_on_one_filesystem_hardlinks_the_same_inode(kind: FsKind) {
    let fs = TestFs::new(kind);
    let src = fs.path().join("memory");
    write_sparse(&src, 8 * MIB, &[(0, MIB)], 1).unwrap();
    let dst = fs.path().join("fork-memory");

    let report = share(&src, &dst).unwrap();

    assert_eq!(
        (report.method, report.link_errno, report.bytes_copied),
        (ShareMethod::Hardlink, None, 0)
    );
    assert_eq!((inode(&dst), nlink(&src)), (inode(&src), 2));
}

on_each_fs!(share_on_one_filesystem_hardlinks_the_same_inode);

#[test]
fn share_across_filesystems_copies_and_reports_exdev() {
    let (a, b) = (TestFs::new(FsKind::Xfs), TestFs::new(FsKind::Ext4));
    let src = a.path().join("memory");
    write_sparse(&src, 8 * MIB, &[(0, MIB), (4 * MIB, MIB)], 1).unwrap();
    let dst = b.path().join("fork-memory");

    let report = share(&src, &dst).unwrap();

    assert_eq!(report.method, ShareMethod::Copy(CopyMethod::Sparse));
    assert_eq!(report.link_errno.map(|e| e.name), Some("EXDEV"));
    assert_eq!(
        (report.bytes_copied, content_hash(&dst)),
        (2 * MIB, content_hash(&src))
    );
}

#[test]
fn share_onto_an_existing_name_fails_and_keeps_it() {
    let fs = TestFs::new(FsKind::Tmpfs);
    let src = fs.path().join("memory");
    write_sparse(&src, MIB, &[(0, MIB)], 1).unwrap();
    let dst = fs.path().join("fork-memory");
    fs::write(&dst, b"theirs").unwrap();

    let err = share(&src, &dst).unwrap_err();

    assert!(matches!(err, ShareError::Link { .. }), "{err:?}");
    assert_eq!(fs::read(&dst).unwrap(), b"theirs");
}
