//! Standby and restore with real guests: the guest continues where it was.

mod common;

use common::{assert_counts_on, counter, start_counter, Daemon};

#[test]
fn standby_and_restore_three_times_keeps_process_memory_and_disk() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "sb"]);
    let pid = start_counter(&d, "sb");
    d.sh("sb", "echo on-disk > /root/file && sync");

    for _ in 0..3 {
        let before = counter(&d, "sb");
        d.ok(&["standby", "sb"]);
        assert_eq!(d.state("sb"), "standby");
        assert!(d.inspect("sb")["pid"].is_null());

        d.ok(&["restore", "sb"]);

        assert_eq!(d.state("sb"), "running");
        let after = counter(&d, "sb");
        assert!(after >= before, "counter went back: {before} -> {after}");
        assert_counts_on(&d, "sb");
        assert_eq!(d.sh("sb", "cat /run/counter.pid").trim(), pid);
        assert!(d
            .sh("sb", &format!("kill -0 {pid} && echo alive"))
            .contains("alive"));
        assert_eq!(d.sh("sb", "cat /root/file"), "on-disk\n");
    }
}

#[test]
fn start_on_a_standby_instance_restores_it() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "sb2"]);
    d.sh("sb2", "echo 42 > /run/mem");
    d.ok(&["standby", "sb2"]);

    d.ok(&["start", "sb2"]);

    assert_eq!(d.sh("sb2", "cat /run/mem"), "42\n");
}

#[test]
fn restored_guest_clock_is_corrected() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "clk"]);
    d.ok(&["standby", "clk"]);
    std::thread::sleep(std::time::Duration::from_secs(3));

    d.ok(&["restore", "clk"]);

    let guest: i64 = d.sh("clk", "date +%s").trim().parse().unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (host - guest).abs() <= 2,
        "guest clock {guest} vs host {host}"
    );
}
