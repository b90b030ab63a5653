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
        (&["exec", "missing", "--", "true"], "no instance named \"missing\""),
        (&["stop", "missing"], "no instance named"),
        (&["rm", "missing"], "no instance named"),
        (&["rm", "ok"], "stop it first, or use rm -f"),
        (&["start", "ok"], "cannot start an instance that is running"),
        (&["restore", "ok"], "cannot restore an instance that is running"),
    ];
    for (args, want) in cases {
        let err = d.fails(args);
        assert!(err.contains(want), "tine {args:?}: expected {want:?} in {err:?}");
    }

    assert_eq!(d.json(&["ps"]), before);
    let dirs = std::fs::read_dir(d.data_dir.join("instances")).unwrap().count();
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
    assert!(err.contains("cannot reach the tine daemon") && err.contains("tine serve"), "{err}");
}
