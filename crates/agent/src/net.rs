//! `configure_network`: give an interface its MAC, one IPv4 address, a default route and
//! DNS servers.
//!
//! Done with netdevice ioctls and two rtnetlink messages, not by running `ip`: this is on a
//! fork's critical path, and under TCG every new program costs milliseconds. Each step is
//! skipped when the interface already has that value, so applying the same config twice
//! changes nothing.
//!
//! Order: IPv6 off on the interface (tine networks are IPv4-only; set once at first boot,
//! forks inherit it, and a MAC change then does no IPv6 address work), MAC (virtio-net
//! passes it to the device, which filters on it), the address, link up, default route,
//! resolv.conf. A fork's address is changed by adding the new one and deleting its
//! source's with `promote_secondaries` on: the new address is promoted in place, so routes
//! and the neighbour cache (the gateway's MAC) survive. Setting it with SIOCSIFADDR instead
//! drops the last address twice (classful mask, then the real one): every route and
//! neighbour entry is flushed and rebuilt.

use std::fs;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use tine_agent_proto::{NetworkConfig, Reply};

use crate::ops::{replace_file, Failure};

const DEFAULT_INTERFACE: &str = "eth0";
const NLMSG_HDR: usize = 16;
const RESOLV_CONF: &str = "/etc/resolv.conf";

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
    let interface = cfg.interface.clone().unwrap_or_else(|| DEFAULT_INTERFACE.into());
    if interface.is_empty() || interface.len() >= libc::IFNAMSIZ || interface.contains(['/', '\0', ' ']) {
        return Err(Failure::invalid(format!("invalid interface name {interface:?}")));
    }
    let mac = parse_mac(&cfg.mac).ok_or_else(|| Failure::invalid(format!("invalid unicast MAC {:?}", cfg.mac)))?;
    let (address, prefix) = cfg
        .address
        .split_once('/')
        .and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)))
        .filter(|(_, p)| (1..=30).contains(p))
        .ok_or_else(|| Failure::invalid(format!("invalid address {:?} (want a.b.c.d/1..30)", cfg.address)))?;
    let gateway = match &cfg.gateway {
        None => None,
        Some(g) => {
            let gw: Ipv4Addr = g.parse().map_err(|_| Failure::invalid(format!("invalid gateway {g:?}")))?;
            let mask = mask_of(prefix);
            if u32::from(gw) & mask != u32::from(address) & mask || gw == address {
                return Err(Failure::invalid(format!("gateway {gw} is not a peer in {}", cfg.address)));
            }
            Some(gw)
        }
    };
    let dns = cfg
        .dns
        .iter()
        .map(|d| d.parse::<IpAddr>().map_err(|_| Failure::invalid(format!("invalid DNS server {d:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan { interface, mac, address, prefix, gateway, dns })
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

    set_sysctl(&format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), true)?;
    set_sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/promote_secondaries"), false)?;
    if sock.hwaddr(name).map_err(io("read MAC of"))? != plan.mac {
        sock.set_hwaddr(name, plan.mac).map_err(io("set MAC of"))?;
    }
    let current = sock.addr(libc::SIOCGIFADDR, name).map_err(io("read address of"))?;
    let netmask = sock.addr(libc::SIOCGIFNETMASK, name).map_err(io("read netmask of"))?;
    if current != Some(plan.address) || netmask != Some(Ipv4Addr::from(mask_of(plan.prefix))) {
        let index = sock.index(name).map_err(io("find"))?;
        let nl = Netlink::new().map_err(|e| Failure::io("netlink socket", &e))?;
        match nl.address(libc::RTM_NEWADDR, index, plan.address, plan.prefix) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(Failure::io("add address", &e)),
            _ => {}
        }
        if let (Some(old), Some(mask)) = (current.filter(|a| *a != plan.address), netmask) {
            let old_prefix = u32::from(mask).count_ones() as u8;
            nl.address(libc::RTM_DELADDR, index, old, old_prefix).map_err(|e| Failure::io("remove the old address", &e))?;
        }
    }
    sock.up(name).map_err(io("bring up"))?;
    if let Some(gw) = plan.gateway {
        match sock.add_default_route(gw) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(Failure::io("add default route", &e)),
            _ => {}
        }
    }
    if !plan.dns.is_empty() {
        let want = resolv_conf(&plan.dns);
        if fs::read_to_string(RESOLV_CONF).ok().as_deref() != Some(want.as_str()) {
            replace_file(Path::new(RESOLV_CONF), want.as_bytes(), 0o644).map_err(|e| Failure::io(RESOLV_CONF, &e))?;
        }
    }
    Ok(Reply::Ok)
}

/// Set a boolean sysctl if it is not already `on` (one read when it is). A missing file
/// (IPv6 not built in) is fine for `optional`.
fn set_sysctl(path: &str, optional: bool) -> Result<(), Failure> {
    match fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => fs::write(path, "1\n").map_err(|e| Failure::io(path, &e)),
        Err(e) if optional && e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failure::io(path, &e)),
    }
}

/// An rtnetlink `RTM_NEWADDR` / `RTM_DELADDR` request for one IPv4 address, with an ack.
pub fn address_message(kind: u16, seq: u32, index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let mut flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    if kind == libc::RTM_NEWADDR {
        flags |= (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    }
    let broadcast = Ipv4Addr::from(u32::from(addr) | !mask_of(prefix));
    let attrs = [(libc::IFA_LOCAL, addr), (libc::IFA_ADDRESS, addr), (libc::IFA_BROADCAST, broadcast)];
    let len = NLMSG_HDR + 8 + attrs.len() * 8;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct ifaddrmsg: family, prefix length, flags, scope (universe), interface index.
    m.extend_from_slice(&[libc::AF_INET as u8, prefix, 0, 0]);
    m.extend_from_slice(&index.to_ne_bytes());
    for (kind, a) in attrs {
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&a.octets());
    }
    m
}

/// The errno of an `NLMSG_ERROR` ack for `seq` (0: success), if `reply` is one.
pub fn ack_errno(reply: &[u8], seq: u32) -> Option<i32> {
    let word = |at: usize| reply.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")));
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != libc::NLMSG_ERROR as u16 || word(8)? != seq {
        return None;
    }
    Some(-(word(NLMSG_HDR)? as i32))
}

/// A NETLINK_ROUTE socket for address changes.
struct Netlink(OwnedFd);

impl Netlink {
    fn new() -> io::Result<Netlink> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        Ok(Netlink(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn address(&self, kind: u16, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let seq = u32::from(kind);
        let msg = address_message(kind, seq, index, addr, prefix);
        // SAFETY: zeroed sockaddr_nl is valid; pid 0 addresses the kernel.
        let mut to: libc::sockaddr_nl = unsafe { mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: msg and to are valid for the lengths given for the duration of the call.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 1024];
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            match ack_errno(&buf[..n as usize], seq) {
                Some(0) => return Ok(()),
                Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                None => continue,
            }
        }
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
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
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

    fn index(&self, name: &str) -> io::Result<u32> {
        let mut req = Self::ifreq(name);
        self.call(libc::SIOCGIFINDEX, &mut req)?;
        // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
        Ok(unsafe { req.ifr_ifru.ifru_ifindex } as u32)
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
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SIOCADDRT as _, &mut rt as *mut RtEntry) };
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
        let plan = parse(&cfg("02:74:0a:d1:00:02", "10.209.0.2/16", Some("10.209.0.1"))).unwrap();

        assert_eq!(plan.interface, "eth0");
        assert_eq!(plan.mac, [2, 0x74, 10, 0xd1, 0, 2]);
        assert_eq!((plan.address, plan.prefix), (Ipv4Addr::new(10, 209, 0, 2), 16));
        assert_eq!(plan.gateway, Some(Ipv4Addr::new(10, 209, 0, 1)));
        assert_eq!(resolv_conf(&plan.dns), "nameserver 10.0.0.53\nnameserver 2001:db8::1\n");
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
            assert_eq!(parse(&c).unwrap_err().code, ErrorCode::InvalidArgument, "{c:?}");
        }
    }

    #[test]
    fn address_requests_carry_index_prefix_and_addresses_and_acks_parse() {
        let m = address_message(libc::RTM_NEWADDR, 7, 2, Ipv4Addr::new(10, 209, 0, 5), 16);

        assert_eq!(m.len(), 48);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 48);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), libc::RTM_NEWADDR);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 16, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 2);
        assert_eq!(&m[28..32], &[10, 209, 0, 5], "IFA_LOCAL");
        assert_eq!(&m[44..48], &[10, 209, 255, 255], "IFA_BROADCAST");
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        ack[8..12].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(ack_errno(&ack, 7), Some(0));
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(ack_errno(&ack, 7), Some(libc::EEXIST));
        assert_eq!(ack_errno(&ack, 8), None, "another request's ack");
    }

    #[test]
    fn masks_follow_the_prefix() {
        assert_eq!(Ipv4Addr::from(mask_of(16)), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(Ipv4Addr::from(mask_of(30)), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(Ipv4Addr::from(mask_of(1)), Ipv4Addr::new(128, 0, 0, 0));
    }
}
