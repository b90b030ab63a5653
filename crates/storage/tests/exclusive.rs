//! `ensure_exclusive` on real filesystems: the guard that gives a memory
//! file a private inode before anything writes into it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use tine_storage::testfs::{allocated_bytes, write_sparse, FsKind, TestFs};
use tine_storage::{ensure_exclusive, share, CopyMethod, UnshareAction, UnshareError};

/// A memory file with `links` names: `memory`, `fork-1`, `fork-2` …
fn linked_memory(dir: &Path, links: usize) -> (PathBuf, Vec<PathBuf>) {
    let path = dir.join("memory");
    write_sparse(&path, 16 * MIB, &[(0, MIB), (8 * MIB, MIB)], 9).unwrap();
    let others = (1..links)
        .map(|i| dir.join(format!("fork-{i}")))
        .collect::<Vec<_>>();
    for other in &others {
        share(&path, other).unwrap();
    }
    (path, others)
}

fn single_link_is_left_alone(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (path, _) = linked_memory(fs.path(), 1);
    let ino = inode(&path);

    let unshare = ensure_exclusive(&path).unwrap();

    assert_eq!(unshare.action, UnshareAction::AlreadyExclusive);
    assert_eq!(inode(&path), ino);
}

fn two_links_are_split_and_the_other_keeps_old_inode_and_bytes(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (path, others) = linked_memory(fs.path(), 2);
    let (old_ino, old_hash) = (inode(&path), content_hash(&path));

    let unshare = ensure_exclusive(&path).unwrap();
    scribble(&path);

    assert!(unshare.unshared());
    assert_eq!(
        (
            inode(&others[0]),
            nlink(&others[0]),
            content_hash(&others[0])
        ),
        (old_ino, 1, old_hash)
    );
    assert_ne!(inode(&path), old_ino);
    assert_eq!(nlink(&path), 1);
}

fn three_links_are_split_and_the_others_keep_old_inode_and_bytes(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (path, others) = linked_memory(fs.path(), 3);
    let (old_ino, old_hash) = (inode(&path), content_hash(&path));

    let unshare = ensure_exclusive(&path).unwrap();
    scribble(&path);

    let seen: Vec<_> = others
        .iter()
        .map(|o| (inode(o), nlink(o), content_hash(o)))
        .collect();
    assert_eq!(seen, [(old_ino, 2, old_hash), (old_ino, 2, old_hash)]);
    assert!(matches!(
        unshare.action,
        UnshareAction::Unshared {
            links_before: 3,
            ..
        }
    ));
    assert_eq!(nlink(&path), 1);
}

fn private_copy_keeps_bytes_mode_and_holes(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (path, others) = linked_memory(fs.path(), 2);
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();

    ensure_exclusive(&path).unwrap();

    assert_eq!(content_hash(&path), content_hash(&others[0]));
    assert_eq!(
        fs::metadata(&path).unwrap().permissions(),
        fs::metadata(&others[0]).unwrap().permissions()
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), 16 * MIB);
    assert!(allocated_bytes(&path).unwrap() <= 3 * MIB);
}

fn stale_temp_from_a_crash_is_swept(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (path, _) = linked_memory(fs.path(), 1);
    let stale = fs.path().join(".memory.unshare.tmp");
    fs::write(&stale, b"partial copy from a crashed unshare").unwrap();

    let unshare = ensure_exclusive(&path).unwrap();

    assert!(unshare.swept_stale_temp);
    assert!(!stale.exists());
}

fn missing_file_needs_nothing(kind: FsKind) {
    let fs = TestFs::new(kind);

    let unshare = ensure_exclusive(&fs.path().join("memory")).unwrap();

    assert_eq!(unshare.action, UnshareAction::Missing);
}

fn reflink_fs_unshares_by_reflink(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (path, _) = linked_memory(fs.path(), 2);

    let unshare = ensure_exclusive(&path).unwrap();

    assert_eq!(
        unshare.action,
        UnshareAction::Unshared {
            method: CopyMethod::Reflink,
            links_before: 2,
            bytes_copied: 0,
            fallback: None
        }
    );
}

fn fallback_fs_unshares_by_sparse_copy(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (path, _) = linked_memory(fs.path(), 2);

    let unshare = ensure_exclusive(&path).unwrap();

    let UnshareAction::Unshared {
        method,
        bytes_copied,
        fallback,
        ..
    } = unshare.action
    else {
        panic!("not unshared: {unshare:?}");
    };
    assert_eq!((method, bytes_copied), (CopyMethod::Sparse, 2 * MIB));
    assert_eq!(fallback.map(|f| f.errno.name), Some("EOPNOTSUPP"));
}

on_each_fs!(
    single_link_is_left_alone,
    two_links_are_split_and_the_other_keeps_old_inode_and_bytes,
    three_links_are_split_and_the_others_keep_old_inode_and_bytes,
    private_copy_keeps_bytes_mode_and_holes,
    stale_temp_from_a_crash_is_swept,
    missing_file_needs_nothing,
);
on_reflink_fs!(reflink_fs_unshares_by_reflink);
on_fallback_fs!(fallback_fs_unshares_by_sparse_copy);

#[test]
fn a_directory_is_refused() {
    let fs = TestFs::new(FsKind::Tmpfs);
    fs::create_dir(fs.path().join("memory")).unwrap();

    let err = ensure_exclusive(&fs.path().join("memory")).unwrap_err();

    assert!(matches!(err, UnshareError::NotAFile { .. }), "{err:?}");
}
