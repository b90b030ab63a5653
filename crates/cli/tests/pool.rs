//! Warm pools: forks claimed from pre-started VMs behave like any fork.

mod common;

use common::{wait_pool_ready, Daemon};

#[test]
fn forks_claim_warm_entries_continue_the_source_and_the_pool_refills() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "hot"]);
    d.sh("hot", "echo parked > /run/p");
    d.ok(&["standby", "hot"]);
    d.ok(&["pool", "set", "hot", "--size", "2"]);
    wait_pool_ready(&d, 2);
    assert_eq!(
        d.json(&["ps"]).as_array().unwrap().len(),
        1,
        "pool entries are hidden"
    );

    let report = d.json(&["fork", "hot", "--name", "w", "--count", "2"]);

    assert_eq!(report["ok"], 2);
    for f in report["forks"].as_array().unwrap() {
        common::assert_phases_add_up(f, true);
    }
    let pool = wait_pool_ready(&d, 2);
    assert_eq!(pool["hits"], 2);
    for f in ["w-1", "w-2"] {
        assert_eq!(d.sh(f, "cat /run/p; hostname"), format!("parked\n{f}\n"));
    }
    let ids: Vec<String> = ["w-1", "w-2"]
        .iter()
        .map(|f| d.sh(f, "cat /etc/machine-id"))
        .collect();
    assert_ne!(ids[0], ids[1]);
    let metrics = d.ok(&["metrics"]);
    assert!(metrics.contains("tine_pool_hits_total 2"), "{metrics}");
    assert!(metrics.contains("tine_forks_total 2"), "{metrics}");
    assert!(
        metrics.contains("tine_fork_seconds_count{stage=\"ready\"} 2"),
        "{metrics}"
    );
}

#[test]
fn a_new_parked_state_of_the_source_replaces_the_pool_entries() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "src"]);
    d.sh("src", "echo one > /run/v");
    d.ok(&["standby", "src"]);
    d.ok(&["pool", "set", "src", "--size", "1"]);
    wait_pool_ready(&d, 1);

    d.ok(&["restore", "src"]);
    d.sh("src", "echo two > /run/v");
    d.ok(&["standby", "src"]);
    d.ok(&["fork", "src", "--name", "after"]);

    assert_eq!(
        d.sh("after", "cat /run/v"),
        "two\n",
        "never a fork of the stale state"
    );
}

#[test]
fn template_pool_entries_do_not_count_as_forks_and_removal_drains_them() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "t"]);
    d.ok(&["standby", "t"]);
    d.ok(&["template", "promote", "t"]);
    d.ok(&["pool", "set", "t", "--template", "--size", "2"]);
    wait_pool_ready(&d, 2);

    assert_eq!(d.json(&["template", "inspect", "t"])["forks"], 0);
    d.ok(&["fork", "--template", "t", "--name", "tf"]);
    assert_eq!(d.json(&["template", "inspect", "t"])["forks"], 1);
    d.ok(&["rm", "-f", "tf"]);
    d.ok(&["template", "rm", "t"]);
    assert_eq!(
        common::qemu_processes(&d),
        0,
        "waiting VMs of the pool were stopped"
    );
    assert_eq!(
        d.json(&["pool", "ls"]),
        serde_json::json!([]),
        "the pool went with its template"
    );
}

#[test]
fn pools_come_back_after_a_daemon_restart() {
    let mut d = Daemon::start();
    d.ok(&["run", "--name", "p"]);
    d.ok(&["standby", "p"]);
    d.ok(&["pool", "set", "p", "--size", "1"]);
    wait_pool_ready(&d, 1);

    d.restart();

    wait_pool_ready(&d, 1);
    assert_eq!(
        common::qemu_processes(&d),
        1,
        "the old entry's VM was replaced, not leaked"
    );
    d.ok(&["fork", "p", "--name", "pf"]);
    assert_eq!(d.json(&["pool", "ls"])[0]["hits"], 1);

    // Removing the source takes its pool and the waiting VM with it.
    d.ok(&["rm", "-f", "p"]);
    assert_eq!(d.json(&["pool", "ls"]), serde_json::json!([]));
    assert_eq!(common::qemu_processes(&d), 1, "only the fork is left");
}

#[test]
fn bad_pool_requests_are_refused() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "r"]);

    let err = d.fails(&["pool", "set", "r", "--size", "1"]);
    assert!(
        err.contains("--from-running") || err.contains("standby"),
        "{err}"
    );
    d.ok(&["standby", "r"]);
    assert!(d
        .fails(&["pool", "set", "r", "--size", "0"])
        .contains("out of range"));
    assert!(d
        .fails(&["pool", "set", "nope", "--size", "1"])
        .contains("no instance named"));
    assert!(d.fails(&["pool", "rm", "r"]).contains("pool for r"));
}

#[test]
fn a_pool_entry_whose_vm_died_falls_back_to_a_cold_fork() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "s"]);
    d.sh("s", "echo state > /run/x");
    d.ok(&["standby", "s"]);
    d.ok(&["pool", "set", "s", "--size", "1"]);
    wait_pool_ready(&d, 1);
    let source_dir = common::dir_of(&d, "s");
    for e in std::fs::read_dir(d.data_dir.join("instances"))
        .unwrap()
        .flatten()
    {
        if e.path() != source_dir {
            let pid: i32 = std::fs::read_to_string(e.path().join("qemu.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            common::kill9(pid);
        }
    }

    d.ok(&["fork", "s", "--name", "cold"]);

    assert_eq!(d.sh("cold", "cat /run/x"), "state\n");
}

#[test]
fn forks_and_claims_leave_the_shared_guest_image_in_the_page_cache() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "src"]);
    d.ok(&["standby", "src"]);
    d.ok(&["pool", "set", "src", "--size", "1"]);
    wait_pool_ready(&d, 1);
    let image = common::guest_rootfs();
    std::fs::read(&image).unwrap();
    let before = common::cached_fraction(&image);
    assert!(
        before > 0.9,
        "the image did not stay cached after a read: {before}"
    );

    // A claim activates the entry's disk; a cold fork's load activates its
    // own. Either used to drop the image's page cache (QEMU's drop-cache).
    d.ok(&["fork", "src", "--name", "claimed"]);
    d.ok(&["pool", "rm", "src"]);
    d.ok(&["fork", "src", "--name", "cold"]);
    d.ok(&["restore", "src"]);

    let after = common::cached_fraction(&image);
    assert!(
        after > 0.5,
        "forks evicted the shared guest image from the page cache: {before:.2} → {after:.2}"
    );
}
