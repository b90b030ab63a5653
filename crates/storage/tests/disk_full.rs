//! Real ENOSPC from small filesystems: the copy fails with the errno and
//! leaves nothing half-written behind.

mod common;

use common::*;
use tine_storage::testfs::{write_sparse, FsKind, TestFs};
use tine_storage::{copy_dir, copy_file, CopyOptions};

const ENOSPC: i32 = 28;

#[test]
fn copy_file_onto_full_tmpfs_fails_with_enospc_and_leaves_no_file() {
    let (big, small) = (
        TestFs::new(FsKind::Tmpfs),
        TestFs::with_size(FsKind::Tmpfs, 4 * MIB),
    );
    let src = big.path().join("memory");
    write_sparse(&src, 8 * MIB, &[(0, 8 * MIB)], 1).unwrap();
    let dst = small.path().join("memory");

    let err = copy_file(&src, &dst).unwrap_err();

    assert_eq!(err.io().and_then(|e| e.raw_os_error()), Some(ENOSPC));
    assert!(!dst.exists());
}

#[test]
fn copy_dir_onto_full_ext4_fails_with_enospc_and_removes_the_copy() {
    let (big, small) = (
        TestFs::new(FsKind::Ext4),
        TestFs::with_size(FsKind::Ext4, 16 * MIB),
    );
    let src = big.path().join("guest");
    guest_tree(&src);
    write_sparse(&src.join("zz-large"), 32 * MIB, &[(0, 32 * MIB)], 3).unwrap();
    let dst = small.path().join("fork");

    let err = copy_dir(&src, &dst, &CopyOptions::new()).unwrap_err();

    assert_eq!(err.io().and_then(|e| e.raw_os_error()), Some(ENOSPC));
    assert!(!dst.exists());
}
