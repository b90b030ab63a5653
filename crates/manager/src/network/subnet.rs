//! IPv4 subnets: parsing, the host range, overlap, and the MAC of an address.
//! Pure: no I/O.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Shortest prefix accepted: a /8 is already 16 M addresses.
pub const MIN_PREFIX: u8 = 8;
/// Longest prefix accepted: a /30 has one gateway and one guest address.
pub const MAX_PREFIX: u8 = 30;

/// An IPv4 network `a.b.c.d/len` whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: u32,
    prefix: u8,
}

impl Subnet {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Subnet, String> {
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(format!("prefix length must be {MIN_PREFIX}..={MAX_PREFIX}"));
        }
        let network = u32::from(addr);
        if network & !mask(prefix) != 0 {
            let base = Ipv4Addr::from(network & mask(prefix));
            return Err(format!("host bits are set (did you mean {base}/{prefix}?)"));
        }
        if !addr.is_private() {
            return Err("not a private (RFC 1918) range".into());
        }
        Ok(Subnet { network, prefix })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    /// The host side of the bridge: the first address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// Guest addresses: after the gateway, before the broadcast address.
    pub fn guest_count(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 3
    }

    /// The `i`-th guest address, `0 <= i < guest_count()`.
    pub fn guest(&self, i: u32) -> Ipv4Addr {
        debug_assert!(i < self.guest_count());
        Ipv4Addr::from(self.network + 2 + i)
    }

    /// Index of a guest address, if it is one.
    pub fn guest_index(&self, ip: Ipv4Addr) -> Option<u32> {
        let ip = u32::from(ip);
        let i = ip.checked_sub(self.network + 2)?;
        (i < self.guest_count()).then_some(i)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.network
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.overlaps_route(other.network(), other.prefix)
    }

    /// Does a route `dest/prefix` (any prefix, 0..=32) share addresses with us?
    pub fn overlaps_route(&self, dest: Ipv4Addr, prefix: u8) -> bool {
        let shorter = prefix.min(self.prefix);
        let m = mask(shorter);
        u32::from(dest) & m == self.network & m
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let bad = |why: String| format!("invalid subnet {s:?}: {why}");
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| bad("want a.b.c.d/len".into()))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| bad(format!("{a:?} is not an IPv4 address")))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| bad(format!("{p:?} is not a prefix length")))?;
        Subnet::new(addr, prefix).map_err(bad)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subnet, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The MAC of a guest address: locally administered, unicast, `02:74` then
/// the four address bytes. Distinct addresses have distinct MACs, and an
/// address handed out again comes back with the same MAC, so a stale
/// neighbour entry for it is never wrong.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:74:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn a_slash_16_has_a_gateway_and_65533_guests() {
        let s = net("10.209.0.0/16");

        assert_eq!(s.gateway(), Ipv4Addr::new(10, 209, 0, 1));
        assert_eq!(s.guest_count(), 65533);
        assert_eq!(s.guest(0), Ipv4Addr::new(10, 209, 0, 2));
        assert_eq!(s.guest(65532), Ipv4Addr::new(10, 209, 255, 254));
        assert_eq!(s.guest_index(Ipv4Addr::new(10, 209, 1, 0)), Some(254));
        assert_eq!(s.guest_index(Ipv4Addr::new(10, 209, 0, 1)), None);
        assert_eq!(s.guest_index(Ipv4Addr::new(10, 209, 255, 255)), None);
        assert_eq!(s.to_string(), "10.209.0.0/16");
    }

    #[test]
    fn a_slash_30_has_exactly_one_guest() {
        let s = net("192.168.7.4/30");
        assert_eq!(s.guest_count(), 1);
        assert_eq!(s.guest(0), Ipv4Addr::new(192, 168, 7, 6));
    }

    #[test]
    fn malformed_public_and_unaligned_subnets_are_refused_with_the_reason() {
        let cases = [
            ("10.0.0.0", "a.b.c.d/len"),
            ("10.0.0/16", "not an IPv4 address"),
            ("10.0.0.0/x", "not a prefix length"),
            ("10.0.0.0/31", "prefix length must be"),
            ("10.0.0.0/4", "prefix length must be"),
            ("10.0.0.1/16", "did you mean 10.0.0.0/16"),
            ("8.8.0.0/16", "private"),
        ];
        for (input, why) in cases {
            let err = input.parse::<Subnet>().unwrap_err();
            assert!(err.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn overlap_is_symmetric_and_ignores_disjoint_ranges() {
        let s = net("10.209.0.0/16");

        assert!(s.overlaps(&net("10.0.0.0/8")));
        assert!(net("10.0.0.0/8").overlaps(&s));
        assert!(s.overlaps_route(Ipv4Addr::new(10, 209, 3, 0), 24));
        assert!(s.overlaps_route(Ipv4Addr::new(10, 209, 3, 7), 32));
        assert!(!s.overlaps(&net("10.210.0.0/16")));
        assert!(!s.overlaps_route(Ipv4Addr::new(192, 0, 2, 0), 24));
    }

    #[test]
    fn macs_are_unicast_local_and_follow_the_address() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 209, 0, 2)), "02:74:0a:d1:00:02");
        assert_ne!(
            mac_for(Ipv4Addr::new(10, 209, 0, 2)),
            mac_for(Ipv4Addr::new(10, 209, 0, 3))
        );
    }

    #[test]
    fn subnets_round_trip_through_json_as_strings() {
        let s = net("172.30.8.0/22");
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, "\"172.30.8.0/22\"");
        assert_eq!(serde_json::from_str::<Subnet>(&j).unwrap(), s);
    }
}
