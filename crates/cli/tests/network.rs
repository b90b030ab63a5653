//! Networking with real guests. Every test runs its daemon in a network
//! namespace of its own (bridge, TAPs, NAT rules and forwarding are made
//! there) and sends traffic only to addresses inside it.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::{images_dir, Daemon};

/// The gateway of the default subnet (10.209.0.0/16).
const GATEWAY: &str = "10.209.0.1";

/// (ip, mac) the daemon reports.
fn lease(d: &Daemon, name: &str) -> (String, String) {
    let n = &d.inspect(name)["network"];
    assert!(n.is_object(), "{name} has no network: {}", d.inspect(name));
    (
        n["ip"].as_str().unwrap().to_string(),
        n["mac"].as_str().unwrap().to_string(),
    )
}

/// (mac, address/prefix) of eth0 as the guest sees it.
fn guest_eth0(d: &Daemon, name: &str) -> (String, String) {
    let out = d.sh(
        name,
        "cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0",
    );
    let mut lines = out.lines();
    let mac = lines.next().unwrap().trim().to_string();
    let addrs: Vec<&str> = lines
        .flat_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .collect();
    assert_eq!(addrs.len(), 1, "{name}: one IPv4 address expected: {out}");
    (mac, addrs[0].to_string())
}

/// An HTTP server in the guest on :8080 serving /www; /who names the VM.
fn serve_http(d: &Daemon, name: &str) {
    d.sh(
        name,
        &format!("mkdir -p /www && echo {name} > /www/who && httpd -p 8080 -h /www"),
    );
}

fn fork(d: &Daemon, args: &[&str]) {
    let mut a = vec!["fork"];
    a.extend_from_slice(args);
    let report = d.json(&a);
    assert_eq!(report["failed"], 0, "fork failed: {report:#}");
}

#[test]
fn guests_reach_the_host_each_other_and_the_outside_and_the_host_reaches_them() {
    let d = Daemon::start_in_netns(&["--dns", "192.0.2.53"]);
    let upstream = d.netns().add_upstream();
    d.ok(&["run", "--name", "a"]);
    d.ok(&["run", "--name", "b"]);
    let (ip_a, mac_a) = lease(&d, "a");
    let (ip_b, mac_b) = lease(&d, "b");
    serve_http(&d, "b");

    d.sh("a", &format!("ping -c 1 -W 5 {GATEWAY}"));
    d.sh("a", &format!("ping -c 1 -W 5 {ip_b}"));
    // The upstream namespace has no route back to 10.209/16: a reply means NAT.
    d.sh("a", "ping -c 1 -W 5 198.51.100.1");
    let host_to_guest = d.netns().http_get(&ip_b, 8080, "/who");
    let guest_to_guest = d.sh("a", &format!("wget -q -O - http://{ip_b}:8080/who"));

    assert_ne!(ip_a, ip_b);
    assert_ne!(mac_a, mac_b);
    assert_eq!(guest_eth0(&d, "a"), (mac_a.clone(), format!("{ip_a}/16")));
    assert_eq!(host_to_guest, "b\n");
    assert_eq!(guest_to_guest, "b\n");
    assert_eq!(d.sh("a", "cat /etc/resolv.conf"), "nameserver 192.0.2.53\n");
    let ps = d.ok(&["ps"]);
    assert!(ps.contains(&ip_a) && ps.contains(&mac_b), "{ps}");
    let inspect = d.ok(&["inspect", "a"]);
    assert!(
        inspect.contains(&format!("ip:         {ip_a}/16 (gateway {GATEWAY})")),
        "{inspect}"
    );
    drop(upstream);
}

#[test]
fn five_forks_of_a_standby_source_get_their_own_addresses_and_the_source_keeps_its_own() {
    let d = Daemon::start_in_netns(&[]);
    d.ok(&["run", "--name", "src"]);
    serve_http(&d, "src");
    let (src_ip, src_mac) = lease(&d, "src");
    d.ok(&["standby", "src"]);

    fork(
        &d,
        &["src", "--name", "f", "--count", "5", "--parallel", "5"],
    );

    let mut ips = HashSet::from([src_ip.clone()]);
    let mut macs = HashSet::from([src_mac.clone()]);
    for i in 1..=5 {
        let f = format!("f-{i}");
        let (ip, mac) = lease(&d, &f);
        assert!(ips.insert(ip.clone()), "{f} reuses {ip}");
        assert!(macs.insert(mac.clone()), "{f} reuses {mac}");
        assert_eq!(
            guest_eth0(&d, &f),
            (mac, format!("{ip}/16")),
            "{f} runs with its own identity"
        );
        d.sh(&f, &format!("ping -c 1 -W 5 {GATEWAY}"));
        // The server the source started still listens in every fork.
        d.sh(&f, &format!("echo {f} > /www/who"));
        assert_eq!(d.netns().http_get(&ip, 8080, "/who"), format!("{f}\n"));
    }
    d.ok(&["restore", "src"]);
    assert_eq!(lease(&d, "src"), (src_ip.clone(), src_mac.clone()));
    assert_eq!(guest_eth0(&d, "src"), (src_mac, format!("{src_ip}/16")));
    assert_eq!(d.netns().http_get(&src_ip, 8080, "/who"), "src\n");
}

#[test]
fn forks_of_snapshots_and_templates_and_parked_forks_get_their_own_addresses() {
    let d = Daemon::start_in_netns(&[]);
    d.ok(&["run", "--name", "base"]);
    serve_http(&d, "base");
    let (base_ip, base_mac) = lease(&d, "base");
    d.ok(&["standby", "base"]);
    d.ok(&["snapshot", "create", "base", "--name", "snap"]);
    d.ok(&["template", "promote", "base"]);

    fork(&d, &["snap", "--snapshot", "--name", "fs"]);
    fork(&d, &["base", "--template", "--name", "ft"]);
    // Parked right away: it gets its identity when it first runs.
    fork(
        &d,
        &["snap", "--snapshot", "--name", "fp", "--target", "standby"],
    );
    d.ok(&["restore", "fp"]);

    let (fs_ip, fs_mac) = lease(&d, "fs");
    let (ft_ip, ft_mac) = lease(&d, "ft");
    let (fp_ip, fp_mac) = lease(&d, "fp");
    assert_eq!(HashSet::from([&base_ip, &fs_ip, &ft_ip, &fp_ip]).len(), 4);
    assert_eq!(
        HashSet::from([&base_mac, &fs_mac, &ft_mac, &fp_mac]).len(),
        4
    );
    for (f, ip, mac) in [
        ("fs", &fs_ip, fs_mac),
        ("ft", &ft_ip, ft_mac),
        ("fp", &fp_ip, fp_mac),
    ] {
        assert_eq!(guest_eth0(&d, f), (mac, format!("{ip}/16")));
        d.sh(f, &format!("echo {f} > /www/who"));
        assert_eq!(d.netns().http_get(ip, 8080, "/who"), format!("{f}\n"));
    }
}

#[test]
fn warm_pool_forks_get_their_own_addresses_distinct_from_the_source_and_each_other() {
    let d = Daemon::start_in_netns(&[]);
    d.ok(&["run", "--name", "src"]);
    serve_http(&d, "src");
    let (src_ip, src_mac) = lease(&d, "src");
    d.ok(&["standby", "src"]);
    d.ok(&["pool", "set", "src", "--size", "2"]);
    common::wait_pool_ready(&d, 2);

    let report = d.json(&["fork", "src", "--name", "w", "--count", "2"]);

    assert_eq!(report["ok"], 2, "{report:#}");
    for f in report["forks"].as_array().unwrap() {
        assert_eq!(f["phases"]["pooled"], true, "claimed from the pool: {f:#}");
    }
    let mut ips = HashSet::from([src_ip.clone()]);
    let mut macs = HashSet::from([src_mac.clone()]);
    for f in ["w-1", "w-2"] {
        let (ip, mac) = lease(&d, f);
        assert!(ips.insert(ip.clone()), "{f} reuses {ip}");
        assert!(macs.insert(mac.clone()), "{f} reuses {mac}");
        assert_eq!(guest_eth0(&d, f), (mac, format!("{ip}/16")), "{f}");
        d.sh(f, &format!("ping -c 1 -W 5 {GATEWAY}"));
        d.sh(f, &format!("echo {f} > /www/who"));
        assert_eq!(d.netns().http_get(&ip, 8080, "/who"), format!("{f}\n"));
    }
    d.sh("w-1", &format!("ping -c 1 -W 5 {}", lease(&d, "w-2").0));
    d.ok(&["restore", "src"]);
    assert_eq!(guest_eth0(&d, "src"), (src_mac, format!("{src_ip}/16")));
    assert_eq!(d.netns().http_get(&src_ip, 8080, "/who"), "src\n");
}

#[test]
fn a_fork_from_running_and_its_source_are_both_reachable_at_their_own_addresses() {
    let d = Daemon::start_in_netns(&[]);
    d.ok(&["run", "--name", "live"]);
    serve_http(&d, "live");
    let (live_ip, live_mac) = lease(&d, "live");

    fork(&d, &["live", "--name", "lf", "--from-running"]);
    d.sh("lf", "echo lf > /www/who");

    let (lf_ip, lf_mac) = lease(&d, "lf");
    assert_ne!(lf_ip, live_ip);
    assert_ne!(lf_mac, live_mac);
    assert_eq!(guest_eth0(&d, "live"), (live_mac, format!("{live_ip}/16")));
    assert_eq!(guest_eth0(&d, "lf"), (lf_mac, format!("{lf_ip}/16")));
    assert_eq!(d.netns().http_get(&live_ip, 8080, "/who"), "live\n");
    assert_eq!(d.netns().http_get(&lf_ip, 8080, "/who"), "lf\n");
}

#[test]
fn allocations_survive_a_restart_an_exhausted_pool_is_an_error_and_removal_frees_the_address() {
    // A /30 holds exactly one guest address.
    let mut d = Daemon::start_in_netns(&["--subnet", "10.209.7.0/30"]);
    d.ok(&["run", "--name", "one"]);
    let (ip, _) = lease(&d, "one");
    let tap = d.inspect("one")["network"]["tap"]
        .as_str()
        .unwrap()
        .to_string();

    d.restart();
    let err = d.fails(&["run", "--name", "two"]);
    let still_running = d.sh("one", "ping -c 1 -W 5 10.209.7.1 >/dev/null && echo up");
    d.ok(&["rm", "-f", "one"]);
    let tap_left = d.netns().has_link(&tap);
    d.ok(&["run", "--name", "two"]);

    assert_eq!(ip, "10.209.7.2");
    assert!(
        err.contains("address pool 10.209.7.0/30 is exhausted"),
        "{err}"
    );
    assert_eq!(still_running, "up\n");
    assert!(!tap_left, "the TAP of a removed instance is gone");
    assert_eq!(
        lease(&d, "two").0,
        ip,
        "the freed address is handed out again"
    );
    assert_eq!(
        common::names(&d),
        vec!["two"],
        "the refused run left nothing behind"
    );
}

#[test]
fn cleanup_removes_stale_taps_then_bridge_rules_and_forwarding_and_is_idempotent() {
    let d = Daemon::start_in_netns(&[]);
    let ns = d.netns();
    d.ok(&["run", "--name", "a"]);
    let mine = format!("tine:{}", d.data_dir.display());
    ns.sh(&format!(
        "ip tuntap add dev tnstale0 mode tap && ip link set dev tnstale0 alias {mine}"
    ));
    ns.sh("ip tuntap add dev tnother0 mode tap && ip link set dev tnother0 alias tine:/another/daemon");

    let busy = d.json(&["system", "cleanup"]);
    let a_still_up = d.sh(
        "a",
        &format!("ping -c 1 -W 5 {GATEWAY} >/dev/null && echo up"),
    );
    d.ok(&["rm", "-f", "a"]);
    let done = d.json(&["system", "cleanup"]);
    let again = d.json(&["system", "cleanup"]);

    assert_eq!(busy["taps_removed"], serde_json::json!(["tnstale0"]));
    assert!(
        busy["kept"]
            .as_str()
            .unwrap()
            .contains("1 instance(s) still hold addresses"),
        "{busy}"
    );
    assert_eq!(a_still_up, "up\n");
    assert!(
        ns.has_link("tnother0"),
        "another daemon's TAP is not ours to remove"
    );
    assert_eq!(done["bridge_removed"], true);
    assert_eq!(done["nat_removed"], true);
    assert_eq!(done["forwarding_restored"], true);
    assert!(!ns.has_link("tine0"));
    assert!(!ns.ok(&["nft", "list", "tables"]).contains("tine"));
    assert_eq!(ns.ok(&["cat", "/proc/sys/net/ipv4/ip_forward"]), "0\n");
    assert_eq!(again["bridge_removed"], false);
    assert_eq!(again["nat_removed"], false);
    assert_eq!(again["taps_removed"], serde_json::json!([]));
    // And networking comes back on the next start.
    d.ok(&["run", "--name", "b"]);
    d.sh("b", &format!("ping -c 1 -W 5 {GATEWAY}"));
}

/// `tine serve` in `ns` that must exit with an error; returns its stderr.
fn serve_fails(ns: &Netns, args: &[&str]) -> String {
    let dir = tempfile::Builder::new()
        .prefix("tine-t")
        .tempdir_in("/tmp")
        .unwrap();
    let mut child = ns
        .command(env!("CARGO_BIN_EXE_tine"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .arg("--images-dir")
        .arg(images_dir())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tine serve {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_subnets_bridges_and_modes_are_refused_with_clear_errors() {
    let ns = Netns::new();
    ns.sh("ip link add lan0 type veth peer name lan1 && ip addr add 10.77.3.1/24 dev lan0 && ip link set lan0 up && ip link set lan1 up");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--subnet", "10.77.0.0/16"],
            "subnet 10.77.0.0/16 overlaps the host route 10.77.3.0/24 (dev lan0)",
        ),
        (&["--subnet", "10.0.0.1/16"], "did you mean 10.0.0.0/16"),
        (
            &["--subnet", "8.8.0.0/16"],
            "not a private (RFC 1918) range",
        ),
        (&["--subnet", "10.1.0.0/31"], "prefix length must be 8..=30"),
        (&["--bridge", "br;x"], "invalid bridge name \"br;x\""),
        (&["--dns", "resolver"], "invalid DNS server \"resolver\""),
        (&["--network", "bogus"], "unknown network \"bogus\""),
    ];
    for (args, want) in cases {
        let err = serve_fails(&ns, args);
        assert!(
            err.contains(want),
            "serve {args:?}: expected {want:?} in {err:?}"
        );
    }

    let d = Daemon::start_in_netns(&["--network", "none"]);
    let off = d.fails(&["run", "--name", "x", "--network", "default"]);
    let bad = d.fails(&["run", "--name", "x", "--network", "bogus"]);
    assert!(off.contains("networking is off on this daemon"), "{off}");
    assert!(bad.contains("unknown network \"bogus\""), "{bad}");
    assert!(common::names(&d).is_empty());
    assert!(
        !d.netns().has_link("tine0"),
        "a daemon without networking makes no bridge"
    );
}

#[test]
fn a_second_daemon_on_a_bridge_in_use_is_refused_and_one_with_its_own_bridge_runs_beside() {
    let mut d = Daemon::start_in_netns(&[]);
    d.ok(&["run", "--name", "a"]);
    serve_http(&d, "a");
    let (ip_a, _) = lease(&d, "a");

    let refused = serve_fails(d.netns(), &[]);
    let beside = Daemon::start_beside(&d, &["--bridge", "tine1", "--subnet", "10.210.0.0/16"]);
    beside.ok(&["run", "--name", "b"]);
    serve_http(&beside, "b");
    let (ip_b, _) = lease(&beside, "b");
    // The kernel drops a killed daemon's claim: its restart takes the bridge.
    d.kill_daemon();
    d.restart();

    let owner = format!(
        "bridge tine0 is in use by the tine daemon of {} (pid ",
        d.data_dir.display()
    );
    assert!(refused.contains(&owner), "{refused}");
    assert!(
        refused.contains("`tine serve --bridge NAME --subnet CIDR`"),
        "{refused}"
    );
    assert_eq!((ip_a.as_str(), ip_b.as_str()), ("10.209.0.2", "10.210.0.2"));
    assert_eq!(d.netns().http_get(&ip_a, 8080, "/who"), "a\n");
    assert_eq!(d.netns().http_get(&ip_b, 8080, "/who"), "b\n");
    d.sh("a", &format!("ping -c 1 -W 5 {GATEWAY}"));
    beside.sh("b", "ping -c 1 -W 5 10.210.0.1");
}
