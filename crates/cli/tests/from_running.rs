//! Fork from a running source that maps its RAM file shared, on ext4 (no
//! reflink): the copy taken while the source is paused holds what the guest
//! wrote, not its whole fallocated RAM, and the fork sees exactly that.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{dir_of, Daemon};

const EXT4_SUPER_MAGIC: i64 = 0xEF53;

#[test]
fn fork_from_running_copies_what_the_guest_wrote_not_its_whole_ram() {
    let d = Daemon::start();
    let fs_type = rustix::fs::statfs(&d.data_dir).unwrap().f_type as i64;
    assert_eq!(
        fs_type, EXT4_SUPER_MAGIC,
        "this test needs its data dir on ext4"
    );
    d.ok(&["run", "--name", "big", "--memory", "1G"]);
    let sum = d.sh(
        "big",
        "mount -o remount,size=90% /run && dd if=/dev/urandom of=/run/blob bs=1M count=64 2>/dev/null && sha256sum /run/blob",
    );

    // Twice: reading the source for one copy must not make the next bigger.
    for name in ["bf1", "bf2"] {
        let report = d.json(&["fork", "big", "--name", name, "--from-running"]);

        assert_eq!(report["failed"], 0, "{report:#}");
        let memory = dir_of(&d, name).join("memory");
        let allocated = std::fs::metadata(&memory).unwrap().blocks() * 512;
        // The 64 MiB blob plus the kernel, far from the guest's 1 GiB.
        assert!(
            ((64 << 20)..(512 << 20)).contains(&allocated),
            "{name}'s memory file allocates {allocated} bytes"
        );
    }
    assert_eq!(d.sh("bf2", "sha256sum /run/blob"), sum);
    d.sh("big", "echo source-later > /run/later");
    let out = d.tine(&["exec", "bf2", "--", "cat", "/run/later"]);
    assert!(
        !out.status.success(),
        "the fork must not see the source's later writes"
    );
}
