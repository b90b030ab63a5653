//! Networking errors. The API maps them to status codes (`tine-api` error.rs).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::subnet::Subnet;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    InvalidSubnet(String),
    #[error("invalid bridge name {0:?}: use 1-15 characters from a-z A-Z 0-9 _ -")]
    InvalidBridge(String),
    #[error("invalid DNS server {0:?}")]
    InvalidDns(String),
    #[error(
        "subnet {subnet} overlaps the host route {route} (dev {dev}); choose another with \
         `tine serve --subnet` (a private range the host does not use)"
    )]
    Overlap {
        subnet: Subnet,
        route: String,
        dev: String,
    },
    #[error("the address pool {subnet} is exhausted: all {size} guest addresses are in use")]
    Exhausted { subnet: Subnet, size: u32 },
    #[error(
        "the subnet is {configured} but {count} instance(s) hold addresses outside it \
         (e.g. {example}); remove them or keep the old subnet"
    )]
    SubnetInUse {
        configured: Subnet,
        count: usize,
        example: Ipv4Addr,
    },
    #[error(
        "bridge {bridge} is in use by the tine daemon of {owner}; stop that daemon, or give \
         this one a bridge and subnet of its own: `tine serve --bridge NAME --subnet CIDR`"
    )]
    BridgeInUse { bridge: String, owner: String },
    #[error("networking is off on this daemon (it was started with --network none)")]
    Disabled,
    #[error("cannot run `{program}` (Debian: apt-get install iproute2 nftables)")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
