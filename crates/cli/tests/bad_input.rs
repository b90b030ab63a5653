//! Bad input gets a clear error and changes nothing.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{kill9, names, Daemon};
use serde_json::Value;

#[test]
fn malformed_out_of_range_and_unknown_requests_are_refused_without_side_effects() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "ok"]);
    let before = d.json(&["ps"]);

    let cases: &[(&[&str], &str)] = &[
        (&["run", "--name", "../etc"], "invalid name"),
        (&["run", "--name", "Upper"], "invalid name"),
        (&["run", "--name", "ok"], "already exists"),
        (&["run", "--memory", "1M"], "out of range"),
        (&["run", "--memory", "lots"], "invalid memory size"),
        (&["run", "--vcpus", "0"], "out of range"),
        (&["run", "--image", "nope"], "image \"nope\" not found"),
        (&["run", "--accel", "hvf"], "unknown accelerator"),
        (
            &["exec", "missing", "--", "true"],
            "no instance named \"missing\"",
        ),
        (&["stop", "missing"], "no instance named"),
        (&["rm", "missing"], "no instance named"),
        (&["rm", "ok"], "stop it first, or use rm -f"),
        (&["start", "ok"], "cannot start an instance that is running"),
        (
            &["restore", "ok"],
            "cannot restore an instance that is running",
        ),
    ];
    for (args, want) in cases {
        let err = d.fails(args);
        assert!(
            err.contains(want),
            "tine {args:?}: expected {want:?} in {err:?}"
        );
    }
    let missing = d.fails(&["run", "--image", "nope"]);
    let how = format!(
        "build it with: sudo guest/build.sh {}/nope",
        common::images_dir().display()
    );
    assert!(missing.contains(&how), "{missing}");

    assert_eq!(d.json(&["ps"]), before);
    let dirs = std::fs::read_dir(d.data_dir.join("instances"))
        .unwrap()
        .count();
    assert_eq!(dirs, 1, "no half-made instance directory is left behind");
}

/// One HTTP/1.1 request on the daemon's Unix socket: status and JSON body.
fn http(d: &Daemon, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = UnixStream::connect(d.data_dir.join("tine.sock")).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: tine\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn requests_illegal_in_the_current_state_are_http_409_and_change_nothing() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "up"]);
    d.ok(&["run", "--name", "down"]);
    d.ok(&["stop", "down"]);
    d.ok(&["run", "--name", "dead"]);
    kill9(d.inspect("dead")["pid"].as_i64().unwrap() as i32);
    d.wait_state("dead", "error", Duration::from_secs(30));
    d.ok(&[
        "snapshot", "create", "down", "--name", "disk", "--kind", "stopped",
    ]);
    let (ps, snapshots) = (d.json(&["ps"]), d.json(&["snapshot", "ls"]));

    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "POST",
            "/v1/instances/down/exec",
            r#"{"argv":["true"]}"#,
            "start it first",
        ),
        ("POST", "/v1/instances/down/stop", "", "cannot stop"),
        ("POST", "/v1/instances/down/standby", "", "cannot standby"),
        ("POST", "/v1/instances/down/pause", "", "cannot pause"),
        ("POST", "/v1/instances/down/restore", "", "cannot restore"),
        (
            "POST",
            "/v1/snapshots",
            r#"{"instance":"down","name":"x"}"#,
            "--kind stopped",
        ),
        (
            "POST",
            "/v1/instances/down/fork",
            r#"{"source":"down","name":"f"}"#,
            "fork a standby",
        ),
        ("POST", "/v1/instances/up/start", "", "cannot start"),
        ("POST", "/v1/instances/up/resume", "", "cannot resume"),
        ("POST", "/v1/instances/up/restore", "", "cannot restore"),
        (
            "DELETE",
            "/v1/instances/up",
            "",
            "stop it first, or use rm -f",
        ),
        (
            "POST",
            "/v1/instances/up/fork",
            r#"{"source":"up","name":"f"}"#,
            "--from-running",
        ),
        (
            "POST",
            "/v1/templates",
            r#"{"instance":"up"}"#,
            "only a standby instance",
        ),
        (
            "POST",
            "/v1/snapshots/disk/restore",
            r#"{"into":"up"}"#,
            "stop it first",
        ),
        (
            "POST",
            "/v1/instances/dead/exec",
            r#"{"argv":["true"]}"#,
            "start it first",
        ),
        ("POST", "/v1/instances/dead/standby", "", "cannot standby"),
        (
            "POST",
            "/v1/instances/dead/fork",
            r#"{"source":"dead","name":"f","from_running":true}"#,
            "fork a standby",
        ),
        (
            "POST",
            "/v1/snapshots",
            r#"{"instance":"dead","name":"y"}"#,
            "--kind stopped",
        ),
        (
            "POST",
            "/v1/templates",
            r#"{"instance":"dead"}"#,
            "only a standby instance",
        ),
    ];
    for (method, path, body, want) in cases {
        let (status, answer) = http(&d, method, path, body);

        assert_eq!(status, 409, "{method} {path}: {answer}");
        assert_eq!(answer["kind"], "invalid_state", "{method} {path}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains(want),
            "{method} {path}: {want:?} not in {error:?}"
        );
    }

    assert_eq!(d.json(&["ps"]), ps);
    assert_eq!(d.json(&["snapshot", "ls"]), snapshots);
    assert_eq!(d.json(&["template", "ls"]), serde_json::json!([]));
    assert_eq!(common::instance_dirs(&d), 3);
    assert_eq!(d.sh("up", "echo still up"), "still up\n");
}

#[test]
fn stopped_instance_refuses_exec_with_a_hint() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "s"]);
    d.ok(&["stop", "s"]);

    let err = d.fails(&["exec", "s", "--", "true"]);

    assert!(err.contains("start it first"), "{err}");
    assert_eq!(d.state("s"), "stopped");
}

#[test]
fn cli_without_a_daemon_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tine"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("ps")
        .output()
        .unwrap();

    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the tine daemon") && err.contains("tine serve"),
        "{err}"
    );
}

fn tine() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_tine"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn tcp_listener_requires_a_token_and_refuses_a_wrong_one_without_leaking() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let no_token = tine()
        .args(["serve", "--listen-tcp", &addr, "--data-dir"])
        .arg(dir.path())
        .env_remove("TINE_TOKEN")
        .output()
        .unwrap();
    assert!(!no_token.status.success());
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("requires a token"));

    let mut daemon = tine()
        .args([
            "serve",
            "--listen-tcp",
            &addr,
            "--token",
            "s3cret",
            "--network",
            "none",
            "--data-dir",
        ])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let remote = |token: &str, args: &[&str]| {
        tine()
            .args(["--host", &addr, "--token", token])
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !remote("s3cret", &["ps"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon did not come up on TCP"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let wrong_existing = remote("nope", &["inspect", "x"]);
    let wrong_list = remote("nope", &["ps"]);
    let right_missing = remote("s3cret", &["inspect", "x"]);
    let _ = daemon.kill();
    let _ = daemon.wait();

    let e1 = String::from_utf8_lossy(&wrong_existing.stderr).to_string();
    let e2 = String::from_utf8_lossy(&wrong_list.stderr).to_string();
    assert!(
        e1.contains("bearer token") && e2.contains("bearer token"),
        "{e1} / {e2}"
    );
    assert_eq!(e1, e2, "a 401 says nothing about what exists");
    assert!(String::from_utf8_lossy(&right_missing.stderr).contains("no instance named"));
}

#[test]
fn missing_qemu_binary_is_named_with_how_to_get_it() {
    let dir = tempfile::Builder::new()
        .prefix("tine-q")
        .tempdir_in("/tmp")
        .unwrap();
    let mut daemon = tine()
        .args([
            "serve",
            "--qemu",
            "/nonexistent/qemu-system-x86_64",
            "--network",
            "none",
            "--images-dir",
        ])
        .arg(common::images_dir())
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| {
        tine()
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cli(&["ps"]).status.success() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let out = cli(&["run", "--name", "x"]);
    let listed = cli(&["--json", "ps"]);
    let _ = daemon.kill();
    let _ = daemon.wait();

    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("qemu-system-x86_64 not found")
            && err.contains("apt-get install qemu-system-x86"),
        "{err}"
    );
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
}

#[test]
fn a_second_daemon_on_a_data_dir_in_use_is_refused_and_changes_nothing() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "v"]);
    let second = tine()
        .args(["serve", "--network", "none", "--data-dir"])
        .arg(&d.data_dir)
        .arg("--images-dir")
        .arg(common::images_dir())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another tine daemon (pid") && err.contains("use another --data-dir"),
        "{err}"
    );
    // The first daemon and its VM carry on.
    assert_eq!(d.sh("v", "echo up"), "up\n");
    assert_eq!(names(&d), vec!["v".to_string()]);
}
