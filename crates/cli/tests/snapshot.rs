//! Snapshots and templates with real guests.

mod common;

use std::path::PathBuf;

use common::{assert_counts_on, dir_of, inode, sha256, start_counter, Daemon};

fn snap_json(d: &Daemon, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["snapshot"];
    a.extend_from_slice(args);
    d.json(&a)
}

#[test]
fn snapshot_survives_its_source_and_restores_into_a_new_instance() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "orig"]);
    d.sh(
        "orig",
        "echo in-memory > /run/m; echo on-disk > /root/d; sync",
    );
    snap_json(&d, &["create", "orig", "--name", "s"]);

    d.ok(&["rm", "-f", "orig"]);
    d.ok(&["snapshot", "restore", "s", "--into", "back"]);
    assert_eq!(d.state("back"), "standby");
    d.ok(&["start", "back"]);

    assert_eq!(d.sh("back", "cat /run/m /root/d"), "in-memory\non-disk\n");
}

#[test]
fn snapshot_restored_into_an_existing_instance_replaces_its_memory_and_disk() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "a"]);
    let pid = start_counter(&d, "a");
    d.sh("a", "echo snap > /run/m; echo snap > /root/d; sync");
    let info = snap_json(&d, &["create", "a", "--name", "s"]);
    let snap_memory = PathBuf::from(info["dir"].as_str().unwrap()).join("memory");
    let snap_sum = sha256(&snap_memory);
    d.sh(
        "a",
        "echo later > /run/m; echo later > /root/d; echo new > /root/new; sync",
    );

    let err = d.fails(&["snapshot", "restore", "s", "--into", "a"]);
    assert!(
        err.contains("cannot restore a snapshot into an instance that is running"),
        "{err}"
    );
    assert_eq!(
        d.sh("a", "cat /run/m"),
        "later\n",
        "a running instance is left alone"
    );
    d.ok(&["standby", "a"]);
    d.ok(&["snapshot", "restore", "s", "--into", "a"]);
    assert_eq!(d.state("a"), "standby");
    d.ok(&["start", "a"]);

    assert_eq!(d.sh("a", "cat /run/m /root/d"), "snap\nsnap\n");
    assert_eq!(
        d.sh("a", "test -e /root/new && echo kept || echo gone"),
        "gone\n"
    );
    assert_eq!(d.sh("a", "cat /run/counter.pid").trim(), pid);
    assert_counts_on(&d, "a");
    d.sh(
        "a",
        "dd if=/dev/urandom of=/run/x bs=1M count=8 2>/dev/null",
    );
    assert_eq!(
        sha256(&snap_memory),
        snap_sum,
        "the snapshot's memory file is not written"
    );
}

#[test]
fn stopped_snapshot_keeps_only_the_disk_and_boots_fresh_when_forked_or_restored() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "cold"]);
    d.sh(
        "cold",
        "echo in-memory > /run/m; echo on-disk > /root/d; sync",
    );

    let info = snap_json(&d, &["create", "cold", "--name", "cs", "--kind", "stopped"]);

    assert_eq!(info["kind"], "stopped");
    assert_eq!(d.state("cold"), "running");
    let mut files: Vec<_> = std::fs::read_dir(info["dir"].as_str().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["overlay.qcow2", "snapshot.json"]);
    d.ok(&["snapshot", "restore", "cs", "--into", "back"]);
    assert_eq!(d.state("back"), "stopped");
    d.ok(&["start", "back"]);
    d.ok(&["fork", "--snapshot", "cs", "--name", "kid"]);
    for name in ["back", "kid"] {
        assert_eq!(d.sh(name, "cat /root/d"), "on-disk\n", "{name}");
        assert_eq!(
            d.sh(name, "test -e /run/m && echo kept || echo gone"),
            "gone\n",
            "{name} booted fresh"
        );
    }
    assert_eq!(d.sh("cold", "cat /run/m"), "in-memory\n");
}

#[test]
fn snapshot_of_a_running_instance_pauses_it_briefly_and_it_keeps_running() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "busy"]);
    d.sh("busy", "echo before > /run/m");

    snap_json(&d, &["create", "busy", "--name", "live"]);
    d.sh("busy", "echo after > /run/m");

    assert_eq!(d.state("busy"), "running");
    d.ok(&["fork", "--snapshot", "live", "--name", "lf"]);
    assert_eq!(d.sh("lf", "cat /run/m"), "before\n");
    assert_eq!(d.sh("busy", "cat /run/m"), "after\n");
}

#[test]
fn compressed_snapshot_round_trips_and_forks_from_a_compressed_only_file() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "z"]);
    d.sh("z", "echo zdata > /run/m");
    d.ok(&["standby", "z"]);

    snap_json(&d, &["create", "z", "--name", "zs", "--compress", "zstd:3"]);
    let info = snap_json(&d, &["inspect", "zs", "--wait"]);

    assert_eq!(info["compression"]["state"], "compressed");
    assert!(
        info["compression"]["compressed_bytes"].as_u64().unwrap()
            < info["compression"]["raw_bytes"].as_u64().unwrap()
    );
    let dir = std::path::PathBuf::from(info["dir"].as_str().unwrap());
    assert!(
        !dir.join("memory").exists(),
        "only the compressed file is kept"
    );
    d.ok(&["fork", "--snapshot", "zs", "--name", "zf"]);
    assert_eq!(d.sh("zf", "cat /run/m"), "zdata\n");
    assert!(
        dir.join("memory").exists(),
        "decompressed into a real file for the fork"
    );
}

#[test]
fn restore_during_compression_cancels_it_and_uses_the_raw_file() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "c", "--memory", "1G"]);
    d.sh(
        "c",
        "dd if=/dev/urandom of=/run/big bs=1M count=200 2>/dev/null; echo ok > /run/m",
    );
    d.ok(&["standby", "c"]);

    snap_json(
        &d,
        &["create", "c", "--name", "cs", "--compress", "zstd:19"],
    );
    d.ok(&["snapshot", "restore", "cs", "--into", "cr"]);
    d.ok(&["start", "cr"]);

    assert_eq!(d.sh("cr", "cat /run/m"), "ok\n");
    let info = snap_json(&d, &["inspect", "cs", "--wait"]);
    assert_eq!(
        info["compression"]["state"], "none",
        "the compression was cancelled"
    );
}

#[test]
fn snapshot_files_are_never_written_by_restores_of_its_source() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "w"]);
    d.ok(&["standby", "w"]);
    let info = snap_json(&d, &["create", "w", "--name", "ws"]);
    let snap_mem = std::path::PathBuf::from(info["dir"].as_str().unwrap()).join("memory");
    let (ino, _) = inode(&snap_mem);
    let sha = sha256(&snap_mem);

    d.ok(&["restore", "w"]);
    d.sh(
        "w",
        "dd if=/dev/urandom of=/run/x bs=1M count=8 2>/dev/null",
    );

    assert_ne!(
        inode(&dir_of(&d, "w").join("memory")).0,
        ino,
        "the source got a private copy"
    );
    assert_eq!(inode(&snap_mem).0, ino);
    assert_eq!(sha256(&snap_mem), sha);
}

#[test]
fn template_counts_forks_refuses_removal_while_they_live_then_allows_it() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "tpl"]);
    d.sh("tpl", "echo template > /run/t");
    d.ok(&["standby", "tpl"]);

    d.ok(&["template", "promote", "tpl"]);
    assert!(
        d.tine(&["inspect", "tpl"]).status.code() != Some(0),
        "the instance became the template"
    );
    let report = d.json(&["fork", "--template", "tpl", "--name", "t", "--count", "5"]);
    assert_eq!(report["ok"], 5);
    assert_eq!(d.json(&["template", "inspect", "tpl"])["forks"], 5);
    assert_eq!(d.sh("t-3", "cat /run/t"), "template\n");

    let err = d.fails(&["template", "rm", "tpl"]);
    assert!(err.contains("5 live forks"), "{err}");

    d.ok(&["rm", "-f", "t-1", "t-2", "t-3", "t-4"]);
    assert_eq!(d.json(&["template", "inspect", "tpl"])["forks"], 1);
    d.ok(&["rm", "-f", "t-5"]);
    d.ok(&["template", "rm", "tpl"]);
    assert_eq!(d.json(&["template", "ls"]).as_array().unwrap().len(), 0);
}

#[test]
fn bad_snapshot_requests_are_refused() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "b"]);
    snap_json(&d, &["create", "b", "--name", "dup"]);

    let cases: &[(&[&str], &str)] = &[
        (
            &["snapshot", "create", "b", "--name", "dup"],
            "already exists",
        ),
        (
            &["snapshot", "create", "b", "--name", "../x"],
            "invalid name",
        ),
        (
            &["snapshot", "create", "nope", "--name", "x"],
            "no instance named",
        ),
        (
            &[
                "snapshot",
                "create",
                "b",
                "--name",
                "x",
                "--compress",
                "zstd:99",
            ],
            "out of range",
        ),
        (
            &[
                "snapshot",
                "create",
                "b",
                "--name",
                "x",
                "--compress",
                "gzip",
            ],
            "unknown compression",
        ),
        (&["snapshot", "rm", "missing"], "snapshot missing"),
        (
            &["fork", "--snapshot", "missing", "--name", "x"],
            "snapshot missing",
        ),
        (&["template", "promote", "b"], "only a standby instance"),
    ];
    for (args, want) in cases {
        let err = d.fails(args);
        assert!(
            err.contains(want),
            "tine {args:?}: expected {want:?} in {err:?}"
        );
    }
    assert_eq!(d.json(&["snapshot", "ls"]).as_array().unwrap().len(), 1);
}

#[test]
fn fork_of_a_fork_through_snapshots_survives_deleting_everything_before_it() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "g0"]);
    d.sh("g0", "echo g0 > /run/l");
    snap_json(&d, &["create", "g0", "--name", "s0"]);
    d.ok(&["fork", "--snapshot", "s0", "--name", "g1"]);
    d.sh("g1", "echo g1 >> /run/l");
    snap_json(&d, &["create", "g1", "--name", "s1"]);

    d.ok(&["rm", "-f", "g0"]);
    d.ok(&["snapshot", "rm", "s0"]);
    d.ok(&["rm", "-f", "g1"]);
    d.ok(&["fork", "--snapshot", "s1", "--name", "g2"]);
    d.sh("g2", "echo g2 >> /run/l");
    snap_json(&d, &["create", "g2", "--name", "s2"]);
    d.ok(&["snapshot", "rm", "s1"]);
    d.ok(&["rm", "-f", "g2"]);
    d.ok(&["fork", "--snapshot", "s2", "--name", "g3"]);
    d.sh("g3", "echo g3 >> /run/l");

    assert_eq!(d.sh("g3", "cat /run/l"), "g0\ng1\ng2\ng3\n");
}
