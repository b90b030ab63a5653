//! `tine-bench`: tine's boot, standby/restore and fork numbers, side by side
//! with the baselines, on ext4 and XFS, in one run. See BENCHMARKS.md.

mod bare;
mod cleanup;
mod daemon;
mod fsmount;
mod plan;
mod procmem;
mod report;
mod runner;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::plan::{plan, Args, Config, Step};
use crate::report::{Machine, Results};
use crate::runner::{Ctx, FsRun};

/// Runs the cleanup when main's scope ends, also on panic.
struct CleanupGuard;
impl Drop for CleanupGuard {
    fn drop(&mut self) {
        cleanup::cleanup_all();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tine-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let steps = plan(&cfg);
    if args.dry_run {
        println!("tine-bench plan ({} steps):", steps.len());
        for s in &steps {
            println!("  {s}");
        }
        return ExitCode::SUCCESS;
    }
    let _guard = CleanupGuard;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        tokio::spawn(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("tine-bench: interrupted; removing VMs, daemons and mounts");
            tokio::task::spawn_blocking(cleanup::cleanup_all).await.ok();
            std::process::exit(130);
        });
        run(&args, cfg, &steps).await
    });
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("tine-bench: finished with {errors} error(s); see the table and JSON");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("tine-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: &Args, cfg: Config, steps: &[Step]) -> Result<usize> {
    if !rustix::process::geteuid().is_root() {
        bail!("tine-bench needs root (loop mounts, QEMU memory files under /var/lib)");
    }
    let tine = find_tine(args.tine.as_deref())?;
    let image = bare::Image::load(&args.images_dir, "default")
        .context("build the default guest first: scripts/setup.sh (or guest/build.sh)")?;
    let accel = tine_hypervisor::detect_accel();
    std::fs::create_dir_all(&args.work_dir)?;
    cleanup::sweep_stale(&args.work_dir);
    let work = args
        .work_dir
        .join(format!("{}{}", cleanup::DIR_PREFIX, std::process::id()));
    std::fs::create_dir_all(&work)?;
    cleanup::set_work_dir(&work);

    let started = Instant::now();
    let machine_start = machine(&args.qemu, &accel);
    let ctx = Ctx {
        cfg: cfg.clone(),
        work: work.clone(),
        fs_size: args.fs_size_gib << 30,
        tine,
        qemu: args.qemu.clone(),
        images_dir: args.images_dir.clone(),
        network: args.network.clone(),
        logs_dir: args.logs_dir.clone(),
        clone_cfg: Arc::new(bare::CloneCfg {
            qemu: args.qemu.clone(),
            image,
            accel: accel.accel,
        }),
    };
    let mut results = Results {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        config: cfg,
        machine: machine_start,
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        duration_s: 0.0,
        filesystems: vec![],
        skipped: vec![],
        errors: vec![],
    };
    let mut current: Option<FsRun> = None;
    for step in steps {
        match step {
            Step::Mount { fs } => match FsRun::start(&ctx, *fs).await {
                Ok(r) => current = Some(r),
                Err(e) => {
                    results.errors.push(format!("{}: {e:#}", step));
                    current = None;
                }
            },
            Step::Teardown { .. } => {
                if let Some(r) = current.take() {
                    results.filesystems.push(r.teardown().await);
                }
            }
            Step::Skip { what, reason } => results.skipped.push(format!("{what}: {reason}")),
            s => {
                if let Some(r) = current.as_mut() {
                    r.step(s).await;
                }
            }
        }
    }
    results.duration_s = started.elapsed().as_secs_f64();
    results.machine.loadavg_end = loadavg();
    let table = report::render(&results);
    println!("{table}");
    if let Some(p) = &args.json_out {
        std::fs::write(p, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("write {}", p.display()))?;
        eprintln!("tine-bench: JSON written to {}", p.display());
    }
    let errors = results.errors.len()
        + results
            .filesystems
            .iter()
            .map(|f| f.errors.len())
            .sum::<usize>();
    Ok(errors)
}

fn find_tine(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(sib) = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("tine")))
    {
        if sib.is_file() {
            return Ok(sib);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("tine"))
        .find(|c| c.is_file())
        .context(
            "tine binary not found: build it (cargo build --release -p tine-cli) or pass --tine",
        )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine(qemu: &Path, accel: &tine_hypervisor::AccelChoice) -> Machine {
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        * 1024;
    let qemu_version = std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        mem_total_bytes: mem_total,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        qemu: qemu_version,
        accel: accel.accel.as_str().to_string(),
        accel_warning: accel.warning.clone(),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
    }
}
