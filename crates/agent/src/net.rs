//! `configure_network`: give an interface its MAC, one IPv4 address, a default route and
//! DNS servers.
//!
//! Done with netdevice ioctls, not by running `ip`: this is on a fork's critical path, and
//! under TCG every new program costs milliseconds. So does every kernel path a fork runs
//! for the first time (its QEMU starts with an empty translation cache), which is why the
//! work here is kept to the few ioctls that change something: each step is skipped when
//! the interface already has that value, and what the agent did once before the fork
//! (IPv6 off, resolv.conf written) is remembered in its memory, which forks inherit.
//! Measured: rtnetlink (add the new address, delete the old with promote_secondaries) kept
//! routes and neighbours but cost more in a fresh fork than these ioctls.
//!
//! Order: IPv6 off on the interface (tine networks are IPv4-only; then a MAC change does no
//! IPv6 address work), MAC (virtio-net passes it to the device, which filters on it), the
//! address (setting it replaces the interface's primary address, so a fork drops its
//! source's), link up, default route, resolv.conf.

use std::fs;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tine_agent_proto::{NetworkConfig, Reply};

use crate::ops::{replace_file, Failure};

const DEFAULT_INTERFACE: &str = "eth0";
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// IPv6 is off on the interface (set once; forks inherit the flag with the setting).
static IPV6_OFF: AtomicBool = AtomicBool::new(false);
/// The resolv.conf this agent last wrote: not read or written again while unchanged.
static RESOLV_WRITTEN: Mutex<Option<String>> = Mutex::new(None);

/// A validated [`NetworkConfig`].
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub interface: String,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<IpAddr>,
}

pub fn parse(cfg: &NetworkConfig) -> Result<Plan, Failure> {
    let interface = cfg
        .interface
        .clone()
        .unwrap_or_else(|| DEFAULT_INTERFACE.into());
    if interface.is_empty()
        || interface.len() >= libc::IFNAMSIZ
        || interface.contains(['/', '\0', ' '])
    {
        return Err(Failure::invalid(format!(
            "invalid interface name {interface:?}"
        )));
    }
    let mac = parse_mac(&cfg.mac)
        .ok_or_else(|| Failure::invalid(format!("invalid unicast MAC {:?}", cfg.mac)))?;
    let (address, prefix) = cfg
        .address
        .split_once('/')
        .and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)))
        .filter(|(_, p)| (1..=30).contains(p))
        .ok_or_else(|| {
            Failure::invalid(format!(
                "invalid address {:?} (want a.b.c.d/1..30)",
                cfg.address
            ))
        })?;
    let gateway = match &cfg.gateway {
        None => None,
        Some(g) => {
            let gw: Ipv4Addr = g
                .parse()
                .map_err(|_| Failure::invalid(format!("invalid gateway {g:?}")))?;
            let mask = mask_of(prefix);
            if u32::from(gw) & mask != u32::from(address) & mask || gw == address {
                return Err(Failure::invalid(format!(
                    "gateway {gw} is not a peer in {}",
                    cfg.address
                )));
            }
            Some(gw)
        }
    };
    let dns = cfg
        .dns
        .iter()
        .map(|d| {
            d.parse::<IpAddr>()
                .map_err(|_| Failure::invalid(format!("invalid DNS server {d:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        interface,
        mac,
        address,
        prefix,
        gateway,
        dns,
    })
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    let multicast = mac[0] & 1 == 1;
    (parts.next().is_none() && !multicast && mac != [0; 6]).then_some(mac)
}

fn mask_of(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

pub fn resolv_conf(dns: &[IpAddr]) -> String {
    dns.iter().map(|d| format!("nameserver {d}\n")).collect()
}

pub fn configure(cfg: &NetworkConfig) -> Result<Reply, Failure> {
    let plan = parse(cfg)?;
    let sock = Socket::new().map_err(|e| Failure::io("socket", &e))?;
    let name = plan.interface.as_str();
    let io = |what: &'static str| move |e: io::Error| Failure::io(&format!("{what} {name}"), &e);

    if !IPV6_OFF.load(Ordering::Relaxed) {
        ipv6_off(name)?;
        IPV6_OFF.store(true, Ordering::Relaxed);
    }
    if sock.hwaddr(name).map_err(io("read MAC of"))? != plan.mac {
        sock.set_hwaddr(name, plan.mac).map_err(io("set MAC of"))?;
    }
    let current = sock
        .addr(libc::SIOCGIFADDR, name)
        .map_err(io("read address of"))?;
    if current != Some(plan.address) {
        sock.set_addr(libc::SIOCSIFADDR, name, plan.address)
            .map_err(io("set address of"))?;
    }
    let netmask = Ipv4Addr::from(mask_of(plan.prefix));
    if sock
        .addr(libc::SIOCGIFNETMASK, name)
        .map_err(io("read netmask of"))?
        != Some(netmask)
    {
        sock.set_addr(libc::SIOCSIFNETMASK, name, netmask)
            .map_err(io("set netmask of"))?;
    }
    sock.up(name).map_err(io("bring up"))?;
    if let Some(gw) = plan.gateway {
        match sock.add_default_route(gw) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                return Err(Failure::io("add default route", &e))
            }
            _ => {}
        }
    }
    if !plan.dns.is_empty() {
        let want = resolv_conf(&plan.dns);
        let mut written = RESOLV_WRITTEN.lock().unwrap_or_else(|p| p.into_inner());
        if written.as_deref() != Some(want.as_str()) {
            if fs::read_to_string(RESOLV_CONF).ok().as_deref() != Some(want.as_str()) {
                replace_file(Path::new(RESOLV_CONF), want.as_bytes(), 0o644)
                    .map_err(|e| Failure::io(RESOLV_CONF, &e))?;
            }
            *written = Some(want);
        }
    }
    Ok(Reply::Ok)
}

/// IPv6 off on `name` (nothing to do without IPv6 in the kernel).
fn ipv6_off(name: &str) -> Result<(), Failure> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => fs::write(&path, "1\n").map_err(|e| Failure::io(&path, &e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failure::io(&path, &e)),
    }
}

/// Kernel `struct rtentry` (x86_64 / aarch64 layout; glibc does not export it via libc).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain C structs; the kernel reads
    // an AF_INET sockaddr as sockaddr_in.
    unsafe { mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ipv4_of(sa: &libc::sockaddr) -> Option<Ipv4Addr> {
    if i32::from(sa.sa_family) != libc::AF_INET {
        return None;
    }
    // SAFETY: an AF_INET sockaddr is a sockaddr_in; both are 16 bytes.
    let sin: libc::sockaddr_in = unsafe { mem::transmute_copy(sa) };
    Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
}

/// An AF_INET datagram socket: the handle netdevice ioctls are made on.
struct Socket(OwnedFd);

impl Socket {
    fn new() -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ifreq(name: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain data (name bytes and a union of plain data); all zero is valid.
        let mut req: libc::ifreq = unsafe { mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req
    }

    /// ioctl with an `ifreq`; `name` was checked shorter than IFNAMSIZ by `parse`.
    fn call(&self, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: every request used here reads and/or writes one `struct ifreq`, which
        // `req` points to for the duration of the call.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, req as *mut libc::ifreq) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn hwaddr(&self, name: &str) -> io::Result<[u8; 6]> {
        let mut req = Self::ifreq(name);
        self.call(libc::SIOCGIFHWADDR, &mut req)?;
        // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data.iter()) {
            *m = *d as u8;
        }
        Ok(mac)
    }

    fn set_hwaddr(&self, name: &str, mac: [u8; 6]) -> io::Result<()> {
        let mut req = Self::ifreq(name);
        // SAFETY: zeroed sockaddr is valid plain data.
        let mut sa: libc::sockaddr = unsafe { mem::zeroed() };
        sa.sa_family = libc::ARPHRD_ETHER;
        for (d, m) in sa.sa_data.iter_mut().zip(mac) {
            *d = m as libc::c_char;
        }
        req.ifr_ifru.ifru_hwaddr = sa;
        self.call(libc::SIOCSIFHWADDR, &mut req)
    }

    /// SIOCGIFADDR / SIOCGIFNETMASK; `None` when the interface has no IPv4 address.
    fn addr(&self, request: libc::c_ulong, name: &str) -> io::Result<Option<Ipv4Addr>> {
        let mut req = Self::ifreq(name);
        match self.call(request, &mut req) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(None),
            Err(e) => Err(e),
            // SAFETY: the call filled the address member of the union.
            Ok(()) => Ok(ipv4_of(unsafe { &req.ifr_ifru.ifru_addr })),
        }
    }

    /// SIOCSIFADDR / SIOCSIFNETMASK.
    fn set_addr(&self, request: libc::c_ulong, name: &str, addr: Ipv4Addr) -> io::Result<()> {
        let mut req = Self::ifreq(name);
        req.ifr_ifru.ifru_addr = sockaddr_in(addr);
        self.call(request, &mut req)
    }

    fn up(&self, name: &str) -> io::Result<()> {
        let mut req = Self::ifreq(name);
        self.call(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        if flags & libc::IFF_UP as libc::c_short != 0 {
            return Ok(());
        }
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        self.call(libc::SIOCSIFFLAGS, &mut req)
    }

    fn add_default_route(&self, gateway: Ipv4Addr) -> io::Result<()> {
        let any = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: any,
            rt_gateway: sockaddr_in(gateway),
            rt_genmask: any,
            rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: std::ptr::null_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: SIOCADDRT reads one `struct rtentry`, laid out by `RtEntry`; rt_dev is
        // null, so the kernel follows no other pointer.
        let r = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SIOCADDRT as _,
                &mut rt as *mut RtEntry,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tine_agent_proto::ErrorCode;

    fn cfg(mac: &str, address: &str, gateway: Option<&str>) -> NetworkConfig {
        NetworkConfig {
            interface: None,
            mac: mac.into(),
            address: address.into(),
            gateway: gateway.map(Into::into),
            dns: vec!["10.0.0.53".into(), "2001:db8::1".into()],
        }
    }

    #[test]
    fn a_valid_config_parses_with_eth0_as_default_interface() {
        let plan = parse(&cfg(
            "02:74:0a:d1:00:02",
            "10.209.0.2/16",
            Some("10.209.0.1"),
        ))
        .unwrap();

        assert_eq!(plan.interface, "eth0");
        assert_eq!(plan.mac, [2, 0x74, 10, 0xd1, 0, 2]);
        assert_eq!(
            (plan.address, plan.prefix),
            (Ipv4Addr::new(10, 209, 0, 2), 16)
        );
        assert_eq!(plan.gateway, Some(Ipv4Addr::new(10, 209, 0, 1)));
        assert_eq!(
            resolv_conf(&plan.dns),
            "nameserver 10.0.0.53\nnameserver 2001:db8::1\n"
        );
    }

    #[test]
    fn bad_macs_addresses_and_gateways_are_invalid_arguments() {
        let bad = [
            cfg("03:00:00:00:00:01", "10.0.0.2/16", None),
            cfg("00:00:00:00:00:00", "10.0.0.2/16", None),
            cfg("02:00:00:00:00", "10.0.0.2/16", None),
            cfg("02:00:00:00:00:01:07", "10.0.0.2/16", None),
            cfg("02:00:00:00:00:01", "10.0.0.2", None),
            cfg("02:00:00:00:00:01", "10.0.0.2/31", None),
            cfg("02:00:00:00:00:01", "10.0.0.2/16", Some("10.1.0.1")),
            cfg("02:00:00:00:00:01", "10.0.0.2/16", Some("10.0.0.2")),
        ];
        for c in bad {
            assert_eq!(
                parse(&c).unwrap_err().code,
                ErrorCode::InvalidArgument,
                "{c:?}"
            );
        }
    }

    #[test]
    fn masks_follow_the_prefix() {
        assert_eq!(Ipv4Addr::from(mask_of(16)), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(
            Ipv4Addr::from(mask_of(30)),
            Ipv4Addr::new(255, 255, 255, 252)
        );
        assert_eq!(Ipv4Addr::from(mask_of(1)), Ipv4Addr::new(128, 0, 0, 0));
    }
}
