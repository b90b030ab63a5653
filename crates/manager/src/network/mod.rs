//! Networking: an instance with a network has a TAP device on the tine
//! bridge, one IPv4 address from the daemon's subnet and a MAC derived from
//! that address. The host is the gateway (the subnet's first address), and
//! masquerades what leaves the subnet.
//!
//! Ownership and ordering:
//! - The [`Lease`] (address, MAC, TAP name) lives in the instance record. It
//!   is taken from the pool before the record is first saved and returned
//!   after the record is gone; the pool is rebuilt from the records at daemon
//!   start (`pool.rs`), so allocations survive restarts and never collide.
//! - A daemon with networking claims its bridge at start, for its whole
//!   life (`owner.rs`): a second daemon on the same bridge would hand out
//!   the same addresses from a pool of its own, so it is refused.
//! - Bridge, NAT rules and forwarding are set up before the first TAP is,
//!   idempotently (`host.rs`); `tine system cleanup` undoes them.
//! - Every VM start: QEMU starts with a virtio-net NIC on a TAP it creates
//!   (down, on no bridge), the agent answers and applies the lease in the
//!   guest (MAC, address, route, DNS), and only then is the TAP put on the
//!   bridge and up. A fork resumes with its source's MAC and address in guest
//!   memory and in QEMU's migrated device state (the `mac=` on its command
//!   line is overwritten by the stream); it never shows them on the bridge,
//!   and it is reported ready only with its own. The agent's MAC change
//!   reaches QEMU's device too (virtio-net control queue), so QEMU's receive
//!   filter follows.
//! - A TAP lives as long as its QEMU process (see `host.rs`); tagged TAPs
//!   that no instance owns are swept at daemon start and by cleanup.

mod error;
mod hooks;
mod host;
mod owner;
mod pool;
mod settings;
mod subnet;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use error::NetworkError;
pub use settings::{DEFAULT_BRIDGE, DEFAULT_SUBNET};
pub use subnet::Subnet;

use host::Host;
use owner::BridgeClaim;
use pool::{Pool, Taken};
pub use settings::Settings;

/// How the daemon does networking (`tine serve` flags).
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    /// Off: instances get no network, and asking for one is an error.
    pub enabled: bool,
    /// Overrides the saved subnet (default [`DEFAULT_SUBNET`]).
    pub subnet: Option<String>,
    /// Overrides the saved bridge name (default [`DEFAULT_BRIDGE`]).
    pub bridge: Option<String>,
    /// Name servers for guests; default: the host's non-loopback IPv4 ones.
    pub dns: Option<Vec<String>>,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            enabled: true,
            subnet: None,
            bridge: None,
            dns: None,
        }
    }
}

/// What a run request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A TAP on the tine bridge with an address from the pool.
    #[default]
    Default,
    /// No NIC at all.
    None,
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(NetworkMode::Default),
            "none" => Ok(NetworkMode::None),
            o => Err(format!("unknown network {o:?} (default or none)")),
        }
    }
}

/// An instance's network identity, stored in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    /// Host TAP device.
    pub tap: String,
}

impl Lease {
    /// Is this the lease tine gives instance `id` at this address (TAP name,
    /// MAC and prefix derived as `lease` derives them)?
    pub fn belongs_to(&self, id: &str) -> bool {
        self.tap == host::tap_name(id)
            && self.mac == subnet::mac_for(self.ip)
            && (subnet::MIN_PREFIX..=subnet::MAX_PREFIX).contains(&self.prefix)
    }
}

/// What `tine system cleanup` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CleanupReport {
    /// This daemon's TAPs that no instance owned.
    pub taps_removed: Vec<String>,
    pub bridge_removed: bool,
    pub nat_removed: bool,
    /// IPv4 forwarding turned off again (tine had turned it on).
    pub forwarding_restored: bool,
    /// Why the bridge and rules were kept, if they were.
    pub kept: Option<String>,
}

pub(crate) struct Network {
    active: Option<Active>,
}

struct Active {
    data_dir: PathBuf,
    host: Host,
    settings: Mutex<Settings>,
    dns: Vec<String>,
    pool: Mutex<Pool>,
    /// Bridge and rules are set up (false again after a cleanup).
    ready: tokio::sync::Mutex<bool>,
    /// This daemon alone uses the bridge (`owner.rs`).
    _claim: BridgeClaim,
}

impl Network {
    /// Resolve and check the settings (a subnet overlapping a host route is
    /// refused here, before any instance starts). Touches no device yet.
    pub(crate) fn open(opts: &NetworkOptions, data_dir: &Path) -> Result<Network, NetworkError> {
        if !opts.enabled {
            return Ok(Network { active: None });
        }
        let settings = Settings::resolve(data_dir, opts.subnet.as_deref(), opts.bridge.as_deref())?;
        let claim = BridgeClaim::take(&settings.bridge, data_dir)?;
        host::check_overlap(settings.subnet, &settings.bridge)?;
        let dns = match &opts.dns {
            Some(list) => list
                .iter()
                .map(|d| {
                    d.parse::<Ipv4Addr>()
                        .map(|a| a.to_string())
                        .map_err(|_| NetworkError::InvalidDns(d.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => host::default_dns().iter().map(|a| a.to_string()).collect(),
        };
        if dns.is_empty() {
            warn!("no name server a guest can reach (host resolv.conf lists only loopback ones); pass --dns");
        }
        settings.save(data_dir)?;
        let host = Host {
            bridge: settings.bridge.clone(),
            subnet: settings.subnet,
            tag: tag_of(data_dir),
        };
        Ok(Network {
            active: Some(Active {
                data_dir: data_dir.to_path_buf(),
                pool: Mutex::new(Pool::new(settings.subnet)),
                settings: Mutex::new(settings),
                host,
                dns,
                ready: tokio::sync::Mutex::new(false),
                _claim: claim,
            }),
        })
    }

    fn active(&self) -> Result<&Active, NetworkError> {
        self.active.as_ref().ok_or(NetworkError::Disabled)
    }

    pub(crate) fn enabled(&self) -> bool {
        self.active.is_some()
    }

    /// Take the addresses named by existing records (daemon start).
    pub(crate) fn adopt<'a>(
        &self,
        leases: impl Iterator<Item = (&'a str, &'a Lease)>,
    ) -> Result<(), NetworkError> {
        let Some(a) = &self.active else { return Ok(()) };
        let mut pool = a.pool.lock().expect("pool");
        let mut outside = Vec::new();
        for (name, lease) in leases {
            match pool.adopt(lease.ip) {
                Ok(()) => {}
                Err(Taken::Outside) => outside.push(lease.ip),
                Err(Taken::Duplicate) => {
                    warn!(name, ip = %lease.ip, "two instances hold one address")
                }
            }
        }
        if let Some(&example) = outside.first() {
            let configured = a.host.subnet;
            return Err(NetworkError::SubnetInUse {
                configured,
                count: outside.len(),
                example,
            });
        }
        info!(subnet = %a.host.subnet, bridge = a.host.bridge, in_use = pool.in_use(), "network ready");
        Ok(())
    }

    pub(crate) fn allocate(&self, instance_id: &str) -> Result<Lease, NetworkError> {
        let a = self.active()?;
        let subnet = a.host.subnet;
        let ip = a
            .pool
            .lock()
            .expect("pool")
            .allocate()
            .ok_or(NetworkError::Exhausted {
                subnet,
                size: subnet.guest_count(),
            })?;
        Ok(Lease {
            ip,
            prefix: subnet.prefix(),
            gateway: subnet.gateway(),
            mac: subnet::mac_for(ip),
            tap: host::tap_name(instance_id),
        })
    }

    /// Return the address to the pool (the record naming it is gone).
    pub(crate) fn free(&self, lease: &Lease) {
        if let Some(a) = &self.active {
            a.pool.lock().expect("pool").release(lease.ip);
        }
    }

    /// Bridge and rules are up, and the lease's TAP name is free for QEMU.
    pub(crate) async fn prepare(&self, lease: &Lease) -> Result<(), NetworkError> {
        let a = self.active()?;
        a.ensure_host().await?;
        a.host.prepare_tap(&lease.tap).await
    }

    pub(crate) async fn attach(&self, lease: &Lease) -> Result<(), NetworkError> {
        self.active()?.host.attach_tap(&lease.tap).await
    }

    pub(crate) fn attached(&self, lease: &Lease) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.host.tap_attached(&lease.tap))
    }

    pub(crate) async fn delete_tap(&self, lease: &Lease) -> Result<(), NetworkError> {
        match &self.active {
            Some(a) => a.host.delete_tap(&lease.tap).await,
            None => Ok(()),
        }
    }

    /// What the guest agent is told.
    pub(crate) fn guest_config(&self, lease: &Lease) -> tine_agent_proto::NetworkConfig {
        tine_agent_proto::NetworkConfig {
            interface: None,
            mac: lease.mac.clone(),
            address: format!("{}/{}", lease.ip, lease.prefix),
            gateway: Some(lease.gateway.to_string()),
            dns: self
                .active
                .as_ref()
                .map(|a| a.dns.clone())
                .unwrap_or_default(),
        }
    }

    /// Delete this daemon's TAPs that are not in `live`.
    pub(crate) async fn sweep(&self, live: &HashSet<String>) -> Vec<String> {
        let Some(a) = &self.active else { return vec![] };
        let mut removed = Vec::new();
        for tap in a.host.our_taps().into_iter().filter(|t| !live.contains(t)) {
            match a.host.delete_tap(&tap).await {
                Ok(()) => removed.push(tap),
                Err(e) => warn!(tap, error = %crate::error::chain(&e), "cannot remove a stale TAP"),
            }
        }
        removed
    }

    /// Orphan TAPs go; bridge, NAT and forwarding go too when no instance
    /// holds a lease (`leases` is how many do).
    pub(crate) async fn cleanup(
        &self,
        live: &HashSet<String>,
        leases: usize,
    ) -> Result<CleanupReport, NetworkError> {
        let mut report = CleanupReport {
            taps_removed: self.sweep(live).await,
            ..Default::default()
        };
        let Some(a) = &self.active else {
            report.kept = Some("networking is off on this daemon".into());
            return Ok(report);
        };
        let mut ready = a.ready.lock().await;
        if leases > 0 {
            report.kept = Some(format!(
                "{leases} instance(s) still hold addresses; remove them first"
            ));
            return Ok(report);
        }
        report.nat_removed = a.host.remove_nat().await?;
        report.bridge_removed = a.host.remove_bridge().await?;
        let mut s = a.settings.lock().expect("settings").clone();
        if s.forwarding_enabled_by_tine {
            host::disable_forwarding()?;
            s.forwarding_enabled_by_tine = false;
            s.save(&a.data_dir)?;
            *a.settings.lock().expect("settings") = s;
            report.forwarding_restored = true;
        }
        *ready = false;
        Ok(report)
    }
}

impl Active {
    async fn ensure_host(&self) -> Result<(), NetworkError> {
        let mut ready = self.ready.lock().await;
        if *ready {
            return Ok(());
        }
        self.host.ensure_bridge().await?;
        let mut s = self.settings.lock().expect("settings").clone();
        if host::enable_forwarding()? {
            s.forwarding_enabled_by_tine = true;
            s.save(&self.data_dir)?;
            *self.settings.lock().expect("settings") = s.clone();
        }
        self.host.ensure_nat(s.forwarding_enabled_by_tine).await?;
        info!(bridge = self.host.bridge, subnet = %self.host.subnet, "bridge and NAT set up");
        *ready = true;
        Ok(())
    }
}

/// The alias marking this daemon's TAPs: its data directory, made safe for
/// `ip -batch` (no whitespace or quotes).
fn tag_of(data_dir: &Path) -> String {
    let dir: String = data_dir
        .display()
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "/._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut tag = format!("tine:{dir}");
    tag.truncate(200);
    tag
}
