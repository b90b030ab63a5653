//! Bad input gets a clear error and changes nothing.

mod common;

use common::Daemon;

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

    assert_eq!(d.json(&["ps"]), before);
    let dirs = std::fs::read_dir(d.data_dir.join("instances"))
        .unwrap()
        .count();
    assert_eq!(dirs, 1, "no half-made instance directory is left behind");
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
