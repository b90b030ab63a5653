//! The host side of networking: the bridge, NAT and forwarding rules, and
//! one TAP device per running VM, in the daemon's network namespace.
//!
//! TAPs are not made here: QEMU creates each (`-netdev tap,ifname=…` on a
//! name that does not exist makes a non-persistent TAP), so a TAP lives
//! exactly as long as its VM process, however that process ends (stop,
//! standby, crash, SIGKILL): nothing to leak. tine only puts it on the
//! bridge once the guest has its identity.
//!
//! Made with the `ip` and `nft` commands rather than netlink from Rust:
//! every step is an idempotent, atomic command an operator can read and
//! replay, nftables rulesets are replaced in one transaction (no half-applied
//! rules), and the cost (one short process per step, ~1-2 ms) is small next
//! to a VM start. Reads (does a device exist, is it attached, routes) go to
//! sysfs and procfs, no process.
//!
//! Every TAP tine makes carries the daemon's tag as its interface alias, so
//! sweeps and `tine system cleanup` only ever delete this daemon's devices.

use std::net::Ipv4Addr;
use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::error::NetworkError;
use super::subnet::Subnet;

const SYS_NET: &str = "/sys/class/net";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Prefix of TAP names: `tn` + the 12-hex-digit instance id (14 < IFNAMSIZ).
pub const TAP_PREFIX: &str = "tn";

pub fn tap_name(instance_id: &str) -> String {
    format!("{TAP_PREFIX}{instance_id}")
}

/// Run a command; `ok_if` lists stderr fragments that mean "already so".
async fn run(
    program: &'static str,
    args: &[&str],
    stdin: Option<&str>,
    ok_if: &[&str],
) -> Result<(), NetworkError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .map_err(|source| NetworkError::Spawn { program, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|source| NetworkError::Spawn { program, source })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| NetworkError::Spawn { program, source })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if ok_if.iter().any(|f| stderr.contains(f)) {
        return Ok(());
    }
    let mut command = format!("{program} {}", args.join(" "));
    if let Some(input) = stdin {
        command = format!("{command} <<< {:?}", input.trim());
    }
    Err(NetworkError::Command { command, stderr })
}

fn exists(dev: &str) -> bool {
    Path::new(SYS_NET).join(dev).exists()
}

/// The bridge, subnet and tag of one daemon.
#[derive(Debug, Clone)]
pub struct Host {
    pub bridge: String,
    pub subnet: Subnet,
    /// Interface alias of this daemon's TAPs.
    pub tag: String,
}

impl Host {
    fn nft_table(&self) -> String {
        format!("tine_{}", self.bridge.replace('-', "_"))
    }

    /// Bridge up with the gateway address. Idempotent, also when another
    /// process creates the bridge at the same time.
    pub async fn ensure_bridge(&self) -> Result<(), NetworkError> {
        if !exists(&self.bridge) {
            run(
                "ip",
                &["link", "add", "name", &self.bridge, "type", "bridge"],
                None,
                &["File exists"],
            )
            .await?;
        }
        let gw = format!("{}/{}", self.subnet.gateway(), self.subnet.prefix());
        let batch = format!(
            "address replace {gw} dev {b}\nlink set dev {b} up\n",
            b = self.bridge
        );
        run("ip", &["-batch", "-"], Some(&batch), &[]).await
    }

    /// Masquerade what leaves the subnet; forward for the bridge only. With
    /// `guard` (forwarding was off before tine turned it on) nothing else is
    /// forwarded either. Replaced in one transaction: idempotent.
    pub async fn ensure_nat(&self, guard: bool) -> Result<(), NetworkError> {
        run("nft", &["-f", "-"], Some(&self.ruleset(guard)), &[]).await
    }

    pub fn ruleset(&self, guard: bool) -> String {
        let (t, b, s) = (self.nft_table(), &self.bridge, self.subnet);
        let rest = if guard {
            "\n\t\tdrop comment \"forwarding was off before tine\""
        } else {
            ""
        };
        format!(
            "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {s} ip daddr != {s} masquerade\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"{b}\" ip saddr {s} accept\n\
             \t\toifname \"{b}\" ip daddr {s} ct state established,related accept\n\
             \t\toifname \"{b}\" drop{rest}\n\
             \t}}\n}}\n"
        )
    }

    pub async fn remove_nat(&self) -> Result<bool, NetworkError> {
        let present = run(
            "nft",
            &["list", "table", "ip", &self.nft_table()],
            None,
            &[],
        )
        .await
        .is_ok();
        if present {
            run(
                "nft",
                &["delete", "table", "ip", &self.nft_table()],
                None,
                &["No such file or directory"],
            )
            .await?;
        }
        Ok(present)
    }

    pub async fn remove_bridge(&self) -> Result<bool, NetworkError> {
        if !exists(&self.bridge) {
            return Ok(false);
        }
        run(
            "ip",
            &["link", "del", "dev", &self.bridge],
            None,
            &["Cannot find device"],
        )
        .await?;
        Ok(true)
    }

    /// Make room for the TAP QEMU is about to create: a device left under
    /// that name (a persistent TAP of an older tine) is deleted. QEMU's new
    /// TAP is down and on no bridge: the guest can send nothing until
    /// [`attach_tap`](Self::attach_tap).
    pub async fn prepare_tap(&self, tap: &str) -> Result<(), NetworkError> {
        self.delete_tap(tap).await
    }

    /// Tag the TAP as this daemon's, put it on the bridge and up.
    pub async fn attach_tap(&self, tap: &str) -> Result<(), NetworkError> {
        let args = [
            "link",
            "set",
            "dev",
            tap,
            "alias",
            &self.tag,
            "master",
            &self.bridge,
            "up",
        ];
        run("ip", &args, None, &[]).await
    }

    pub async fn delete_tap(&self, tap: &str) -> Result<(), NetworkError> {
        if !exists(tap) {
            return Ok(());
        }
        run(
            "ip",
            &["link", "del", "dev", tap],
            None,
            &["Cannot find device"],
        )
        .await
    }

    /// Is the TAP a port of our bridge (and so reachable)?
    pub fn tap_attached(&self, tap: &str) -> bool {
        std::fs::read_link(Path::new(SYS_NET).join(tap).join("master"))
            .is_ok_and(|t| t.file_name().is_some_and(|n| n == self.bridge.as_str()))
    }

    /// TAP devices carrying this daemon's tag.
    pub fn our_taps(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(SYS_NET) else {
            return vec![];
        };
        let mut taps: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(TAP_PREFIX))
            .filter(|n| {
                std::fs::read_to_string(Path::new(SYS_NET).join(n).join("ifalias"))
                    .is_ok_and(|a| a.trim_end() == self.tag)
            })
            .collect();
        taps.sort();
        taps
    }
}

/// Turn IPv4 forwarding on; true if it was off (tine turned it on).
pub fn enable_forwarding() -> Result<bool, NetworkError> {
    let io = |source| NetworkError::Io {
        what: "cannot set",
        path: IP_FORWARD.into(),
        source,
    };
    let was = std::fs::read_to_string(IP_FORWARD).map_err(io)?;
    if was.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(IP_FORWARD, "1\n").map_err(io)?;
    Ok(true)
}

pub fn disable_forwarding() -> Result<(), NetworkError> {
    std::fs::write(IP_FORWARD, "0\n").map_err(|source| NetworkError::Io {
        what: "cannot set",
        path: IP_FORWARD.into(),
        source,
    })
}

/// One IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dev: String,
    pub dest: Ipv4Addr,
    pub prefix: u8,
}

/// Parse `/proc/net/route` (addresses are hex, in network byte order).
pub fn parse_routes(text: &str) -> Vec<Route> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dev, dest, mask) = (f.first()?, hex(f.get(1)?)?, hex(f.get(7)?)?);
            Some(Route {
                dev: dev.to_string(),
                dest,
                prefix: u32::from(mask).count_ones() as u8,
            })
        })
        .collect()
}

/// Refuse a subnet that shares addresses with a route of this namespace
/// (default routes and our own bridge's route aside).
pub fn check_overlap(subnet: Subnet, bridge: &str) -> Result<(), NetworkError> {
    let path = "/proc/net/route";
    let text = std::fs::read_to_string(path).map_err(|source| NetworkError::Io {
        what: "cannot read",
        path: path.into(),
        source,
    })?;
    for r in parse_routes(&text) {
        if r.prefix == 0 || r.dev == bridge {
            continue;
        }
        if subnet.overlaps_route(r.dest, r.prefix) {
            return Err(NetworkError::Overlap {
                subnet,
                route: format!("{}/{}", r.dest, r.prefix),
                dev: r.dev,
            });
        }
    }
    Ok(())
}

/// The host's name servers a guest can reach: those of /etc/resolv.conf,
/// else (a local stub resolver such as systemd-resolved's 127.0.0.53) its
/// upstream servers.
pub fn default_dns() -> Vec<Ipv4Addr> {
    ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"]
        .iter()
        .map(|p| host_dns(&std::fs::read_to_string(p).unwrap_or_default()))
        .find(|list| !list.is_empty())
        .unwrap_or_default()
}

/// IPv4 name servers of a resolv.conf a guest can reach (not loopback).
pub fn host_dns(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_route_parses_into_devices_destinations_and_prefixes() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

        let routes = parse_routes(text);

        assert_eq!(routes.len(), 2);
        assert_eq!(
            routes[0],
            Route {
                dev: "eth0".into(),
                dest: Ipv4Addr::UNSPECIFIED,
                prefix: 0
            }
        );
        assert_eq!(
            routes[1],
            Route {
                dev: "eth0".into(),
                dest: Ipv4Addr::new(192, 0, 2, 0),
                prefix: 24
            }
        );
    }

    #[test]
    fn loopback_and_ipv6_name_servers_are_not_passed_to_guests() {
        let conf =
            "# x\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\nsearch lan\n";
        assert_eq!(host_dns(conf), vec![Ipv4Addr::new(10, 255, 255, 53)]);
    }

    #[test]
    fn the_ruleset_replaces_the_table_and_guards_forwarding_only_when_asked() {
        let h = Host {
            bridge: "tine-0".into(),
            subnet: "10.209.0.0/16".parse().unwrap(),
            tag: "t".into(),
        };

        let open = h.ruleset(false);
        let guarded = h.ruleset(true);

        assert!(
            open.starts_with("table ip tine_tine_0\ndelete table ip tine_tine_0\n"),
            "{open}"
        );
        assert!(open.contains("ip saddr 10.209.0.0/16 ip daddr != 10.209.0.0/16 masquerade"));
        assert!(!open.contains("forwarding was off"));
        assert!(guarded.contains("drop comment \"forwarding was off before tine\""));
    }
}
