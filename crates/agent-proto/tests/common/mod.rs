//! Boots the real default guest under QEMU for tests and the boot-time example.
//!
//! The guest comes from `TINE_GUEST_DIR` (a prebuilt guest) if set; otherwise
//! `guest/build.sh` builds, or finds cached, `${TINE_IMAGES_DIR:-/var/lib/tine/images}/default`.
//! Missing QEMU or guest is a failure, never a skip.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tine_agent_proto::{AgentClient, Pong};

pub const QEMU: &str = "qemu-system-x86_64";
const DEFAULT_IMAGES_DIR: &str = "/var/lib/tine/images";
/// Generous: TCG on a shared 2-core machine, several guests booting at once.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The parts of `manifest.json` a boot needs.
#[derive(Debug, Clone)]
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    pub cmdline: String,
}

/// The guest image, built once per test process.
pub fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = match std::env::var_os("TINE_GUEST_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => build_default_guest(),
        };
        load_manifest(&dir)
    })
}

fn build_default_guest() -> PathBuf {
    let images = std::env::var_os("TINE_IMAGES_DIR").unwrap_or(DEFAULT_IMAGES_DIR.into());
    let dir = Path::new(&images).join("default");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new("bash")
        .arg(repo.join("guest/build.sh"))
        .arg(&dir)
        .status()
        .expect("cannot run guest/build.sh");
    assert!(
        status.success(),
        "guest/build.sh {} failed: {status}",
        dir.display()
    );
    dir
}

fn load_manifest(dir: &Path) -> Image {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no guest at {}: {e} (build one with guest/build.sh DIR)",
            path.display()
        )
    });
    let m: serde_json::Value = serde_json::from_str(&text).expect("manifest.json is not JSON");
    let file = |key: &str| {
        let p = dir.join(
            m[key]
                .as_str()
                .unwrap_or_else(|| panic!("manifest lacks {key}")),
        );
        assert!(p.is_file(), "guest file {} is missing", p.display());
        p
    };
    Image {
        kernel: file("kernel"),
        initrd: file("initrd"),
        rootfs: file("rootfs"),
        cmdline: m["cmdline"]
            .as_str()
            .expect("manifest lacks cmdline")
            .to_owned(),
    }
}

/// A running QEMU guest; killed on drop, with its console printed if the test failed.
pub struct Vm {
    pub dir: tempfile::TempDir,
    qemu: Child,
}

impl Vm {
    /// Start QEMU with the exact command line the QEMU backend uses (TCG).
    pub fn start(image: &Image) -> Vm {
        let dir = tempfile::Builder::new()
            .prefix("tine-agent-test")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let overlay = d.join("overlay.qcow2");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image.rootfs)
            .arg(&overlay)
            .status()
            .expect("qemu-img not found (apt-get install qemu-utils)");
        assert!(status.success(), "qemu-img create failed");
        let p = |name: &str| d.join(name).display().to_string();
        let qemu = Command::new(QEMU)
            .args(["-machine", "microvm,memory-backend=mem,pit=off,pic=off", "-accel", "tcg", "-cpu", "max"])
            .args(["-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-no-reboot"])
            .arg("-object")
            .arg(format!("memory-backend-file,id=mem,size=256M,mem-path={},share=on", p("memory")))
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .arg("-append")
            .arg(format!("{} tsc_early_khz=2000000", image.cmdline))
            .arg("-chardev")
            .arg(format!("file,id=con,path={}", p("console.log")))
            .args(["-serial", "chardev:con"])
            .arg("-drive")
            .arg(format!("id=root,file={},format=qcow2,if=none", p("overlay.qcow2")))
            .args(["-device", "virtio-blk-device,drive=root"])
            .args(["-device", "virtio-serial-device"])
            .arg("-chardev")
            .arg(format!("socket,id=agent,path={},server=on,wait=off", p("agent.sock")))
            .args(["-device", "virtserialport,chardev=agent,name=tine.agent"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", p("qmp.sock")))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {QEMU}: {e} (apt-get install -t bookworm-backports qemu-system-x86)")
            });
        Vm { dir, qemu }
    }

    pub fn agent_sock(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// Wait for the agent; panics with the console log if it never answers.
    pub async fn ready(&self) -> (AgentClient, Pong) {
        match AgentClient::wait_ready(&self.agent_sock(), READY_TIMEOUT).await {
            Ok(ready) => ready,
            Err(e) => panic!(
                "guest agent never answered: {e} ({:?})",
                std::error::Error::source(&e)
            ),
        }
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.qemu.try_wait(), Ok(None))
    }

    /// Wait (up to `timeout`) for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("console.log"))
                .unwrap_or_else(|e| format!("(no console log: {e})"));
            let tail: String = log
                .chars()
                .rev()
                .take(4000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!("--- guest console (tail) ---\n{tail}\n---");
        }
    }
}
