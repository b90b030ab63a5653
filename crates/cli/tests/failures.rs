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
    let failed: Vec<_> = report["forks"].as_array().unwrap().iter().filter(|f| !f["error"].is_null()).collect();
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
