//! The instance lifecycle end to end: real daemon, real CLI, real guests.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{kill9, pid_alive, Daemon};
use serde_json::Value;

#[test]
fn run_exec_stop_start_exec_rm_keeps_the_disk_and_relays_status() {
    let d = Daemon::start();

    let out = d.ok(&["run", "--name", "life"]);
    assert!(
        out.trim().ends_with(" life"),
        "run prints id and name: {out}"
    );
    assert_eq!(d.state("life"), "running");

    let hello = d.tine(&["exec", "life", "--", "echo", "hello"]);
    assert_eq!(String::from_utf8_lossy(&hello.stdout), "hello\n");
    assert!(hello.status.success());

    let failing = d.tine(&["exec", "life", "--", "sh", "-c", "echo oops >&2; exit 7"]);
    assert_eq!(failing.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&failing.stderr), "oops\n");

    d.sh("life", "echo kept > /root/marker");
    d.ok(&["stop", "life"]);
    assert_eq!(d.state("life"), "stopped");
    assert!(d.inspect("life")["pid"].is_null());

    d.ok(&["start", "life"]);
    assert_eq!(d.sh("life", "cat /root/marker"), "kept\n");

    d.ok(&["rm", "-f", "life"]);
    let ps = d.json(&["ps"]);
    assert_eq!(ps.as_array().unwrap().len(), 0);
}

#[test]
fn exec_json_reports_output_and_exit_code() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "j"]);

    let res = d.tine(&[
        "--json",
        "exec",
        "j",
        "--",
        "sh",
        "-c",
        "printf out; exit 3",
    ]);
    assert_eq!(res.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["stdout"], "b3V0"); // base64("out")
}

#[test]
fn daemon_restart_reattaches_to_a_running_vm() {
    let mut d = Daemon::start();
    d.ok(&["run", "--name", "keep"]);
    let pid = d.inspect("keep")["pid"].as_i64().unwrap();

    d.restart();

    assert_eq!(d.state("keep"), "running");
    assert_eq!(d.inspect("keep")["pid"].as_i64().unwrap(), pid);
    assert_eq!(d.sh("keep", "echo still here"), "still here\n");
}

#[test]
fn kill_9_of_qemu_is_detected_and_the_instance_can_start_again() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "victim"]);
    let pid = d.inspect("victim")["pid"].as_i64().unwrap() as i32;

    kill9(pid);

    d.wait_state("victim", "error", Duration::from_secs(10));
    assert!(!pid_alive(pid));
    assert!(d.inspect("victim")["error"]
        .as_str()
        .unwrap()
        .contains("exited unexpectedly"));
    d.ok(&["start", "victim"]);
    assert_eq!(d.sh("victim", "echo back"), "back\n");
}

#[test]
fn a_vm_that_died_while_the_daemon_was_down_is_marked_error() {
    let mut d = Daemon::start();
    d.ok(&["run", "--name", "gone"]);
    let pid = d.inspect("gone")["pid"].as_i64().unwrap() as i32;
    d.stop_daemon();

    kill9(pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(std::time::Instant::now() < deadline, "kill -9 did not take");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.restart();

    assert_eq!(d.state("gone"), "error");
    assert!(d.inspect("gone")["error"]
        .as_str()
        .unwrap()
        .contains("daemon was down"));
}

#[test]
fn paused_vm_resumes_and_answers() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "p"]);

    d.ok(&["pause", "p"]);
    assert_eq!(d.state("p"), "paused");
    let refused = d.fails(&["exec", "p", "--", "true"]);
    assert!(refused.contains("resume it first"), "{refused}");
    d.ok(&["resume", "p"]);

    assert_eq!(d.sh("p", "echo ok"), "ok\n");
}

#[test]
fn logs_show_the_guest_console_and_follow_new_output_until_the_instance_is_removed() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "con"]);
    let booted = "tine-agent: serving on /dev/vport";

    let text = d.ok(&["logs", "con"]);
    let json = d.ok(&["--json", "logs", "con"]);
    let mut follower = d
        .command(&["logs", "-f", "con"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = line_channel(follower.stdout.take().unwrap());
    wait_for_line(&lines, booted);
    d.sh("con", "echo console-marker-$((6*7)) > /dev/ttyS0");
    wait_for_line(&lines, "console-marker-42");
    d.ok(&["rm", "-f", "con"]);
    let status = wait_exit(&mut follower);

    assert!(text.contains(booted), "{text}");
    let json: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        json.iter()
            .any(|v| v["line"].as_str().unwrap().starts_with(booted)),
        "{json:?}"
    );
    assert!(status.success(), "logs -f ended with {status}");
}

#[test]
fn metrics_json_has_every_sample_of_the_prometheus_text() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "m"]);

    let text = d.ok(&["metrics"]);
    let json = d.json(&["metrics"]);

    let samples = json.as_array().unwrap();
    let text_samples = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(samples.len(), text_samples);
    let running = samples
        .iter()
        .find(|s| s["name"] == "tine_instances" && s["labels"]["state"] == "running")
        .unwrap();
    assert_eq!(running["value"], 1);
    assert!(
        text.contains("tine_instances{state=\"running\"} 1"),
        "{text}"
    );
}

/// The lines a child prints, as they come.
fn line_channel(out: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Read lines until one contains `want`; a silent follower fails the test
/// instead of hanging it.
fn wait_for_line(lines: &mpsc::Receiver<String>, want: &str) {
    loop {
        match lines.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line.contains(want) => return,
            Ok(_) => {}
            Err(e) => panic!("no line with {want:?} from logs -f: {e}"),
        }
    }
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("logs -f did not end after its instance was removed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
