//! What a QEMU process gets beyond its command line (where `-sandbox`
//! installs its seccomp filter): files and sockets only its owner can use,
//! and no capabilities beyond the one its TAP needs.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::Mode;
use rustix::thread::{remove_capability_from_bounding_set, CapabilitySet};

/// QEMU's sockets come out 0600 and its files 0600 (sockets are created
/// 0777 minus the umask, files 0666 minus it).
const UMASK: u32 = 0o177;

/// Highest capability number to try dropping (the kernel refuses numbers
/// past its last one with EINVAL, which is fine).
const LAST_CAP: u32 = 63;

/// In the child, between fork and exec: QEMU's umask, and a capability
/// bounding set with nothing in it but CAP_NET_ADMIN when it must create
/// its TAP. QEMU runs as root (it owns the files it uses), and root's
/// capabilities after exec are exactly the bounding set, so QEMU keeps no
/// DAC override, no mount, no module loading, no ptrace, no raw I/O.
pub(super) fn restrict(cmd: &mut tokio::process::Command, needs_tap: bool) {
    let keep = needs_tap.then_some(CapabilitySet::NET_ADMIN);
    // SAFETY: the closure only calls umask(2) and prctl(2), which are
    // async-signal-safe and allocate nothing, as required between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::umask(Mode::from_raw_mode(UMASK));
            for bit in 0..=LAST_CAP {
                let cap = CapabilitySet::from_bits_retain(1 << bit);
                if Some(cap) == keep {
                    continue;
                }
                match remove_capability_from_bounding_set(cap) {
                    Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        });
    }
}

/// Open (append, create 0600) a log file QEMU writes to.
pub(super) fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}
