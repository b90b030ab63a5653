//! The small requests: each takes its arguments and returns a reply or a failure.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustix::ioctl::{self, opcode, NoArg, Opcode, Setter};
use rustix::time::{clock_settime, ClockId, Timespec};
use tine_agent_proto::{ErrorCode, Pong, Reply, MAX_ENTROPY, MAX_PAYLOAD, PROTOCOL_VERSION};

/// Why a request failed, as sent in an `error` frame.
#[derive(Debug)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure {
            code: ErrorCode::InvalidArgument,
            message: message.into(),
        }
    }

    pub fn io(what: &str, e: &dyn std::fmt::Display) -> Self {
        Failure {
            code: ErrorCode::Io,
            message: format!("{what}: {e}"),
        }
    }
}

type OpResult = Result<Reply, Failure>;

pub fn ping() -> OpResult {
    let uptime = fs::read_to_string("/proc/uptime").map_err(|e| Failure::io("/proc/uptime", &e))?;
    let secs: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    Ok(Reply::Pong(Pong {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: PROTOCOL_VERSION,
        uptime_ms: (secs * 1000.0) as u64,
        boot_id: boot_id.trim().to_owned(),
    }))
}

pub fn set_time(unix_nanos: u64) -> OpResult {
    let ts = Timespec {
        tv_sec: (unix_nanos / 1_000_000_000) as _,
        tv_nsec: (unix_nanos % 1_000_000_000) as _,
    };
    clock_settime(ClockId::Realtime, ts).map_err(|e| Failure::io("clock_settime", &e))?;
    Ok(Reply::Ok)
}

pub fn set_identity(hostname: Option<&str>, machine_id: Option<&str>) -> OpResult {
    // Validate both before changing either.
    if let Some(name) = hostname {
        if !valid_hostname(name) {
            return Err(Failure::invalid(format!("invalid hostname {name:?}")));
        }
    }
    if let Some(id) = machine_id {
        if id.len() != 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Failure::invalid(
                "machine_id must be 32 lowercase hex digits",
            ));
        }
    }
    // The guest sees the new files at once; they reach its disk in the
    // background (a fork is ready without waiting on two disk flushes, the
    // bulk of its identity step; stop and standby sync the guest anyway).
    let mut written = Vec::new();
    if let Some(name) = hostname {
        rustix::system::sethostname(name.as_bytes()).map_err(|e| Failure::io("sethostname", &e))?;
        let path = Path::new("/etc/hostname");
        write_replace(path, format!("{name}\n").as_bytes(), 0o644, false)
            .map_err(|e| Failure::io("/etc/hostname", &e))?;
        written.push(path);
    }
    if let Some(id) = machine_id {
        let path = Path::new("/etc/machine-id");
        write_replace(path, format!("{id}\n").as_bytes(), 0o444, false)
            .map_err(|e| Failure::io("/etc/machine-id", &e))?;
        written.push(path);
    }
    if !written.is_empty() {
        std::thread::spawn(move || {
            for path in written {
                let _ = File::open(path).and_then(|f| f.sync_all());
            }
            let _ = File::open("/etc").and_then(|d| d.sync_all());
        });
    }
    Ok(Reply::Ok)
}

/// RFC 1123 labels: letters, digits, hyphens; dots between labels.
fn valid_hostname(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `struct rand_pool_info` with room for [`MAX_ENTROPY`] bytes.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_ENTROPY],
}

/// `_IOW('R', 0x03, int[2])`: the size in the opcode is the header only.
const RNDADDENTROPY: Opcode = opcode::write::<[libc::c_int; 2]>(b'R', 0x03);
/// `_IO('R', 0x07)`
const RNDRESEEDCRNG: Opcode = opcode::none(b'R', 0x07);

/// Mix and credit `bytes`, then reseed the CRNG so /dev/urandom output changes at once
/// (otherwise forks of one snapshot keep producing the same stream until the next
/// scheduled reseed).
pub fn add_entropy(bytes: &[u8]) -> OpResult {
    if bytes.is_empty() || bytes.len() > MAX_ENTROPY {
        return Err(Failure::invalid(format!(
            "entropy must be 1..={MAX_ENTROPY} bytes"
        )));
    }
    let mut info = RandPoolInfo {
        entropy_count: (bytes.len() * 8) as libc::c_int,
        buf_size: bytes.len() as libc::c_int,
        buf: [0; MAX_ENTROPY],
    };
    info.buf[..bytes.len()].copy_from_slice(bytes);
    let urandom = File::options()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| Failure::io("/dev/urandom", &e))?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info header followed by buf_size bytes;
    // `info` is repr(C) with that layout and buf_size <= its buffer.
    unsafe { ioctl::ioctl(&urandom, Setter::<RNDADDENTROPY, RandPoolInfo>::new(info)) }
        .map_err(|e| Failure::io("RNDADDENTROPY", &e))?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    unsafe { ioctl::ioctl(&urandom, NoArg::<RNDRESEEDCRNG>::new()) }
        .map_err(|e| Failure::io("RNDRESEEDCRNG", &e))?;
    Ok(Reply::Ok)
}

pub fn read_file(path: &str) -> OpResult {
    let file = File::open(path).map_err(|e| Failure::io(path, &e))?;
    let mut data = Vec::new();
    file.take(MAX_PAYLOAD as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| Failure::io(path, &e))?;
    if data.len() > MAX_PAYLOAD {
        return Err(Failure {
            code: ErrorCode::TooLarge,
            message: format!("{path} is over {MAX_PAYLOAD} bytes"),
        });
    }
    Ok(Reply::File { data })
}

pub fn write_file(path: &str, data: &[u8], mode: Option<u32>) -> OpResult {
    if !path.starts_with('/') {
        return Err(Failure::invalid("path must be absolute"));
    }
    replace_file(Path::new(path), data, mode.unwrap_or(0o644))
        .map_err(|e| Failure::io(path, &e))?;
    Ok(Reply::Ok)
}

/// Write a sibling temp file, then rename it over `path`: readers never see half a file.
pub fn replace_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_replace(path, data, mode, true)
}

/// `replace_file`, with the fsync before the rename only if `durable`.
fn write_replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tine-tmp");
    let result = (|| {
        let mut f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub fn sync() -> OpResult {
    rustix::fs::sync();
    Ok(Reply::Ok)
}

/// Never returns on success.
pub fn power_off() {
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        eprintln!("tine-agent: power off failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_follow_rfc1123() {
        for ok in ["a", "fork-1", "vm.example", &"x".repeat(63)] {
            assert!(valid_hostname(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a b", "a/b", &"x".repeat(65)] {
            assert!(!valid_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn bad_machine_id_changes_nothing() {
        let err = set_identity(Some("never-set"), Some("XYZ")).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn empty_entropy_is_rejected() {
        assert_eq!(
            add_entropy(&[]).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn read_file_returns_contents_and_rejects_huge_files() {
        let dir = std::env::temp_dir().join(format!("tine-agent-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small");
        write_file(small.to_str().unwrap(), b"abc", None).unwrap();
        let big = dir.join("big");
        fs::write(&big, vec![0u8; MAX_PAYLOAD + 1]).unwrap();

        let got = read_file(small.to_str().unwrap()).unwrap();
        let too_big = read_file(big.to_str().unwrap()).unwrap_err();

        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            Reply::File {
                data: b"abc".to_vec()
            }
        );
        assert_eq!(too_big.code, ErrorCode::TooLarge);
    }
}
