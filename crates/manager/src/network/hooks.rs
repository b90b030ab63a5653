//! The manager's networking hooks: what the lifecycle code calls, so that
//! run, boot, fork and remove each need one line for networking.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tine_agent_proto::client::AgentError;
use tine_agent_proto::{ErrorCode, ExecRequest, NetworkConfig};
use tracing::{info, warn};

use super::{CleanupReport, Lease, NetworkMode};
use crate::error::{chain, ManagerError};
use crate::ops::ms;
use crate::record::InstanceRecord;
use crate::state::State;
use crate::{agent, Manager, Slot};

/// How long a re-attached VM's agent gets to answer before its network is
/// re-applied (daemon start).
const RECOVER_WAIT: Duration = Duration::from_secs(60);

impl Manager {
    /// A lease for a new instance: by request, else the daemon's default.
    pub(crate) fn network_lease(
        &self,
        mode: Option<NetworkMode>,
        instance_id: &str,
    ) -> Result<Option<Lease>, ManagerError> {
        let want = match mode {
            Some(m) => m == NetworkMode::Default,
            None => self.net.enabled(),
        };
        Ok(if want {
            Some(self.net.allocate(instance_id)?)
        } else {
            None
        })
    }

    /// A lease if `wanted` (a fork whose source has a NIC).
    pub(crate) fn network_lease_if(
        &self,
        wanted: bool,
        instance_id: &str,
    ) -> Result<Option<Lease>, ManagerError> {
        let mode = if wanted {
            NetworkMode::Default
        } else {
            NetworkMode::None
        };
        self.network_lease(Some(mode), instance_id)
    }

    /// The lease of an instance that takes a saved state with (`nic`) or
    /// without a NIC: its own kept, a new one, or none — plus the one to give
    /// back once the record no longer names it.
    pub(crate) fn network_for_state(
        &self,
        rec: &InstanceRecord,
        nic: bool,
    ) -> Result<(Option<Lease>, Option<Lease>), ManagerError> {
        Ok(match (&rec.network, nic) {
            (Some(l), true) => (Some(l.clone()), None),
            (Some(l), false) => (None, Some(l.clone())),
            (None, true) => (self.network_lease_if(true, &rec.id)?, None),
            (None, false) => (None, None),
        })
    }

    /// Before the VM process starts: bridge up, the TAP down and detached.
    pub(crate) async fn network_prepare(&self, rec: &InstanceRecord) -> Result<(), ManagerError> {
        if let Some(lease) = &rec.network {
            self.net.prepare(lease).await?;
        }
        Ok(())
    }

    /// Once the agent answers: the guest takes the lease's MAC, address,
    /// route and DNS, then the TAP joins the bridge.
    pub(crate) async fn network_up(
        &self,
        slot: &Slot,
        rec: &InstanceRecord,
    ) -> Result<(), ManagerError> {
        let Some(lease) = &rec.network else {
            return Ok(());
        };
        let t0 = Instant::now();
        let config = self.net.guest_config(lease);
        match agent::configure_network(&slot.agent, &config).await {
            // An agent older than configure_network (an image built before
            // it): the same steps with the guest's `ip`.
            Err(AgentError::Remote {
                code: ErrorCode::BadRequest,
                ..
            }) => {
                warn!(name = rec.name, "guest agent lacks configure_network; using `ip` in the guest (rebuild the image)");
                let out = agent::exec(
                    &slot.agent,
                    &ExecRequest::new(["sh", "-c", &ip_script(&config)]),
                )
                .await
                .map_err(|e| self.agent_err(slot, e))?;
                if !out.status.success() {
                    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                    return Err(ManagerError::Failed(format!(
                        "configuring the guest network with `ip` failed: {stderr}"
                    )));
                }
            }
            r => r.map_err(|e| self.agent_err(slot, e))?,
        }
        let guest_ms = ms(t0);
        self.net.attach(lease).await?;
        info!(name = rec.name, ip = %lease.ip, mac = lease.mac, guest_ms, total_ms = ms(t0), "network up");
        Ok(())
    }

    /// The instance's record is gone: delete its TAP, free its address.
    pub(crate) async fn network_release(&self, lease: Option<&Lease>) {
        let Some(lease) = lease else { return };
        if let Err(e) = self.net.delete_tap(lease).await {
            warn!(tap = lease.tap, error = %chain(&e), "cannot delete TAP; `tine system cleanup` retries");
        }
        self.net.free(lease);
    }

    /// Daemon start, after the records are loaded: take their addresses,
    /// delete TAPs nobody owns, and finish the network of VMs whose start a
    /// crash interrupted (TAP not on the bridge).
    pub(crate) async fn network_recover(self: &Arc<Self>) -> Result<(), ManagerError> {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .read()
            .expect("slots")
            .values()
            .cloned()
            .collect();
        let records: Vec<InstanceRecord> = slots.iter().map(|s| s.record()).collect();
        self.net.adopt(
            records
                .iter()
                .filter_map(|r| r.network.as_ref().map(|l| (r.name.as_str(), l))),
        )?;
        let live: HashSet<String> = records
            .iter()
            .filter_map(|r| r.network.as_ref().map(|l| l.tap.clone()))
            .collect();
        for tap in self.net.sweep(&live).await {
            info!(tap, "removed a TAP no instance owns");
        }
        for (slot, rec) in slots.into_iter().zip(records) {
            let Some(lease) = &rec.network else { continue };
            if rec.state == State::Running && !self.net.attached(lease) {
                let mgr = self.clone();
                tokio::spawn(async move { mgr.network_reapply(&slot).await });
            }
        }
        Ok(())
    }

    async fn network_reapply(&self, slot: &Slot) {
        let t0 = Instant::now();
        loop {
            let rec = slot.record();
            let result = match self.network_up(slot, &rec).await {
                Err(ManagerError::Agent {
                    source: AgentError::Disconnected,
                    ..
                }) if t0.elapsed() < RECOVER_WAIT => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                r => r,
            };
            match result {
                Ok(()) => info!(name = rec.name, "network re-applied after a restart"),
                Err(e) => warn!(name = rec.name, error = %chain(&e), "cannot re-apply the network"),
            }
            return;
        }
    }

    /// Remove what networking left behind: TAPs no instance owns and, when
    /// no instance holds an address, the bridge, NAT rules and forwarding.
    pub async fn system_cleanup(&self) -> Result<CleanupReport, ManagerError> {
        let records: Vec<InstanceRecord> = self
            .slots
            .read()
            .expect("slots")
            .values()
            .map(|s| s.record())
            .collect();
        let live: HashSet<String> = records
            .iter()
            .filter_map(|r| r.network.as_ref().map(|l| l.tap.clone()))
            .collect();
        let report = self.net.cleanup(&live, live.len()).await?;
        info!(?report, "system cleanup");
        Ok(report)
    }
}

/// `configure_network` as a shell script for the guest's `ip` (busybox or
/// iproute2). Values come from a lease, never from the guest.
fn ip_script(c: &NetworkConfig) -> String {
    let dev = c.interface.as_deref().unwrap_or("eth0");
    let mut script = format!(
        "set -e; ip link set dev {dev} address {mac}; ip -4 addr flush dev {dev}; \
         ip addr add {addr} dev {dev}; ip link set dev {dev} up",
        mac = c.mac,
        addr = c.address
    );
    if let Some(gw) = &c.gateway {
        script.push_str(&format!("; ip route replace default via {gw} dev {dev}"));
    }
    if !c.dns.is_empty() {
        let lines: String = c.dns.iter().map(|d| format!("nameserver {d}\\n")).collect();
        script.push_str(&format!("; printf '{lines}' > /etc/resolv.conf"));
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ip_fallback_sets_mac_address_route_and_dns() {
        let c = NetworkConfig {
            interface: None,
            mac: "02:74:0a:d1:00:05".into(),
            address: "10.209.0.5/16".into(),
            gateway: Some("10.209.0.1".into()),
            dns: vec!["192.0.2.53".into()],
        };

        let s = ip_script(&c);

        assert!(s.starts_with("set -e; ip link set dev eth0 address 02:74:0a:d1:00:05; ip -4 addr flush dev eth0;"), "{s}");
        assert!(
            s.contains("ip addr add 10.209.0.5/16 dev eth0; ip link set dev eth0 up"),
            "{s}"
        );
        assert!(
            s.contains("ip route replace default via 10.209.0.1 dev eth0"),
            "{s}"
        );
        assert!(
            s.ends_with("printf 'nameserver 192.0.2.53\\n' > /etc/resolv.conf"),
            "{s}"
        );
    }
}
