//! What a QEMU process gets beyond its command line (where `-sandbox`
//! installs its seccomp filter): files and sockets only its owner can use,
//! no capabilities beyond the one its TAP needs, and a Landlock domain in
//! which it writes only beneath its own instance directory.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use landlock::{
    Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    Scope, ABI,
};
use rustix::fs::Mode;
use rustix::thread::{remove_capability_from_bounding_set, CapabilitySet};
use tracing::warn;

use crate::HvError;

/// QEMU's sockets come out 0600 and its files 0600 (sockets are created
/// 0777 minus the umask, files 0666 minus it).
const UMASK: u32 = 0o177;

/// Highest capability number to try dropping (the kernel refuses numbers
/// past its last one with EINVAL, which is fine).
const LAST_CAP: u32 = 63;

/// The Landlock ABI whose rights we ask for. Older kernels enforce the
/// subset they know (best effort); a kernel without Landlock enforces none,
/// which is logged once.
const LANDLOCK: ABI = ABI::V6;

/// In the child, between fork and exec: QEMU's umask, a capability
/// bounding set with nothing in it but CAP_NET_ADMIN when it must create
/// its TAP, and the Landlock domain `fence` (see [`fence`]). QEMU runs as
/// root (it owns the files it uses), and root's capabilities after exec
/// are exactly the bounding set, so QEMU keeps no DAC override, no mount,
/// no module loading, no ptrace, no raw I/O.
pub(super) fn restrict(cmd: &mut tokio::process::Command, needs_tap: bool, fence: Option<OwnedFd>) {
    let keep = needs_tap.then_some(CapabilitySet::NET_ADMIN);
    // SAFETY: the closure only calls umask(2), prctl(2) and
    // landlock_restrict_self(2), which are async-signal-safe and allocate
    // nothing, as required between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::umask(Mode::from_raw_mode(UMASK));
            if let Some(fd) = &fence {
                // Required for an unprivileged restrict; QEMU's own seccomp
                // sandbox sets it anyway.
                rustix::thread::set_no_new_privs(true)?;
                if libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
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

/// What one QEMU may open beyond the system's programs and libraries.
pub(super) struct Grants<'a> {
    /// Its instance directory: it may create its sockets there, nothing
    /// else (not even replace the instance's record).
    pub run_dir: &'a Path,
    /// Files (or directories) it only reads: its binary, the guest image,
    /// a restore's saved state, a privately mapped memory file (whose inode
    /// forks and their source share).
    pub read: Vec<&'a Path>,
    /// Files it writes, all existing before it starts: its disk, a shared
    /// memory file (one link).
    pub write: Vec<&'a Path>,
    /// Its logs and pid file (written, made before it starts).
    pub logs: [std::path::PathBuf; 3],
    /// It opens /dev/net/tun for its NIC.
    pub tap: bool,
}

/// The Landlock ruleset for one QEMU: exactly `grants` plus read and
/// execute of the system's programs and libraries, `/proc` and `/sys`, the
/// loader's cache and the device nodes it uses; no signals to, or abstract
/// sockets of, processes outside its domain. So a compromised QEMU cannot
/// touch another instance's files, a snapshot, the daemon's data, its own
/// record, or the memory file it shares with its source and siblings.
/// `None` where the kernel has no Landlock (warned once).
pub(super) fn fence(grants: &Grants) -> Result<Option<OwnedFd>, HvError> {
    let abi = LANDLOCK;
    let err = |e: landlock::RulesetError| HvError::StartFailed {
        stderr: format!("cannot build the Landlock ruleset for QEMU: {e}"),
    };
    let read_dir = AccessFs::from_read(abi);
    let read = AccessFs::ReadFile | AccessFs::Execute;
    let write = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    // (path, access, required)
    let mut rules: Vec<(&Path, BitFlags<AccessFs>, bool)> =
        vec![(grants.run_dir, AccessFs::MakeSock.into(), true)];
    for dir in [
        "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/proc", "/sys",
    ] {
        rules.push((Path::new(dir), read_dir, false));
    }
    // Of /etc only what the dynamic loader reads: no host secrets.
    rules.push((
        Path::new("/etc/ld.so.cache"),
        AccessFs::ReadFile.into(),
        false,
    ));
    rules.extend(grants.read.iter().map(|p| (*p, read, true)));
    rules.extend(grants.write.iter().map(|p| (*p, write, true)));
    rules.extend(grants.logs.iter().map(|p| (p.as_path(), write, true)));
    rules.push((Path::new("/dev/null"), device, false));
    for dev in ["/dev/zero", "/dev/urandom", "/dev/random"] {
        rules.push((Path::new(dev), AccessFs::ReadFile.into(), false));
    }
    rules.push((Path::new("/dev/kvm"), device, false));
    if grants.tap {
        rules.push((Path::new("/dev/net/tun"), device, true));
    }
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .map_err(err)?;
    for (path, access, required) in rules {
        let fd = match PathFd::new(path) {
            Ok(fd) => fd,
            // Paths a host lacks (/lib32, /dev/kvm) need no rule.
            Err(_) if !required => continue,
            Err(e) => {
                return Err(HvError::StartFailed {
                    stderr: format!("cannot grant QEMU {}: {e}", path.display()),
                })
            }
        };
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(err)?;
    }
    let fd: Option<OwnedFd> = ruleset.into();
    if fd.is_none() {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            warn!("this kernel has no Landlock: QEMU is not confined to its own files");
        }
    }
    Ok(fd)
}

/// Create (0600, truncating) a file QEMU will write through a descriptor
/// or a path it was granted at start.
pub(super) fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Open (append, create 0600) a log file QEMU writes to.
pub(super) fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}
