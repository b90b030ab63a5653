//! `copy_dir` on real loop-mounted filesystems: reflink where the filesystem
//! can, sparse copy where it cannot, and the same tree either way.

mod common;

use std::fs;

use common::*;
use tine_storage::fiemap::shared_bytes;
use tine_storage::testfs::{allocated_bytes, FsKind, TestFs};
use tine_storage::{copy_dir, copy_file, CopyError, CopyMethod, CopyOptions, SkipReason};

fn copy_reproduces_bytes_modes_and_symlinks(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (src, dst) = (fs.path().join("src"), fs.path().join("dst"));
    guest_tree(&src);

    copy_dir(&src, &dst, &CopyOptions::new()).unwrap();

    let copied: Vec<String> = listing(&dst);
    let wanted: Vec<String> = listing(&src)
        .into_iter()
        .filter(|l| expected_copy_entries().contains(&l.split(' ').next().unwrap()))
        .collect();
    assert_eq!(copied, wanted);
    assert_eq!(
        fs::metadata(&dst).unwrap().permissions(),
        fs::metadata(&src).unwrap().permissions()
    );
}

fn copy_skips_special_files_temp_files_and_listed_paths(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (src, dst) = (fs.path().join("src"), fs.path().join("dst"));
    guest_tree(&src);

    let report = copy_dir(&src, &dst, &CopyOptions::new().skip("memory").skip("disks")).unwrap();

    // Entries are visited in name order.
    let reasons: Vec<_> = report
        .skipped_entries
        .iter()
        .map(|s| (s.path.to_str().unwrap(), s.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            (".config.json.123-0.tmp", SkipReason::TempFile),
            ("api.sock", SkipReason::Socket),
            ("disks", SkipReason::Listed),
            ("memory", SkipReason::Listed),
            ("memory.zst.tmp", SkipReason::TempFile),
            ("null.dev", SkipReason::Device),
            ("serial.fifo", SkipReason::Fifo),
        ]
    );
    assert_eq!(report.skipped, 7);
    assert_eq!(
        names(&dst),
        ["config.json", "dangling", "init.sh", "rootfs"]
    );
}

fn copy_keeps_sizes_and_holes(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (src, dst) = (fs.path().join("src"), fs.path().join("dst"));
    guest_tree(&src);

    copy_dir(&src, &dst, &CopyOptions::new()).unwrap();

    let overlay = dst.join("disks/overlay.raw");
    assert_eq!(fs::metadata(&overlay).unwrap().len(), 64 * MIB);
    // 4 MiB of data in a 64 MiB file; allow metadata blocks, not the holes.
    assert!(
        allocated_bytes(&overlay).unwrap() <= 5 * MIB,
        "{}",
        allocated_bytes(&overlay).unwrap()
    );
    assert!(allocated_bytes(&dst.join("memory")).unwrap() <= 4 * MIB);
}

fn copy_into_existing_dir_never_overwrites_a_file(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (src, dst) = (fs.path().join("src"), fs.path().join("dst"));
    guest_tree(&src);
    fs::create_dir(&dst).unwrap();
    fs::write(dst.join("config.json"), b"theirs").unwrap();

    let err = copy_dir(&src, &dst, &CopyOptions::new()).unwrap_err();

    assert!(
        matches!(&err, CopyError::Create { path, .. } if *path == dst.join("config.json")),
        "{err:?}"
    );
    assert_eq!(fs::read(dst.join("config.json")).unwrap(), b"theirs");
}

fn reflink_fs_clones_every_file_with_shared_extents(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (src, dst) = (fs.path().join("src"), fs.path().join("dst"));
    guest_tree(&src);
    fs.sync();

    let report = copy_dir(&src, &dst, &CopyOptions::new()).unwrap();
    fs.sync();

    assert_eq!(
        (report.reflinked, report.sparse_copied, report.bytes_copied),
        (TREE_FILES, 0, 0)
    );
    assert_eq!(report.fallback, None);
    let memory = fs::File::open(dst.join("memory")).unwrap();
    let overlay = fs::File::open(dst.join("disks/overlay.raw")).unwrap();
    assert_eq!(shared_bytes(&memory).unwrap(), 3 * MIB);
    assert_eq!(shared_bytes(&overlay).unwrap(), 4 * MIB);
}

fn writing_the_reflinked_copy_leaves_the_source_intact(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (src, dst) = (fs.path().join("src"), fs.path().join("dst"));
    guest_tree(&src);
    let before = content_hash(&src.join("memory"));
    copy_dir(&src, &dst, &CopyOptions::new()).unwrap();

    scribble(&dst.join("memory"));

    assert_eq!(content_hash(&src.join("memory")), before);
    assert_ne!(content_hash(&dst.join("memory")), before);
}

fn fallback_fs_sparse_copies_after_eopnotsupp(kind: FsKind) {
    let fs = TestFs::new(kind);
    let (src, dst) = (fs.path().join("src"), fs.path().join("dst"));
    guest_tree(&src);

    let report = copy_dir(&src, &dst, &CopyOptions::new()).unwrap();

    assert_eq!((report.reflinked, report.sparse_copied), (0, TREE_FILES));
    assert_eq!(report.bytes_copied, TREE_DATA);
    // Files are visited in name order; "config.json" comes first.
    assert_eq!(
        report.fallback.map(|f| (f.errno.name, f.path)),
        Some(("EOPNOTSUPP", src.join("config.json")))
    );
}

on_each_fs!(
    copy_reproduces_bytes_modes_and_symlinks,
    copy_skips_special_files_temp_files_and_listed_paths,
    copy_keeps_sizes_and_holes,
    copy_into_existing_dir_never_overwrites_a_file,
);
on_reflink_fs!(
    reflink_fs_clones_every_file_with_shared_extents,
    writing_the_reflinked_copy_leaves_the_source_intact
);
on_fallback_fs!(fallback_fs_sparse_copies_after_eopnotsupp);

#[test]
fn copy_between_two_xfs_mounts_falls_back_with_exdev() {
    let (a, b) = (TestFs::new(FsKind::Xfs), TestFs::new(FsKind::Xfs));
    let src = a.path().join("src");
    guest_tree(&src);

    let report = copy_dir(&src, &b.path().join("dst"), &CopyOptions::new()).unwrap();

    assert_eq!(report.fallback.map(|f| f.errno.name), Some("EXDEV"));
    assert_eq!(
        listing(&b.path().join("dst")).len(),
        expected_copy_entries().len()
    );
}

#[test]
fn copy_file_reflinks_a_single_file_on_xfs() {
    let fs = TestFs::new(FsKind::Xfs);
    let src = fs.path().join("src");
    guest_tree(&src);

    let report = copy_file(&src.join("memory"), &fs.path().join("memory")).unwrap();

    assert_eq!(
        (report.method, report.size, report.bytes_copied),
        (CopyMethod::Reflink, 16 * MIB, 0)
    );
    assert_eq!(
        content_hash(&fs.path().join("memory")),
        content_hash(&src.join("memory"))
    );
}

#[test]
fn copy_file_refuses_a_symlink_source() {
    let fs = TestFs::new(FsKind::Tmpfs);
    let src = fs.path().join("src");
    guest_tree(&src);

    let err = copy_file(&src.join("rootfs"), &fs.path().join("copy")).unwrap_err();

    assert!(matches!(err, CopyError::NotAFile { .. }), "{err:?}");
    assert!(!fs.path().join("copy").exists());
}

#[test]
fn copy_dir_refuses_a_file_as_source() {
    let fs = TestFs::new(FsKind::Tmpfs);
    fs::write(fs.path().join("file"), b"x").unwrap();

    let err = copy_dir(
        &fs.path().join("file"),
        &fs.path().join("dst"),
        &CopyOptions::new(),
    )
    .unwrap_err();

    assert!(matches!(err, CopyError::NotADirectory { .. }), "{err:?}");
    assert!(!fs.path().join("dst").exists());
}

#[test]
fn copy_dir_refuses_a_destination_inside_the_source() {
    let fs = TestFs::new(FsKind::Tmpfs);
    let src = fs.path().join("src");
    guest_tree(&src);

    let err = copy_dir(&src, &src.join("disks/fork"), &CopyOptions::new()).unwrap_err();

    assert!(
        matches!(err, CopyError::DestinationInsideSource { .. }),
        "{err:?}"
    );
    assert!(!src.join("disks/fork").exists());
}

#[test]
fn copy_report_serializes_to_json() {
    let fs = TestFs::new(FsKind::Ext4);
    let src = fs.path().join("src");
    guest_tree(&src);

    let report = copy_dir(&src, &fs.path().join("dst"), &CopyOptions::new()).unwrap();

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["fallback"]["errno"]["name"], "EOPNOTSUPP");
    assert_eq!(json["skipped_entries"][0]["reason"], "temp_file");
}
