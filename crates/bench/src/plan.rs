//! What one run measures, in execution order. Pure: `--dry-run` prints it
//! and the unit tests check it, without a VM.

use std::fmt;

use clap::Parser;
use serde::Serialize;

use crate::fsmount::FsKind;

/// How a fork's memory is made (tine's daemon modes) or which baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// tine default: memory file hardlinked, mapped private.
    Link,
    /// tine with a warm pool for the source (`POST /v1/pools`, filled
    /// before the request): forks claim pre-started QEMUs.
    Pool,
    /// Baseline (b): hand-made QEMU templating over raw QMP, no tine.
    Bare,
    /// Baseline (b) with `-daemonize` as tine starts QEMU (single forks
    /// only): isolates what daemonizing costs.
    BareDaemonize,
    /// Baseline (b) from a pre-started QEMU waiting for its state (single
    /// forks only): what a warm-pool fast path could reach.
    BarePool,
    /// Baseline (c): tine with the memory file copied per fork by the copy
    /// engine (reflink on XFS, sparse copy on ext4).
    Copy,
    /// Baseline (d): tine with the memory file byte-copied per fork.
    FullCopy,
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::Link,
        Mode::Pool,
        Mode::Bare,
        Mode::BareDaemonize,
        Mode::BarePool,
        Mode::Copy,
        Mode::FullCopy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Link => "link",
            Mode::Pool => "pool",
            Mode::Bare => "bare",
            Mode::BareDaemonize => "bare-d",
            Mode::BarePool => "bare-pool",
            Mode::Copy => "copy",
            Mode::FullCopy => "full-copy",
        }
    }

    /// Whether the mode runs bursts (the bare variants that only isolate a
    /// cost run single forks).
    pub fn bursts(self) -> bool {
        !matches!(self, Mode::BareDaemonize | Mode::BarePool)
    }

    /// The `tine serve --fork-memory` value, for modes that go through tine's daemon.
    pub fn daemon_mode(self) -> Option<&'static str> {
        match self {
            Mode::Link | Mode::Pool => Some("link"),
            Mode::Copy => Some("copy"),
            Mode::FullCopy => Some("full-copy"),
            Mode::Bare | Mode::BareDaemonize | Mode::BarePool => None,
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown mode {s:?} (link, pool, bare, bare-d, bare-pool, copy, full-copy)")
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    Boot,
    Standby,
    Fork,
    FromRunning,
    BootN,
}

impl Section {
    pub const ALL: [Section; 5] = [
        Section::Boot,
        Section::Standby,
        Section::Fork,
        Section::FromRunning,
        Section::BootN,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Section::Boot => "boot",
            Section::Standby => "standby",
            Section::Fork => "fork",
            Section::FromRunning => "from-running",
            Section::BootN => "boot-n",
        }
    }
}

impl std::str::FromStr for Section {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Section::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown section {s:?} (boot, standby, fork, from-running, boot-n)")
            })
    }
}

/// tine fork benchmark: boot, standby/restore and fork, side by side with
/// baselines (fresh boots, hand-made QEMU templating, per-fork reflink and
/// byte copies of the memory file), on ext4 and XFS loop mounts, in one run.
///
/// Needs root, QEMU, xfsprogs, e2fsprogs, the `tine` binary and a built
/// guest image. Everything it creates lives under WORK_DIR/tine-bench-PID and
/// is removed on exit, error or Ctrl-C (and by the next run if it was killed).
#[derive(Parser, Debug, Clone)]
#[command(name = "tine-bench", version, after_help = AFTER_HELP)]
pub struct Args {
    /// A few minutes: 256 MiB only, 3 repetitions, bursts of 10, boot-N of 10, dirty 0/64.
    #[arg(long)]
    pub quick: bool,
    /// Print what would be measured and exit (no VM, no mount).
    #[arg(long)]
    pub dry_run: bool,
    /// Filesystems, comma-separated: ext4, xfs (loop mounts made here).
    #[arg(long, value_delimiter = ',')]
    pub fs: Option<Vec<FsKind>>,
    /// Guest memory sizes in MiB for standby/restore and fork.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<u32>>,
    /// MiB the fork source's guest fills in memory before standby.
    #[arg(long, default_value_t = 128)]
    pub touch_mib: u32,
    /// Repetitions for medians (boots, standby/restore, single forks).
    #[arg(long)]
    pub reps: Option<u32>,
    /// Burst sizes (forks per request; tine accepts at most 100). Default
    /// 25,50: 100 idle forks saturate 2 cores under TCG.
    #[arg(long, value_delimiter = ',')]
    pub bursts: Option<Vec<u32>>,
    /// Each burst this many times, the modes interleaved, every other
    /// repetition in reverse order (a burst's p50 moves
    /// by 10-20% from one run to the next on 2 cores; ratios are taken per
    /// repetition and their median reported).
    #[arg(long, default_value_t = 1)]
    pub burst_reps: u32,
    /// Baseline (a): fresh VMs booted (and filled like the source) at once.
    #[arg(long)]
    pub boot_n: Option<u32>,
    /// Forks (and baseline clones/boots) in flight at once (tine's default is 4).
    #[arg(long, default_value_t = 4)]
    pub parallel: u32,
    /// Fork modes / baselines, comma-separated: link, pool, bare, bare-d, bare-pool (those two: single forks only), copy, full-copy.
    #[arg(long, value_delimiter = ',')]
    pub modes: Option<Vec<Mode>>,
    /// Sections, comma-separated: boot, standby, fork, from-running, boot-n.
    #[arg(long, value_delimiter = ',')]
    pub sections: Option<Vec<Section>>,
    /// MiB dirtied in the guest before each timed standby.
    #[arg(long, value_delimiter = ',')]
    pub dirty: Option<Vec<u32>>,
    /// Skip copy/full-copy bursts whose memory copies would write more than this (GiB).
    #[arg(long, default_value_t = 8)]
    pub copy_budget_gib: u64,
    /// Wait before measuring memory of running VMs (ms).
    #[arg(long)]
    pub settle_ms: Option<u64>,
    /// Base directory for loop images, mounts and bare clones.
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: std::path::PathBuf,
    /// Size of each loop-mounted filesystem image (sparse), GiB.
    #[arg(long, default_value_t = 48)]
    pub fs_size_gib: u64,
    /// The `tine` binary (default: next to tine-bench, else PATH).
    #[arg(long)]
    pub tine: Option<std::path::PathBuf>,
    #[arg(long, env = "TINE_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu: std::path::PathBuf,
    #[arg(long, env = "TINE_IMAGES_DIR", default_value = "/var/lib/tine/images")]
    pub images_dir: std::path::PathBuf,
    /// `tine serve --network` (default none: no NICs, no host bridge/NAT
    /// changes; the bare baselines need it, their QEMUs have no NIC).
    #[arg(long, default_value = "none")]
    pub network: String,
    /// Copy the daemons' logs here before each filesystem is torn down.
    #[arg(long)]
    pub logs_dir: Option<std::path::PathBuf>,
    /// Write all results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

const AFTER_HELP: &str = "\
Examples:
  tine-bench --quick --json-out quick.json          # a few minutes, both filesystems
  tine-bench --json-out full.json                   # the full run (about 30-40 min on 2 TCG cores)
  tine-bench --fs xfs --sections fork --bursts 25   # one part only
  tine-bench --quick --dry-run                      # print the plan, touch nothing

Modes: link = tine as shipped (memory file hardlinked, mapped private); pool =
tine with a warm pool of the burst's size filled before the request (pool
memory reported);
bare = QEMU templating by hand over QMP, no tine (baseline b); bare-d = the same
with -daemonize as tine starts QEMU; bare-pool = a pre-started QEMU waiting in
-incoming defer (timed from migrate-incoming: a warm-pool fast path); copy / full-copy = tine serve
--fork-memory copy|full-copy (baselines c and d). Baseline (a) is the boot-n section.

Latencies are from the request (burst: from the burst's request, queueing
included): running = vCPUs running, ready = agent answered and the fork's
identity applied. Percentiles are nearest-rank. Host memory = sum of PSS minus
the file-backed PSS of the guest-RAM mappings plus the page cache of the memory
files (each inode once); the naive sum of RSS is reported beside it.";

/// Args with the defaults of the chosen mode (full or --quick) filled in.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub quick: bool,
    pub fs: Vec<FsKind>,
    pub sizes: Vec<u32>,
    pub touch_mib: u32,
    pub reps: u32,
    pub bursts: Vec<u32>,
    pub burst_reps: u32,
    pub boot_n: u32,
    pub parallel: u32,
    pub modes: Vec<Mode>,
    pub sections: Vec<Section>,
    pub dirty: Vec<u32>,
    pub copy_budget_bytes: u64,
    pub settle_ms: u64,
    pub network: String,
}

impl Config {
    pub fn from_args(a: &Args) -> Result<Config, String> {
        let q = a.quick;
        let c = Config {
            quick: q,
            fs: a
                .fs
                .clone()
                .unwrap_or_else(|| vec![FsKind::Ext4, FsKind::Xfs]),
            sizes: a
                .sizes
                .clone()
                .unwrap_or_else(|| if q { vec![256] } else { vec![256, 1024] }),
            touch_mib: a.touch_mib,
            reps: a.reps.unwrap_or(if q { 3 } else { 5 }),
            // 100 idle TCG forks need more than this machine's 2 cores (see
            // BENCHMARKS.md); `--bursts 25,100` asks for it anyway.
            bursts: a
                .bursts
                .clone()
                .unwrap_or_else(|| if q { vec![10] } else { vec![25, 50] }),
            burst_reps: a.burst_reps,
            boot_n: a.boot_n.unwrap_or(if q { 10 } else { 25 }),
            parallel: a.parallel,
            modes: a.modes.clone().unwrap_or_else(|| Mode::ALL.to_vec()),
            sections: a.sections.clone().unwrap_or_else(|| Section::ALL.to_vec()),
            dirty: a
                .dirty
                .clone()
                .unwrap_or_else(|| if q { vec![0, 64] } else { vec![0, 64, 128] }),
            copy_budget_bytes: a.copy_budget_gib << 30,
            settle_ms: a.settle_ms.unwrap_or(if q { 1000 } else { 2000 }),
            network: a.network.clone(),
        };
        if c.reps == 0 {
            return Err("--reps must be at least 1".into());
        }
        if !(1..=20).contains(&c.burst_reps) {
            return Err("--burst-reps must be 1..=20".into());
        }
        if let Some(b) = c.bursts.iter().find(|b| !(2..=100).contains(*b)) {
            return Err(format!(
                "burst size {b} out of range (2..=100; tine forks at most 100 per request)"
            ));
        }
        if c.sizes.iter().any(|s| *s < 128) {
            return Err("guest sizes must be at least 128 MiB".into());
        }
        if c.fs.is_empty() || c.sizes.is_empty() {
            return Err("need at least one filesystem and one size".into());
        }
        if !(1..=32).contains(&c.parallel) {
            return Err("--parallel must be 1..=32 (tine clamps to that)".into());
        }
        Ok(c)
    }

    pub fn has(&self, s: Section) -> bool {
        self.sections.contains(&s)
    }

    pub fn has_mode(&self, m: Mode) -> bool {
        self.modes.contains(&m)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    Mount {
        fs: FsKind,
    },
    Boot {
        reps: u32,
    },
    StandbyRestore {
        mem_mib: u32,
        dirty: Vec<u32>,
        reps: u32,
    },
    Source {
        mem_mib: u32,
        touch_mib: u32,
    },
    Singles {
        mem_mib: u32,
        modes: Vec<Mode>,
        reps: u32,
    },
    Burst {
        mem_mib: u32,
        mode: Mode,
        count: u32,
        /// Repetition (0-based) of this burst.
        rep: u32,
    },
    FromRunning {
        mem_mib: u32,
        reps: u32,
    },
    BootN {
        mem_mib: u32,
        count: u32,
        touch_mib: u32,
    },
    Skip {
        what: String,
        reason: String,
    },
    Teardown {
        fs: FsKind,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Mount { fs } => {
                write!(f, "mount {} loop filesystem, start tine serve", fs.name())
            }
            Step::Boot { reps } => {
                write!(f, "boot: {reps} x tine run 256M (sequential), idle RSS/PSS")
            }
            Step::StandbyRestore {
                mem_mib,
                dirty,
                reps,
            } => {
                write!(
                    f,
                    "standby/restore {mem_mib} MiB: {reps} x each, dirty {dirty:?} MiB"
                )
            }
            Step::Source { mem_mib, touch_mib } => write!(
                f,
                "source {mem_mib} MiB: boot, fill {touch_mib} MiB, standby"
            ),
            Step::Singles {
                mem_mib,
                modes,
                reps,
            } => {
                let m: Vec<&str> = modes.iter().map(|m| m.name()).collect();
                write!(
                    f,
                    "single fork {mem_mib} MiB: {reps} x [{}] interleaved (+1 warm-up each)",
                    m.join(", ")
                )
            }
            Step::Burst {
                mem_mib,
                mode,
                count,
                rep,
            } => write!(
                f,
                "burst {mem_mib} MiB {}: {count} forks at once (repetition {})",
                mode.name(),
                rep + 1
            ),
            Step::FromRunning { mem_mib, reps } => {
                write!(f, "fork --from-running {mem_mib} MiB: {reps} x")
            }
            Step::BootN {
                mem_mib,
                count,
                touch_mib,
            } => {
                write!(f, "baseline (a): boot {count} x {mem_mib} MiB at once, then each fills {touch_mib} MiB")
            }
            Step::Skip { what, reason } => write!(f, "SKIP {what}: {reason}"),
            Step::Teardown { fs } => write!(f, "remove everything on {}, unmount", fs.name()),
        }
    }
}

/// tine's largest warm pool (`MAX_POOL_SIZE`).
pub const MAX_POOL: u32 = 64;

/// Bytes of memory-file copies a burst would write (0 for sharing modes and
/// for reflinks).
pub fn copy_bytes(mode: Mode, fs: FsKind, mem_mib: u32, count: u32) -> u64 {
    let per = match (mode, fs) {
        (Mode::FullCopy, _) | (Mode::Copy, FsKind::Ext4) => (mem_mib as u64) << 20,
        _ => 0,
    };
    per * count as u64
}

pub fn plan(c: &Config) -> Vec<Step> {
    let mut steps = Vec::new();
    let forking = c.has(Section::Fork) && !c.modes.is_empty();
    // Every enabled mode, singles interleaved rep by rep (the daemon is
    // restarted with the right --fork-memory when the mode changes: ~0.1 s).
    let mut modes: Vec<Mode> = Mode::ALL.into_iter().filter(|m| c.has_mode(*m)).collect();
    if c.network != "none" {
        for m in modes.iter().filter(|m| m.daemon_mode().is_none()) {
            steps.push(Step::Skip {
                what: format!("mode {}", m.name()),
                reason: format!(
                    "its QEMUs have no NIC; tine runs with --network {}",
                    c.network
                ),
            });
        }
        modes.retain(|m| m.daemon_mode().is_some());
    }
    for &fs in &c.fs {
        steps.push(Step::Mount { fs });
        if c.has(Section::Boot) {
            steps.push(Step::Boot { reps: c.reps });
        }
        if c.has(Section::Standby) {
            for &m in &c.sizes {
                steps.push(Step::StandbyRestore {
                    mem_mib: m,
                    dirty: c.dirty.clone(),
                    reps: c.reps,
                });
            }
        }
        if forking {
            for &m in &c.sizes {
                steps.push(Step::Source {
                    mem_mib: m,
                    touch_mib: c.touch_mib,
                });
            }
            for &m in &c.sizes {
                steps.push(Step::Singles {
                    mem_mib: m,
                    modes: modes.clone(),
                    reps: c.reps,
                });
                for (&n, rep) in c
                    .bursts
                    .iter()
                    .flat_map(|n| (0..c.burst_reps).map(move |r| (n, r)))
                {
                    // Every other repetition in reverse order, so no mode
                    // always runs right after another's teardown.
                    let mut order: Vec<Mode> =
                        modes.iter().copied().filter(|m| m.bursts()).collect();
                    if rep % 2 == 1 {
                        order.reverse();
                    }
                    for mode in order {
                        let bytes = copy_bytes(mode, fs, m, n);
                        let skip =
                            mode == Mode::Pool && n > MAX_POOL || bytes > c.copy_budget_bytes;
                        if skip && rep > 0 {
                            // Said once, at the first repetition.
                            continue;
                        }
                        if mode == Mode::Pool && n > MAX_POOL {
                            steps.push(Step::Skip {
                                what: format!("burst {m} MiB pool x{n} on {}", fs.name()),
                                reason: format!("tine pools hold at most {MAX_POOL} entries"),
                            });
                        } else if bytes > c.copy_budget_bytes {
                            steps.push(Step::Skip {
                                what: format!(
                                    "burst {m} MiB {} x{n} on {}",
                                    mode.name(),
                                    fs.name()
                                ),
                                reason: format!(
                                    "would write {} GiB of memory copies (> --copy-budget-gib {})",
                                    bytes >> 30,
                                    c.copy_budget_bytes >> 30
                                ),
                            });
                        } else {
                            steps.push(Step::Burst {
                                mem_mib: m,
                                mode,
                                count: n,
                                rep,
                            });
                        }
                    }
                }
            }
        }
        if c.has(Section::FromRunning) {
            for &m in &c.sizes {
                steps.push(Step::FromRunning {
                    mem_mib: m,
                    reps: c.reps,
                });
            }
        }
        if c.has(Section::BootN) {
            steps.push(Step::BootN {
                mem_mib: c.sizes[0],
                count: c.boot_n,
                touch_mib: c.touch_mib,
            });
        }
        steps.push(Step::Teardown { fs });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["tine-bench"];
        v.extend_from_slice(args);
        Config::from_args(&Args::try_parse_from(v).unwrap()).unwrap()
    }

    #[test]
    fn quick_defaults_are_small() {
        let c = cfg(&["--quick"]);
        assert_eq!(
            (c.sizes.clone(), c.reps, c.bursts.clone(), c.boot_n),
            (vec![256], 3, vec![10], 10)
        );
        assert_eq!(c.fs, vec![FsKind::Ext4, FsKind::Xfs]);
    }

    #[test]
    fn full_defaults_follow_the_issue() {
        let c = cfg(&[]);
        assert_eq!(
            (c.sizes.clone(), c.reps, c.bursts.clone(), c.touch_mib),
            (vec![256, 1024], 5, vec![25, 50], 128)
        );
        assert_eq!(c.dirty, vec![0, 64, 128]);
    }

    #[test]
    fn quick_dry_run_plan_covers_every_mode_on_both_filesystems() {
        let p = plan(&cfg(&["--quick", "--dry-run"]));
        for fs in [FsKind::Ext4, FsKind::Xfs] {
            assert!(p.contains(&Step::Mount { fs }));
            assert!(p.contains(&Step::Teardown { fs }));
        }
        for mode in Mode::ALL.into_iter().filter(|m| m.bursts()) {
            let bursts = p
                .iter()
                .filter(|s| matches!(s, Step::Burst { mode: m, count: 10, .. } if *m == mode))
                .count();
            assert_eq!(bursts, 2, "{mode:?}");
        }
        let singles = p
            .iter()
            .filter(|s| matches!(s, Step::Singles { modes, .. } if modes.len() == 7))
            .count();
        assert_eq!(singles, 2);
        assert!(p.iter().all(|s| !matches!(s, Step::Skip { .. })));
    }

    #[test]
    fn big_copy_bursts_are_skipped_but_reflinks_are_not() {
        let p = plan(&cfg(&[
            "--sizes",
            "1024",
            "--bursts",
            "25",
            "--modes",
            "copy,full-copy",
        ]));
        let skipped: Vec<&Step> = p
            .iter()
            .filter(|s| matches!(s, Step::Skip { .. }))
            .collect();
        // full-copy on both, copy (sparse) on ext4; copy on xfs is a reflink.
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(p.contains(&Step::Burst {
            mem_mib: 1024,
            mode: Mode::Copy,
            count: 25,
            rep: 0
        }));
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            vec!["--bursts", "101"],
            vec!["--reps", "0"],
            vec!["--sizes", "64"],
            vec!["--parallel", "0"],
        ] {
            let mut v = vec!["tine-bench"];
            v.extend_from_slice(&bad);
            assert!(
                Config::from_args(&Args::try_parse_from(v).unwrap()).is_err(),
                "{bad:?}"
            );
        }
        assert!(Args::try_parse_from(["tine-bench", "--modes", "nope"]).is_err());
    }
}
