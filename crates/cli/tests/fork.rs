//! Forks with real guests: each continues from the source's instant, shares
//! its memory file inode, and neither sees the others' later writes; deleting
//! a source never breaks a fork, and a template outlives its live forks.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{counter, dir_of, inode, sha256, start_counter, Daemon};
use tine_api::{Client, ClientError, Endpoint, SnapshotInfo};

/// Guest shell prefix: later reads of the disk come from the disk, not from
/// the guest's page cache.
const DROP_CACHES: &str = "sync && echo 3 > /proc/sys/vm/drop_caches";

const FORKS: [&str; 3] = ["f-1", "f-2", "f-3"];

fn fork_json(d: &Daemon, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["fork"];
    a.extend_from_slice(args);
    let v = d.json(&a);
    assert_eq!(v["failed"], 0, "fork failed: {v:#}");
    v
}

/// Two reads of the guest's counter, the second once it moved on (the guest
/// gives up after 10 s, and the caller's assertion then fails).
fn rising_counter(d: &Daemon, name: &str) -> (u64, u64) {
    let out = d.sh(
        name,
        "a=$(cat /run/counter); b=$a; i=0; \
         while [ $b -le $a ] && [ $i -lt 200 ]; do sleep 0.05; b=$(cat /run/counter); i=$((i+1)); done; \
         echo $a $b",
    );
    let mut v = out.split_whitespace().map(|n| n.parse().unwrap());
    (v.next().unwrap(), v.next().unwrap())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// DELETE /v1/templates/NAME on the daemon's API socket.
fn remove_template(d: &Daemon, name: &str) -> Result<SnapshotInfo, ClientError> {
    let client = Client::new(Endpoint::Unix(d.data_dir.join("tine.sock")));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(client.snapshot_remove("templates", name))
}

#[test]
fn forks_of_a_standby_source_continue_its_process_and_share_its_memory_inode() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "src"]);
    let pid = start_counter(&d, "src");
    d.sh("src", "echo disk-data > /root/f && sync");
    let before = counter(&d, "src");
    d.ok(&["standby", "src"]);
    let src_mem = dir_of(&d, "src").join("memory");
    let (src_ino, _) = inode(&src_mem);
    let src_sha = sha256(&src_mem);

    let report = fork_json(&d, &["src", "--name", "f", "--count", "3"]);

    assert_eq!(report["ok"], 3);
    for f in report["forks"].as_array().unwrap() {
        common::assert_phases_add_up(f, false);
    }
    for f in FORKS {
        assert_eq!(d.state(f), "running");
        assert_eq!(
            inode(&dir_of(&d, f).join("memory")).0,
            src_ino,
            "{f} links the source inode"
        );
        assert_eq!(d.sh(f, "cat /run/counter.pid").trim(), pid);
        let (first, later) = rising_counter(&d, f);
        assert!(
            first >= before,
            "{f}'s counter {first} is behind the source's {before}"
        );
        assert!(later > first, "{f}'s counter stopped at {first}");
        assert_eq!(d.sh(f, "cat /root/f"), "disk-data\n");
    }

    // Each fork writes its own memory and disk files; only it has them,
    // read back from its disk (caches dropped).
    for f in FORKS {
        d.sh(f, &format!("echo {f} > /run/{f}; echo {f} > /root/{f}; dd if=/dev/urandom of=/run/blob bs=1M count=8 2>/dev/null; sync"));
    }
    for f in FORKS {
        assert_eq!(
            d.sh(
                f,
                &format!("{DROP_CACHES} && cat /run/{f} /root/{f}; cd / && echo root/f-* run/f-*")
            ),
            format!("{f}\n{f}\nroot/{f} run/{f}\n"),
            "{f} sees its own files and no sibling's"
        );
    }
    assert_eq!(
        sha256(&src_mem),
        src_sha,
        "source memory file bytes unchanged"
    );
    assert_eq!(inode(&src_mem).0, src_ino);

    // The source restores with a private inode; forks keep theirs.
    d.ok(&["restore", "src"]);
    let (new_ino, links) = inode(&src_mem);
    assert_ne!(new_ino, src_ino, "source got its own copy");
    assert_eq!(links, 1, "nobody else links the source's new file");
    assert_eq!(inode(&dir_of(&d, "f-1").join("memory")).0, src_ino);
    assert_eq!(
        d.sh(
            "src",
            &format!("{DROP_CACHES} && cat /root/f; cd / && echo root/f-* run/f-*")
        ),
        "disk-data\nroot/f-* run/f-*\n",
        "the source sees none of the forks' files"
    );
    assert_eq!(d.sh("f-2", "cat /run/f-2"), "f-2\n");
}

#[test]
fn template_forks_are_unique_get_a_corrected_clock_and_pin_the_template() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "u"]);
    d.ok(&["standby", "u"]);
    d.ok(&["template", "promote", "u"]);
    // Parked long enough that a clock left as saved would be seconds behind.
    std::thread::sleep(Duration::from_secs(4));

    fork_json(&d, &["--template", "u", "--name", "uf", "--count", "2"]);

    let read = |f: &str| {
        let host_before = unix_now();
        let out = d.sh(
            f,
            "date +%s; hostname; cat /etc/machine-id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'",
        );
        let guest: i64 = out.lines().next().unwrap().parse().unwrap();
        assert!(
            (host_before - 2..=unix_now() + 2).contains(&guest),
            "{f}'s clock {guest} vs the host's {host_before}"
        );
        out.lines().skip(1).map(String::from).collect::<Vec<_>>()
    };
    let (a, b) = (read("uf-1"), read("uf-2"));
    assert_eq!(a[0], "uf-1");
    assert_eq!(b[0], "uf-2");
    assert_ne!(a[1], b[1], "machine-id differs");
    assert_ne!(a[2], b[2], "urandom differs");
    match remove_template(&d, "u") {
        Err(ClientError::Api {
            status, message, ..
        }) => {
            assert_eq!(status, 409, "{message}");
            assert!(message.contains("2 live forks"), "{message}");
        }
        other => panic!("template rm with live forks: {other:?}"),
    }
    d.ok(&["rm", "-f", "uf-1", "uf-2"]);
    assert_eq!(remove_template(&d, "u").unwrap().forks, 0);
}

#[test]
fn deleting_the_source_instance_or_snapshot_never_breaks_its_forks() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "gone"]);
    let check = format!("{DROP_CACHES} && md5sum /run/blob /root/x");
    d.sh(
        "gone",
        "dd if=/dev/urandom of=/run/blob bs=1M count=8 2>/dev/null; echo before > /root/x",
    );
    let sums = d.sh("gone", &check);
    // From the running source: the snapshot gets a memory file of its own.
    let snap = d.json(&["snapshot", "create", "gone", "--name", "gs"]);
    let snap_dir = std::path::PathBuf::from(snap["dir"].as_str().unwrap());
    d.ok(&["standby", "gone"]);
    fork_json(&d, &["gone", "--name", "orphan"]);
    fork_json(&d, &["--snapshot", "gs", "--name", "sorphan"]);

    d.ok(&["rm", "gone"]);
    d.ok(&["snapshot", "rm", "gs"]);

    assert!(!snap_dir.exists(), "the snapshot's files are gone");
    for f in ["orphan", "sorphan"] {
        assert_eq!(d.sh(f, &check), sums, "{f} before its standby");
        d.ok(&["standby", f]);
        d.ok(&["restore", f]);
        assert_eq!(d.sh(f, &check), sums, "{f} after its restore");
    }
}

#[test]
fn fork_from_running_needs_the_flag_and_leaves_the_source_running() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "live"]);
    d.sh(
        "live",
        "echo shared-past > /run/p; echo disk-past > /root/p; sync",
    );

    let err = d.fails(&["fork", "live", "--name", "nope"]);
    assert!(err.contains("--from-running"), "{err}");

    let report = fork_json(&d, &["live", "--name", "lf", "--from-running"]);
    assert!(report["source_pause_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(d.state("live"), "running");

    for (vm, later) in [("live", "source-later"), ("lf", "fork-later")] {
        d.sh(
            vm,
            &format!("echo {later} > /run/q; echo {later} > /root/{vm}-later; sync"),
        );
    }
    for (vm, later) in [("live", "source-later"), ("lf", "fork-later")] {
        assert_eq!(
            d.sh(
                vm,
                &format!("{DROP_CACHES} && cat /run/p /run/q /root/p /root/{vm}-later; cd / && echo root/*-later")
            ),
            format!("shared-past\n{later}\ndisk-past\n{later}\nroot/{vm}-later\n"),
            "{vm} sees the shared past and only its own later writes"
        );
    }
}

#[test]
fn fork_of_a_fork_of_a_fork_works_after_the_earlier_generations_are_gone() {
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
    d.ok(&["standby", "g2"]);
    d.ok(&["rm", "g1"]);

    fork_json(&d, &["g2", "--name", "g3"]);
    d.ok(&["rm", "g2"]);
    d.sh("g3", "echo g3 >> /run/lineage");

    assert_eq!(d.sh("g3", "cat /run/lineage"), "g0\ng1\ng2\ng3\n");
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
