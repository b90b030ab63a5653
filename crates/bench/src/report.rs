//! Results (serialized to JSON as they are) and their tables (markdown, so
//! they paste into BENCHMARKS.md).

use std::fmt::Write;

use serde::Serialize;

use crate::fsmount::MountInfo;
use crate::plan::{Config, Mode};
use crate::procmem::MemReport;
use crate::stats::{ratio, Summary};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub mem_total_bytes: u64,
    pub kernel: String,
    pub qemu: String,
    pub accel: String,
    pub accel_warning: Option<String>,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub command: String,
    pub config: Config,
    pub machine: Machine,
    pub started_unix: u64,
    pub duration_s: f64,
    pub filesystems: Vec<FsResults>,
    pub skipped: Vec<String>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FsResults {
    pub fs: MountInfo,
    pub boot: Option<BootResult>,
    pub standby: Vec<StandbyRow>,
    pub sources: Vec<SourceInfo>,
    pub forks: Vec<ForkCell>,
    pub from_running: Vec<FromRunning>,
    pub boot_n: Option<BootN>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootResult {
    pub n: usize,
    /// `tine run` request → answer (agent answered), client side.
    pub run_ms: Summary,
    /// The daemon's own boot figure (QEMU start → agent answered).
    pub daemon_boot_ms: Option<Summary>,
    pub idle_rss_per_vm: Summary,
    pub idle_pss_per_vm: Summary,
    pub idle_host_per_vm: Summary,
    pub mem: MemReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct StandbyRow {
    pub mem_mib: u32,
    pub dirty_mib: u32,
    pub standby_ms: Summary,
    pub restore_ms: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceInfo {
    pub mem_mib: u32,
    pub touched_mib: u32,
    pub memory_file_allocated: u64,
    pub vmstate_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Disk {
    /// Filesystem used-bytes delta (after syncfs) while the forks exist, / N.
    pub fs_delta_per_vm: Option<f64>,
    /// st_blocks of each VM's own (single-link) files, / N.
    pub own_allocated_per_vm: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseMedians {
    /// tine bursts: request → this fork's work began (its `--parallel` slot).
    pub waited_ms: Option<f64>,
    pub files_ms: Option<f64>,
    pub spawn_to_qmp_ms: Option<f64>,
    pub caps_ms: Option<f64>,
    pub load_host_ms: Option<f64>,
    pub load_qemu_ms: Option<f64>,
    pub cont_ms: Option<f64>,
    pub qemu_total_ms: Option<f64>,
    pub agent_ms: Option<f64>,
    pub identity_ms: Option<f64>,
    /// Identity calls as the agent served them (it serves them in order):
    /// entropy done, then hostname + machine-id, then clock.
    pub identity_entropy_ms: Option<f64>,
    pub identity_hostname_ms: Option<f64>,
    pub identity_clock_ms: Option<f64>,
    /// bare-pool: PSS of a pre-started QEMU waiting for its state (bytes).
    pub pool_wait_pss: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForkCell {
    pub mem_mib: u32,
    pub mode: Mode,
    /// 1 for single forks (then the samples are repetitions), N for a burst.
    pub count: u32,
    /// Bursts: which repetition (`--burst-reps`), from 0.
    pub rep: u32,
    pub running_ms: Option<Summary>,
    pub ready_ms: Option<Summary>,
    /// Burst: first request → last fork ready (client side).
    pub wall_ms: Option<f64>,
    pub ok: usize,
    pub failed: usize,
    pub mem: Option<MemReport>,
    /// Page cache of the source's memory file just before the burst (what
    /// the source's own life left cached; part of `memfile_cache` for modes
    /// that share the source's inode).
    pub source_cache_before: Option<u64>,
    /// Pool mode: the waiting pool entries just before the burst.
    pub pool_mem: Option<MemReport>,
    /// Pool mode: entries the burst claimed.
    pub pool_hits: Option<u64>,
    pub disk: Option<Disk>,
    pub phases: Option<PhaseMedians>,
    /// Bursts: CPU time spent on them, per fork.
    pub cpu: Option<BurstCpu>,
    pub error: Option<String>,
}

/// CPU time a burst cost, per fork: the manager (tine's daemon; for the
/// bare clones the benchmark's own process, which plays the manager) and
/// the forks' VM processes from their start to the burst's end.
#[derive(Debug, Clone, Serialize)]
pub struct BurstCpu {
    pub manager_ms: f64,
    pub vms_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FromRunning {
    pub mem_mib: u32,
    pub source_pause_ms: Summary,
    pub running_ms: Summary,
    pub ready_ms: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootN {
    pub mem_mib: u32,
    pub count: u32,
    pub ok: usize,
    /// Burst start → each `tine run` answered.
    pub ready_ms: Option<Summary>,
    pub wall_ms: f64,
    pub mem_idle: MemReport,
    pub touch_mib: u32,
    pub touch_wall_ms: Option<f64>,
    pub mem_touched: Option<MemReport>,
    pub disk: Disk,
}

fn f(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "–".into(),
    }
}

fn x(v: Option<f64>) -> String {
    v.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "–".into())
}

pub fn mib(b: f64) -> String {
    format!("{:.1}", b / (1u64 << 20) as f64)
}

fn mib_o(b: Option<f64>) -> String {
    b.map(mib).unwrap_or_else(|| "–".into())
}

fn p50(s: &Option<Summary>) -> Option<f64> {
    s.map(|s| s.p50)
}

fn mode_label(m: Mode) -> &'static str {
    match m {
        Mode::Link => "tine (link)",
        Mode::Pool => "tine + warm pool",
        Mode::Bare => "(b) bare QEMU+QMP",
        Mode::BareDaemonize => "(b) bare, -daemonize",
        Mode::BarePool => "(b) bare, pre-started QEMU",
        Mode::Copy => "(c) tine --fork-memory copy",
        Mode::FullCopy => "(d) tine --fork-memory full-copy",
    }
}

pub fn render(r: &Results) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let _ = writeln!(
        o,
        "Machine: {} cores, {:.1} GiB, kernel {}, {}, accel {}; load average at start {} / end {}; run took {:.0} s.\n",
        m.cores,
        m.mem_total_bytes as f64 / (1u64 << 30) as f64,
        m.kernel,
        m.qemu,
        m.accel,
        m.loadavg_start,
        m.loadavg_end,
        r.duration_s
    );
    let _ = writeln!(o, "Command: `{}`\n", r.command);

    // Boot
    let boots: Vec<_> = r
        .filesystems
        .iter()
        .filter_map(|fr| fr.boot.as_ref().map(|b| (fr, b)))
        .collect();
    if !boots.is_empty() {
        let _ = writeln!(
            o,
            "### Boot (`tine run` → agent answers, 256 MiB, sequential)\n"
        );
        let _ = writeln!(o, "| fs | n | run p50 ms | min | max | daemon boot p50 ms | idle RSS/VM MiB | idle PSS/VM MiB | idle host/VM MiB | idle CPU %/VM |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
        for (fr, b) in boots {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fr.fs.kind.name(),
                b.n,
                f(Some(b.run_ms.p50)),
                f(Some(b.run_ms.min)),
                f(Some(b.run_ms.max)),
                f(b.daemon_boot_ms.map(|s| s.p50)),
                mib(b.idle_rss_per_vm.p50),
                mib(b.idle_pss_per_vm.p50),
                mib(b.idle_host_per_vm.p50),
                f(b.mem.idle_cpu_pct_per_vm)
            );
        }
        o.push('\n');
    }

    // Standby / restore
    let rows: Vec<_> = r
        .filesystems
        .iter()
        .flat_map(|fr| fr.standby.iter().map(move |s| (fr, s)))
        .collect();
    if !rows.is_empty() {
        let _ = writeln!(o, "### Standby and restore (client side, median of n)\n");
        let _ = writeln!(o, "| fs | guest MiB | dirtied MiB | n | standby p50 ms | standby max | restore p50 ms | restore max |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
        for (fr, s) in rows {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                fr.fs.kind.name(),
                s.mem_mib,
                s.dirty_mib,
                s.standby_ms.n,
                f(Some(s.standby_ms.p50)),
                f(Some(s.standby_ms.max)),
                f(Some(s.restore_ms.p50)),
                f(Some(s.restore_ms.max))
            );
        }
        o.push('\n');
    }

    // Single forks
    let singles: Vec<_> = r
        .filesystems
        .iter()
        .flat_map(|fr| {
            fr.forks
                .iter()
                .filter(|c| c.count == 1)
                .map(move |c| (fr, c))
        })
        .collect();
    if !singles.is_empty() {
        let _ = writeln!(
            o,
            "### Single fork (request → vCPUs running / → agent ready + identity), repetitions\n"
        );
        let _ = writeln!(o, "| fs | guest MiB | mode | n | running p50 ms | p95 | max | ready p50 ms | p95 | max | running vs link | ready vs link | tine running / this | tine ready / this |");
        let _ = writeln!(
            o,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (fr, c) in &singles {
            let link = link_cell(fr, c);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fr.fs.kind.name(),
                c.mem_mib,
                mode_label(c.mode),
                c.running_ms.map(|s| s.n).unwrap_or(0),
                f(p50(&c.running_ms)),
                f(c.running_ms.map(|s| s.p95)),
                f(c.running_ms.map(|s| s.max)),
                f(p50(&c.ready_ms)),
                f(c.ready_ms.map(|s| s.p95)),
                f(c.ready_ms.map(|s| s.max)),
                x(ratio(
                    p50(&c.running_ms),
                    link.and_then(|l| p50(&l.running_ms))
                )),
                x(ratio(p50(&c.ready_ms), link.and_then(|l| p50(&l.ready_ms)))),
                x(ratio(
                    link.and_then(|l| p50(&l.running_ms)),
                    p50(&c.running_ms)
                )),
                x(ratio(link.and_then(|l| p50(&l.ready_ms)), p50(&c.ready_ms))),
            );
        }
        o.push('\n');
        let phased: Vec<_> = singles.iter().filter(|(_, c)| c.phases.is_some()).collect();
        if !phased.is_empty() {
            let _ = writeln!(
                o,
                "Where a baseline clone's time goes (medians of the single clones, ms):\n"
            );
            let _ = writeln!(o, "| fs | guest MiB | mode | files | QEMU spawn → QMP | caps | state load (host) | state load (QEMU events) | cont | QEMU total | agent | identity | of which hostname+machine-id |");
            let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            for (fr, c) in phased {
                let p = c.phases.as_ref().expect("filtered");
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    fr.fs.kind.name(),
                    c.mem_mib,
                    c.mode.name(),
                    f(p.files_ms),
                    f(p.spawn_to_qmp_ms),
                    f(p.caps_ms),
                    f(p.load_host_ms),
                    f(p.load_qemu_ms),
                    f(p.cont_ms),
                    f(p.qemu_total_ms),
                    f(p.agent_ms),
                    f(p.identity_ms),
                    f(p.identity_hostname_ms)
                );
            }
            o.push('\n');
            for (fr, c) in singles.iter().filter(|(_, c)| c.mode == Mode::BarePool) {
                if let Some(p) = c.phases.as_ref().and_then(|p| p.pool_wait_pss) {
                    let _ = writeln!(
                        o,
                        "A pre-started QEMU waiting for its state ({}, {} MiB) costs {} MiB PSS per pool slot.\n",
                        fr.fs.kind.name(),
                        c.mem_mib,
                        mib(p)
                    );
                }
            }
        }
    }

    // Bursts
    let bursts: Vec<_> = r
        .filesystems
        .iter()
        .flat_map(|fr| {
            fr.forks
                .iter()
                .filter(|c| c.count > 1)
                .map(move |c| (fr, c))
        })
        .collect();
    if !bursts.is_empty() {
        let _ = writeln!(
            o,
            "### Fork bursts (latency from the burst's request, all forks)\n"
        );
        let _ = writeln!(o, "| fs | guest MiB | mode | rep | N ok/fail | running p50 | p95 | p99 | max | ready p50 | p95 | p99 | max | wall ms | ready p50 vs link | wall vs link |");
        let _ = writeln!(
            o,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (fr, c) in &bursts {
            let link = link_cell(fr, c);
            let (rn, rd) = (c.running_ms, c.ready_ms);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fr.fs.kind.name(),
                c.mem_mib,
                mode_label(c.mode),
                c.rep + 1,
                c.ok,
                c.failed,
                f(rn.map(|s| s.p50)),
                f(rn.map(|s| s.p95)),
                f(rn.map(|s| s.p99)),
                f(rn.map(|s| s.max)),
                f(rd.map(|s| s.p50)),
                f(rd.map(|s| s.p95)),
                f(rd.map(|s| s.p99)),
                f(rd.map(|s| s.max)),
                f(c.wall_ms),
                x(ratio(p50(&rd), link.and_then(|l| p50(&l.ready_ms)))),
                x(ratio(c.wall_ms, link.and_then(|l| l.wall_ms))),
            );
        }
        o.push('\n');
        burst_ratios(&mut o, &bursts);
        pooled_ratios(&mut o, &bursts);
        let _ = writeln!(o, "Where a burst's time and CPU go (per-fork medians, ms; CPU per fork: the manager — tine's daemon, or the benchmark process for the bare clones — and the VM processes from start to the burst's end):\n");
        let _ = writeln!(o, "| fs | guest MiB | mode | N | waited | files | VM start → running | agent | identity | manager CPU/fork | VM CPU/fork |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|");
        for (fr, c) in &bursts {
            let p = c.phases.clone().unwrap_or_default();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fr.fs.kind.name(),
                c.mem_mib,
                mode_label(c.mode),
                c.count,
                f(p.waited_ms),
                f(p.files_ms),
                f(p.qemu_total_ms),
                f(p.agent_ms),
                f(p.identity_ms),
                f(c.cpu.as_ref().map(|c| c.manager_ms)),
                f(c.cpu.as_ref().map(|c| c.vms_ms)),
            );
        }
        o.push('\n');
        let _ = writeln!(o, "Host memory and disk of the N running forks (MiB; host = Σ PSS − file-backed PSS of the guest-RAM mappings + page cache of the memory files, each inode once):\n");
        let _ = writeln!(o, "| fs | guest MiB | mode | N | host total | host/fork | Σ PSS | memfile cache (source's before) | Σ CoW | naive Σ RSS | host vs link | disk Δ/fork | own alloc/fork | idle CPU %/fork |");
        let _ = writeln!(
            o,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (fr, c) in &bursts {
            let Some(mm) = &c.mem else { continue };
            let link = link_cell(fr, c).and_then(|l| l.mem.as_ref());
            let d = c.disk.clone().unwrap_or_default();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
                fr.fs.kind.name(),
                c.mem_mib,
                mode_label(c.mode),
                mm.processes,
                mib(mm.host_total as f64),
                mib(mm.host_per_vm),
                mib(mm.pss_sum as f64),
                mib(mm.memfile_cache as f64),
                mib_o(c.source_cache_before.map(|b| b as f64)),
                mib(mm.ram_cow_sum as f64),
                mib(mm.rss_sum as f64),
                x(ratio(
                    Some(mm.host_total as f64),
                    link.map(|l| l.host_total as f64)
                )),
                mib_o(d.fs_delta_per_vm),
                mib(d.own_allocated_per_vm),
                f(mm.idle_cpu_pct_per_vm),
            );
        }
        o.push('\n');
        for (fr, c) in bursts.iter().filter(|(_, c)| c.pool_mem.is_some()) {
            let pm = c.pool_mem.as_ref().expect("filtered");
            let _ = writeln!(
                o,
                "Warm pool before the {} MiB x{} burst on {}: {} waiting QEMUs use {} MiB of their own ({} MiB each; Σ PSS without the guest-RAM file pages, which are the source's page cache, {} MiB resident), naive RSS {} MiB each, idle CPU {} % each; the burst claimed {} entries.\n",
                c.mem_mib,
                c.count,
                fr.fs.kind.name(),
                pm.processes,
                mib(pm.host_total.saturating_sub(pm.memfile_cache) as f64),
                mib(pm.host_total.saturating_sub(pm.memfile_cache) as f64 / pm.processes.max(1) as f64),
                mib(pm.memfile_cache as f64),
                mib(pm.rss_per_vm),
                f(pm.idle_cpu_pct_per_vm),
                c.pool_hits.map(|h| h.to_string()).unwrap_or_else(|| "?".into())
            );
        }
    }

    // From running
    let fr_rows: Vec<_> = r
        .filesystems
        .iter()
        .flat_map(|fr| fr.from_running.iter().map(move |x| (fr, x)))
        .collect();
    if !fr_rows.is_empty() {
        let _ = writeln!(
            o,
            "### Fork from a running source (`--from-running`, source filled {} MiB)\n",
            r.config.touch_mib
        );
        let _ = writeln!(o, "| fs | guest MiB | n | source pause p50 ms | max | fork running p50 ms | fork ready p50 ms |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|");
        for (fr, s) in fr_rows {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} |",
                fr.fs.kind.name(),
                s.mem_mib,
                s.source_pause_ms.n,
                f(Some(s.source_pause_ms.p50)),
                f(Some(s.source_pause_ms.max)),
                f(Some(s.running_ms.p50)),
                f(Some(s.ready_ms.p50))
            );
        }
        o.push('\n');
    }

    // Boot N vs fork N
    let bn: Vec<_> = r
        .filesystems
        .iter()
        .filter_map(|fr| fr.boot_n.as_ref().map(|b| (fr, b)))
        .collect();
    if !bn.is_empty() {
        let _ = writeln!(o, "### Baseline (a): N fresh VMs (`tine run` at once, then each fills what the fork source filled) vs N forks\n");
        let _ = writeln!(o, "| fs | guest MiB | N ok | ready p50 ms | p99 | wall ms | fill wall ms | host idle MiB | host filled MiB | filled host/VM | disk Δ/VM | link fork N: host MiB | memory saved by forking | ready p50 boot/fork | wall boot/fork |");
        let _ = writeln!(
            o,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (fr, b) in bn {
            let fork = fr
                .forks
                .iter()
                .find(|c| c.mode == Mode::Link && c.mem_mib == b.mem_mib && c.count == b.count);
            let fork_host = fork
                .and_then(|c| c.mem.as_ref())
                .map(|m| m.host_total as f64);
            let filled = b.mem_touched.as_ref().map(|m| m.host_total as f64);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fr.fs.kind.name(),
                b.mem_mib,
                b.ok,
                f(b.ready_ms.map(|s| s.p50)),
                f(b.ready_ms.map(|s| s.p99)),
                f(Some(b.wall_ms)),
                f(b.touch_wall_ms),
                mib(b.mem_idle.host_total as f64),
                mib_o(filled),
                mib_o(b.mem_touched.as_ref().map(|m| m.host_per_vm)),
                mib_o(b.disk.fs_delta_per_vm),
                mib_o(fork_host),
                mib_o(filled.zip(fork_host).map(|(a, b)| a - b)),
                x(ratio(
                    b.ready_ms.map(|s| s.p50),
                    fork.and_then(|c| p50(&c.ready_ms))
                )),
                x(ratio(Some(b.wall_ms), fork.and_then(|c| c.wall_ms))),
            );
        }
        o.push('\n');
    }

    let skipped: Vec<&String> = r.skipped.iter().collect();
    if !skipped.is_empty() {
        let _ = writeln!(o, "Skipped:");
        for s in skipped {
            let _ = writeln!(o, "- {s}");
        }
        o.push('\n');
    }
    let errors: Vec<String> = r
        .errors
        .iter()
        .cloned()
        .chain(r.filesystems.iter().flat_map(|fr| {
            fr.errors
                .iter()
                .map(move |e| format!("[{}] {e}", fr.fs.kind.name()))
        }))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(o, "Errors:");
        for e in errors {
            let _ = writeln!(o, "- {e}");
        }
        o.push('\n');
    }
    o
}

/// With several repetitions of a burst: each mode's ratios to tine's burst
/// of the same repetition, median (min–max) over the repetitions.
fn burst_ratios(o: &mut String, bursts: &[(&FsResults, &ForkCell)]) {
    if !bursts.iter().any(|(_, c)| c.rep > 0) {
        return;
    }
    let _ = writeln!(
        o,
        "Ratios to tine (link) in the same repetition, median (min–max) over the repetitions:\n"
    );
    let _ = writeln!(
        o,
        "| fs | guest MiB | N | mode | reps | running p50 | ready p50 | ready p99 | wall |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
    let mut keys: Vec<(&str, u32, u32, Mode)> = vec![];
    for (fr, c) in bursts.iter().filter(|(_, c)| c.mode != Mode::Link) {
        let k = (fr.fs.kind.name(), c.mem_mib, c.count, c.mode);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for (fs, m, n, mode) in keys {
        let cells: Vec<(&ForkCell, &ForkCell)> = bursts
            .iter()
            .filter(|(fr, c)| {
                fr.fs.kind.name() == fs && c.mem_mib == m && c.count == n && c.mode == mode
            })
            .filter_map(|(fr, c)| Some((*c, link_cell(fr, c)?)))
            .collect();
        let col = |g: &dyn Fn(&ForkCell) -> Option<f64>| {
            let mut v: Vec<f64> = cells
                .iter()
                .filter_map(|(c, l)| ratio(g(c), g(l)))
                .collect();
            v.sort_by(f64::total_cmp);
            match (crate::stats::median(&v), v.first(), v.last()) {
                (Some(md), Some(lo), Some(hi)) => format!("{md:.2}x ({lo:.2}–{hi:.2})"),
                _ => "–".into(),
            }
        };
        let _ = writeln!(
            o,
            "| {fs} | {m} | {n} | {} | {} | {} | {} | {} | {} |",
            mode_label(mode),
            cells.len(),
            col(&|c| p50(&c.running_ms)),
            col(&|c| p50(&c.ready_ms)),
            col(&|c| c.ready_ms.map(|s| s.p99)),
            col(&|c| c.wall_ms),
        );
    }
    o.push('\n');
}

/// Every (filesystem, size, repetition) pair of one burst size pooled:
/// the geometric mean of tine's ratio to the bare clones (a single cell
/// moves by ±20% from run to run on 2 cores; the pool does not).
fn pooled_ratios(o: &mut String, bursts: &[(&FsResults, &ForkCell)]) {
    let mut sizes: Vec<u32> = bursts.iter().map(|(_, c)| c.count).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for n in sizes {
        let pairs: Vec<(&ForkCell, &ForkCell)> = bursts
            .iter()
            .filter(|(_, c)| c.mode == Mode::Bare && c.count == n)
            .filter_map(|(fr, c)| Some((link_cell(fr, c)?, *c)))
            .collect();
        let gm = |g: &dyn Fn(&ForkCell) -> Option<f64>| {
            let logs: Vec<f64> = pairs
                .iter()
                .filter_map(|(t, b)| ratio(g(t), g(b)))
                .map(f64::ln)
                .collect();
            (!logs.is_empty()).then(|| (logs.iter().sum::<f64>() / logs.len() as f64).exp())
        };
        if pairs.is_empty() {
            continue;
        }
        let _ = writeln!(
            o,
            "Bursts of {n}, tine (link) / (b) bare pooled over {} pairs (geometric mean): running p50 {}, ready p50 {}, ready p99 {}, wall {}.\n",
            pairs.len(),
            x(gm(&|c| p50(&c.running_ms))),
            x(gm(&|c| p50(&c.ready_ms))),
            x(gm(&|c| c.ready_ms.map(|s| s.p99))),
            x(gm(&|c| c.wall_ms)),
        );
    }
}

fn link_cell<'a>(fr: &'a FsResults, c: &ForkCell) -> Option<&'a ForkCell> {
    fr.forks.iter().find(|l| {
        l.mode == Mode::Link && l.mem_mib == c.mem_mib && l.count == c.count && l.rep == c.rep
    })
}
