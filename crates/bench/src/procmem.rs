//! Host memory of a set of VM processes, and disk allocated per VM.
//!
//! Memory: `/proc/PID/smaps` is read per mapping. The guest-RAM mapping is
//! the one whose file is named `memory` (tine's memory file; the bare QEMU
//! baselines use the same name). For N VMs:
//! - `rss_sum`: Σ RSS — the naive figure, counts shared pages N times;
//! - `pss_sum`: Σ PSS — shared pages divided among the processes mapping them;
//! - `memfile_cache`: page cache of the memory files (mincore), each inode
//!   counted once — for forks sharing one inode this is the shared cache;
//! - `host_total` = Σ PSS − Σ (file-backed PSS of the guest-RAM mappings)
//!   plus `memfile_cache`: every private page of every VM (TCG buffers,
//!   QEMU heap, the copy-on-write pages each guest dirtied) plus the memory
//!   files' page cache counted once, including cached pages no VM maps.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

pub const MEMORY_FILE: &str = "memory";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcMem {
    pub rss: u64,
    pub pss: u64,
    /// PSS of the guest-RAM mappings (file pages + copy-on-write pages).
    pub ram_pss: u64,
    /// Anonymous (copy-on-write) bytes in the guest-RAM mappings.
    pub ram_anon: u64,
    pub ram_rss: u64,
    /// Paths of the guest-RAM mappings' files.
    pub ram_files: Vec<PathBuf>,
}

/// Parse the text of `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> ProcMem {
    let mut m = ProcMem::default();
    let mut in_ram = false;
    for line in text.lines() {
        if let Some((path, is_header)) = header_path(line) {
            if is_header {
                let p = path.trim_end_matches(" (deleted)");
                in_ram = Path::new(p).file_name().is_some_and(|n| n == MEMORY_FILE);
                if in_ram && !m.ram_files.iter().any(|f| f == Path::new(p)) {
                    m.ram_files.push(PathBuf::from(p));
                }
                continue;
            }
        }
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kb = || -> u64 {
            rest.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        match key {
            "Rss" => {
                let v = kb();
                m.rss += v;
                if in_ram {
                    m.ram_rss += v;
                }
            }
            "Pss" => {
                let v = kb();
                m.pss += v;
                if in_ram {
                    m.ram_pss += v;
                }
            }
            "Anonymous" if in_ram => m.ram_anon += kb(),
            _ => {}
        }
    }
    m
}

/// A mapping header is `start-end perms offset dev inode [path]`; returns
/// its path (maybe empty) and `true`, or `None` for other lines.
fn header_path(line: &str) -> Option<(&str, bool)> {
    let first = line.split_whitespace().next()?;
    let (a, b) = first.split_once('-')?;
    if a.is_empty()
        || !a.bytes().all(|c| c.is_ascii_hexdigit())
        || !b.bytes().all(|c| c.is_ascii_hexdigit())
    {
        return None;
    }
    // Skip five fields, keep the rest (paths may contain spaces).
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    Some((rest.trim(), true))
}

pub fn read_proc(pid: i32) -> Result<ProcMem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("read smaps of {pid}"))?;
    Ok(parse_smaps(&text))
}

/// Bytes of `path` resident in the page cache.
pub fn cached_bytes(path: &Path) -> Result<u64> {
    let (resident, _) = tine_storage::resident_bytes(path)
        .with_context(|| format!("page cache of {}", path.display()))?;
    Ok(resident)
}

/// CPU time (user + system) of `pids` so far, in seconds.
pub fn cpu_seconds(pids: &[i32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command (which may contain spaces): state is
            // field 3, utime 14, stime 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / hz
}

/// Percent of one core each of `pids` used while `wait` ran.
pub async fn idle_cpu_pct_per_vm(
    pids: &[i32],
    wait: impl std::future::Future<Output = ()>,
) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let (c0, t0) = (cpu_seconds(pids), std::time::Instant::now());
    wait.await;
    let (c1, dt) = (cpu_seconds(pids), t0.elapsed().as_secs_f64());
    Some((c1 - c0) / dt / pids.len() as f64 * 100.0)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MemReport {
    pub processes: usize,
    pub rss_sum: u64,
    pub pss_sum: u64,
    /// Σ file-backed PSS of the guest-RAM mappings (what `host_total` swaps
    /// for the page cache counted once).
    pub ram_file_pss_sum: u64,
    /// Σ copy-on-write pages in the guest-RAM mappings (what the VMs dirtied).
    pub ram_cow_sum: u64,
    /// Page cache of the distinct memory-file inodes the VMs map.
    pub memfile_cache: u64,
    pub memfile_inodes: usize,
    pub host_total: u64,
    pub host_per_vm: f64,
    pub pss_per_vm: f64,
    pub rss_per_vm: f64,
    /// Processes that could not be read (exited?).
    pub unreadable: usize,
    /// Percent of one core each VM used while the benchmark waited before
    /// measuring (idle guests: TCG timer work).
    pub idle_cpu_pct_per_vm: Option<f64>,
}

/// Measure the VMs `pids` (see the module doc for the formula).
pub fn measure(pids: &[i32]) -> MemReport {
    let mut r = MemReport::default();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    for &pid in pids {
        let Ok(m) = read_proc(pid) else {
            r.unreadable += 1;
            continue;
        };
        r.processes += 1;
        r.rss_sum += m.rss;
        r.pss_sum += m.pss;
        r.ram_file_pss_sum += m.ram_pss.saturating_sub(m.ram_anon);
        r.ram_cow_sum += m.ram_anon;
        for f in m.ram_files {
            if let Ok(md) = std::fs::metadata(&f) {
                inodes.entry((md.dev(), md.ino())).or_insert(f);
            }
        }
    }
    r.memfile_inodes = inodes.len();
    r.memfile_cache = inodes.values().filter_map(|p| cached_bytes(p).ok()).sum();
    r.host_total = r.pss_sum.saturating_sub(r.ram_file_pss_sum) + r.memfile_cache;
    if r.processes > 0 {
        let n = r.processes as f64;
        r.host_per_vm = r.host_total as f64 / n;
        r.pss_per_vm = r.pss_sum as f64 / n;
        r.rss_per_vm = r.rss_sum as f64 / n;
    }
    r
}

/// Bytes allocated (st_blocks) under `dir` by files with a single link: a
/// fork's own files, not the memory file it shares by hardlink. Reflinked
/// files count in full here (their extents are shared on disk; see the
/// filesystem-level delta for what they really cost).
pub fn own_allocated(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let Ok(md) = e.path().symlink_metadata() else {
            continue;
        };
        if md.is_dir() {
            total += own_allocated(&e.path());
        } else if md.is_file() && md.nlink() == 1 {
            total += md.blocks() * 512;
        }
    }
    total
}

/// Bytes allocated (st_blocks) by `path`, whatever its link count.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fe:00 123 /usr/bin/qemu-system-x86_64
Size:               1024 kB
Rss:                 800 kB
Pss:                 400 kB
Anonymous:             0 kB
7f0000000000-7f0010000000 rw-p 00000000 07:01 77 /var/tmp/tine bench/xfs/instances/ab/memory
Size:             262144 kB
Rss:                3000 kB
Pss:                2000 kB
Anonymous:          1000 kB
7f0010000000-7f0020000000 rw-p 00000000 00:00 0 
Size:             262144 kB
Rss:               28000 kB
Pss:               28000 kB
Anonymous:         28000 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                   8 kB
Pss:                   8 kB
";

    #[test]
    fn smaps_totals_and_guest_ram_mapping() {
        let m = parse_smaps(SMAPS);
        assert_eq!(m.rss, (800 + 3000 + 28000 + 8) * 1024);
        assert_eq!(m.pss, (400 + 2000 + 28000 + 8) * 1024);
        assert_eq!(m.ram_pss, 2000 * 1024);
        assert_eq!(m.ram_anon, 1000 * 1024);
        assert_eq!(m.ram_rss, 3000 * 1024);
        assert_eq!(
            m.ram_files,
            vec![PathBuf::from("/var/tmp/tine bench/xfs/instances/ab/memory")]
        );
    }

    #[test]
    fn own_cpu_time_is_counted() {
        let me = std::process::id() as i32;
        let t = std::time::Instant::now();
        while t.elapsed().as_millis() < 50 {
            std::hint::black_box(0u64);
        }
        assert!(cpu_seconds(&[me]) > 0.0);
        assert_eq!(cpu_seconds(&[]), 0.0);
    }

    #[test]
    fn deleted_memory_file_is_still_guest_ram() {
        let m = parse_smaps(
            "7f0000000000-7f0010000000 rw-s 00000000 07:01 77 /d/memory (deleted)\nPss: 4 kB\n",
        );
        assert_eq!(m.ram_pss, 4096);
        assert_eq!(m.ram_files, vec![PathBuf::from("/d/memory")]);
    }

    #[test]
    fn page_cache_of_a_written_file_is_resident() {
        let dir = tempfile_dir();
        let p = dir.join("f");
        std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
        let c = cached_bytes(&p).unwrap();
        assert!(c > 0 && c <= 1 << 20, "{c}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("tine-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
