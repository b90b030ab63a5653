//! The fault matrix: kill -9 of the daemon and of QEMU at chosen points of
//! run, standby, restore, snapshot, compression and fork (test-only failpoints, see
//! `manager/src/failpoint.rs`; more in failures.rs).
//!
//! | operation | point (where) | kill -9 of | outcome checked |
//! |---|---|---|---|
//! | run | `vm-started` (QEMU up, unrecorded) | daemon | no instance, no VM |
//! | run | `boot-ready` (guest ready, uncommitted) | daemon | no instance, no VM |
//! | standby | `standby-saved` (state saved, QEMU alive) | QEMU | standby completes; restore continues the guest |
//! | standby (a fork: RAM into the state) | `state-saving` (save under way) | daemon | VM resumed, guest continues; standby works again |
//! | standby (a fork) | `state-saving` | QEMU | standby fails; error with a reason; source untouched; start boots |
//! | standby | `state-saving` | daemon, then QEMU | error with a reason, no state file; start boots |
//! | restore | `vm-started` (state loaded, resumed, unrecorded) | daemon | VM adopted as running, guest continues |
//! | restore | `boot-ready` | daemon | running, guest continues |
//! | restore | `vm-started` | QEMU | restore fails; error with a reason; start boots, disk intact |
//! | snapshot | `capture-paused` (source paused, state saved) | daemon | source resumed, no snapshot |
//! | snapshot | `capture-paused` | QEMU | snapshot fails, none made; source error; start boots |
//! | snapshot (a running fork: RAM into the state) | `state-saving` | daemon | none made; source resumed, guest continues; snapshot works again |
//! | snapshot (standby source) | `snapshot-captured` (memory linked into staging) | daemon | none made; source's inode back to one link, files unchanged; restore continues |
//! | snapshot `--kind stopped` | `capture-paused` (source paused, disk copy) | daemon | source resumed, none made |
//! | compression | `compress-writing` (half done) | daemon | compression none, raw file kept; fork and restore work |
//! | compression | `compress-done` (`memory.zst` durable) | daemon | compressed, raw file dropped; restore and fork decompress |
//! | fork (standby source) | `vm-started` of the fork | QEMU | fork fails, none left; source files untouched |
//! | fork (standby source) | `fork-name` (files not yet copied) | — (a restore of the source meanwhile) | the restore waits; fork and source both intact |
//! | fork (running source) | `capture-paused` | daemon | source resumed, no fork, no staging |
//! | fork (running source) | `capture-paused` | source's QEMU | fork fails, none made; source error |
//! | fork (running source) | `vm-started` of the fork | daemon | fork and its VM gone, source runs on |
//!
//! Every test ends with [`assert_consistent`]: each reported state agrees
//! with its process (running/paused ⇔ a live QEMU; error has a reason), and
//! no VM, instance directory, temp file, state file or staging directory
//! belongs to nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::{
    assert_counts_on, assert_failpoints, dir_of, inode, is_qemu, kill9, names, pid_alive,
    qemu_processes, sha256, Daemon,
};

/// Generous bound for waits that only end early when something hangs.
const HANG: Duration = Duration::from_secs(300);

/// Restart the daemon with `TINE_FAILPOINTS=spec`; pause markers go to the data dir.
fn arm(d: &mut Daemon, spec: &str) {
    let dir = d.data_dir.display().to_string();
    d.restart_with_env(&[("TINE_FAILPOINTS", spec), ("TINE_FAILPOINT_DIR", &dir)]);
}

/// Arm a `crash` failpoint and run `tine ARGS` until the daemon dies at
/// it. The daemon stays down: the caller looks at what the crash left,
/// then restarts it.
fn crash_during(d: &mut Daemon, spec: &str, args: &[&str]) {
    arm(d, spec);
    let _ = d.tine(args);
    d.wait_daemon_exit();
}

/// Start `tine ARGS` in the background (it will stop at a failpoint).
fn background(d: &Daemon, args: &[&str]) -> Child {
    d.command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until the daemon pauses at `point` during `cmd`.
fn wait_paused(d: &Daemon, point: &str, cmd: &mut Child) {
    let marker = d.data_dir.join(format!("{point}.paused"));
    let deadline = Instant::now() + HANG;
    while !marker.exists() {
        assert!(
            cmd.try_wait().unwrap().is_none(),
            "the command ended before {point}:\n{}",
            d.log()
        );
        assert!(
            Instant::now() < deadline,
            "never paused at {point}:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn release(d: &Daemon, point: &str) {
    std::fs::remove_file(d.data_dir.join(format!("{point}.paused"))).unwrap();
}

/// The command's exit status and stderr.
fn finish(cmd: Child) -> (bool, String) {
    let out = cmd.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// kill -9 the QEMU of `name` (recorded or not: its pid file) and wait until it is gone.
fn kill_vm(d: &Daemon, name: &str) {
    kill_vm_in(&dir_of(d, name), name);
}

/// kill -9 the QEMU running in `dir` (also while the daemon is down).
fn kill_vm_in(dir: &Path, name: &str) {
    let pid_file = dir.join("qemu.pid");
    let pid: i32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(is_qemu(pid), "{name}'s pid file names no QEMU");
    kill9(pid);
    let deadline = Instant::now() + HANG;
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "QEMU {pid} survived kill -9");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|it| it.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn is_temp(p: &Path) -> bool {
    p.file_name().unwrap().to_string_lossy().ends_with(".tmp")
}

/// Reported states agree with processes and files; nothing is orphaned.
fn assert_consistent(d: &Daemon) {
    let list = d.json(&["ps"]);
    let list = list.as_array().unwrap();
    let mut live = 0;
    for i in list {
        let (name, state) = (i["name"].as_str().unwrap(), i["state"].as_str().unwrap());
        let dir = PathBuf::from(i["dir"].as_str().unwrap());
        match state {
            "running" | "paused" => {
                let pid = i["pid"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("{name} is {state} without a process"));
                assert!(
                    is_qemu(pid as i32),
                    "{name} is {state} but its QEMU {pid} is gone"
                );
                live += 1;
            }
            "standby" | "stopped" | "error" => {
                assert!(i["pid"].is_null(), "{name} is {state} with a process")
            }
            other => panic!("{name} is {other} after the fault"),
        }
        if state == "error" {
            assert!(
                i["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{name} is in error without a reason"
            );
        }
        assert_eq!(
            dir.join("vmstate").exists(),
            state == "standby",
            "{name} ({state}) and its device state file"
        );
        let temps: Vec<_> = entries(&dir).into_iter().filter(|p| is_temp(p)).collect();
        assert!(temps.is_empty(), "temp files left in {name}: {temps:?}");
    }
    assert_eq!(
        qemu_processes(d),
        live,
        "QEMU processes vs running/paused instances"
    );
    assert_eq!(
        entries(&d.data_dir.join("instances")).len(),
        list.len(),
        "instance directories vs instances"
    );
    assert_eq!(
        entries(&d.data_dir.join("staging")),
        Vec::<PathBuf>::new(),
        "staging left"
    );
    let snap_temps: Vec<_> = entries(&d.data_dir.join("snapshots"))
        .into_iter()
        .filter(|p| is_temp(p))
        .collect();
    assert!(
        snap_temps.is_empty(),
        "half-made snapshots left: {snap_temps:?}"
    );
}

/// A running VM named `name` with a counter process and a synced file.
fn running_vm(d: &Daemon, name: &str) -> String {
    d.ok(&["run", "--name", name]);
    d.sh(name, "echo kept > /root/before && sync");
    common::start_counter(d, name)
}

/// A fork `kid` of a parked `src`, with src's counter process and
/// 64 MiB of random data in RAM. Its mapping is private, so a standby
/// writes its RAM into the device state: a save that takes a while.
/// Returns the counter's pid and the data's checksum.
fn forked_vm(d: &Daemon) -> (String, String) {
    let pid = running_vm(d, "src");
    d.ok(&["standby", "src"]);
    d.ok(&["fork", "src", "--name", "kid"]);
    let sum = d.sh(
        "kid",
        "dd if=/dev/urandom of=/run/big bs=1M count=64 2>/dev/null && md5sum < /run/big",
    );
    (pid, sum)
}

#[test]
fn run_daemon_killed_after_qemu_started_leaves_no_instance_and_no_vm() {
    assert_failpoints();
    let mut d = Daemon::start();
    crash_during(&mut d, "vm-started=crash:r1", &["run", "--name", "r1"]);
    d.restart_with_env(&[]);

    assert!(names(&d).is_empty());
    assert_consistent(&d);
    d.ok(&["run", "--name", "r1"]);
    assert_eq!(d.sh("r1", "echo ok"), "ok\n");
}

#[test]
fn run_daemon_killed_before_ready_leaves_no_instance_and_no_vm() {
    assert_failpoints();
    let mut d = Daemon::start();
    crash_during(&mut d, "boot-ready=crash:r2", &["run", "--name", "r2"]);
    d.restart_with_env(&[]);

    assert!(names(&d).is_empty());
    assert_consistent(&d);
}

#[test]
fn standby_with_qemu_killed_after_the_save_completes_and_the_guest_continues() {
    assert_failpoints();
    let mut d = Daemon::start();
    let pid = running_vm(&d, "v");
    arm(&mut d, "standby-saved=pause:v");

    let mut cmd = background(&d, &["standby", "v"]);
    wait_paused(&d, "standby-saved", &mut cmd);
    kill_vm(&d, "v");
    release(&d, "standby-saved");
    let (ok, err) = finish(cmd);

    assert!(ok, "{err}");
    assert_eq!(d.state("v"), "standby");
    assert_consistent(&d);
    d.restart_with_env(&[]);
    d.ok(&["restore", "v"]);
    assert_counts_on(&d, "v");
    assert_eq!(d.sh("v", "cat /run/counter.pid").trim(), pid);
    assert_eq!(d.sh("v", "cat /root/before"), "kept\n");
}

#[test]
fn standby_daemon_killed_while_the_ram_is_saved_resumes_the_vm() {
    assert_failpoints();
    let mut d = Daemon::start();
    let (pid, sum) = forked_vm(&d);
    crash_during(&mut d, "state-saving=crash:kid", &["standby", "kid"]);
    d.restart_with_env(&[]);

    assert_eq!(d.state("kid"), "running");
    assert_consistent(&d);
    assert_counts_on(&d, "kid");
    assert_eq!(d.sh("kid", "cat /run/counter.pid").trim(), pid);
    d.ok(&["standby", "kid"]);
    d.ok(&["restore", "kid"]);
    assert_counts_on(&d, "kid");
    assert_eq!(d.sh("kid", "md5sum < /run/big"), sum);
}

#[test]
fn standby_with_qemu_killed_while_the_ram_is_saved_fails_into_error_and_start_boots_again() {
    assert_failpoints();
    let mut d = Daemon::start();
    forked_vm(&d);
    let src_memory = sha256(&dir_of(&d, "src").join("memory"));
    arm(&mut d, "state-saving=pause:kid");

    let mut cmd = background(&d, &["standby", "kid"]);
    wait_paused(&d, "state-saving", &mut cmd);
    kill_vm(&d, "kid");
    release(&d, "state-saving");
    let (ok, err) = finish(cmd);

    assert!(!ok);
    assert!(err.contains("exited while its state was saved"), "{err}");
    d.wait_state("kid", "error", HANG);
    assert_consistent(&d);
    assert_eq!(sha256(&dir_of(&d, "src").join("memory")), src_memory);
    d.restart_with_env(&[]);
    d.ok(&["start", "kid"]);
    assert_eq!(d.sh("kid", "cat /root/before"), "kept\n");
    assert_consistent(&d);
}

#[test]
fn standby_with_daemon_and_qemu_killed_mid_save_reports_error_and_start_boots_again() {
    assert_failpoints();
    let mut d = Daemon::start();
    running_vm(&d, "v");
    let dir = dir_of(&d, "v");
    crash_during(&mut d, "state-saving=crash:v", &["standby", "v"]);
    kill_vm_in(&dir, "v");
    d.restart_with_env(&[]);

    let info = d.inspect("v");
    assert_eq!(info["state"], "error");
    let reason = info["error"].as_str().unwrap();
    assert!(reason.contains("exited during a standby"), "{reason}");
    assert_consistent(&d);
    d.ok(&["start", "v"]);
    assert_eq!(d.sh("v", "cat /root/before"), "kept\n");
    assert_consistent(&d);
}

#[test]
fn restore_daemon_killed_after_the_guest_resumed_adopts_the_running_vm() {
    assert_failpoints();
    let mut d = Daemon::start();
    let pid = running_vm(&d, "v");
    d.ok(&["standby", "v"]);
    crash_during(&mut d, "vm-started=crash:v", &["restore", "v"]);
    d.restart_with_env(&[]);

    assert_eq!(d.state("v"), "running");
    assert_consistent(&d);
    assert_counts_on(&d, "v");
    assert_eq!(d.sh("v", "cat /run/counter.pid").trim(), pid);
    d.ok(&["standby", "v"]);
    d.ok(&["restore", "v"]);
    assert_counts_on(&d, "v");
}

#[test]
fn restore_daemon_killed_before_ready_keeps_the_vm_running() {
    assert_failpoints();
    let mut d = Daemon::start();
    let pid = running_vm(&d, "v");
    d.ok(&["standby", "v"]);
    crash_during(&mut d, "boot-ready=crash:v", &["restore", "v"]);
    d.restart_with_env(&[]);

    assert_eq!(d.state("v"), "running");
    assert_consistent(&d);
    assert_counts_on(&d, "v");
    assert_eq!(d.sh("v", "cat /run/counter.pid").trim(), pid);
}

#[test]
fn restore_with_qemu_killed_after_the_load_fails_into_error_and_start_boots_again() {
    assert_failpoints();
    let mut d = Daemon::start();
    running_vm(&d, "v");
    d.ok(&["standby", "v"]);
    arm(&mut d, "vm-started=pause:v");

    let mut cmd = background(&d, &["restore", "v"]);
    wait_paused(&d, "vm-started", &mut cmd);
    kill_vm(&d, "v");
    release(&d, "vm-started");
    let (ok, err) = finish(cmd);

    assert!(!ok);
    assert!(err.contains("exited"), "{err}");
    assert_eq!(d.state("v"), "error");
    assert_consistent(&d);
    d.restart_with_env(&[]);
    d.ok(&["start", "v"]);
    assert_eq!(d.sh("v", "cat /root/before"), "kept\n");
    assert_consistent(&d);
}

#[test]
fn snapshot_daemon_killed_while_the_source_is_paused_resumes_it() {
    assert_failpoints();
    let mut d = Daemon::start();
    let pid = running_vm(&d, "src");
    crash_during(
        &mut d,
        "capture-paused=crash:src",
        &["snapshot", "create", "src", "--name", "snap"],
    );
    d.restart_with_env(&[]);

    assert_eq!(d.json(&["snapshot", "ls"]).as_array().unwrap().len(), 0);
    assert_eq!(entries(&d.data_dir.join("snapshots")).len(), 0);
    assert_eq!(d.state("src"), "running");
    assert_consistent(&d);
    assert_counts_on(&d, "src");
    assert_eq!(d.sh("src", "cat /run/counter.pid").trim(), pid);
}

#[test]
fn snapshot_of_a_fork_daemon_killed_while_its_ram_is_saved_resumes_it() {
    assert_failpoints();
    let mut d = Daemon::start();
    let (pid, sum) = forked_vm(&d);
    crash_during(
        &mut d,
        "state-saving=crash:kid",
        &["snapshot", "create", "kid", "--name", "snap"],
    );
    d.restart_with_env(&[]);

    assert_eq!(d.json(&["snapshot", "ls"]).as_array().unwrap().len(), 0);
    assert_eq!(entries(&d.data_dir.join("snapshots")).len(), 0);
    assert_eq!(d.state("kid"), "running");
    assert_consistent(&d);
    assert_counts_on(&d, "kid");
    assert_eq!(d.sh("kid", "cat /run/counter.pid").trim(), pid);
    d.ok(&["snapshot", "create", "kid", "--name", "snap"]);
    d.ok(&["fork", "--snapshot", "snap", "--name", "kid2"]);
    assert_eq!(d.sh("kid2", "md5sum < /run/big"), sum);
}

#[test]
fn snapshot_with_qemu_killed_while_paused_makes_none_and_the_source_reports_error() {
    assert_failpoints();
    let mut d = Daemon::start();
    running_vm(&d, "src");
    arm(&mut d, "capture-paused=pause:src");

    let mut cmd = background(&d, &["snapshot", "create", "src", "--name", "snap"]);
    wait_paused(&d, "capture-paused", &mut cmd);
    kill_vm(&d, "src");
    release(&d, "capture-paused");
    let (ok, err) = finish(cmd);

    assert!(!ok, "{err}");
    assert_eq!(d.json(&["snapshot", "ls"]).as_array().unwrap().len(), 0);
    assert_eq!(entries(&d.data_dir.join("snapshots")).len(), 0);
    d.wait_state("src", "error", HANG);
    assert_consistent(&d);
    d.restart_with_env(&[]);
    d.ok(&["start", "src"]);
    assert_eq!(d.sh("src", "cat /root/before"), "kept\n");
}

#[test]
fn snapshot_of_a_standby_source_daemon_killed_with_its_memory_linked_makes_none() {
    assert_failpoints();
    let mut d = Daemon::start();
    let pid = running_vm(&d, "src");
    d.ok(&["standby", "src"]);
    let dir = dir_of(&d, "src");
    let (memory, state) = (inode(&dir.join("memory")), sha256(&dir.join("vmstate")));
    let memory_sum = sha256(&dir.join("memory"));
    crash_during(
        &mut d,
        "snapshot-captured=crash:snap",
        &["snapshot", "create", "src", "--name", "snap"],
    );
    assert_eq!(
        inode(&dir.join("memory")).1,
        2,
        "the crash came with the link made"
    );
    d.restart_with_env(&[]);

    assert_eq!(d.json(&["snapshot", "ls"]).as_array().unwrap().len(), 0);
    assert_eq!(entries(&d.data_dir.join("snapshots")).len(), 0);
    assert_eq!(
        inode(&dir.join("memory")),
        memory,
        "same inode, one link again"
    );
    assert_eq!(sha256(&dir.join("memory")), memory_sum);
    assert_eq!(sha256(&dir.join("vmstate")), state);
    assert_eq!(d.state("src"), "standby");
    assert_consistent(&d);
    d.ok(&["restore", "src"]);
    assert_counts_on(&d, "src");
    assert_eq!(d.sh("src", "cat /run/counter.pid").trim(), pid);
}

#[test]
fn stopped_snapshot_daemon_killed_while_the_source_is_paused_resumes_it() {
    assert_failpoints();
    let mut d = Daemon::start();
    let pid = running_vm(&d, "src");
    crash_during(
        &mut d,
        "capture-paused=crash:src",
        &[
            "snapshot", "create", "src", "--name", "cold", "--kind", "stopped",
        ],
    );
    d.restart_with_env(&[]);

    assert_eq!(d.json(&["snapshot", "ls"]).as_array().unwrap().len(), 0);
    assert_eq!(entries(&d.data_dir.join("snapshots")).len(), 0);
    assert_eq!(d.state("src"), "running");
    assert_consistent(&d);
    assert_counts_on(&d, "src");
    assert_eq!(d.sh("src", "cat /run/counter.pid").trim(), pid);
    d.ok(&[
        "snapshot", "create", "src", "--name", "cold", "--kind", "stopped",
    ]);
}

/// A snapshot `zs` of a parked `z` (with `/run/m` in RAM) whose zstd
/// compression crashes the daemon at `point`; the daemon is restarted.
/// Returns the snapshot's directory.
fn compression_crash(d: &mut Daemon, point: &str) -> PathBuf {
    d.ok(&["run", "--name", "z"]);
    d.sh("z", "echo zdata > /run/m");
    d.ok(&["standby", "z"]);
    arm(d, &format!("{point}=crash"));

    let _ = d.tine(&[
        "snapshot",
        "create",
        "z",
        "--name",
        "zs",
        "--compress",
        "zstd:3",
    ]);
    d.wait_daemon_exit();
    let dirs = entries(&d.data_dir.join("snapshots"));
    assert_eq!(dirs.len(), 1, "the snapshot was stored before compressing");
    let record = std::fs::read_to_string(dirs[0].join("snapshot.json")).unwrap();
    assert!(record.contains("\"compressing\""), "{record}");
    d.restart_with_env(&[]);
    dirs[0].clone()
}

#[test]
fn compression_daemon_killed_midway_leaves_the_snapshot_uncompressed_and_usable() {
    assert_failpoints();
    let mut d = Daemon::start();

    let dir = compression_crash(&mut d, "compress-writing");

    let info = d.json(&["snapshot", "inspect", "zs"]);
    assert_eq!(info["compression"]["state"], "none", "{info:#}");
    let mut files: Vec<_> = entries(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["memory", "overlay.qcow2", "snapshot.json", "vmstate"]
    );
    d.ok(&["fork", "--snapshot", "zs", "--name", "zf"]);
    assert_eq!(d.sh("zf", "cat /run/m"), "zdata\n");
    d.ok(&["snapshot", "restore", "zs", "--into", "zr"]);
    d.ok(&["start", "zr"]);
    assert_eq!(d.sh("zr", "cat /run/m"), "zdata\n");
    assert_consistent(&d);
}

#[test]
fn compression_daemon_killed_after_the_compressed_file_is_durable_completes_it() {
    assert_failpoints();
    let mut d = Daemon::start();

    let dir = compression_crash(&mut d, "compress-done");

    let info = d.json(&["snapshot", "inspect", "zs"]);
    let c = &info["compression"];
    assert_eq!(c["state"], "compressed", "{info:#}");
    assert!(c["compressed_bytes"].as_u64().unwrap() < c["raw_bytes"].as_u64().unwrap());
    assert!(
        !dir.join("memory").exists(),
        "only the compressed file is kept"
    );
    d.ok(&["snapshot", "restore", "zs", "--into", "zr"]);
    d.ok(&["start", "zr"]);
    assert_eq!(d.sh("zr", "cat /run/m"), "zdata\n");
    d.ok(&["fork", "--snapshot", "zs", "--name", "zf"]);
    assert_eq!(d.sh("zf", "cat /run/m"), "zdata\n");
    assert_consistent(&d);
}

#[test]
fn fork_from_standby_with_the_fork_vm_killed_leaves_no_fork_and_the_source_untouched() {
    assert_failpoints();
    let mut d = Daemon::start();
    let pid = running_vm(&d, "src");
    d.ok(&["standby", "src"]);
    let dir = dir_of(&d, "src");
    let (memory, state) = (inode(&dir.join("memory")), sha256(&dir.join("vmstate")));
    let memory_sum = sha256(&dir.join("memory"));
    arm(&mut d, "vm-started=pause:kid");

    let mut cmd = background(&d, &["fork", "src", "--name", "kid"]);
    wait_paused(&d, "vm-started", &mut cmd);
    kill_vm(&d, "kid");
    release(&d, "vm-started");
    let (ok, err) = finish(cmd);

    assert!(!ok, "{err}");
    assert_eq!(names(&d), vec!["src".to_string()]);
    assert_eq!(inode(&dir.join("memory")), memory, "same inode, one link");
    assert_eq!(sha256(&dir.join("memory")), memory_sum);
    assert_eq!(sha256(&dir.join("vmstate")), state);
    assert_consistent(&d);
    d.restart_with_env(&[]);
    d.ok(&["restore", "src"]);
    assert_counts_on(&d, "src");
    assert_eq!(d.sh("src", "cat /run/counter.pid").trim(), pid);
}

#[test]
fn fork_from_running_daemon_killed_while_the_source_is_paused_resumes_it() {
    assert_failpoints();
    let mut d = Daemon::start();
    let pid = running_vm(&d, "src");
    crash_during(
        &mut d,
        "capture-paused=crash:src",
        &["fork", "src", "--from-running", "--name", "kid"],
    );
    d.restart_with_env(&[]);

    assert_eq!(names(&d), vec!["src".to_string()]);
    assert_eq!(d.state("src"), "running");
    assert_consistent(&d);
    assert_counts_on(&d, "src");
    assert_eq!(d.sh("src", "cat /run/counter.pid").trim(), pid);
}

#[test]
fn fork_from_running_with_the_source_vm_killed_while_paused_makes_no_fork() {
    assert_failpoints();
    let mut d = Daemon::start();
    running_vm(&d, "src");
    arm(&mut d, "capture-paused=pause:src");

    let mut cmd = background(&d, &["fork", "src", "--from-running", "--name", "kid"]);
    wait_paused(&d, "capture-paused", &mut cmd);
    kill_vm(&d, "src");
    release(&d, "capture-paused");
    let (ok, err) = finish(cmd);

    assert!(!ok, "{err}");
    assert_eq!(names(&d), vec!["src".to_string()]);
    d.wait_state("src", "error", HANG);
    assert_consistent(&d);
    d.restart_with_env(&[]);
    d.ok(&["start", "src"]);
    assert_eq!(d.sh("src", "cat /root/before"), "kept\n");
}

#[test]
fn fork_from_running_daemon_killed_after_the_fork_vm_started_removes_the_fork_and_its_vm() {
    assert_failpoints();
    let mut d = Daemon::start();
    let pid = running_vm(&d, "src");
    crash_during(
        &mut d,
        "vm-started=crash:kid",
        &["fork", "src", "--from-running", "--name", "kid"],
    );
    d.restart_with_env(&[]);

    assert_eq!(names(&d), vec!["src".to_string()]);
    assert_consistent(&d);
    assert_counts_on(&d, "src");
    assert_eq!(d.sh("src", "cat /run/counter.pid").trim(), pid);
    d.ok(&["fork", "src", "--from-running", "--name", "kid"]);
    assert_eq!(d.sh("kid", "cat /root/before"), "kept\n");
}

#[test]
fn restoring_a_source_while_a_fork_copies_its_files_waits_and_both_stay_intact() {
    assert_failpoints();
    let mut d = Daemon::start();
    let pid = running_vm(&d, "src");
    d.ok(&["standby", "src"]);
    arm(&mut d, "fork-name=pause:kid");

    let mut fork = background(&d, &["fork", "src", "--name", "kid"]);
    wait_paused(&d, "fork-name", &mut fork);
    let mut restore = background(&d, &["restore", "src"]);
    let deadline = Instant::now() + HANG;
    while restore.try_wait().unwrap().is_none() && !d.log().contains("waiting for forks being made")
    {
        assert!(
            Instant::now() < deadline,
            "restore neither waited nor finished:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    release(&d, "fork-name");
    let (forked, fork_err) = finish(fork);
    let (restored, restore_err) = finish(restore);

    assert!(forked, "{fork_err}");
    assert!(restored, "{restore_err}");
    assert_eq!(d.sh("kid", "cat /root/before"), "kept\n");
    assert_eq!(d.sh("kid", "cat /run/counter.pid").trim(), pid);
    assert_counts_on(&d, "src");
    assert_eq!(d.sh("src", "cat /run/counter.pid").trim(), pid);
    assert_consistent(&d);
}
