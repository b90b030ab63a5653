//! Failed and interrupted forks leave no residue (test-only failpoints).

mod common;

use common::{assert_failpoints, instance_dirs, names, qemu_processes, Daemon};

#[test]
fn a_burst_of_ten_with_one_injected_failure_makes_nine_forks_and_no_residue() {
    assert_failpoints();
    let mut d = Daemon::start();
    d.ok(&["run", "--name", "src"]);
    d.ok(&["standby", "src"]);
    d.restart_with_env(&[("TINE_FAILPOINTS", "fork-name=error:b-7")]);

    let out = d.tine(&["--json", "fork", "src", "--name", "b", "--count", "10"]);

    assert!(!out.status.success(), "one failure makes the command fail");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], 9);
    assert_eq!(report["failed"], 1);
    let failed: Vec<_> = report["forks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["error"].is_null())
        .collect();
    assert_eq!(failed[0]["name"], "b-7");
    assert!(failed[0]["error"].as_str().unwrap().contains("failpoint"));
    assert!(!names(&d).contains(&"b-7".to_string()));
    assert_eq!(instance_dirs(&d), 10, "source + 9 forks, nothing of b-7");
    assert_eq!(qemu_processes(&d), 9);
}

#[test]
fn a_failed_template_fork_leaves_the_count_unchanged() {
    assert_failpoints();
    let mut d = Daemon::start();
    d.ok(&["run", "--name", "tp"]);
    d.ok(&["standby", "tp"]);
    d.ok(&["template", "promote", "tp"]);
    d.ok(&["fork", "--template", "tp", "--name", "ok1"]);
    d.restart_with_env(&[("TINE_FAILPOINTS", "fork-name=error:bad")]);

    let out = d.tine(&["fork", "--template", "tp", "--name", "bad"]);

    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("failpoint fork-name hit"));
    assert_eq!(d.json(&["template", "inspect", "tp"])["forks"], 1);
    assert_eq!(names(&d), vec!["ok1".to_string()]);
}

#[test]
fn a_daemon_killed_mid_fork_leaves_no_half_made_fork_after_restart() {
    assert_failpoints();
    let mut d = Daemon::start();
    d.ok(&["run", "--name", "s"]);
    d.ok(&["standby", "s"]);
    d.restart_with_env(&[("TINE_FAILPOINTS", "fork-name=crash:half")]);

    let _ = d.tine(&["fork", "s", "--name", "half"]);
    d.wait_daemon_exit();
    d.restart_with_env(&[]);

    assert_eq!(names(&d), vec!["s".to_string()]);
    assert_eq!(instance_dirs(&d), 1);
    assert_eq!(qemu_processes(&d), 0);
    d.ok(&["fork", "s", "--name", "half"]);
    assert_eq!(d.sh("half", "echo fine"), "fine\n");
}

#[test]
fn a_daemon_killed_after_the_fork_started_its_vm_cleans_it_up_after_restart() {
    assert_failpoints();
    let mut d = Daemon::start();
    d.ok(&["run", "--name", "s"]);
    d.ok(&["standby", "s"]);
    d.restart_with_env(&[("TINE_FAILPOINTS", "boot-ready=crash:late")]);

    let _ = d.tine(&["fork", "s", "--name", "late"]);
    d.wait_daemon_exit();
    d.restart_with_env(&[]);

    assert_eq!(names(&d), vec!["s".to_string()]);
    assert_eq!(instance_dirs(&d), 1);
    assert_eq!(qemu_processes(&d), 0, "the half-made fork's VM was killed");
}

/// Kill the daemon at `point` during a standby; after a restart the
/// instance is in `want` (the old or the new state) and consistent.
fn standby_crash(point: &str, want: &str) {
    assert_failpoints();
    let mut d = Daemon::start();
    d.ok(&["run", "--name", "v"]);
    let pid = common::start_counter(&d, "v");
    d.restart_with_env(&[("TINE_FAILPOINTS", &format!("{point}=crash:v"))]);

    let _ = d.tine(&["standby", "v"]);
    d.wait_daemon_exit();
    d.restart_with_env(&[]);

    assert_eq!(d.state("v"), want, "{point}");
    if want == "standby" {
        d.ok(&["restore", "v"]);
    }
    common::assert_counts_on(&d, "v");
    assert_eq!(d.sh("v", "cat /run/counter.pid").trim(), pid);
    assert_eq!(qemu_processes(&d), 1);
}

#[test]
fn daemon_killed_after_the_state_save_leaves_the_vm_running() {
    standby_crash("standby-saved", "running");
}

#[test]
fn daemon_killed_after_the_state_is_durable_leaves_the_vm_running() {
    standby_crash("standby-renamed", "running");
}

#[test]
fn daemon_killed_after_qemu_stopped_completes_the_standby() {
    standby_crash("standby-stopped", "standby");
}

#[test]
fn daemon_killed_mid_snapshot_leaves_no_snapshot_and_a_running_source() {
    assert_failpoints();
    let mut d = Daemon::start();
    d.ok(&["run", "--name", "src"]);
    d.restart_with_env(&[("TINE_FAILPOINTS", "snapshot-captured=crash:snap")]);

    let _ = d.tine(&["snapshot", "create", "src", "--name", "snap"]);
    d.wait_daemon_exit();
    d.restart_with_env(&[]);

    assert_eq!(d.json(&["snapshot", "ls"]).as_array().unwrap().len(), 0);
    let leftovers = std::fs::read_dir(d.data_dir.join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0, "the half-made snapshot directory was swept");
    assert_eq!(d.state("src"), "running");
    assert_eq!(d.sh("src", "echo alive"), "alive\n");
    d.ok(&["snapshot", "create", "src", "--name", "snap"]);
}

#[test]
fn corrupt_device_state_or_truncated_memory_is_refused_and_nothing_is_lost() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "c"]);
    d.sh("c", "echo keep > /run/k");
    d.ok(&["standby", "c"]);
    let dir = common::dir_of(&d, "c");
    let state = std::fs::read(dir.join("vmstate")).unwrap();
    let mut bad = state.clone();
    bad[state.len() / 2] ^= 0xff;
    std::fs::write(dir.join("vmstate"), &bad).unwrap();

    let err = d.fails(&["restore", "c"]);
    assert!(err.contains("corrupt or truncated"), "{err}");
    assert_eq!(d.state("c"), "standby");
    let err = d.fails(&["fork", "c", "--name", "cf"]);
    assert!(err.contains("corrupt or truncated"), "{err}");

    std::fs::write(dir.join("vmstate"), &state).unwrap();
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("memory"))
        .unwrap();
    let len = mem.metadata().unwrap().len();
    mem.set_len(len / 2).unwrap();
    let err = d.fails(&["restore", "c"]);
    assert!(err.contains("truncated"), "{err}");
    assert_eq!(d.state("c"), "standby");
}

#[test]
fn a_vm_killed_while_booting_fails_the_run_at_once_and_leaves_nothing() {
    let d = Daemon::start();
    let instances = d.data_dir.join("instances");
    let killer = std::thread::spawn(move || {
        // Kill QEMU once the guest kernel prints (its vCPUs run), long
        // before the guest agent (seconds of boot away) can answer.
        for _ in 0..6000 {
            let pid = std::fs::read_dir(&instances)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    std::fs::metadata(e.path().join("console.log")).is_ok_and(|m| m.len() > 0)
                })
                .find_map(|e| std::fs::read_to_string(e.path().join("qemu.pid")).ok())
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let Some(pid) = pid.filter(|p| common::is_qemu(*p)) {
                common::kill9(pid);
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    });
    let err = d.fails(&["run", "--name", "v"]);
    assert!(killer.join().unwrap(), "QEMU never showed up");
    assert!(
        err.contains("the VM process exited while the guest was booting"),
        "{err}"
    );
    assert!(err.contains("last hypervisor log lines"), "{err}");
    assert!(names(&d).is_empty());
    assert_eq!(instance_dirs(&d), 0);
    assert_eq!(qemu_processes(&d), 0);
}
