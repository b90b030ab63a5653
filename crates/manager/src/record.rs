//! The persisted instance record: one JSON file per instance directory,
//! written atomically (temp + fsync + rename), with a schema version.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tine_hypervisor::{Accel, MemoryMapping, VmProcess};

use crate::state::State;

pub const SCHEMA: u32 = 1;
pub const RECORD_FILE: &str = "instance.json";
/// Refuse absurd records instead of allocating for them.
const MAX_RECORD_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub schema: u32,
    pub id: String,
    pub name: String,
    pub state: State,
    pub image: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: Accel,
    /// Unix seconds.
    pub created_at: u64,
    /// The VM process while one should exist.
    pub process: Option<VmProcess>,
    /// Why the instance is in the Error state (or the last failure).
    pub error: Option<String>,
    /// Last boot: process start → agent answers.
    pub boot_ms: Option<f64>,
    /// How the VM maps its memory file: `shared` when the instance owns its
    /// RAM file (booted fresh), `private` (copy-on-write) for forks, whose
    /// file is a link to their source's and is never written.
    #[serde(default = "shared")]
    pub memory: MemoryMapping,
    /// In Standby: the device state carries the RAM (the VM mapped its
    /// memory file privately); restore loads it into a fresh memory file.
    #[serde(default)]
    pub ram_in_state: bool,
    /// The instance, snapshot or template this one was forked from.
    #[serde(default)]
    pub parent: Option<String>,
    /// Id of the template this fork shares memory with (its fork count).
    #[serde(default)]
    pub template: Option<String>,
    /// Set while a standby is under way (an intent record for recovery).
    #[serde(default)]
    pub pending_standby: bool,
    /// Digest of the parked device state, checked before it is loaded.
    #[serde(default)]
    pub state_digest: Option<crate::integrity::StateDigest>,
    /// A warm-pool entry: hidden until a fork claims it.
    #[serde(default)]
    pub pooled: bool,
    /// Address, MAC and TAP; the record is the lease (see `network/`).
    #[serde(default)]
    pub network: Option<crate::network::Lease>,
}

fn shared() -> MemoryMapping {
    MemoryMapping::Shared
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("record {path} is {size} bytes, over the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge { path: String, size: u64 },
    #[error("record {path} is malformed")]
    Malformed {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("record {path} has schema {found}, this tine reads {SCHEMA}")]
    Schema { path: String, found: u32 },
    #[error("record {path} is invalid: {problem}")]
    Invalid { path: String, problem: String },
}

impl InstanceRecord {
    pub fn load(dir: &Path) -> Result<InstanceRecord, RecordError> {
        let path = dir.join(RECORD_FILE);
        let p = path.display().to_string();
        let meta = std::fs::metadata(&path).map_err(|e| RecordError::Read {
            path: p.clone(),
            source: e,
        })?;
        if meta.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge {
                path: p,
                size: meta.len(),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| RecordError::Read {
            path: p.clone(),
            source: e,
        })?;
        Self::decode(&bytes, &p)
    }

    pub fn decode(bytes: &[u8], path: &str) -> Result<InstanceRecord, RecordError> {
        #[derive(Deserialize)]
        struct Version {
            schema: u32,
        }
        let v: Version = serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed {
            path: path.into(),
            source: e,
        })?;
        if v.schema != SCHEMA {
            return Err(RecordError::Schema {
                path: path.into(),
                found: v.schema,
            });
        }
        let rec: InstanceRecord =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed {
                path: path.into(),
                source: e,
            })?;
        rec.check().map_err(|problem| RecordError::Invalid {
            path: path.into(),
            problem,
        })?;
        Ok(rec)
    }

    /// What tine relies on when it uses a record: the id names the TAP and
    /// sockets, the name is how clients find it, the lease is passed to QEMU
    /// and `ip` verbatim, so each must be exactly what tine would have written.
    fn check(&self) -> Result<(), String> {
        if !crate::names::looks_like_id(&self.id) {
            return Err("id is not 12 hex digits".into());
        }
        crate::names::validate_name(&self.name)?;
        crate::names::validate_name(&self.image).map_err(|e| format!("image: {e}"))?;
        if let Some(lease) = &self.network {
            if !lease.belongs_to(&self.id) {
                return Err("network lease does not match the instance id and address".into());
            }
        }
        Ok(())
    }

    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("record serializes");
        tine_storage::write_atomic(&dir.join(RECORD_FILE), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InstanceRecord {
        InstanceRecord {
            schema: SCHEMA,
            id: "0123456789ab".into(),
            name: "web".into(),
            state: State::Running,
            image: "default".into(),
            memory_mib: 256,
            vcpus: 1,
            accel: Accel::Tcg,
            created_at: 1,
            process: Some(VmProcess {
                pid: 42,
                start_time: 7,
            }),
            error: None,
            boot_ms: Some(1200.5),
            memory: MemoryMapping::Private,
            ram_in_state: true,
            parent: Some("src".into()),
            template: Some("0123456789ab".into()),
            pending_standby: false,
            state_digest: Some(crate::integrity::StateDigest { bytes: 3, crc32: 9 }),
            pooled: false,
            network: Some(crate::network::Lease {
                ip: std::net::Ipv4Addr::new(10, 209, 0, 2),
                prefix: 16,
                gateway: std::net::Ipv4Addr::new(10, 209, 0, 1),
                mac: "02:74:0a:d1:00:02".into(),
                tap: "tn0123456789ab".into(),
            }),
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let rec = sample();
        rec.save(dir.path()).unwrap();
        let back = InstanceRecord::load(dir.path()).unwrap();
        assert_eq!(back, rec);
        back.save(dir.path()).unwrap();
        assert_eq!(InstanceRecord::load(dir.path()).unwrap(), rec);
    }

    #[test]
    fn a_future_schema_is_refused_by_version() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["schema"] = 99.into();
        let err = InstanceRecord::decode(v.to_string().as_bytes(), "x").unwrap_err();
        assert!(matches!(err, RecordError::Schema { found: 99, .. }));
    }

    #[test]
    fn a_lease_naming_another_tap_or_mac_is_invalid() {
        for edit in [
            |r: &mut InstanceRecord| r.network.as_mut().unwrap().tap = "x,script=/bin/sh".into(),
            |r: &mut InstanceRecord| r.network.as_mut().unwrap().mac = "02:74:0a:d1:00:03".into(),
            |r: &mut InstanceRecord| r.network.as_mut().unwrap().prefix = 33,
            |r: &mut InstanceRecord| r.id = "../../etc".into(),
            |r: &mut InstanceRecord| r.name = "A B".into(),
        ] {
            let mut rec = sample();
            edit(&mut rec);
            let bytes = serde_json::to_vec(&rec).unwrap();

            let err = InstanceRecord::decode(&bytes, "x").unwrap_err();

            assert!(matches!(err, RecordError::Invalid { .. }), "{err:?}");
        }
    }

    #[test]
    fn truncated_record_is_malformed() {
        let bytes = serde_json::to_vec(&sample()).unwrap();
        let err = InstanceRecord::decode(&bytes[..bytes.len() / 2], "x").unwrap_err();
        assert!(matches!(err, RecordError::Malformed { .. }));
    }
}
