//! Copy-engine benchmark: tine's `copy_dir` against
//! `cp -a --reflink=auto --sparse=always` on the same trees, in one run, on
//! loop-mounted XFS (reflink), btrfs and ext4.
//!
//! Run as root:
//!   cargo run --release -p tine-storage --features testfs --example copy_bench -- [--reps N] [--fs xfs,btrfs,ext4]
//!
//! Before every timed copy both tools get the same treatment: previous copy
//! removed and its blocks trimmed (the loop images are sparse files on the
//! host's disk), `sync`, page cache dropped (`/proc/sys/vm/drop_caches`), so
//! each copy starts cold with a clean filesystem (cp's own binary is then
//! reloaded by a `cp --version`, so the cold cache is about data only). Both
//! tools copy to the same path, so the allocator treats them alike. "copy" is the
//! call (tine) or the process (cp, spawn included); "+sync" adds the syncfs
//! that makes it durable. Figures are "median / min" in ms over `--reps` runs
//! (5), the two tools alternating which goes first.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tine_storage::testfs::{write_sparse, FsKind, TestFs};
use tine_storage::{copy_dir, CopyOptions, CopyReport};

const MIB: u64 = 1 << 20;
/// Data in the 1 GiB overlay: 256 pieces of 256 KiB.
const OVERLAY_DATA: u64 = 64 * MIB;

/// A guest directory: memory file (all data), a 1 GiB overlay with 64 MiB in
/// 256 scattered 256 KiB pieces, a device-state file and small files. The
/// 256 MiB row is the realistic guest; 64 MiB and 1 GiB show the growth.
fn guest(root: &Path, memory: u64) {
    fs::create_dir_all(root.join("disks")).unwrap();
    write_sparse(&root.join("memory"), memory, &[(0, memory)], 1).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let regions: Vec<(u64, u64)> = (0..256)
        .map(|i| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let jitter = (seed >> 33) % ((4 * MIB - 256 * 1024) / 4096) * 4096;
            (i * 4 * MIB + jitter, 256 * 1024)
        })
        .collect();
    write_sparse(&root.join("disks/overlay.raw"), 1024 * MIB, &regions, 2).unwrap();
    write_sparse(&root.join("vmstate"), 53 * 1024, &[(0, 53 * 1024)], 3).unwrap();
    fs::write(root.join("config.json"), br#"{"vcpus":1,"memory_mib":256}"#).unwrap();
    fs::write(root.join("console.log"), "booted\n".repeat(200)).unwrap();
    std::os::unix::fs::symlink("disks/overlay.raw", root.join("rootfs")).unwrap();
}

fn drop_caches() -> bool {
    rustix::fs::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn run_cp(src: &Path, dst: &Path) {
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto", "--sparse=always"])
        .arg(src)
        .arg(dst)
        .status()
        .expect("spawn cp");
    assert!(status.success(), "cp failed: {status}");
}

/// One cold, timed copy: (copy, copy + syncfs).
fn timed(fs: &TestFs, dst: &Path, copy: impl FnOnce()) -> (Duration, Duration) {
    let _ = fs::remove_dir_all(dst);
    let trim = Command::new("fstrim").arg(fs.path()).status();
    assert!(trim.is_ok_and(|s| s.success()), "fstrim {:?}", fs.path());
    assert!(drop_caches(), "cannot drop caches (need root)");
    // Reload cp's binary and libraries: the cold cache is for the data, not
    // for cp's own code (tine's is already mapped).
    Command::new("cp")
        .arg("--version")
        .output()
        .expect("spawn cp");
    let start = Instant::now();
    copy();
    let copied = start.elapsed();
    fs.sync();
    (copied, start.elapsed())
}

fn time_tine(fs: &TestFs, src: &Path, dst: &Path) -> ((Duration, Duration), CopyReport) {
    let mut report = None;
    let t = timed(fs, dst, || {
        report = Some(copy_dir(src, dst, &CopyOptions::new()).unwrap())
    });
    (t, report.unwrap())
}

fn time_cp(fs: &TestFs, src: &Path, dst: &Path) -> (Duration, Duration) {
    timed(fs, dst, || run_cp(src, dst))
}

/// "median / min" in ms.
fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!("{:.1} / {:.1}", ms(v[v.len() / 2]), ms(v[0]))
}

/// Median cost of spawning cp at all (warm), to read cp's figures against.
fn spawn_cost(reps: usize) -> String {
    let runs = (0..reps.max(5))
        .map(|_| {
            let start = Instant::now();
            Command::new("cp")
                .arg("--version")
                .output()
                .expect("spawn cp");
            start.elapsed()
        })
        .collect();
    stats(runs)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
    };
    let reps: usize = arg("--reps").map_or(5, |r| r.parse().expect("--reps N"));
    let kinds: Vec<FsKind> = arg("--fs")
        .unwrap_or_else(|| "xfs,btrfs,ext4".into())
        .split(',')
        .map(|n| {
            *FsKind::ALL
                .iter()
                .find(|k| k.name() == n)
                .expect("fs: xfs, btrfs, ext4, tmpfs")
        })
        .collect();

    println!(
        "cp spawn alone (cp --version, warm), ms median / min: {}",
        spawn_cost(reps)
    );
    println!();
    println!("| fs | memory file | data MiB | tine copy | cp copy | tine copy+sync | cp copy+sync | tine method |");
    println!("|---|---|---:|---:|---:|---:|---:|---|");
    for kind in kinds {
        let fs = TestFs::with_size(kind, 16 << 30);
        for memory_mib in [64, 256, 1024] {
            let src = fs.path().join("src");
            guest(&src, memory_mib * MIB);
            let dst = fs.path().join("dst");
            let (mut tine, mut cp, mut report) = (Vec::new(), Vec::new(), CopyReport::default());
            for rep in 0..reps {
                // Alternate who goes first, so neither always follows the other.
                if rep % 2 == 1 {
                    cp.push(time_cp(&fs, &src, &dst));
                }
                let (t, r) = time_tine(&fs, &src, &dst);
                tine.push(t);
                report = r;
                if rep % 2 == 0 {
                    cp.push(time_cp(&fs, &src, &dst));
                }
            }
            let method = match &report.fallback {
                None => format!("reflink x{}", report.reflinked),
                Some(f) => format!(
                    "sparse x{} after {}, {} MiB written",
                    report.sparse_copied,
                    f.errno.name,
                    report.bytes_copied / MIB
                ),
            };
            println!(
                "| {} | {} MiB | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                memory_mib,
                (memory_mib * MIB + OVERLAY_DATA) / MIB,
                stats(tine.iter().map(|t| t.0).collect()),
                stats(cp.iter().map(|t| t.0).collect()),
                stats(tine.iter().map(|t| t.1).collect()),
                stats(cp.iter().map(|t| t.1).collect()),
                method,
            );
            for dir in [&dst, &src] {
                fs::remove_dir_all(dir).unwrap();
            }
        }
    }
}
