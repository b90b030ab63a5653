//! The filesystems the benchmark runs on: a loop-mounted image (ext4, or XFS
//! with reflink=1) under the work directory, or an existing directory.
//!
//! Loop devices are attached with `--direct-io=on` when the kernel allows it,
//! so the image's blocks are not cached a second time in the host page cache
//! (the page cache figures then count the mounted filesystem's cache only).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cleanup;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Ext4,
    Xfs,
}

impl std::str::FromStr for FsKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ext4" => Ok(FsKind::Ext4),
            "xfs" => Ok(FsKind::Xfs),
            o => Err(format!("unknown filesystem {o:?} (ext4 or xfs)")),
        }
    }
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MountInfo {
    pub kind: FsKind,
    pub path: PathBuf,
    /// Loop device, if we made one.
    pub loop_device: Option<String>,
    pub direct_io: bool,
    pub size_bytes: u64,
}

/// A filesystem to run on; unmounted by [`Mounted::teardown`] (and by the
/// cleanup of the work directory on any exit).
pub struct Mounted {
    pub info: MountInfo,
    image: Option<PathBuf>,
}

impl Mounted {
    /// Make a loop-mounted filesystem of `kind` under `work`.
    pub fn loop_mount(kind: FsKind, work: &Path, size: u64) -> Result<Mounted> {
        let image = work.join(format!("{}.img", kind.name()));
        let mnt = work.join(kind.name());
        std::fs::create_dir_all(&mnt)?;
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size))
            .with_context(|| format!("create loop image {}", image.display()))?;
        let (dev, direct_io) = match run(Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&image))
        {
            Ok(d) => (d.trim().to_string(), true),
            Err(_) => (
                run(Command::new("losetup")
                    .args(["--find", "--show"])
                    .arg(&image))?
                .trim()
                .to_string(),
                false,
            ),
        };
        let mut m = Mounted {
            info: MountInfo {
                kind,
                path: mnt.clone(),
                loop_device: Some(dev.clone()),
                direct_io,
                size_bytes: size,
            },
            image: Some(image),
        };
        let mkfs: &[&str] = match kind {
            FsKind::Xfs => &["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
            FsKind::Ext4 => &["mkfs.ext4", "-q", "-F"],
        };
        let made = run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&dev))
            .and_then(|_| run(Command::new("mount").arg(&dev).arg(&mnt)));
        if let Err(e) = made {
            m.teardown();
            return Err(e.context(format!(
                "make {} on {dev} (needs root, xfsprogs, e2fsprogs)",
                kind.name()
            )));
        }
        Ok(m)
    }

    pub fn path(&self) -> &Path {
        &self.info.path
    }

    pub fn teardown(&mut self) {
        let Some(image) = self.image.take() else {
            return;
        };
        cleanup::umount(&self.info.path);
        if let Some(dev) = &self.info.loop_device {
            let _ = Command::new("losetup").arg("-d").arg(dev).output();
        }
        let _ = std::fs::remove_file(image);
        let _ = std::fs::remove_dir(&self.info.path);
    }
}

/// Bytes used on the filesystem holding `path`, after syncfs and once the
/// figure is stable (XFS frees the blocks of deleted files in the
/// background): two readings 100 ms apart within 64 KiB, or 5 s.
pub fn fs_used_bytes(path: &Path) -> Result<u64> {
    let f = std::fs::File::open(path)?;
    let read = || -> Result<u64> {
        rustix::fs::syncfs(&f)?;
        let s = rustix::fs::fstatvfs(&f)?;
        Ok((s.f_blocks - s.f_bfree) * s.f_frsize)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut last = read()?;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = read()?;
        if now.abs_diff(last) <= 64 << 10 || std::time::Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
