//! Baseline (b): QEMU's own VM templating with no tine daemon or manager in
//! the path — the method Kata uses. A clone is a QEMU started from the
//! source's saved files with its RAM file mapped `share=off` (private,
//! copy-on-write), `-incoming defer`, and over raw QMP: `x-ignore-shared`,
//! `migrate-incoming file:VMSTATE`, wait for the MIGRATION `completed`
//! event, `cont`. The command line is the one tine builds (same devices, so
//! the same device state loads).
//!
//! Each phase is timed so the analysis can say what dominates: files (disk
//! copy, RAM file link), QEMU start → QMP greeting, capabilities, state load
//! (host-observed, and QEMU's own MIGRATION event timestamps setup →
//! completed), `cont`, agent answering, identity (the same three agent calls
//! tine makes for a fork: entropy, hostname + machine-id, clock).
//!
//! A second variant ("bare-d") adds `-daemonize -pidfile`, as tine's QEMU
//! backend starts every VM (so VMs outlive the daemon): the difference is
//! what daemonizing costs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;

use tine_agent_proto::client::{AgentClient, AgentError};
use tine_hypervisor::{Accel, VmProcess};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::procmem::MEMORY_FILE;

/// The parked files clones start from (a tine instance in standby).
#[derive(Debug, Clone)]
pub struct SourceFiles {
    pub memory: PathBuf,
    pub vmstate: PathBuf,
    pub overlay: PathBuf,
    pub memory_mib: u32,
}

impl SourceFiles {
    pub fn of_instance_dir(dir: &Path, memory_mib: u32) -> SourceFiles {
        SourceFiles {
            memory: dir.join(MEMORY_FILE),
            vmstate: dir.join("vmstate"),
            overlay: dir.join("overlay.qcow2"),
            memory_mib,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

impl Image {
    pub fn load(images_dir: &Path, name: &str) -> Result<Image> {
        let dir = images_dir.join(name);
        let text = std::fs::read_to_string(dir.join("manifest.json"))
            .with_context(|| format!("guest image manifest in {}", dir.display()))?;
        let mut img: Image = serde_json::from_str(&text).context("parse manifest.json")?;
        img.kernel = dir.join(&img.kernel);
        img.initrd = dir.join(&img.initrd);
        Ok(img)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloneKind {
    /// Raw QEMU + QMP by hand.
    Bare,
    /// The same with `-daemonize -pidfile`, as tine's backend starts QEMU.
    BareDaemonize,
    /// A pre-started QEMU waiting in `-incoming defer` with its files ready
    /// (a warm pool slot for a hot source): the request starts the timing
    /// at `migrate-incoming`.
    BarePool,
}

/// Phase durations of one clone, ms. `None` where the variant cannot see it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    pub files_ms: f64,
    pub spawn_to_qmp_ms: Option<f64>,
    pub caps_ms: Option<f64>,
    pub load_host_ms: Option<f64>,
    pub load_qemu_ms: Option<f64>,
    pub cont_ms: Option<f64>,
    /// Start of the QEMU start → vCPUs running (all QEMU-side phases).
    pub qemu_total_ms: f64,
    pub agent_ms: f64,
    pub identity_ms: f64,
    /// Completion of each identity call after the first was sent (they are
    /// sent at once; the agent serves them in order): entropy, hostname +
    /// machine-id, clock.
    pub identity_calls_ms: [f64; 3],
    /// Pool mode: PSS of the waiting QEMU before the request (bytes).
    pub pool_wait_pss: Option<u64>,
}

/// A running clone; kill it with [`Clone::kill`].
pub struct Clone {
    pub dir: PathBuf,
    pub pid: i32,
    proc: Option<VmProcess>,
    child: Option<tokio::process::Child>,
    pub phases: Phases,
    /// From the burst's start (queueing included, as tine's figures).
    pub running_ms: f64,
    pub ready_ms: f64,
}

pub struct CloneCfg {
    pub qemu: PathBuf,
    pub image: Image,
    pub accel: Accel,
}

pub async fn start_clone(
    kind: CloneKind,
    cfg: &CloneCfg,
    src: &SourceFiles,
    dir: PathBuf,
    mut t0: Instant,
) -> Result<Clone> {
    let t_files = Instant::now();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (ov_src, ov_dst) = (src.overlay.clone(), dir.join("overlay.qcow2"));
    tokio::task::spawn_blocking(move || tine_storage::copy_file(&ov_src, &ov_dst))
        .await?
        .context("copy the source disk")?;
    std::fs::hard_link(&src.memory, dir.join(MEMORY_FILE)).context("link the memory file")?;
    let mut phases = Phases {
        files_ms: ms(t_files),
        ..Default::default()
    };
    let mut t_qemu = Instant::now();
    let mut clone = match kind {
        CloneKind::Bare => bare_start(cfg, src, &dir, &mut phases, false, None).await,
        CloneKind::BareDaemonize => bare_start(cfg, src, &dir, &mut phases, true, None).await,
        CloneKind::BarePool => {
            bare_start(
                cfg,
                src,
                &dir,
                &mut phases,
                false,
                Some((&mut t0, &mut t_qemu)),
            )
            .await
        }
    }
    .with_context(|| format!("start clone in {}", dir.display()))?;
    phases.qemu_total_ms = ms(t_qemu);
    clone.running_ms = ms(t0);
    let t_agent = Instant::now();
    let agent = AgentClient::wait_ready(&dir.join("agent.sock"), Duration::from_secs(120)).await;
    let (agent, _) = match agent {
        Ok(a) => a,
        Err(e) => {
            clone.kill().await;
            bail!("agent of clone {} did not answer: {e}", dir.display());
        }
    };
    phases.agent_ms = ms(t_agent);
    let t_id = Instant::now();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let seed: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(37) ^ (clone.pid as u8))
        .collect();
    let mid = format!(
        "{:032x}",
        (clone.pid as u128) << 64 | t0.elapsed().as_nanos()
    );
    let timed = |f| async move {
        let r = f.await;
        (r, ms(t_id))
    };
    let ((a, ta), (b, tb), (c, tc)) = tokio::join!(
        timed(Box::pin(agent.add_entropy(&seed))
            as Pin<
                Box<dyn Future<Output = Result<(), AgentError>> + Send + '_>,
            >),
        timed(Box::pin(agent.set_identity(Some(&name), Some(&mid)))),
        timed(Box::pin(agent.sync_clock()))
    );
    phases.identity_calls_ms = [ta, tb, tc];
    if let Err(e) = a.and(b).and(c) {
        clone.kill().await;
        bail!("identity of clone {}: {e}", dir.display());
    }
    phases.identity_ms = ms(t_id);
    clone.ready_ms = ms(t0);
    clone.phases = phases;
    Ok(clone)
}

impl Clone {
    pub async fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            tine_hypervisor::kill(&p);
            let _ =
                tokio::time::timeout(Duration::from_secs(10), tine_hypervisor::wait_exit(p)).await;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The QEMU command line tine builds (crates/hypervisor/src/qemu/cmdline.rs)
/// for a private-mapped restore, minus daemonizing: the clone is our child.
pub fn qemu_args(cfg: &CloneCfg, mem_mib: u32, memory_file: &Path, dir: &Path) -> Vec<String> {
    let esc = |p: &Path| p.display().to_string().replace(',', ",,");
    let (accel, cpu) = match cfg.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let mut cmdline = cfg.image.cmdline.clone();
    if cfg.accel == Accel::Tcg {
        cmdline.push_str(" tsc_early_khz=2000000");
    }
    let v: Vec<String> = vec![
        "-name".into(),
        "tine-bench,debug-threads=on".into(),
        "-machine".into(),
        tine_hypervisor::qemu::MACHINE.into(),
        "-accel".into(),
        accel.into(),
        "-cpu".into(),
        cpu.into(),
        "-m".into(),
        format!("{mem_mib}M"),
        "-smp".into(),
        "1".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-object".into(),
        format!(
            "memory-backend-file,id=mem,size={mem_mib}M,mem-path={},share=off",
            esc(memory_file)
        ),
        "-kernel".into(),
        cfg.image.kernel.display().to_string(),
        "-initrd".into(),
        cfg.image.initrd.display().to_string(),
        "-append".into(),
        cmdline,
        "-chardev".into(),
        format!("file,id=con,path={}", esc(&dir.join("console.log"))),
        "-serial".into(),
        "chardev:con".into(),
        "-drive".into(),
        tine_hypervisor::qemu::root_drive(&dir.join("overlay.qcow2")),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!(
            "socket,id=agent,path={},server=on,wait=off",
            esc(&dir.join("agent.sock"))
        ),
        "-device".into(),
        "virtserialport,chardev=agent,name=tine.agent".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", esc(&dir.join("qmp.sock"))),
        "-incoming".into(),
        "defer".into(),
    ];
    v
}

/// Start QEMU and load the state. With `pool`, everything up to the load
/// (spawn, QMP, capabilities) is done first, then the two clocks are reset:
/// the timed part starts at `migrate-incoming`.
async fn bare_start(
    cfg: &CloneCfg,
    src: &SourceFiles,
    dir: &Path,
    ph: &mut Phases,
    daemonize: bool,
    pool: Option<(&mut Instant, &mut Instant)>,
) -> Result<Clone> {
    let mut args = qemu_args(cfg, src.memory_mib, &dir.join(MEMORY_FILE), dir);
    let pid_file = dir.join("qemu.pid");
    if daemonize {
        args.extend([
            "-daemonize".into(),
            "-pidfile".into(),
            pid_file.display().to_string(),
        ]);
    }
    let log = std::fs::File::create(dir.join("qemu.log"))?;
    let t = Instant::now();
    let mut cmd = tokio::process::Command::new(&cfg.qemu);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe. The clone dies with the benchmark.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", cfg.qemu.display()))?;
    let mut pid = child.id().map(|p| p as i32).unwrap_or(0);
    let mut proc = None;
    if daemonize {
        // The launcher exits once QEMU is set up; the VM is its child.
        let st = child.wait().await?;
        if !st.success() {
            let log = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
            bail!("QEMU -daemonize failed ({st}): {}", log.trim());
        }
        pid = std::fs::read_to_string(&pid_file)?
            .trim()
            .parse()
            .context("pid file")?;
        proc = Some(VmProcess::of_pid(pid).context("daemonized QEMU is gone")?);
    }
    let result = async {
        let mut q =
            Qmp::connect_retry(&dir.join("qmp.sock"), Duration::from_secs(30), &mut child).await?;
        ph.spawn_to_qmp_ms = Some(ms(t));
        let t = Instant::now();
        q.execute("qmp_capabilities", None).await?;
        let caps = json!({ "capabilities": [
            { "capability": "x-ignore-shared", "state": true },
            { "capability": "events", "state": true } ] });
        q.execute("migrate-set-capabilities", Some(caps)).await?;
        ph.caps_ms = Some(ms(t));
        if let Some((t0, t_qemu)) = pool {
            // Let the idle slot settle as a pooled one would, then note its cost.
            tokio::time::sleep(Duration::from_millis(300)).await;
            ph.pool_wait_pss = crate::procmem::read_proc(pid).ok().map(|m| m.pss);
            *t0 = Instant::now();
            *t_qemu = *t0;
        }
        let t = Instant::now();
        let uri = format!("file:{}", src.vmstate.display());
        q.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await?;
        let (setup_ts, done_ts) = q.wait_migration().await?;
        ph.load_host_ms = Some(ms(t));
        ph.load_qemu_ms = setup_ts.map(|s| (done_ts - s) * 1e3);
        let t = Instant::now();
        q.execute("cont", None).await?;
        ph.cont_ms = Some(ms(t));
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let clone = Clone {
        dir: dir.to_path_buf(),
        pid,
        proc,
        child: (!daemonize).then_some(child),
        phases: Phases::default(),
        running_ms: 0.0,
        ready_ms: 0.0,
    };
    match result {
        Ok(()) => Ok(clone),
        Err(e) => {
            let mut c = clone;
            let log = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
            c.kill().await;
            Err(e.context(format!("QEMU said: {}", log.trim())))
        }
    }
}

/// A minimal QMP client that keeps the events it reads.
struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events: Vec<Value>,
}

impl Qmp {
    async fn connect_retry(
        path: &Path,
        timeout: Duration,
        child: &mut tokio::process::Child,
    ) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = UnixStream::connect(path).await {
                let (r, w) = s.into_split();
                let mut q = Qmp {
                    reader: BufReader::new(r),
                    writer: w,
                    events: Vec::new(),
                };
                let greeting = q.read().await?;
                if greeting.get("QMP").is_none() {
                    bail!("unexpected QMP greeting {greeting}");
                }
                return Ok(q);
            }
            if let Ok(Some(st)) = child.try_wait() {
                if !st.success() {
                    bail!("QEMU exited at start ({st})");
                }
            }
            if Instant::now() > deadline {
                bail!("QMP socket {} did not appear", path.display());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            bail!("QMP connection closed");
        }
        Ok(serde_json::from_str(&line)?)
    }

    async fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": cmd });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        loop {
            let v = self.read().await?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!(
                    "QMP {cmd}: {}",
                    e.get("desc").and_then(Value::as_str).unwrap_or("error")
                );
            }
            self.events.push(v);
        }
    }

    /// Wait for MIGRATION completed; returns QEMU's timestamps (s) of the
    /// `setup` event (if seen) and of `completed`.
    async fn wait_migration(&mut self) -> Result<(Option<f64>, f64)> {
        let mut setup = None;
        let mut i = 0;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            while i < self.events.len() {
                let ev = &self.events[i];
                i += 1;
                if ev.get("event").and_then(Value::as_str) != Some("MIGRATION") {
                    continue;
                }
                let ts = ev.get("timestamp").map(|t| {
                    t.get("seconds").and_then(Value::as_f64).unwrap_or(0.0)
                        + t.get("microseconds").and_then(Value::as_f64).unwrap_or(0.0) / 1e6
                });
                match ev.pointer("/data/status").and_then(Value::as_str) {
                    Some("setup") => setup = ts,
                    Some("completed") => return Ok((setup, ts.unwrap_or(0.0))),
                    Some("failed") | Some("cancelled") => bail!("incoming migration failed"),
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                bail!("incoming migration did not complete");
            }
            let v = self.read().await?;
            self.events.push(v);
        }
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
