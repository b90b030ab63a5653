//! Shared fixtures: per-filesystem test generation and a sample guest tree.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use tine_storage::testfs::write_sparse;

pub const MIB: u64 = 1 << 20;

/// `on_fs!(fs_list; test_fn, ...)` makes `test_fn::xfs` etc., each calling
/// `test_fn(FsKind::Xfs)` on its own freshly mounted filesystem.
#[macro_export]
macro_rules! on_fs {
    ($kinds:tt; $($test:ident),+ $(,)?) => {
        $($crate::on_fs!(@one $test $kinds);)+
    };
    (@one $test:ident [$($fs:ident => $kind:ident),+]) => {
        mod $test {$(
            #[test]
            fn $fs() {
                super::$test(tine_storage::testfs::FsKind::$kind)
            }
        )+}
    };
}

/// Every test filesystem.
#[macro_export]
macro_rules! on_each_fs {
    ($($test:ident),+ $(,)?) => {
        $crate::on_fs!([xfs => Xfs, btrfs => Btrfs, ext4 => Ext4, tmpfs => Tmpfs]; $($test),+);
    };
}

/// Filesystems where FICLONE works.
#[macro_export]
macro_rules! on_reflink_fs {
    ($($test:ident),+ $(,)?) => {
        $crate::on_fs!([xfs => Xfs, btrfs => Btrfs]; $($test),+);
    };
}

/// Filesystems where FICLONE answers EOPNOTSUPP.
#[macro_export]
macro_rules! on_fallback_fs {
    ($($test:ident),+ $(,)?) => {
        $crate::on_fs!([ext4 => Ext4, tmpfs => Tmpfs]; $($test),+);
    };
}

/// Data bytes in the sample tree's regular files.
pub const TREE_DATA: u64 = 3 * MIB + 4 * MIB + CONFIG.len() as u64 + SCRIPT.len() as u64;
/// Regular files the sample tree's copy must contain.
pub const TREE_FILES: u64 = 4;
const CONFIG: &[u8] = b"{\"vcpus\":1,\"memory_mib\":256}\n";
const SCRIPT: &[u8] = b"#!/bin/sh\nexit 0\n";

/// A small guest directory: a sparse memory file, a sparse overlay in a
/// subdirectory, a config, an executable, symlinks, and the entries a copy
/// must skip (temp files, a FIFO, a socket, a device node).
pub fn guest_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    write_sparse(
        &root.join("memory"),
        16 * MIB,
        &[(0, MIB), (8 * MIB, 2 * MIB)],
        1,
    )
    .unwrap();
    fs::create_dir(root.join("disks")).unwrap();
    let regions = [(0, MIB), (20 * MIB, MIB), (40 * MIB, 2 * MIB)];
    write_sparse(&root.join("disks/overlay.raw"), 64 * MIB, &regions, 2).unwrap();
    fs::set_permissions(root.join("disks"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(root.join("config.json"), CONFIG).unwrap();
    fs::set_permissions(root.join("config.json"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(root.join("init.sh"), SCRIPT).unwrap();
    fs::set_permissions(root.join("init.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("disks/overlay.raw", root.join("rootfs")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::write(root.join("memory.zst.tmp"), b"half-compressed").unwrap();
    fs::write(root.join(".config.json.123-0.tmp"), b"half-written").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("serial.fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("null.dev"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    // The listener is dropped; its socket file stays, as after a crash.
    std::os::unix::net::UnixListener::bind(root.join("api.sock")).unwrap();
}

/// What a correct copy of `guest_tree` contains.
pub fn expected_copy_entries() -> Vec<&'static str> {
    vec![
        "config.json",
        "dangling",
        "disks",
        "disks/overlay.raw",
        "init.sh",
        "memory",
        "rootfs",
    ]
}

/// One line per entry below `root`: relative path, file type, mode, size
/// and a hash of the contents (or the symlink target), sorted.
pub fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out.sort();
    out
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let rel = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(root.join(&rel)).unwrap();
        let what = if meta.file_type().is_symlink() {
            format!("-> {}", fs::read_link(root.join(&rel)).unwrap().display())
        } else if meta.is_dir() {
            walk(root, &rel, out);
            "dir".to_string()
        } else if meta.is_file() {
            format!("{} bytes #{:x}", meta.len(), content_hash(&root.join(&rel)))
        } else {
            format!("special {:o}", meta.mode() & 0o170000)
        };
        let mode = if meta.file_type().is_symlink() {
            0
        } else {
            meta.mode() & 0o7777
        };
        out.push(format!("{} {:o} {what}", rel.display(), mode));
    }
}

/// Relative paths of all entries below `root`, sorted.
pub fn names(root: &Path) -> Vec<String> {
    listing(root)
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

pub fn content_hash(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    fs::read(path).unwrap().hash(&mut h);
    h.finish()
}

pub fn inode(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

pub fn nlink(path: &Path) -> u64 {
    fs::metadata(path).unwrap().nlink()
}

/// Overwrites the first 4 KiB of `path` in place, like a guest write that
/// reaches the file.
pub fn scribble(path: &Path) {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&[0xAB; 4096], 0).unwrap();
}
