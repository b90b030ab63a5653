//! Real filesystems for tests: loop-mounted XFS (reflink=1), btrfs and ext4,
//! and tmpfs, each in its own temp dir, torn down on drop (unmount, detach
//! the loop device, remove the image). Feature `testfs`; needs root,
//! util-linux, e2fsprogs, xfsprogs and btrfs-progs.
//!
//! Setup failures panic with the command's output: a test that asked for a
//! filesystem must fail, never silently skip. Each `TestFs` owns its loop
//! device and mount, so tests in parallel processes (nextest) do not meet.
//! A process killed before its drops ran leaves mounts behind; the next
//! `TestFs` of any process sweeps those whose owner pid is gone.
//!
//! From another crate:
//!
//! ```toml
//! [dev-dependencies]
//! tine-storage = { workspace = true, features = ["testfs"] }
//! ```
//!
//! ```no_run
//! use tine_storage::testfs::{FsKind, TestFs};
//!
//! let fs = TestFs::new(FsKind::Xfs); // reflink-capable, 512 MiB
//! let full = TestFs::with_size(FsKind::Ext4, 8 << 20); // disk-full tests
//! std::fs::write(fs.path().join("memory"), b"...").unwrap();
//! // both unmounted and deleted when dropped
//! ```

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

/// Default image size; XFS needs at least 300 MiB.
pub const DEFAULT_SIZE: u64 = 512 << 20;
/// Temp dirs are `{temp_dir}/tine-testfs-{pid}-{random}`.
const PREFIX: &str = "tine-testfs-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// `mkfs.xfs -m reflink=1`: FICLONE works.
    Xfs,
    /// FICLONE works.
    Btrfs,
    /// No reflink: FICLONE answers EOPNOTSUPP.
    Ext4,
    /// No reflink, no loop device.
    Tmpfs,
}

impl FsKind {
    pub const ALL: [FsKind; 4] = [FsKind::Xfs, FsKind::Btrfs, FsKind::Ext4, FsKind::Tmpfs];

    /// Whether FICLONE works on this filesystem.
    pub fn reflinks(self) -> bool {
        matches!(self, FsKind::Xfs | FsKind::Btrfs)
    }

    pub fn name(self) -> &'static str {
        match self {
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::Ext4 => "ext4",
            FsKind::Tmpfs => "tmpfs",
        }
    }

    fn mkfs(self) -> &'static [&'static str] {
        match self {
            FsKind::Xfs => &["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
            FsKind::Btrfs => &["mkfs.btrfs", "-q", "-f"],
            FsKind::Ext4 => &["mkfs.ext4", "-q", "-F"],
            FsKind::Tmpfs => &[],
        }
    }
}

/// A mounted test filesystem; unmounted and deleted on drop.
#[derive(Debug)]
pub struct TestFs {
    kind: FsKind,
    mount: PathBuf,
    mounted: bool,
    loop_dev: Option<PathBuf>,
    // Declared last: removed after the unmount in `drop`.
    dir: tempfile::TempDir,
}

impl TestFs {
    /// A filesystem of [`DEFAULT_SIZE`]. Panics if it cannot be made.
    pub fn new(kind: FsKind) -> Self {
        Self::with_size(kind, DEFAULT_SIZE)
    }

    /// A filesystem of `bytes` (small ones make disk-full tests cheap:
    /// tmpfs and ext4 go down to a few MiB). Panics if it cannot be made.
    pub fn with_size(kind: FsKind, bytes: u64) -> Self {
        sweep_stale();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir()
            .unwrap_or_else(|e| panic!("testfs: cannot create temp dir: {e}"));
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).unwrap_or_else(|e| panic!("testfs: mkdir {mount:?}: {e}"));
        // Built before the commands run, so a failed step still cleans up.
        let mut fs = TestFs {
            kind,
            mount,
            mounted: false,
            loop_dev: None,
            dir,
        };
        if kind == FsKind::Tmpfs {
            let opts = format!("size={bytes},mode=0755");
            run(Command::new("mount")
                .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
                .arg(&fs.mount));
        } else {
            let image = fs.dir.path().join("image");
            File::create(&image)
                .and_then(|f| f.set_len(bytes))
                .unwrap_or_else(|e| panic!("testfs: cannot create image {image:?}: {e}"));
            let dev = attach(&image);
            fs.loop_dev = Some(dev.clone());
            let (mkfs, args) = kind.mkfs().split_first().expect("mkfs command");
            run(Command::new(mkfs).args(args).arg(&dev));
            run(Command::new("mount").arg(&dev).arg(&fs.mount));
        }
        fs.mounted = true;
        fs
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// The loop device backing it (`None` for tmpfs).
    pub fn loop_device(&self) -> Option<&Path> {
        self.loop_dev.as_deref()
    }

    /// syncfs: flush everything written to this filesystem.
    pub fn sync(&self) {
        let root = File::open(&self.mount).expect("testfs: open mount point");
        rustix::fs::syncfs(&root).expect("testfs: syncfs");
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = unmount(&self.mount) {
                eprintln!("testfs: cannot unmount {:?}: {e}", self.mount);
            }
        }
        if let Some(dev) = &self.loop_dev {
            if let Err(e) = output(Command::new("losetup").arg("-d").arg(dev)) {
                eprintln!("testfs: cannot detach {dev:?}: {e}");
            }
        }
    }
}

/// Attaches `image` to a free loop device. Retries because parallel
/// processes race for the same free device.
fn attach(image: &Path) -> PathBuf {
    let mut last = String::new();
    for attempt in 0..20 {
        match output(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(image),
        ) {
            Ok(stdout) => return PathBuf::from(stdout.trim()),
            Err(e) => last = e.to_string(),
        }
        sleep(Duration::from_millis(20 * (attempt + 1)));
    }
    panic!("testfs: losetup --find --show {image:?} failed (need root): {last}");
}

/// Unmounts, retrying while the mount is briefly busy, then detaches lazily.
fn unmount(mount: &Path) -> io::Result<()> {
    for attempt in 0..10 {
        if output(Command::new("umount").arg(mount)).is_ok() {
            return Ok(());
        }
        sleep(Duration::from_millis(20 * (attempt + 1)));
    }
    output(Command::new("umount").arg("-l").arg(mount)).map(drop)
}

fn run(cmd: &mut Command) {
    if let Err(e) = output(cmd) {
        panic!("testfs: {e} (needs root, xfsprogs, btrfs-progs, e2fsprogs)");
    }
}

/// Runs `cmd`; its stdout, or an error carrying the command and its stderr.
fn output(cmd: &mut Command) -> io::Result<String> {
    let out = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!(
            "{cmd:?}: {}: {}",
            out.status,
            stderr.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes mounts, loop devices and dirs left by test processes that died
/// before their drops ran. Errors are ignored: a parallel sweeper may win.
fn sweep_stale() {
    let base = std::env::temp_dir();
    let Ok(entries) = fs::read_dir(&base) else {
        return;
    };
    let dead: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| owner_is_dead(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    if dead.is_empty() {
        return;
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (Some(source), Some(target)) = (fields.next(), fields.next()) else {
            continue;
        };
        if dead.iter().any(|d| Path::new(target).starts_with(d)) {
            let _ = output(Command::new("umount").arg("-l").arg(target));
            if source.starts_with("/dev/loop") {
                let _ = output(Command::new("losetup").arg("-d").arg(source));
            }
        }
    }
    let loops =
        output(Command::new("losetup").args(["--list", "--noheadings", "-O", "NAME,BACK-FILE"]))
            .unwrap_or_default();
    for line in loops.lines() {
        let mut fields = line.split_whitespace();
        let (Some(dev), Some(back)) = (fields.next(), fields.next()) else {
            continue;
        };
        if dead.iter().any(|d| Path::new(back).starts_with(d)) {
            let _ = output(Command::new("losetup").arg("-d").arg(dev));
        }
    }
    for dir in dead {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Whether `name` is a testfs dir whose creating process no longer exists.
fn owner_is_dead(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
    match pid.and_then(rustix::process::Pid::from_raw) {
        Some(pid) => rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH),
        None => false,
    }
}

/// Writes a file of logical `size` whose only data are `regions`
/// (`(offset, len)` pairs) filled with non-zero pseudo-random bytes from
/// `seed`; everything else is a hole.
pub fn write_sparse(path: &Path, size: u64, regions: &[(u64, u64)], seed: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = File::create(path)?;
    let mut state = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    for &(offset, len) in regions {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            for word in buf[..n].chunks_mut(8) {
                // xorshift64: fast, and never a zero word, so no block is
                // mistaken for a hole.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
            }
            file.write_all_at(&buf[..n], offset + done)?;
            done += n as u64;
        }
    }
    file.set_len(size)
}

/// Bytes the filesystem allocated to `path` (st_blocks × 512).
pub fn allocated_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::symlink_metadata(path)?.blocks() * 512)
}
