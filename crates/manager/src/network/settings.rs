//! The daemon's network settings, persisted as `DATA_DIR/network.json`
//! (written atomically): the subnet and bridge the leases in instance
//! records refer to, and whether tine turned IPv4 forwarding on (so cleanup
//! turns it off again). Flags given to `tine serve` override and are saved.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::NetworkError;
use super::subnet::Subnet;

pub const SETTINGS_FILE: &str = "network.json";
const SCHEMA: u32 = 1;
/// Default subnet: private, and clear of the ranges Docker, Kubernetes and
/// common home routers pick by default.
pub const DEFAULT_SUBNET: &str = "10.209.0.0/16";
pub const DEFAULT_BRIDGE: &str = "tine0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub schema: u32,
    pub subnet: Subnet,
    pub bridge: String,
    #[serde(default)]
    pub forwarding_enabled_by_tine: bool,
}

impl Settings {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(SETTINGS_FILE)
    }

    /// Saved settings with `subnet`/`bridge` overrides applied.
    pub fn resolve(
        data_dir: &Path,
        subnet: Option<&str>,
        bridge: Option<&str>,
    ) -> Result<Settings, NetworkError> {
        let saved = Self::load(data_dir)?;
        let subnet = match (subnet, &saved) {
            (Some(s), _) => s.parse().map_err(NetworkError::InvalidSubnet)?,
            (None, Some(saved)) => saved.subnet,
            (None, None) => DEFAULT_SUBNET.parse().expect("default subnet"),
        };
        let bridge = match (bridge, &saved) {
            (Some(b), _) => b.to_string(),
            (None, Some(saved)) => saved.bridge.clone(),
            (None, None) => DEFAULT_BRIDGE.to_string(),
        };
        validate_bridge(&bridge)?;
        let forwarding_enabled_by_tine = saved.is_some_and(|s| s.forwarding_enabled_by_tine);
        Ok(Settings {
            schema: SCHEMA,
            subnet,
            bridge,
            forwarding_enabled_by_tine,
        })
    }

    fn load(data_dir: &Path) -> Result<Option<Settings>, NetworkError> {
        let path = Self::path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(NetworkError::Io {
                    what: "cannot read",
                    path,
                    source,
                })
            }
        };
        let s = Settings::decode(&bytes).map_err(|e| NetworkError::Io {
            what: "malformed",
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        Ok(Some(s))
    }

    /// Parse `network.json` (what `save` wrote): schema, subnet and bridge name.
    pub fn decode(bytes: &[u8]) -> Result<Settings, String> {
        let s: Settings = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if s.schema != SCHEMA {
            return Err(format!("unknown schema {}", s.schema));
        }
        validate_bridge(&s.bridge).map_err(|e| e.to_string())?;
        Ok(s)
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), NetworkError> {
        let path = Self::path(data_dir);
        let bytes = serde_json::to_vec_pretty(self).expect("settings serialize");
        tine_storage::write_atomic(&path, &bytes).map_err(|source| NetworkError::Io {
            what: "cannot write",
            path,
            source,
        })
    }
}

/// Linux interface names: 1-15 bytes; we also keep them shell- and nft-safe.
pub fn validate_bridge(name: &str) -> Result<(), NetworkError> {
    let ok = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.starts_with(super::host::TAP_PREFIX);
    if ok {
        Ok(())
    } else {
        Err(NetworkError::InvalidBridge(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_saved_values_then_overrides() {
        let dir = tempfile::tempdir().unwrap();

        let first = Settings::resolve(dir.path(), None, None).unwrap();
        assert_eq!(
            (first.subnet.to_string().as_str(), first.bridge.as_str()),
            (DEFAULT_SUBNET, DEFAULT_BRIDGE)
        );
        let mut custom = Settings::resolve(dir.path(), Some("10.50.0.0/24"), Some("br-x")).unwrap();
        custom.forwarding_enabled_by_tine = true;
        custom.save(dir.path()).unwrap();

        let again = Settings::resolve(dir.path(), None, None).unwrap();
        assert_eq!(again, custom);
        let overridden = Settings::resolve(dir.path(), Some("10.60.0.0/16"), None).unwrap();
        assert_eq!(overridden.subnet.to_string(), "10.60.0.0/16");
        assert_eq!(overridden.bridge, "br-x");
        assert!(
            overridden.forwarding_enabled_by_tine,
            "remembered across restarts"
        );
    }

    #[test]
    fn bad_bridge_names_are_refused() {
        for bad in ["", "a b", "x".repeat(16).as_str(), "tn0", "br;rm"] {
            assert!(
                matches!(validate_bridge(bad), Err(NetworkError::InvalidBridge(_))),
                "{bad:?}"
            );
        }
        validate_bridge("tine0").unwrap();
    }
}
