//! `Copier` on real filesystems: several files as one operation (FICLONE
//! asked once), zero detection for fallocated files whose page cache holds
//! zero pages, and files with more data regions than the readahead window.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use tine_storage::testfs::{allocated_bytes, write_sparse, FsKind, TestFs};
use tine_storage::{copy_file, Copier, CopyMethod};

fn copier_asks_for_reflink_once_per_operation(kind: FsKind) {
    let fs = TestFs::new(kind);
    let src = fs.path().join("src");
    guest_tree(&src);
    let mut copier = Copier::new();

    let first = copier
        .copy_file(&src.join("config.json"), &fs.path().join("a"))
        .unwrap();
    let second = copier
        .copy_file(&src.join("memory"), &fs.path().join("b"))
        .unwrap();

    assert_eq!(first.fallback.map(|f| f.errno.name), Some("EOPNOTSUPP"));
    // A file whose FICLONE was refused carries the answer; this one was
    // never asked.
    assert_eq!((second.method, second.fallback), (CopyMethod::Sparse, None));
    assert_eq!(
        copier.fallback().map(|f| f.path.clone()),
        Some(src.join("config.json"))
    );
    assert_eq!(
        content_hash(&fs.path().join("b")),
        content_hash(&src.join("memory"))
    );
}

fn copy_file_alone_asks_for_reflink_every_time(kind: FsKind) {
    let fs = TestFs::new(kind);
    let src = fs.path().join("src");
    guest_tree(&src);

    let first = copy_file(&src.join("config.json"), &fs.path().join("a")).unwrap();
    let second = copy_file(&src.join("memory"), &fs.path().join("b")).unwrap();

    assert_eq!(
        (
            first.fallback.map(|f| f.errno.name),
            second.fallback.map(|f| f.errno.name)
        ),
        (Some("EOPNOTSUPP"), Some("EOPNOTSUPP"))
    );
}

fn copier_reflinks_every_file_and_ignores_zero_detection(kind: FsKind) {
    let fs = TestFs::new(kind);
    let src = fs.path().join("src");
    guest_tree(&src);
    let mut copier = Copier::new();
    copier.detect_zeros(true);

    let a = copier
        .copy_file(&src.join("config.json"), &fs.path().join("a"))
        .unwrap();
    let b = copier
        .copy_file(&src.join("memory"), &fs.path().join("b"))
        .unwrap();

    assert_eq!(
        (a.method, b.method),
        (CopyMethod::Reflink, CopyMethod::Reflink)
    );
    assert!(copier.fallback().is_none());
}

/// A fallocated file with `data` written and then read through, as a
/// guest's RAM file is: its page cache holds zero pages over unwritten
/// blocks, which ext4's SEEK_DATA reports as data.
fn fallocated_and_read(path: &Path, size: u64, data: &[(u64, usize)]) {
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size).unwrap();
    for &(off, len) in data {
        file.write_all_at(&vec![0xa5; len], off).unwrap();
    }
    let mut buf = vec![0; MIB as usize];
    for off in (0..size).step_by(buf.len()) {
        file.read_exact_at(&mut buf, off).unwrap();
    }
}

fn detect_zeros_writes_only_the_non_zero_blocks(kind: FsKind) {
    let fs = TestFs::new(kind);
    let src = fs.path().join("memory");
    let data = [(MIB, 4096), (10 * MIB, 64 << 10), (20 * MIB, MIB as usize)];
    let written = 4096 + (64 << 10) + MIB;
    fallocated_and_read(&src, 32 * MIB, &data);
    let (plain, sparse) = (fs.path().join("plain"), fs.path().join("sparse"));
    let mut zeros = Copier::new();
    zeros.detect_zeros(true);

    let full = Copier::new().copy_file(&src, &plain).unwrap();
    let only_data = zeros.copy_file(&src, &sparse).unwrap();

    assert_eq!(full.bytes_copied, 32 * MIB, "every cached page is data");
    assert_eq!(only_data.bytes_copied, written);
    let allocated = allocated_bytes(&sparse).unwrap();
    // Allow metadata blocks, not the zeros.
    assert!(
        (written..written + MIB / 4).contains(&allocated),
        "{allocated}"
    );
    assert_eq!(fs::metadata(&sparse).unwrap().len(), 32 * MIB);
    assert_eq!(content_hash(&sparse), content_hash(&src));
}

fn many_small_regions_past_the_readahead_window_copy_exactly(kind: FsKind) {
    let fs = TestFs::new(kind);
    let src = fs.path().join("overlay");
    // 400 pieces of 64 KiB (25 MiB of data, more than the 16 MiB window),
    // then one region larger than a copy_file_range request.
    let mut regions: Vec<(u64, u64)> = (0..400).map(|i| ((i * 256) << 10, 64 << 10)).collect();
    regions.push((120 * MIB, 20 * MIB));
    write_sparse(&src, 160 * MIB, &regions, 7).unwrap();
    let data = 400 * (64 << 10) + 20 * MIB;
    let dst = fs.path().join("copy");

    let report = Copier::new().copy_file(&src, &dst).unwrap();

    assert_eq!(report.bytes_copied, data);
    assert_eq!(content_hash(&dst), content_hash(&src));
    let allocated = allocated_bytes(&dst).unwrap();
    assert!((data..data + MIB).contains(&allocated), "{allocated}");
}

on_fallback_fs!(
    copier_asks_for_reflink_once_per_operation,
    copy_file_alone_asks_for_reflink_every_time,
    many_small_regions_past_the_readahead_window_copy_exactly,
);
on_reflink_fs!(copier_reflinks_every_file_and_ignores_zero_detection);
// tmpfs keeps never-written fallocated pages out of SEEK_DATA even when read.
on_fs!([ext4 => Ext4]; detect_zeros_writes_only_the_non_zero_blocks);
