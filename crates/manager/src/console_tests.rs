//! `console::trim` on real filesystems: collapse where it works (ext4,
//! XFS), the punched hole elsewhere (tmpfs, btrfs).

use std::io::Write;
use std::path::Path;

use tine_storage::testfs::{allocated_bytes, FsKind, TestFs};

use super::*;

const MIB: u64 = 1 << 20;

/// `n` numbered lines of 100 bytes.
fn lines(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("line {i:07} {}\n", "x".repeat(86)))
        .collect()
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// What a reader shows: from `first_byte` on.
fn shown(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let at = first_byte(path).unwrap() as usize;
    String::from_utf8(bytes[at..].to_vec()).unwrap()
}

fn trim_keeps_the_newest_whole_lines(kind: FsKind) {
    let fs = TestFs::new(kind);
    let log = fs.path().join("console.log");
    let all = lines(0, 30_000); // 3 MB
    std::fs::write(&log, &all).unwrap();

    let t = trim(&log, MIB).unwrap();
    append(&log, &lines(30_000, 10)); // as QEMU does, at the end
    let t2 = trim(&log, MIB).unwrap();
    append(&log, &lines(30_010, 20_000)); // over the cap again
    let t3 = trim(&log, MIB).unwrap();

    let collapses = matches!(kind, FsKind::Ext4 | FsKind::Xfs);
    assert_eq!(matches!(t, Trimmed::Collapsed(_)), collapses, "{t:?}");
    assert!(!matches!(t, Trimmed::No), "{t:?}");
    assert_eq!(t2, Trimmed::No);
    assert!(!matches!(t3, Trimmed::No), "{t3:?}");
    let disk = allocated_bytes(&log).unwrap();
    assert!(disk <= MIB, "{disk} bytes on disk");
    let text = shown(&log);
    let expected = lines(0, 50_010);
    assert!(text.starts_with("line "), "{:?}", &text[..40]);
    assert!(expected.ends_with(&text), "not the newest lines");
    assert!(
        (MIB / 2 - 4096..=MIB / 2 + 8192).contains(&(text.len() as u64)),
        "{}",
        text.len()
    );
    if collapses {
        assert!(std::fs::metadata(&log).unwrap().len() <= MIB);
    }
}

macro_rules! on_each_fs {
    ($test:ident) => {
        mod $test {
            use tine_storage::testfs::FsKind;
            #[test]
            fn ext4() {
                super::$test(FsKind::Ext4)
            }
            #[test]
            fn xfs() {
                super::$test(FsKind::Xfs)
            }
            #[test]
            fn tmpfs() {
                super::$test(FsKind::Tmpfs)
            }
            #[test]
            fn btrfs() {
                super::$test(FsKind::Btrfs)
            }
        }
    };
}

on_each_fs!(trim_keeps_the_newest_whole_lines);

#[test]
fn a_log_under_its_cap_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    std::fs::write(&log, lines(0, 100)).unwrap();

    assert_eq!(trim(&log, MIB).unwrap(), Trimmed::No);
    assert_eq!(shown(&log), lines(0, 100));
}
