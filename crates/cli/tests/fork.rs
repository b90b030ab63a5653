//! Forks with real guests: each continues from the source's instant, shares
//! its memory file inode, and neither sees the others' later writes.

mod common;

use common::{counter, dir_of, inode, sha256, start_counter, Daemon};

fn fork_json(d: &Daemon, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["fork"];
    a.extend_from_slice(args);
    let v = d.json(&a);
    assert_eq!(v["failed"], 0, "fork failed: {v:#}");
    v
}

#[test]
fn forks_of_a_standby_source_continue_its_process_and_share_its_memory_inode() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "src"]);
    let pid = start_counter(&d, "src");
    d.sh("src", "echo disk-data > /root/f && sync");
    d.ok(&["standby", "src"]);
    let src_mem = dir_of(&d, "src").join("memory");
    let (src_ino, _) = inode(&src_mem);
    let src_sha = sha256(&src_mem);

    let report = fork_json(&d, &["src", "--name", "f", "--count", "3"]);

    assert_eq!(report["ok"], 3);
    for f in report["forks"].as_array().unwrap() {
        common::assert_phases_add_up(f, false);
    }
    for f in ["f-1", "f-2", "f-3"] {
        assert_eq!(d.state(f), "running");
        assert_eq!(
            inode(&dir_of(&d, f).join("memory")).0,
            src_ino,
            "{f} links the source inode"
        );
        assert_eq!(d.sh(f, "cat /run/counter.pid").trim(), pid);
        assert!(d
            .sh(f, &format!("kill -0 {pid} && echo alive"))
            .contains("alive"));
        assert!(counter(&d, f) > 0);
        assert_eq!(d.sh(f, "cat /root/f"), "disk-data\n");
    }

    // Each fork writes its own memory and disk; nobody else sees it.
    for f in ["f-1", "f-2", "f-3"] {
        d.sh(f, &format!("echo {f} > /run/mine; echo {f} > /root/mine; dd if=/dev/urandom of=/run/blob bs=1M count=8 2>/dev/null; sync"));
    }
    for f in ["f-1", "f-2", "f-3"] {
        assert_eq!(d.sh(f, "cat /run/mine /root/mine"), format!("{f}\n{f}\n"));
    }
    assert_eq!(
        sha256(&src_mem),
        src_sha,
        "source memory file bytes unchanged"
    );
    assert_eq!(inode(&src_mem).0, src_ino);

    // The source restores with a private inode; forks keep theirs.
    d.ok(&["restore", "src"]);
    assert_ne!(inode(&src_mem).0, src_ino, "source got its own copy");
    assert_eq!(inode(&dir_of(&d, "f-1").join("memory")).0, src_ino);
    let out = d.tine(&["exec", "src", "--", "cat", "/run/mine"]);
    assert!(!out.status.success(), "source must not see a fork's memory");
    assert_eq!(d.sh("f-2", "cat /run/mine"), "f-2\n");
}

#[test]
fn forks_are_unique_in_hostname_machine_id_and_entropy() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "u"]);
    d.ok(&["standby", "u"]);

    fork_json(&d, &["u", "--name", "uf", "--count", "2"]);

    let read = |f: &str| {
        d.sh(
            f,
            "hostname; cat /etc/machine-id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'",
        )
    };
    let (a, b) = (read("uf-1"), read("uf-2"));
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    assert_eq!(a[0], "uf-1");
    assert_eq!(b[0], "uf-2");
    assert_ne!(a[1], b[1], "machine-id differs");
    assert_ne!(a[2], b[2], "urandom differs");
}

#[test]
fn deleting_the_source_never_breaks_its_forks() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "gone"]);
    d.sh("gone", "echo before > /run/x");
    d.ok(&["standby", "gone"]);
    fork_json(&d, &["gone", "--name", "orphan"]);

    d.ok(&["rm", "gone"]);

    assert_eq!(d.sh("orphan", "cat /run/x"), "before\n");
    d.ok(&["standby", "orphan"]);
    d.ok(&["restore", "orphan"]);
    assert_eq!(d.sh("orphan", "cat /run/x"), "before\n");
}

#[test]
fn fork_from_running_needs_the_flag_and_leaves_the_source_running() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "live"]);
    d.sh("live", "echo shared-past > /run/p");

    let err = d.fails(&["fork", "live", "--name", "nope"]);
    assert!(err.contains("--from-running"), "{err}");

    let report = fork_json(&d, &["live", "--name", "lf", "--from-running"]);
    assert!(report["source_pause_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(d.state("live"), "running");

    d.sh("live", "echo source-later > /run/q");
    d.sh("lf", "echo fork-later > /run/q");
    assert_eq!(
        d.sh("live", "cat /run/p /run/q"),
        "shared-past\nsource-later\n"
    );
    assert_eq!(d.sh("lf", "cat /run/p /run/q"), "shared-past\nfork-later\n");
}

#[test]
fn fork_of_a_fork_works_after_the_original_is_gone() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "g0"]);
    d.sh("g0", "echo g0 > /run/lineage");
    d.ok(&["standby", "g0"]);
    fork_json(&d, &["g0", "--name", "g1"]);
    d.sh("g1", "echo g1 >> /run/lineage");
    d.ok(&["standby", "g1"]);
    d.ok(&["rm", "g0"]);

    fork_json(&d, &["g1", "--name", "g2"]);
    d.sh("g2", "echo g2 >> /run/lineage");

    assert_eq!(d.sh("g2", "cat /run/lineage"), "g0\ng1\ng2\n");
}

#[test]
fn a_forks_standby_gives_it_its_own_memory_file_and_leaves_the_source_intact() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "base"]);
    d.sh("base", "echo base > /run/who");
    d.ok(&["standby", "base"]);
    let src_mem = dir_of(&d, "base").join("memory");
    let (src_ino, _) = inode(&src_mem);
    let src_sha = sha256(&src_mem);
    fork_json(&d, &["base", "--name", "kid"]);
    d.sh(
        "kid",
        "echo kid > /run/who; dd if=/dev/urandom of=/run/noise bs=1M count=16 2>/dev/null",
    );
    let noise = d.sh("kid", "md5sum /run/noise");

    d.ok(&["standby", "kid"]);

    let kid_mem = dir_of(&d, "kid").join("memory");
    assert!(
        !kid_mem.exists(),
        "the parked fork holds no link to the source's inode"
    );
    assert_eq!(
        inode(&src_mem),
        (src_ino, 1),
        "the source's file is its own again"
    );
    assert_eq!(sha256(&src_mem), src_sha, "source bytes unchanged");
    d.ok(&["restore", "kid"]);
    let (kid_ino, kid_links) = inode(&kid_mem);
    assert_ne!(kid_ino, src_ino, "the restored fork owns a new memory file");
    assert_eq!(kid_links, 1);
    assert_eq!(d.sh("kid", "cat /run/who"), "kid\n");
    assert_eq!(d.sh("kid", "md5sum /run/noise"), noise);
    d.ok(&["standby", "kid"]);
    d.ok(&["restore", "kid"]);
    assert_eq!(d.sh("kid", "md5sum /run/noise"), noise);
    d.ok(&["restore", "base"]);
    assert_eq!(d.sh("base", "cat /run/who"), "base\n");
}
