//! Detect corrupt or truncated parked state before QEMU loads it: a
//! truncated memory file would be silently extended with zeros and a damaged
//! device state can hang the guest, so both are checked first.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ManagerError;

/// Size and CRC-32 of a device-state file, recorded when it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    pub bytes: u64,
    pub crc32: u32,
}

pub(crate) fn digest(path: &Path) -> Result<StateDigest, ManagerError> {
    let f = std::fs::File::open(path)
        .map_err(|e| ManagerError::io(format!("read {}", path.display()), e))?;
    digest_of(f).map_err(|e| ManagerError::io(format!("read {}", path.display()), e))
}

/// Size and CRC-32 of everything `r` yields.
pub fn digest_of(mut r: impl Read) -> std::io::Result<StateDigest> {
    let mut h = crc32fast::Hasher::new();
    // On the stack: a fresh heap buffer this size is a new mapping whose
    // page faults cost more than the CRC (it runs on every fork request).
    let mut buf = [0u8; 64 << 10];
    let mut bytes = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(StateDigest {
        bytes,
        crc32: h.finalize(),
    })
}

/// Compare a state file with its recorded digest (no record: nothing to check).
pub(crate) fn verify_state(path: &Path, expected: Option<StateDigest>) -> Result<(), ManagerError> {
    let Some(want) = expected else { return Ok(()) };
    let got = digest(path)?;
    if got != want {
        return Err(ManagerError::Failed(format!(
            "device state {} is corrupt or truncated ({} bytes, crc {:08x}; expected {} bytes, crc {:08x})",
            path.display(),
            got.bytes,
            got.crc32,
            want.bytes,
            want.crc32
        )));
    }
    Ok(())
}

/// A memory file must be exactly the guest's RAM size.
pub(crate) fn verify_memory(path: &Path, memory_mib: u32) -> Result<(), ManagerError> {
    let len = std::fs::metadata(path)
        .map_err(|e| ManagerError::io(format!("stat {}", path.display()), e))?
        .len();
    let want = u64::from(memory_mib) << 20;
    if len != want {
        return Err(ManagerError::Failed(format!(
            "memory file {} is {len} bytes, expected {want}: truncated or not this VM's",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_byte_or_a_truncation_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, vec![5u8; 100_000]).unwrap();
        let d = digest(&p).unwrap();
        assert!(verify_state(&p, Some(d)).is_ok());

        let mut bytes = std::fs::read(&p).unwrap();
        bytes[500] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(verify_state(&p, Some(d)).is_err());

        std::fs::write(&p, &bytes[..50_000]).unwrap();
        assert!(verify_state(&p, Some(d))
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }

    #[test]
    fn memory_file_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(255 << 20)
            .unwrap();
        assert!(verify_memory(&p, 256).is_err());
        std::fs::File::create(&p)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        assert!(verify_memory(&p, 256).is_ok());
    }
}
