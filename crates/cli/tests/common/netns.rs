//! Network namespaces for networking tests. Each test makes its own, runs
//! its daemon (and so its bridge, TAPs, NAT rules and forwarding setting)
//! inside, and sends traffic only to addresses inside it: nothing of the
//! host's network is touched. The namespace is deleted on drop.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (apt-get install iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A fresh namespace with loopback up and IPv4 forwarding off, like a
    /// host that is not a router (a new namespace inherits the host's
    /// setting otherwise).
    pub fn new() -> Netns {
        let name = format!(
            "tine-t{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
        ns
    }

    /// `program` run inside the namespace (`ip netns exec` also gives it the
    /// namespace's view of /sys).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program])
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, argv: &[&str]) -> Output {
        self.command(argv[0]).args(&argv[1..]).output().unwrap()
    }

    /// Run inside; must succeed; returns stdout.
    pub fn ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "{argv:?} in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `bash -c SCRIPT` inside the namespace; must succeed.
    pub fn sh(&self, script: &str) -> String {
        self.ok(&["bash", "-c", script])
    }

    /// Text of `GET /path` from `ip:port`, over TCP from inside the namespace.
    pub fn http_get(&self, ip: &str, port: u16, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/{ip}/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 10 cat <&3"
        );
        let reply = self.sh(&script);
        reply
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }

    /// Link a second namespace to this one as its upstream: this side gets
    /// 198.51.100.2/24 (TEST-NET-2) and a default route via the other side,
    /// 198.51.100.1, which answers pings. Returns the upstream namespace.
    pub fn add_upstream(&self) -> Netns {
        let up = Netns::new();
        ip(&[
            "-n", &self.name, "link", "add", "uplink", "type", "veth", "peer", "name", "downlink",
            "netns", &up.name,
        ]);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            "198.51.100.2/24",
            "dev",
            "uplink",
        ]);
        ip(&["-n", &self.name, "link", "set", "uplink", "up"]);
        ip(&[
            "-n",
            &self.name,
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
        ]);
        ip(&[
            "-n",
            &up.name,
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "downlink",
        ]);
        ip(&["-n", &up.name, "link", "set", "downlink", "up"]);
        up
    }

    /// Does a network device of this name exist in the namespace?
    pub fn has_link(&self, dev: &str) -> bool {
        self.run(&["ip", "link", "show", "dev", dev])
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
