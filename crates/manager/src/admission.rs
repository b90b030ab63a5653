//! Admission control: per-instance caps and the host-wide memory budget.
//!
//! Every path that runs guests asks first, for all of them at once: `run`,
//! `start`/`restore` (and the restore a fork of a parked fork does), and a
//! fork burst with target `running` (all N up front, all-or-nothing).
//! The budget is `memory_overcommit` × host MemTotal. What counts against
//! it: the guest memory of every instance whose record names a live VM
//! process, except warm-pool entries (they wait with no guest RAM touched;
//! the fork that claims one is counted), plus the tickets of operations
//! under way. A ticket is held until its operation ends, so a VM that just
//! started may be counted twice for a moment: admission errs on the side
//! of refusing, never of overcommitting. Checking and taking a ticket
//! happen under one lock, so concurrent requests cannot both squeeze into
//! the last gap.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Manager, ManagerError};

/// Host-wide and per-instance limits (`tine serve` flags).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most vCPUs one instance may have.
    pub max_vcpus: u32,
    /// Most guest memory one instance may have, MiB.
    pub max_memory_mib: u32,
    /// Live guest memory may add up to this × `host_memory_mib`. Above 1.0
    /// because forks share their source's pages until they write them.
    pub memory_overcommit: f64,
    /// The host's memory the ratio applies to (MemTotal), MiB.
    pub host_memory_mib: u64,
    /// Free space an operation that writes to the data directory must
    /// leave behind, bytes.
    pub disk_reserve: u64,
}

pub const DEFAULT_OVERCOMMIT: f64 = 2.0;
pub const DEFAULT_DISK_RESERVE: u64 = 256 << 20;

impl Limits {
    /// Defaults from this host: its CPU count and MemTotal.
    pub fn detect() -> Limits {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let host_memory_mib = host_memory_mib().unwrap_or(1024);
        Limits {
            max_vcpus: cpus,
            max_memory_mib: u32::try_from(host_memory_mib).unwrap_or(u32::MAX),
            memory_overcommit: DEFAULT_OVERCOMMIT,
            host_memory_mib,
            disk_reserve: DEFAULT_DISK_RESERVE,
        }
    }

    fn budget_mib(&self) -> u64 {
        (self.memory_overcommit * self.host_memory_mib as f64) as u64
    }
}

/// MemTotal from /proc/meminfo, MiB.
fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_memtotal(&text)
}

fn parse_memtotal(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("{vcpus} vCPUs is over the per-instance limit of {max} (--max-vcpus)")]
    Vcpus { vcpus: u32, max: u32 },
    #[error("{} of memory is over the per-instance limit of {} (--max-memory)", size(*.memory_mib as u64), size(*.max_mib as u64))]
    Memory { memory_mib: u32, max_mib: u32 },
    #[error(
        "{what} of {count} × {} would commit {} of guest memory ({} already committed); \
         the limit is {ratio:?} × {} = {} (--memory-overcommit)",
        size(*.each_mib), size(.committed_mib + *.count as u64 * .each_mib), size(*.committed_mib),
        size(*.host_mib), size(*.budget_mib)
    )]
    Overcommit {
        what: String,
        count: u32,
        each_mib: u64,
        committed_mib: u64,
        ratio: f64,
        host_mib: u64,
        budget_mib: u64,
    },
    #[error(
        "not enough disk space: {what} writes about {} and must leave {} free (--disk-reserve); {} is free in {path}",
        bytes(*.need), bytes(*.reserve), bytes(*.free)
    )]
    Disk {
        what: String,
        need: u64,
        reserve: u64,
        free: u64,
        path: String,
    },
}

/// MiB as "256 MiB" or "7.1 GiB".
pub(crate) fn size(mib: u64) -> String {
    if mib < 1024 {
        format!("{mib} MiB")
    } else {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    }
}

pub(crate) fn bytes(b: u64) -> String {
    if b < 1 << 20 {
        format!("{} KiB", b.div_ceil(1024))
    } else {
        size(b.div_ceil(1 << 20))
    }
}

#[derive(Default)]
pub(crate) struct Admission {
    /// Memory promised to operations under way, MiB.
    pending_mib: Arc<Mutex<u64>>,
    /// The data directory's filesystem clones extents (see `space.rs`).
    pub(crate) reflink: std::sync::OnceLock<bool>,
}

/// Guest memory admitted for an operation; given back as it ends.
pub(crate) struct Ticket {
    pending_mib: Arc<Mutex<u64>>,
    each_mib: u64,
    left: AtomicU32,
}

impl Ticket {
    /// One of the VMs of a burst is done (running and counted, or failed).
    pub(crate) fn release_one(&self) {
        if self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            *self.pending_mib.lock().expect("pending") -= self.each_mib;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let left = *self.left.get_mut() as u64;
        *self.pending_mib.lock().expect("pending") -= left * self.each_mib;
    }
}

/// What an operation is about to start.
pub(crate) struct Demand<'a> {
    /// "run", "start", "fork" …, for the error message.
    pub what: &'a str,
    pub count: u32,
    pub memory_mib: u32,
    pub vcpus: u32,
}

impl Manager {
    /// Check caps and the memory budget for `d`; on success its memory
    /// counts as committed until the ticket is dropped.
    pub(crate) fn admit(&self, d: Demand) -> Result<Ticket, ManagerError> {
        let l = &self.cfg.limits;
        if d.vcpus > l.max_vcpus {
            return Err(LimitError::Vcpus {
                vcpus: d.vcpus,
                max: l.max_vcpus,
            }
            .into());
        }
        if d.memory_mib > l.max_memory_mib {
            return Err(LimitError::Memory {
                memory_mib: d.memory_mib,
                max_mib: l.max_memory_mib,
            }
            .into());
        }
        let pending = self.admission.pending_mib.clone();
        let mut pending_mib = pending.lock().expect("pending");
        let committed_mib = self.live_memory_mib() + *pending_mib;
        let asked = d.count as u64 * d.memory_mib as u64;
        if committed_mib + asked > l.budget_mib() {
            return Err(LimitError::Overcommit {
                what: d.what.to_string(),
                count: d.count,
                each_mib: d.memory_mib as u64,
                committed_mib,
                ratio: l.memory_overcommit,
                host_mib: l.host_memory_mib,
                budget_mib: l.budget_mib(),
            }
            .into());
        }
        *pending_mib += asked;
        drop(pending_mib);
        Ok(Ticket {
            pending_mib: pending,
            each_mib: d.memory_mib as u64,
            left: AtomicU32::new(d.count),
        })
    }

    /// Admit starting an existing instance's VM.
    pub(crate) fn admit_instance(
        &self,
        what: &str,
        rec: &crate::InstanceRecord,
    ) -> Result<Ticket, ManagerError> {
        self.admit(Demand {
            what,
            count: 1,
            memory_mib: rec.memory_mib,
            vcpus: rec.vcpus,
        })
    }

    /// Disk and memory for a fork burst of `count`, all of it up front. The
    /// ticket (target running only) is given back one fork at a time.
    pub(crate) fn admit_fork(
        &self,
        req: &crate::ForkRequest,
        count: u32,
    ) -> Result<Option<Arc<Ticket>>, ManagerError> {
        let Some(cost) = self.fork_cost(req, count)? else {
            return Ok(None);
        };
        let forks = if count == 1 {
            "1 fork".to_string()
        } else {
            format!("{count} forks")
        };
        self.check_disk(&format!("{forks} of {}", req.source), cost.disk_bytes)?;
        if req.target != crate::ForkTarget::Running {
            return Ok(None);
        }
        let d = Demand {
            what: "fork",
            count,
            memory_mib: cost.memory_mib,
            vcpus: cost.vcpus,
        };
        self.admit(d).map(|t| Some(Arc::new(t)))
    }

    /// Guest memory of every instance with a live VM process, MiB. Warm-pool
    /// entries wait with no guest RAM touched; a fork that claims one is
    /// counted by its burst's ticket, then as a live VM.
    fn live_memory_mib(&self) -> u64 {
        let slots = self.slots.read().expect("slots");
        slots
            .values()
            .map(|s| s.rec.lock().expect("rec").clone())
            .filter(|r| r.process.is_some() && !r.pooled)
            .map(|r| r.memory_mib as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memtotal_is_read_in_mib() {
        let text = "MemTotal:       24684096 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_memtotal(text), Some(24105));
        assert_eq!(parse_memtotal("nothing"), None);
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(size(256), "256 MiB");
        assert_eq!(size(7270), "7.1 GiB");
        assert_eq!(bytes(100_000), "98 KiB");
        assert_eq!(bytes(300 << 20), "300 MiB");
    }

    #[test]
    fn overcommit_message_names_every_number() {
        let e = LimitError::Overcommit {
            what: "fork".into(),
            count: 25,
            each_mib: 256,
            committed_mib: 900,
            ratio: 2.0,
            host_mib: 24105,
            budget_mib: 48210,
        };
        assert_eq!(
            e.to_string(),
            "fork of 25 × 256 MiB would commit 7.1 GiB of guest memory (900 MiB already committed); \
             the limit is 2.0 × 23.5 GiB = 47.1 GiB (--memory-overcommit)"
        );
    }

    #[test]
    fn a_ticket_gives_back_what_is_left_when_dropped() {
        let pending = Arc::new(Mutex::new(3 * 256));
        let t = Ticket {
            pending_mib: pending.clone(),
            each_mib: 256,
            left: AtomicU32::new(3),
        };
        t.release_one();
        assert_eq!(*pending.lock().unwrap(), 512);
        drop(t);
        assert_eq!(*pending.lock().unwrap(), 0);
    }
}
