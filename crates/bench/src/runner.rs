//! Executes the plan's steps against real daemons, QEMUs and filesystems.
//! A failing step is recorded (and what it left running removed); the run
//! goes on with the next step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tine_api::{ForkOutcome, ForkPhases, ForkReport, ForkRequest};
use tokio::sync::Semaphore;

use crate::bare::{self, CloneCfg, CloneKind, Phases, SourceFiles};
use crate::daemon::{futures_join_all, ms, Daemon, DaemonOpts};
use crate::fsmount::{fs_used_bytes, FsKind, Mounted};
use crate::plan::{Config, Mode, Step};
use crate::procmem::{self, MEMORY_FILE};
use crate::report::*;
use crate::stats::{median, Summary};

pub struct Ctx {
    pub cfg: Config,
    pub work: PathBuf,
    pub fs_size: u64,
    pub tine: PathBuf,
    pub qemu: PathBuf,
    pub images_dir: PathBuf,
    pub network: String,
    pub logs_dir: Option<PathBuf>,
    pub clone_cfg: Arc<CloneCfg>,
}

impl Ctx {
    fn daemon_opts(&self) -> DaemonOpts<'_> {
        DaemonOpts {
            tine: &self.tine,
            images_dir: &self.images_dir,
            qemu: &self.qemu,
            network: &self.network,
        }
    }
}

/// One filesystem's run.
pub struct FsRun<'a> {
    ctx: &'a Ctx,
    mount: Mounted,
    daemon: Option<Daemon>,
    /// The running daemon's --fork-memory.
    daemon_mode: &'static str,
    data_dir: PathBuf,
    bare_root: PathBuf,
    /// mem_mib → (instance name, instance dir) of the standby fork sources.
    sources: BTreeMap<u32, (String, PathBuf)>,
    pub res: FsResults,
}

fn log(fs: FsKind, msg: impl AsRef<str>) {
    eprintln!("[tine-bench {}] {}", fs.name(), msg.as_ref());
}

fn summ(v: &[f64]) -> Option<Summary> {
    Summary::of(v)
}

impl<'a> FsRun<'a> {
    pub async fn start(ctx: &'a Ctx, fs: FsKind) -> Result<FsRun<'a>> {
        let mount = Mounted::loop_mount(fs, &ctx.work, ctx.fs_size)?;
        let data_dir = mount.path().join("data");
        let bare_root = mount.path().join("bare");
        std::fs::create_dir_all(&bare_root)?;
        let res = FsResults {
            fs: mount.info.clone(),
            boot: None,
            standby: vec![],
            sources: vec![],
            forks: vec![],
            from_running: vec![],
            boot_n: None,
            errors: vec![],
        };
        let mut r = FsRun {
            ctx,
            mount,
            daemon: None,
            daemon_mode: "link",
            data_dir,
            bare_root,
            sources: BTreeMap::new(),
            res,
        };
        r.restart_daemon("link").await?;
        log(
            fs,
            format!(
                "mounted {} (loop {:?}, direct-io {})",
                r.mount.path().display(),
                r.mount.info.loop_device,
                r.mount.info.direct_io
            ),
        );
        Ok(r)
    }

    fn fs(&self) -> FsKind {
        self.mount.info.kind
    }

    fn d(&self) -> Result<&Daemon> {
        self.daemon
            .as_ref()
            .ok_or_else(|| anyhow!("no daemon running"))
    }

    async fn restart_daemon(&mut self, mode: &'static str) -> Result<()> {
        if let Some(mut d) = self.daemon.take() {
            d.stop().await;
        }
        self.daemon = Some(Daemon::start(&self.ctx.daemon_opts(), &self.data_dir, mode).await?);
        self.daemon_mode = mode;
        Ok(())
    }

    /// A daemon with `--fork-memory mode` (restarted only if it has another).
    async fn ensure_daemon(&mut self, mode: &'static str) -> Result<()> {
        if self.daemon.is_some() && self.daemon_mode == mode {
            return Ok(());
        }
        self.restart_daemon(mode).await
    }

    fn source_names(&self) -> Vec<String> {
        self.sources.values().map(|(n, _)| n.clone()).collect()
    }

    /// Run a step; on failure record it and remove whatever it left running.
    pub async fn step(&mut self, step: &Step) {
        let t = Instant::now();
        log(self.fs(), format!("{step}"));
        let daemon_mode = match step {
            Step::Singles { .. } | Step::Burst { .. } => None,
            _ => Some("link"),
        };
        if let Some(m) = daemon_mode {
            if let Err(e) = self.ensure_daemon(m).await {
                self.res.errors.push(format!("{step}: {e:#}"));
                return;
            }
        }
        let r = match step {
            Step::Mount { .. } | Step::Teardown { .. } | Step::Skip { .. } => Ok(()),
            Step::Boot { reps } => self.boot(*reps).await,
            Step::StandbyRestore {
                mem_mib,
                dirty,
                reps,
            } => self.standby(*mem_mib, dirty, *reps).await,
            Step::Source { mem_mib, touch_mib } => self.source(*mem_mib, *touch_mib).await,
            Step::Singles {
                mem_mib,
                modes,
                reps,
            } => self.singles(*mem_mib, modes, *reps).await,
            Step::Burst {
                mem_mib,
                mode,
                count,
                rep,
            } => self.burst(*mem_mib, *mode, *count, *rep).await,
            Step::FromRunning { mem_mib, reps } => self.fork_from_running(*mem_mib, *reps).await,
            Step::BootN {
                mem_mib,
                count,
                touch_mib,
            } => self.boot_n(*mem_mib, *count, *touch_mib).await,
        };
        if let Err(e) = r {
            let tail = self
                .daemon
                .as_ref()
                .map(|d| d.log_tail(12))
                .unwrap_or_default();
            let msg = format!("{step}: {e:#}\n  daemon log (last lines):\n{tail}");
            log(self.fs(), format!("ERROR {msg}"));
            self.res.errors.push(msg);
            self.tidy().await;
        } else {
            log(
                self.fs(),
                format!("  done in {:.1} s", t.elapsed().as_secs_f64()),
            );
        }
    }

    /// Remove every instance but the sources, and every bare clone.
    async fn tidy(&mut self) {
        let keep = self.source_names();
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        if let Some(d) = &self.daemon {
            if let Err(e) = d.remove_all_except(&keep).await {
                log(self.fs(), format!("tidy: {e:#}"));
            }
        }
        kill_qemus_under(&self.bare_root);
        let _ = std::fs::remove_dir_all(&self.bare_root);
        let _ = std::fs::create_dir_all(&self.bare_root);
    }

    pub async fn teardown(mut self) -> FsResults {
        if let Some(d) = &self.daemon {
            let _ = d.remove_all_except(&[]).await;
        }
        if let Some(dir) = &self.ctx.logs_dir {
            // Keep the daemon logs: the data dir goes with the mount.
            let _ = std::fs::create_dir_all(dir);
            for e in std::fs::read_dir(&self.data_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("daemon-") && name.ends_with(".log") {
                    let _ =
                        std::fs::copy(e.path(), dir.join(format!("{}-{name}", self.fs().name())));
                }
            }
        }
        if let Some(mut d) = self.daemon.take() {
            d.stop().await;
        }
        kill_qemus_under(self.mount.path());
        self.mount.teardown();
        self.res
    }

    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(self.ctx.cfg.settle_ms)).await;
    }

    // ---- boot -------------------------------------------------------------

    async fn boot(&mut self, reps: u32) -> Result<()> {
        let d = self.d()?;
        let (mut names, mut run_ms, mut daemon_ms, mut pids) = (vec![], vec![], vec![], vec![]);
        let r: Result<()> = async {
            for i in 1..=reps {
                let name = format!("boot-{i}");
                let (info, t) = d.run_vm(&name, 256).await?;
                names.push(name);
                run_ms.push(t);
                daemon_ms.extend(info.boot_ms);
                pids.extend(info.pid);
            }
            Ok(())
        }
        .await;
        let mut result = None;
        if r.is_ok() {
            let cpu = procmem::idle_cpu_pct_per_vm(&pids, self.settle()).await;
            let per: Vec<procmem::MemReport> =
                pids.iter().map(|p| procmem::measure(&[*p])).collect();
            let mut all = procmem::measure(&pids);
            all.idle_cpu_pct_per_vm = cpu;
            let g = |f: fn(&procmem::MemReport) -> f64| per.iter().map(f).collect::<Vec<f64>>();
            result = Some(BootResult {
                n: run_ms.len(),
                run_ms: summ(&run_ms).context("no boots")?,
                daemon_boot_ms: summ(&daemon_ms),
                idle_rss_per_vm: summ(&g(|m| m.rss_sum as f64)).context("no memory figures")?,
                idle_pss_per_vm: summ(&g(|m| m.pss_sum as f64)).context("no memory figures")?,
                idle_host_per_vm: summ(&g(|m| m.host_total as f64)).context("no memory figures")?,
                mem: all,
            });
        }
        d.remove(&names).await?;
        self.res.boot = result;
        r
    }

    // ---- standby / restore --------------------------------------------------

    async fn standby(&mut self, m: u32, dirty: &[u32], reps: u32) -> Result<()> {
        let d = self.d()?;
        let name = format!("sr-{m}");
        d.run_vm(&name, m).await?;
        let r: Result<Vec<StandbyRow>> = async {
            // Warm-up cycle (flushes what boot dirtied), not recorded.
            d.action(&name, "standby").await?;
            d.action(&name, "restore").await?;
            let mut rows = vec![];
            for &dm in dirty {
                let (mut st, mut rt) = (vec![], vec![]);
                for _ in 0..reps {
                    d.touch_memory(&name, dm).await?;
                    st.push(d.action(&name, "standby").await?);
                    rt.push(d.action(&name, "restore").await?);
                }
                log(
                    self.fs(),
                    format!(
                        "  {m} MiB dirty {dm}: standby {:?} restore {:?}",
                        median(&st),
                        median(&rt)
                    ),
                );
                rows.push(StandbyRow {
                    mem_mib: m,
                    dirty_mib: dm,
                    standby_ms: summ(&st).expect("reps >= 1"),
                    restore_ms: summ(&rt).expect("reps >= 1"),
                });
            }
            Ok(rows)
        }
        .await;
        d.remove(&[name]).await?;
        self.res.standby.extend(r?);
        Ok(())
    }

    // ---- fork sources -----------------------------------------------------

    async fn source(&mut self, m: u32, touch: u32) -> Result<()> {
        let d = self.d()?;
        let name = format!("src-{m}");
        let r: Result<PathBuf> = async {
            let (info, _) = d.run_vm(&name, m).await?;
            d.touch_memory(&name, touch).await?;
            d.action(&name, "standby").await?;
            Ok(info.dir)
        }
        .await;
        let dir = match r {
            Ok(dir) => dir,
            Err(e) => {
                let _ = d.remove(&[name]).await;
                return Err(e);
            }
        };
        self.res.sources.push(SourceInfo {
            mem_mib: m,
            touched_mib: touch,
            memory_file_allocated: procmem::allocated(&dir.join(MEMORY_FILE)),
            vmstate_bytes: std::fs::metadata(dir.join("vmstate"))
                .map(|m| m.len())
                .unwrap_or(0),
        });
        self.sources.insert(m, (name, dir));
        Ok(())
    }

    fn source_of(&self, m: u32) -> Result<(String, SourceFiles)> {
        let (name, dir) = self
            .sources
            .get(&m)
            .ok_or_else(|| anyhow!("no {m} MiB source (its step failed)"))?;
        Ok((name.clone(), SourceFiles::of_instance_dir(dir, m)))
    }

    // ---- single forks -----------------------------------------------------

    async fn singles(&mut self, m: u32, modes: &[Mode], reps: u32) -> Result<()> {
        let (src, files) = self.source_of(m)?;
        let mut samples: BTreeMap<Mode, Samples> = BTreeMap::new();
        for rep in 0..=reps {
            for &mode in modes {
                let s = match mode.daemon_mode() {
                    Some(dm) => match self.ensure_daemon(dm).await {
                        Ok(()) => self
                            .tine_single(&src, m, mode, rep)
                            .await
                            .map(|(a, b)| (a, b, None)),
                        Err(e) => Err(e),
                    },
                    None => self
                        .clone_single(&files, m, mode, rep)
                        .await
                        .map(|(a, b, p)| (a, b, Some(p))),
                };
                let e = samples.entry(mode).or_default();
                match s {
                    Ok((run, ready, ph)) if rep > 0 => {
                        e.0.push(run);
                        e.1.push(ready);
                        e.2.extend(ph);
                    }
                    Ok(_) => {}
                    Err(err) => {
                        log(
                            self.fs(),
                            format!("  single {} rep {rep}: {err:#}", mode.name()),
                        );
                        e.3.push(format!("rep {rep}: {err:#}"));
                        self.tidy().await;
                    }
                }
            }
        }
        for (mode, (run, ready, ph, errs)) in samples {
            log(
                self.fs(),
                format!(
                    "  single {m} MiB {}: running p50 {:?} ready p50 {:?}",
                    mode.name(),
                    median(&run),
                    median(&ready)
                ),
            );
            self.res.forks.push(ForkCell {
                mem_mib: m,
                mode,
                count: 1,
                rep: 0,
                running_ms: summ(&run),
                ready_ms: summ(&ready),
                wall_ms: None,
                ok: run.len(),
                failed: errs.len(),
                mem: None,
                source_cache_before: None,
                pool_mem: None,
                pool_hits: None,
                disk: None,
                phases: (!ph.is_empty()).then(|| phase_medians(&ph)),
                cpu: None,
                error: (!errs.is_empty()).then(|| errs.join("; ")),
            });
        }
        Ok(())
    }

    async fn tine_fork(&self, req: ForkRequest) -> Result<ForkReport> {
        let d = self.d()?;
        d.client
            .fork(&req)
            .await
            .with_context(|| format!("fork {}", req.source))
    }

    async fn tine_single(&self, src: &str, m: u32, mode: Mode, rep: u32) -> Result<(f64, f64)> {
        let name = format!("s{m}-{}-{rep}", mode.name());
        let req = ForkRequest {
            source: src.into(),
            name: Some(name.clone()),
            count: Some(1),
            ..Default::default()
        };
        let d = self.d()?;
        let hits0 = if mode == Mode::Pool {
            Some(d.pool_fill(src, 1, POOL_FILL_TIMEOUT).await?.hits)
        } else {
            None
        };
        let rep = self.tine_fork(req).await;
        if let Some(h0) = hits0 {
            let hits = d
                .client
                .pools()
                .await?
                .into_iter()
                .find(|p| p.spec.source == src)
                .map(|p| p.hits);
            d.pool_remove(src).await?;
            if hits <= Some(h0) {
                let _ = d.remove(std::slice::from_ref(&name)).await;
                bail!("the fork did not claim a pool entry (hits {h0} → {hits:?})");
            }
        }
        let rep = rep?;
        d.remove(&[name]).await?;
        let f = rep
            .forks
            .first()
            .ok_or_else(|| anyhow!("empty fork report"))?;
        if let Some(e) = &f.error {
            bail!("fork failed: {e}");
        }
        Ok((
            f.running_ms.context("no running_ms")?,
            f.ready_ms.context("no ready_ms")?,
        ))
    }

    async fn clone_single(
        &self,
        files: &SourceFiles,
        m: u32,
        mode: Mode,
        rep: u32,
    ) -> Result<(f64, f64, Phases)> {
        let kind = clone_kind(mode);
        let dir = self.bare_root.join(format!("s{m}-{}-{rep}", mode.name()));
        let mut c =
            bare::start_clone(kind, &self.ctx.clone_cfg, files, dir, Instant::now()).await?;
        c.kill().await;
        Ok((c.running_ms, c.ready_ms, c.phases.clone()))
    }

    // ---- bursts -----------------------------------------------------------

    async fn burst(&mut self, m: u32, mode: Mode, n: u32, rep: u32) -> Result<()> {
        if let Some(dm) = mode.daemon_mode() {
            self.ensure_daemon(dm).await?;
        }
        let cell = match mode.daemon_mode() {
            Some(_) => self.tine_burst(m, mode, n).await,
            None => self.clone_burst(m, mode, n).await,
        };
        let cell = match cell {
            Ok(c) => ForkCell { rep, ..c },
            Err(e) => {
                self.res.forks.push(ForkCell {
                    mem_mib: m,
                    mode,
                    count: n,
                    rep,
                    running_ms: None,
                    ready_ms: None,
                    wall_ms: None,
                    ok: 0,
                    failed: n as usize,
                    mem: None,
                    source_cache_before: None,
                    pool_mem: None,
                    pool_hits: None,
                    disk: None,
                    phases: None,
                    cpu: None,
                    error: Some(format!("{e:#}")),
                });
                return Err(e);
            }
        };
        log(
            self.fs(),
            format!(
                "  burst {m} MiB {} x{n}: ok {} running p50 {:?} ready p50/p99 {:?}/{:?} wall {:?} host {} MiB",
                mode.name(),
                cell.ok,
                cell.running_ms.map(|s| s.p50),
                cell.ready_ms.map(|s| s.p50),
                cell.ready_ms.map(|s| s.p99),
                cell.wall_ms,
                cell.mem.as_ref().map(|m| mib(m.host_total as f64)).unwrap_or_default()
            ),
        );
        self.res.forks.push(cell);
        Ok(())
    }

    async fn tine_burst(&self, m: u32, mode: Mode, n: u32) -> Result<ForkCell> {
        let (src, files) = self.source_of(m)?;
        let d = self.d()?;
        let used0 = fs_used_bytes(self.mount.path()).ok();
        let cache0 = procmem::cached_bytes(&files.memory).ok();
        let prefix = format!("b{m}-{}-{n}", mode.name());
        let mut pool_mem = None;
        let mut hits0 = 0;
        if mode == Mode::Pool {
            let p = d.pool_fill(&src, n, POOL_FILL_TIMEOUT).await?;
            hits0 = p.hits;
            let waiting = qemu_pids_waiting(&self.data_dir);
            let mut pm = procmem::measure(&waiting);
            pm.idle_cpu_pct_per_vm =
                procmem::idle_cpu_pct_per_vm(&waiting, tokio::time::sleep(Duration::from_secs(1)))
                    .await;
            pool_mem = Some(pm);
        }
        let req = ForkRequest {
            source: src.clone(),
            name: Some(prefix),
            count: Some(n),
            parallel: Some(self.ctx.cfg.parallel),
            ..Default::default()
        };
        let cpu0 = procmem::cpu_seconds(&[d.pid()]);
        let t0 = Instant::now();
        let rep = self.tine_fork(req).await;
        let wall = ms(t0);
        let manager_s = procmem::cpu_seconds(&[d.pid()]) - cpu0;
        let mut pool_hits = None;
        if mode == Mode::Pool {
            // Stop the refill before measuring the forks.
            let h = d
                .client
                .pools()
                .await?
                .into_iter()
                .find(|p| p.spec.source == src)
                .map(|p| p.hits);
            d.pool_remove(&src).await?;
            pool_hits = h.map(|h| h - hits0);
        }
        let rep = rep?;
        let ok: Vec<_> = rep.forks.iter().filter(|f| f.error.is_none()).collect();
        let errs: Vec<String> = rep.forks.iter().filter_map(|f| f.error.clone()).collect();
        let run: Vec<f64> = ok.iter().filter_map(|f| f.running_ms).collect();
        let ready: Vec<f64> = ok.iter().filter_map(|f| f.ready_ms).collect();
        let pids: Vec<i32> = ok.iter().filter_map(|f| f.instance.as_ref()?.pid).collect();
        let burst_cpu = burst_cpu(manager_s, &pids);
        let cpu = procmem::idle_cpu_pct_per_vm(&pids, self.settle()).await;
        let dirs: Vec<PathBuf> = ok
            .iter()
            .filter_map(|f| Some(f.instance.as_ref()?.dir.clone()))
            .collect();
        let mut mem = procmem::measure(&pids);
        mem.idle_cpu_pct_per_vm = cpu;
        let disk = self.disk(used0, &dirs);
        let names: Vec<String> = ok.iter().map(|f| f.name.clone()).collect();
        d.remove(&names).await?;
        Ok(ForkCell {
            mem_mib: m,
            mode,
            count: n,
            rep: 0,
            running_ms: summ(&run),
            ready_ms: summ(&ready),
            wall_ms: Some(wall),
            ok: ok.len(),
            failed: errs.len(),
            mem: Some(mem),
            source_cache_before: cache0,
            pool_mem,
            pool_hits,
            disk: Some(disk),
            phases: Some(fork_phase_medians(&ok)),
            cpu: burst_cpu,
            error: (!errs.is_empty()).then(|| errs.join("; ")),
        })
    }

    fn disk(&self, used0: Option<u64>, dirs: &[PathBuf]) -> Disk {
        let used1 = fs_used_bytes(self.mount.path()).ok();
        let n = dirs.len().max(1) as f64;
        Disk {
            fs_delta_per_vm: used0.zip(used1).map(|(a, b)| (b as f64 - a as f64) / n),
            own_allocated_per_vm: dirs.iter().map(|d| procmem::own_allocated(d)).sum::<u64>()
                as f64
                / n,
        }
    }

    async fn clone_burst(&self, m: u32, mode: Mode, n: u32) -> Result<ForkCell> {
        let (_, files) = self.source_of(m)?;
        let kind = clone_kind(mode);
        let used0 = fs_used_bytes(self.mount.path()).ok();
        let cache0 = procmem::cached_bytes(&files.memory).ok();
        let sem = Arc::new(Semaphore::new(self.ctx.cfg.parallel as usize));
        let cpu0 = procmem::cpu_seconds(&[std::process::id() as i32]);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 1..=n {
            let (sem, cfg, files) = (sem.clone(), self.ctx.clone_cfg.clone(), files.clone());
            let dir = self.bare_root.join(format!("b{m}-{}-{n}-{i}", mode.name()));
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await.expect("semaphore");
                bare::start_clone(kind, &cfg, &files, dir, t0).await
            }));
        }
        let mut clones = Vec::new();
        let mut errs = Vec::new();
        for t in tasks {
            match t
                .await
                .map_err(|e| anyhow!("clone task: {e}"))
                .and_then(|r| r)
            {
                Ok(c) => clones.push(c),
                Err(e) => errs.push(format!("{e:#}")),
            }
        }
        let wall = ms(t0);
        let manager_s = procmem::cpu_seconds(&[std::process::id() as i32]) - cpu0;
        let pids: Vec<i32> = clones.iter().map(|c| c.pid).collect();
        let burst_cpu = burst_cpu(manager_s, &pids);
        let cpu = procmem::idle_cpu_pct_per_vm(&pids, self.settle()).await;
        let dirs: Vec<PathBuf> = clones.iter().map(|c| c.dir.clone()).collect();
        let mut mem = procmem::measure(&pids);
        mem.idle_cpu_pct_per_vm = cpu;
        let disk = self.disk(used0, &dirs);
        let run: Vec<f64> = clones.iter().map(|c| c.running_ms).collect();
        let ready: Vec<f64> = clones.iter().map(|c| c.ready_ms).collect();
        let phases: Vec<Phases> = clones.iter().map(|c| c.phases.clone()).collect();
        futures_join_all(clones.iter_mut().map(|c| c.kill())).await;
        Ok(ForkCell {
            mem_mib: m,
            mode,
            count: n,
            rep: 0,
            running_ms: summ(&run),
            ready_ms: summ(&ready),
            wall_ms: Some(wall),
            ok: run.len(),
            failed: errs.len(),
            mem: Some(mem),
            source_cache_before: cache0,
            pool_mem: None,
            pool_hits: None,
            disk: Some(disk),
            phases: (!phases.is_empty()).then(|| phase_medians(&phases)),
            cpu: burst_cpu,
            error: (!errs.is_empty()).then(|| errs.join("; ")),
        })
    }

    // ---- fork from running --------------------------------------------------

    async fn fork_from_running(&mut self, m: u32, reps: u32) -> Result<()> {
        let d = self.d()?;
        let live = format!("live-{m}");
        d.run_vm(&live, m).await?;
        let r: Result<FromRunning> = async {
            d.touch_memory(&live, self.ctx.cfg.touch_mib).await?;
            let (mut pause, mut run, mut ready) = (vec![], vec![], vec![]);
            for rep in 0..=reps {
                let name = format!("r{m}-{rep}");
                let req = ForkRequest {
                    source: live.clone(),
                    name: Some(name.clone()),
                    count: Some(1),
                    from_running: true,
                    ..Default::default()
                };
                let rp = self.tine_fork(req).await?;
                d.remove(&[name]).await?;
                let f = rp
                    .forks
                    .first()
                    .ok_or_else(|| anyhow!("empty fork report"))?;
                if let Some(e) = &f.error {
                    bail!("fork failed: {e}");
                }
                if rep > 0 {
                    pause.push(rp.source_pause_ms.context("no source_pause_ms")?);
                    run.push(f.running_ms.context("no running_ms")?);
                    ready.push(f.ready_ms.context("no ready_ms")?);
                }
            }
            log(
                self.fs(),
                format!("  from-running {m} MiB: pause p50 {:?}", median(&pause)),
            );
            Ok(FromRunning {
                mem_mib: m,
                source_pause_ms: summ(&pause).expect("reps"),
                running_ms: summ(&run).expect("reps"),
                ready_ms: summ(&ready).expect("reps"),
            })
        }
        .await;
        d.remove(&[live]).await?;
        self.res.from_running.push(r?);
        Ok(())
    }

    // ---- baseline (a): N fresh boots ----------------------------------------

    async fn boot_n(&mut self, m: u32, n: u32, touch: u32) -> Result<()> {
        let d = self.d()?;
        let used0 = fs_used_bytes(self.mount.path()).ok();
        let sem = Arc::new(Semaphore::new(self.ctx.cfg.parallel as usize));
        let names: Vec<String> = (1..=n).map(|i| format!("n{m}-{i}")).collect();
        let t0 = Instant::now();
        let boots = futures_join_all(names.iter().map(|name| {
            let sem = sem.clone();
            async move {
                let _p = sem.acquire().await.expect("semaphore");
                d.run_vm(name, m).await.map(|(info, _)| (info, ms(t0)))
            }
        }))
        .await;
        let wall = ms(t0);
        let mut ok = Vec::new();
        let mut errs = Vec::new();
        for b in boots {
            match b {
                Ok(x) => ok.push(x),
                Err(e) => errs.push(format!("{e:#}")),
            }
        }
        let r: Result<BootN> = async {
            let pids: Vec<i32> = ok.iter().filter_map(|(i, _)| i.pid).collect();
            let cpu = procmem::idle_cpu_pct_per_vm(&pids, self.settle()).await;
            let mut mem_idle = procmem::measure(&pids);
            mem_idle.idle_cpu_pct_per_vm = cpu;
            let (mut touch_wall, mut mem_touched) = (None, None);
            if touch > 0 {
                let t1 = Instant::now();
                let fills = futures_join_all(ok.iter().map(|(i, _)| {
                    let sem = sem.clone();
                    async move {
                        let _p = sem.acquire().await.expect("semaphore");
                        d.touch_memory(&i.name, touch).await
                    }
                }))
                .await;
                touch_wall = Some(ms(t1));
                for f in fills {
                    f?;
                }
                self.settle().await;
                mem_touched = Some(procmem::measure(&pids));
            }
            let dirs: Vec<PathBuf> = ok.iter().map(|(i, _)| i.dir.clone()).collect();
            let ready: Vec<f64> = ok.iter().map(|(_, t)| *t).collect();
            Ok(BootN {
                mem_mib: m,
                count: n,
                ok: ok.len(),
                ready_ms: summ(&ready),
                wall_ms: wall,
                mem_idle,
                touch_mib: touch,
                touch_wall_ms: touch_wall,
                mem_touched,
                disk: self.disk(used0, &dirs),
            })
        }
        .await;
        d.remove(&ok.iter().map(|(i, _)| i.name.clone()).collect::<Vec<_>>())
            .await?;
        let mut b = r?;
        if !errs.is_empty() {
            self.res.errors.push(format!(
                "boot-n: {} boots failed: {}",
                errs.len(),
                errs.join("; ")
            ));
        }
        b.ok = ok.len();
        self.res.boot_n = Some(b);
        Ok(())
    }
}

/// Per mode: running ms, ready ms, phases (bare clones), errors.
type Samples = (Vec<f64>, Vec<f64>, Vec<Phases>, Vec<String>);

const POOL_FILL_TIMEOUT: Duration = Duration::from_secs(600);

/// QEMUs under `data_dir` waiting for incoming state (warm-pool entries).
fn qemu_pids_waiting(data_dir: &Path) -> Vec<i32> {
    let needle = data_dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            comm.starts_with("qemu") && cmd.contains(&needle) && cmd.contains("-incoming defer")
        })
        .collect()
}

fn clone_kind(mode: Mode) -> CloneKind {
    match mode {
        Mode::Bare => CloneKind::Bare,
        Mode::BarePool => CloneKind::BarePool,
        _ => CloneKind::BareDaemonize,
    }
}

/// Per fork: the manager's CPU during the burst and the VMs' CPU so far.
fn burst_cpu(manager_s: f64, vm_pids: &[i32]) -> Option<BurstCpu> {
    let n = vm_pids.len();
    (n > 0).then(|| BurstCpu {
        manager_ms: manager_s * 1e3 / n as f64,
        vms_ms: procmem::cpu_seconds(vm_pids) * 1e3 / n as f64,
    })
}

/// tine's own per-fork phases, in the baseline's columns.
fn fork_phase_medians(ok: &[&ForkOutcome]) -> PhaseMedians {
    let ph: Vec<_> = ok.iter().filter_map(|f| f.phases).collect();
    let col = |f: &dyn Fn(&ForkPhases) -> f64| median(&ph.iter().map(f).collect::<Vec<f64>>());
    PhaseMedians {
        waited_ms: col(&|p| p.waited_ms),
        files_ms: col(&|p| p.files_ms),
        qemu_total_ms: col(&|p| p.vm_ms),
        agent_ms: col(&|p| p.agent_ms),
        identity_ms: col(&|p| p.identity_ms),
        ..Default::default()
    }
}

fn phase_medians(ph: &[Phases]) -> PhaseMedians {
    let col =
        |f: &dyn Fn(&Phases) -> Option<f64>| median(&ph.iter().filter_map(f).collect::<Vec<f64>>());
    PhaseMedians {
        waited_ms: None,
        files_ms: col(&|p| Some(p.files_ms)),
        spawn_to_qmp_ms: col(&|p| p.spawn_to_qmp_ms),
        caps_ms: col(&|p| p.caps_ms),
        load_host_ms: col(&|p| p.load_host_ms),
        load_qemu_ms: col(&|p| p.load_qemu_ms),
        cont_ms: col(&|p| p.cont_ms),
        qemu_total_ms: col(&|p| Some(p.qemu_total_ms)),
        agent_ms: col(&|p| Some(p.agent_ms)),
        identity_ms: col(&|p| Some(p.identity_ms)),
        identity_entropy_ms: col(&|p| Some(p.identity_calls_ms[0])),
        identity_hostname_ms: col(&|p| Some(p.identity_calls_ms[1] - p.identity_calls_ms[0])),
        identity_clock_ms: col(&|p| Some(p.identity_calls_ms[2] - p.identity_calls_ms[1])),
        pool_wait_pss: col(&|p| p.pool_wait_pss.map(|b| b as f64)),
    }
}

/// SIGKILL QEMUs whose command line names a path under `dir` (ours).
fn kill_qemus_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut killed = vec![];
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.starts_with("qemu") {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&needle) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                killed.push(pid);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while killed.iter().any(|p| crate::cleanup::pid_alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
