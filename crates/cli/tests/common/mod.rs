//! Test harness: a real `tine serve` daemon on a temporary data directory,
//! driven through the real `tine` CLI binary, booting real QEMU guests.
//!
//! The guest image comes from `TINE_IMAGES_DIR` (default
//! /var/lib/tine/images, where `scripts/setup.sh` builds it). A missing
//! image or QEMU fails the test loudly: these tests never skip.
#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

pub fn images_dir() -> PathBuf {
    let dir = std::env::var_os("TINE_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/tine/images"));
    assert!(
        dir.join("default/manifest.json").is_file(),
        "guest image missing at {}: run scripts/setup.sh (or guest/build.sh {}/default)",
        dir.display(),
        dir.display()
    );
    dir
}

pub struct Daemon {
    child: Option<Child>,
    env: Vec<(String, String)>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// Extra `tine serve` arguments.
    serve_args: Vec<String>,
    /// The namespace the daemon runs in (deleted after the VMs of every
    /// daemon in it are gone).
    netns: Option<Arc<netns::Netns>>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with_env(&[])
    }

    /// A daemon with extra environment, e.g. `TINE_FAILPOINTS`.
    pub fn start_with_env(env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(None, &[], env)
    }

    /// A daemon whose data directory is `dir` (e.g. a small loop mount).
    pub fn start_at(dir: &Path) -> Daemon {
        Daemon::start_with(Some(dir), &[], &[])
    }

    /// A daemon with extra `tine serve` arguments, on `dir` or a temporary
    /// data directory.
    pub fn start_with_args(dir: Option<&Path>, serve_args: &[&str]) -> Daemon {
        Daemon::start_with(dir, serve_args, &[])
    }

    /// A daemon with extra `serve` arguments and environment, on `dir` or
    /// a temporary data directory. It runs in the host's network namespace,
    /// so it gets `--network none` unless `serve_args` name a `--network`:
    /// tests not about networking touch no bridge, address or forwarding
    /// setting of the host (networking tests use `start_in_netns`).
    pub fn start_with(dir: Option<&Path>, serve_args: &[&str], env: &[(&str, &str)]) -> Daemon {
        // Short base path: QEMU's sockets live under it and sun_path is 108 bytes.
        let tmp = match dir {
            Some(_) => None,
            None => Some(
                tempfile::Builder::new()
                    .prefix("tine-t")
                    .tempdir_in("/tmp")
                    .unwrap(),
            ),
        };
        let data_dir = dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| tmp.as_ref().unwrap().path().to_path_buf());
        let mut serve_args: Vec<String> = serve_args.iter().map(|s| s.to_string()).collect();
        if !serve_args.iter().any(|a| a == "--network") {
            serve_args.extend(["--network".into(), "none".into()]);
        }
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut d = Daemon {
            child: None,
            env,
            data_dir,
            _tmp: tmp,
            serve_args,
            netns: None,
        };
        d.spawn();
        d
    }

    /// A daemon in a network namespace of its own, with networking on
    /// (unless `serve_args` turn it off) and extra `serve` args.
    pub fn start_in_netns(serve_args: &[&str]) -> Daemon {
        Daemon::start_in(Arc::new(netns::Netns::new()), serve_args)
    }

    /// Another daemon, on a data directory of its own, in `other`'s namespace.
    pub fn start_beside(other: &Daemon, serve_args: &[&str]) -> Daemon {
        let ns = other.netns.clone().expect("a daemon in a netns");
        Daemon::start_in(ns, serve_args)
    }

    fn start_in(netns: Arc<netns::Netns>, serve_args: &[&str]) -> Daemon {
        let tmp = tempfile::Builder::new()
            .prefix("tine-t")
            .tempdir_in("/tmp")
            .unwrap();
        let data_dir = tmp.path().to_path_buf();
        let serve_args = serve_args.iter().map(|s| s.to_string()).collect();
        let netns = Some(netns);
        let mut d = Daemon {
            child: None,
            env: vec![],
            data_dir,
            _tmp: Some(tmp),
            serve_args,
            netns,
        };
        d.spawn();
        d
    }

    /// The daemon's network namespace (`start_in_netns` only).
    pub fn netns(&self) -> &netns::Netns {
        self.netns
            .as_deref()
            .expect("a daemon started with start_in_netns")
    }

    fn serve_command(&self) -> Command {
        match &self.netns {
            Some(ns) => ns.command(env!("CARGO_BIN_EXE_tine")),
            None => Command::new(env!("CARGO_BIN_EXE_tine")),
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("daemon.log"))
            .unwrap();
        let child = self
            .serve_command()
            .args(["serve", "--data-dir"])
            .arg(&self.data_dir)
            .arg("--images-dir")
            .arg(images_dir())
            .args(&self.serve_args)
            .env("TINE_LOG", "info,tine_manager=debug")
            // A guest that resets itself (rare first-boot failures under
            // load) leaves "Triple fault" and its CPU state in qemu.log.
            .env("TINE_QEMU_LOG", "cpu_reset")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.tine(&["ps"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "daemon did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM the daemon (VMs keep running) and start a new one on the same
    /// data, with the given environment from now on.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.restart();
    }

    /// Wait for the daemon process to exit by itself (e.g. a crash failpoint).
    /// Wait for the daemon to exit on its own (a `crash` failpoint). A
    /// failpoint that never fires fails the test instead of hanging it.
    pub fn wait_daemon_exit(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        while c.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "the daemon did not exit (did its failpoint fire?):\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM the daemon (VMs keep running) and start a new one on the same data.
    pub fn restart(&mut self) {
        self.stop_daemon();
        self.spawn();
    }

    /// SIGKILL the daemon (VMs keep running).
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(c.id() as i32);
            c.wait().unwrap();
        }
    }

    pub fn stop_daemon(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id() as i32, Signal::TERM);
            c.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn tine(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The `tine ARGS` command against this daemon, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tine"));
        c.arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Run a CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.tine(args);
        assert!(
            out.status.success(),
            "tine {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run a CLI command that must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.tine(args);
        assert!(
            !out.status.success(),
            "tine {args:?} unexpectedly succeeded"
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub fn inspect(&self, name: &str) -> Value {
        self.json(&["inspect", name])
    }

    pub fn state(&self, name: &str) -> String {
        self.inspect(name)["state"].as_str().unwrap().to_string()
    }

    /// `tine exec NAME -- sh -c SCRIPT`, must exit 0; returns stdout.
    pub fn sh(&self, name: &str, script: &str) -> String {
        self.ok(&["exec", name, "--", "sh", "-c", script])
    }

    pub fn wait_state(&self, name: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state(name) == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never reached {want}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_daemon();
        // Leave no VM behind, whatever the test did. Found by command
        // line: a stale pid file may name a reused pid (another test's VM).
        for pid in qemu_pids(&self.data_dir) {
            kill9(pid);
        }
    }
}

pub fn is_qemu(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("qemu"))
}

pub fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = kill_process(p, sig);
    }
}

pub fn kill9(pid: i32) {
    signal(pid, Signal::KILL);
}

/// Start a process in the guest that counts in memory (tmpfs) forever;
/// returns its pid.
pub fn start_counter(d: &Daemon, name: &str) -> String {
    d.sh(
        name,
        // Written with a rename, so a reader never sees the file truncated.
        "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/counter.t; mv /run/counter.t /run/counter; sleep 0.05; done' \
         </dev/null >/dev/null 2>&1 & echo $! > /run/counter.pid; sleep 0.3; cat /run/counter.pid",
    )
    .trim()
    .to_string()
}

pub fn counter(d: &Daemon, name: &str) -> u64 {
    d.sh(name, "cat /run/counter").trim().parse().unwrap()
}

/// The guest's counter process (`start_counter`) moves on. The bound only
/// ends a test whose guest hangs.
pub fn assert_counts_on(d: &Daemon, name: &str) {
    let before = counter(d, name);
    let deadline = Instant::now() + Duration::from_secs(300);
    while counter(d, name) <= before {
        assert!(
            Instant::now() < deadline,
            "{name}'s counter stopped at {before}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

pub fn inode(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.ino(), m.nlink())
}

pub fn dir_of(d: &Daemon, name: &str) -> PathBuf {
    PathBuf::from(d.inspect(name)["dir"].as_str().unwrap())
}

/// Names of the instances the daemon reports.
pub fn names(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = d
        .json(&["ps"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Instance directories on disk.
pub fn instance_dirs(d: &Daemon) -> usize {
    std::fs::read_dir(d.data_dir.join("instances"))
        .map(|it| it.count())
        .unwrap_or(0)
}

/// QEMU processes whose command line mentions this daemon's data dir.
pub fn qemu_processes(d: &Daemon) -> usize {
    qemu_pids(&d.data_dir).len()
}

/// Live QEMU processes whose command line names a path under `data_dir`.
fn qemu_pids(data_dir: &Path) -> Vec<i32> {
    let needle = format!("{}/", data_dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_qemu(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

pub fn assert_failpoints() {
    assert!(
        tine_manager::failpoint::enabled(),
        "this test needs the failpoints feature: run scripts/test.sh (cargo ... --features tine-cli/failpoints)"
    );
}

/// Wait until the (only) warm pool has `want` entries ready; returns its
/// `pool ls` entry.
pub fn wait_pool_ready(d: &Daemon, want: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pools = d.json(&["pool", "ls"]);
        let p = pools[0].clone();
        if p["ready"].as_u64() == Some(want) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "pool never filled: {pools:#}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fork outcome's phases are all there, non-negative, add up to its
/// `ready_ms`, and say whether a warm pool entry made it.
pub fn assert_phases_add_up(fork: &Value, pooled: bool) {
    let p = &fork["phases"];
    let parts = ["waited_ms", "files_ms", "vm_ms", "agent_ms", "identity_ms"];
    let mut sum = 0.0;
    for k in parts {
        let v = p[k]
            .as_f64()
            .unwrap_or_else(|| panic!("no {k} in {fork:#}"));
        assert!(v >= 0.0, "{k} < 0 in {fork:#}");
        sum += v;
    }
    let ready = fork["ready_ms"].as_f64().unwrap();
    assert!(
        (sum - ready).abs() < 0.01,
        "phases add up to {sum}, ready is {ready}: {fork:#}"
    );
    assert_eq!(p["pooled"], pooled, "{fork:#}");
    if pooled {
        assert_eq!(p["files_ms"], 0.0, "a warm entry's files were made ahead");
    }
}

/// The default guest image's root filesystem, shared by every VM.
pub fn guest_rootfs() -> PathBuf {
    let dir = images_dir().join("default");
    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    dir.join(m["rootfs"].as_str().unwrap())
}

/// Fraction of `path` in the page cache.
pub fn cached_fraction(path: &Path) -> f64 {
    let (resident, size) = tine_storage::resident_bytes(path).unwrap();
    resident as f64 / size.max(1) as f64
}
