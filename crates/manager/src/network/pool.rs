//! The address pool: which guest addresses of the subnet are taken.
//!
//! The pool itself is not persisted: the instance records are the leases
//! (each names its address, written atomically with the rest of the record),
//! and the pool is rebuilt from them at daemon start. An address is taken in
//! the pool before the record naming it is first saved and given back only
//! after that record is gone, so two records never name one address.
//! Allocation continues after the last address handed out (wrapping), so a
//! just-freed address is not handed out again at once.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::subnet::Subnet;

#[derive(Debug)]
pub struct Pool {
    subnet: Subnet,
    /// Guest indexes in use.
    used: BTreeSet<u32>,
    /// Where the next search starts.
    next: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// The address is not a guest address of the subnet.
    Outside,
    /// Another record already names it.
    Duplicate,
}

impl Pool {
    pub fn new(subnet: Subnet) -> Pool {
        Pool {
            subnet,
            used: BTreeSet::new(),
            next: 0,
        }
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    /// Mark an address from an existing record as taken.
    pub fn adopt(&mut self, ip: Ipv4Addr) -> Result<(), Taken> {
        let i = self.subnet.guest_index(ip).ok_or(Taken::Outside)?;
        if !self.used.insert(i) {
            return Err(Taken::Duplicate);
        }
        self.next = self.next.max(i + 1) % self.subnet.guest_count();
        Ok(())
    }

    /// Take a free address, or `None` when every one is taken.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let n = self.subnet.guest_count();
        if self.used.len() as u32 >= n {
            return None;
        }
        // The first free index at or after `next`, else the first from 0.
        let free_from = |start: u32, end: u32| {
            let mut want = start;
            for &u in self.used.range(start..end) {
                if u != want {
                    break;
                }
                want += 1;
            }
            (want < end).then_some(want)
        };
        let i = free_from(self.next, n).or_else(|| free_from(0, self.next))?;
        self.used.insert(i);
        self.next = (i + 1) % n;
        Some(self.subnet.guest(i))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        if let Some(i) = self.subnet.guest_index(ip) {
            self.used.remove(&i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap())
    }

    #[test]
    fn addresses_are_handed_out_in_order_and_never_twice() {
        let mut p = pool("10.1.0.0/24");

        let got: Vec<Ipv4Addr> = (0..253).map(|_| p.allocate().unwrap()).collect();

        assert_eq!(got[0], Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(got[252], Ipv4Addr::new(10, 1, 0, 254));
        let distinct: BTreeSet<_> = got.iter().collect();
        assert_eq!(distinct.len(), 253);
        assert_eq!(p.allocate(), None, "exhausted");
    }

    #[test]
    fn a_freed_address_is_reused_only_after_the_others() {
        let mut p = pool("10.1.0.0/29");
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();

        p.release(a);
        let c = p.allocate().unwrap();

        assert_ne!(c, a, "the freed address waits its turn");
        assert_ne!(c, b);
        let rest: Vec<_> = std::iter::from_fn(|| p.allocate()).collect();
        assert!(rest.contains(&a), "after a wrap it comes back: {rest:?}");
    }

    #[test]
    fn adopted_addresses_are_skipped_and_duplicates_or_strangers_refused() {
        let mut p = pool("10.1.0.0/24");

        p.adopt(Ipv4Addr::new(10, 1, 0, 2)).unwrap();
        p.adopt(Ipv4Addr::new(10, 1, 0, 3)).unwrap();

        assert_eq!(p.adopt(Ipv4Addr::new(10, 1, 0, 3)), Err(Taken::Duplicate));
        assert_eq!(p.adopt(Ipv4Addr::new(10, 2, 0, 3)), Err(Taken::Outside));
        assert_eq!(
            p.adopt(Ipv4Addr::new(10, 1, 0, 1)),
            Err(Taken::Outside),
            "the gateway"
        );
        assert_eq!(p.allocate(), Some(Ipv4Addr::new(10, 1, 0, 4)));
        assert_eq!(p.in_use(), 3);
    }

    #[test]
    fn a_slash_30_holds_one_guest() {
        let mut p = pool("10.1.0.0/30");
        assert_eq!(p.allocate(), Some(Ipv4Addr::new(10, 1, 0, 2)));
        assert_eq!(p.allocate(), None);
    }
}
