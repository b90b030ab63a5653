//! The virtio-serial port: finding it, and sleeping while no host is connected.
//!
//! The guest driver answers `read` with 0 (EOF) at once whenever the host side is closed,
//! and `poll` reports POLLHUP, so neither can wait for a host to connect. What does wake
//! on a (dis)connect is SIGIO (the driver signals fasync owners on every host open or
//! close, and on incoming data). The agent blocks SIGIO in every thread and waits for it
//! with `sigtimedwait`, so an idle, unconnected agent sleeps instead of spinning, and a
//! host that connects is served at once.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::ptr;
use std::thread;
use std::time::Duration;

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};

const PORTS_DIR: &str = "/sys/class/virtio-ports";

/// Block SIGIO in the calling thread and, as the mask is inherited, in every thread it
/// spawns later. Call first thing in `main`. (`std::process::Command` resets the mask in
/// children.)
pub fn block_sigio() -> io::Result<()> {
    let set = sigio_set()?;
    // SAFETY: `set` is an initialized sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, ptr::null_mut()) };
    match rc {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Wait until SIGIO is pending (host connected, or data arrived) or `timeout` passes.
pub fn wait_sigio(timeout: Duration) {
    let Ok(set) = sigio_set() else {
        thread::sleep(timeout);
        return;
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are initialized and outlive the call; a null siginfo pointer
    // is allowed. EAGAIN (timeout) and EINTR both just mean "look again".
    unsafe { libc::sigtimedwait(&set, ptr::null_mut(), &ts) };
}

fn sigio_set() -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initializes the set it is given; sigaddset then only reads and
    // writes that initialized set.
    unsafe {
        if libc::sigemptyset(set.as_mut_ptr()) != 0
            || libc::sigaddset(set.as_mut_ptr(), libc::SIGIO) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(set.assume_init())
    }
}

/// Open the port named `name`, waiting for its device to appear.
pub fn open(name: &str) -> io::Result<File> {
    let mut waited = Duration::ZERO;
    loop {
        if let Some(dev) = find(name)? {
            let port = OpenOptions::new().read(true).write(true).open(&dev)?;
            enable_sigio(&port)?;
            eprintln!("tine-agent: serving on {}", dev.display());
            return Ok(port);
        }
        if waited == Duration::from_secs(5) {
            eprintln!("tine-agent: still waiting for virtio port {name:?}");
        }
        let step = Duration::from_millis(50);
        thread::sleep(step);
        waited += step;
    }
}

/// `/dev/vportNpM` of the port whose sysfs `name` is `name`.
fn find(name: &str) -> io::Result<Option<PathBuf>> {
    let entries = match fs::read_dir(PORTS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let port_name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim_end() == name {
            return Ok(Some(PathBuf::from("/dev").join(entry.file_name())));
        }
    }
    Ok(None)
}

/// Ask the driver to send this process SIGIO on host (dis)connects and incoming data.
fn enable_sigio(port: &File) -> io::Result<()> {
    // SAFETY: F_SETOWN takes an int pid and touches no memory; the fd is open.
    let rc = unsafe { libc::fcntl(port.as_raw_fd(), libc::F_SETOWN, libc::getpid()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = fcntl_getfl(port)?;
    fcntl_setfl(port, flags | OFlags::ASYNC)?;
    Ok(())
}
