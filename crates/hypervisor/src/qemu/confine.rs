//! What a QEMU process gets beyond its command line (where `-sandbox`
//! installs its seccomp filter): files and sockets only its owner can use.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::Mode;

/// QEMU's sockets come out 0600 and its files 0600 (sockets are created
/// 0777 minus the umask, files 0666 minus it).
const UMASK: u32 = 0o177;

/// Set QEMU's umask in the child, between fork and exec.
pub(super) fn umask(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure only calls umask(2), which is async-signal-safe
    // and allocates nothing, as required between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::umask(Mode::from_raw_mode(UMASK));
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
