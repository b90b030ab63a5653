//! A full disk during standby, snapshot and fork: a clear error, nothing
//! half-made, the VM keeps running. The data directory is a small real XFS.
//! The up-front space checks (tested in limits.rs) are turned off by a
//! failpoint here, so the writes themselves meet ENOSPC.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{assert_failpoints, instance_dirs, Daemon};
use tine_storage::testfs::{FsKind, TestFs};

/// How the kernel's ENOSPC reads in every error the daemon passes on.
const ENOSPC: &str = "No space left on device (os error 28)";

/// Fill the filesystem at `dir` until (almost) nothing is left.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let f = std::fs::File::create(&filler).unwrap();
    let st = rustix::fs::statvfs(dir).unwrap();
    let free = st.f_bavail * st.f_frsize;
    // Best effort to the last block: allocate in shrinking steps.
    let mut len = 0u64;
    let mut step = free.next_power_of_two();
    while step >= 4096 {
        if rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), len, step).is_ok() {
            len += step;
        } else {
            step /= 2;
        }
    }
    assert!(f.metadata().unwrap().blocks() > 0);
    filler
}

#[test]
fn full_disk_fails_standby_snapshot_and_fork_cleanly_and_the_vm_runs_on() {
    assert_failpoints();
    let fs = TestFs::with_size(FsKind::Xfs, 768 << 20);
    let d = Daemon::start_with(
        Some(fs.path()),
        &[],
        &[("TINE_FAILPOINTS", "disk-check=skip")],
    );
    d.ok(&["run", "--name", "v"]);
    d.sh("v", "echo safe > /run/m");
    let filler = fill(fs.path());

    let err = d.fails(&["standby", "v"]);
    assert!(err.contains(ENOSPC), "{err}");
    assert_eq!(d.state("v"), "running");
    assert_eq!(d.sh("v", "cat /run/m"), "safe\n");

    let err = d.fails(&["snapshot", "create", "v", "--name", "s"]);
    assert!(err.contains(ENOSPC), "{err}");
    assert_eq!(d.json(&["snapshot", "ls"]).as_array().unwrap().len(), 0);
    assert_eq!(
        std::fs::read_dir(fs.path().join("snapshots"))
            .unwrap()
            .count(),
        0
    );

    let out = d.tine(&["fork", "v", "--from-running", "--name", "f"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(ENOSPC), "{said}");
    assert_eq!(instance_dirs(&d), 1, "no half-made fork");
    assert_eq!(d.state("v"), "running");
    assert_eq!(d.sh("v", "cat /run/m"), "safe\n");

    std::fs::remove_file(filler).unwrap();
    d.ok(&["standby", "v"]);
    d.ok(&["restore", "v"]);
    assert_eq!(d.sh("v", "cat /run/m"), "safe\n");
}
