//! Confinement and limits: QEMU runs under its seccomp sandbox with private
//! sockets, per-instance caps and the host memory budget refuse what does
//! not fit (all of a fork burst, up front), and standby, snapshot and fork
//! refuse to start when the data directory lacks the space they will write.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{dir_of, instance_dirs, names, qemu_processes, Daemon};
use tine_storage::testfs::{FsKind, TestFs};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

fn pid(d: &Daemon, name: &str) -> i32 {
    d.inspect(name)["pid"].as_i64().unwrap() as i32
}

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap();
    line.split_once(':').unwrap().1.trim().to_string()
}

/// The instance's QEMU is in seccomp filter mode with the sandbox tine
/// asked for, holds no capability it does not need, its directory is 0700
/// and its sockets and logs 0600.
fn assert_confined(d: &Daemon, name: &str) {
    let pid = pid(d, name);
    assert_eq!(
        status_field(pid, "Seccomp"),
        "2",
        "{name}: QEMU is not under a seccomp filter"
    );
    // No capability but CAP_NET_ADMIN (bit 12), and that only to create
    // its TAP.
    let caps = if d.inspect(name)["network"].is_null() {
        "0000000000000000"
    } else {
        "0000000000001000"
    };
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(status_field(pid, set), caps, "{name}: {set}");
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("-sandbox on,obsolete=deny,"), "{cmdline}");
    assert!(cmdline.contains("resourcecontrol=deny"), "{cmdline}");
    let dir = dir_of(d, name);
    assert_eq!(mode(&dir), 0o700, "{name}: run directory");
    for sock in ["qmp.sock", "agent.sock"] {
        let meta = std::fs::symlink_metadata(dir.join(sock)).unwrap();
        assert!(meta.file_type().is_socket(), "{sock}");
        assert_eq!(meta.mode() & 0o777, 0o600, "{name}: {sock}");
    }
    for file in ["qemu.log", "console.log", "memory"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{name}: {file}");
    }
}

#[test]
fn qemu_is_sandboxed_with_private_sockets_through_run_restore_and_fork() {
    // In a namespace of its own: with a NIC, QEMU keeps CAP_NET_ADMIN.
    let d = Daemon::start_in_netns(&[]);
    d.ok(&["run", "--name", "v"]);
    assert_confined(&d, "v");
    d.sh("v", "echo kept > /run/m");

    d.ok(&["standby", "v"]);
    d.ok(&["restore", "v"]);
    assert_confined(&d, "v");
    assert_eq!(d.sh("v", "cat /run/m"), "kept\n");

    d.ok(&["standby", "v"]);
    d.ok(&["fork", "v", "--name", "f"]);
    assert_confined(&d, "f");
    assert_eq!(d.sh("f", "cat /run/m"), "kept\n");
    d.ok(&["fork", "f", "--from-running", "--name", "g"]);
    assert_confined(&d, "g");
    assert_eq!(d.sh("g", "cat /run/m"), "kept\n");
    // Without a NIC, no capability at all.
    d.ok(&["run", "--name", "n", "--network", "none"]);
    assert_confined(&d, "n");
    assert_eq!(d.sh("n", "echo up"), "up\n");
}

/// Run one command on an instance's own QMP socket, as a compromised QEMU
/// could be made to: the error QEMU reports, if any.
fn qmp(dir: &Path, command: &str, args: serde_json::Value) -> Result<(), String> {
    use std::io::{BufRead, BufReader, Write};
    let sock = std::os::unix::net::UnixStream::connect(dir.join("qmp.sock")).unwrap();
    let mut lines = BufReader::new(sock.try_clone().unwrap()).lines();
    let mut reply = || loop {
        let r: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if r.get("event").is_none() && r.get("QMP").is_none() {
            return r;
        }
    };
    writeln!(
        &sock,
        "{}",
        serde_json::json!({ "execute": "qmp_capabilities" })
    )
    .unwrap();
    reply();
    writeln!(
        &sock,
        "{}",
        serde_json::json!({ "execute": command, "arguments": args })
    )
    .unwrap();
    match reply().get("error") {
        Some(e) => Err(e["desc"].as_str().unwrap_or_default().to_string()),
        None => Ok(()),
    }
}

/// Have an instance's QEMU open `file` as a block node (then drop it).
fn qemu_opens(dir: &Path, file: &Path, write: bool) -> Result<(), String> {
    let args = serde_json::json!({ "driver": "file", "node-name": "probe",
        "filename": file, "read-only": !write });
    qmp(dir, "blockdev-add", args)?;
    qmp(
        dir,
        "blockdev-del",
        serde_json::json!({ "node-name": "probe" }),
    )
}

/// Landlock: a QEMU writes only its own disk, logs and (one-link) memory
/// file, creates nothing but its sockets, and reads nothing of other
/// instances, snapshots or host secrets; a fork's QEMU cannot write the
/// memory file it shares with its source, by any name.
#[test]
fn qemu_opens_only_its_own_directory_and_the_guest_image() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "v", "--network", "none"]);
    d.ok(&["snapshot", "create", "v", "--name", "s"]);
    d.ok(&["standby", "v"]);
    d.ok(&["fork", "v", "--name", "f"]);
    d.ok(&["run", "--name", "other", "--network", "none"]);
    let f = dir_of(&d, "f");
    // The probe works: its own files open, for writing where it must.
    qemu_opens(&f, &f.join("qemu.log"), true).expect("own log, writable");
    qemu_opens(&f, &f.join("overlay.qcow2"), true).expect("own disk, writable");
    qemu_opens(&f, &f.join("memory"), false).expect("own memory file");
    let snap_dir = d.data_dir.join("snapshots");
    let snap_files: Vec<_> = std::fs::read_dir(&snap_dir)
        .unwrap()
        .flat_map(|e| std::fs::read_dir(e.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!snap_files.is_empty());
    let mut refused = vec![
        (dir_of(&d, "other").join("memory"), false),
        (dir_of(&d, "other").join("overlay.qcow2"), true),
        // The inode f maps privately, by its name and the source's:
        // readable (by either name: Landlock rules follow the inode), never
        // writable (the source and siblings map it too).
        (dir_of(&d, "v").join("memory"), true),
        (f.join("memory"), true),
        // Its own record is the daemon's, not QEMU's.
        (f.join("instance.json"), true),
        (PathBuf::from("/etc/shadow"), false),
    ];
    refused.extend(snap_files.into_iter().map(|p| (p, false)));
    for (file, write) in refused {
        let err = qemu_opens(&f, &file, write).expect_err(&file.display().to_string());
        assert!(
            err.contains("Permission denied"),
            "{}: {err}",
            file.display()
        );
    }
    // Nor can it create files, in the data directory or its own.
    for planted in [d.data_dir.join("planted"), f.join("planted")] {
        let protocol = format!("file:{}", planted.display());
        let err = qmp(
            &f,
            "dump-guest-memory",
            serde_json::json!({ "paging": false, "protocol": protocol }),
        )
        .unwrap_err();
        assert!(err.contains("Permission denied"), "{err}");
        assert!(!planted.exists());
    }
    assert_eq!(d.sh("f", "echo up"), "up\n");
    assert_eq!(d.sh("other", "echo up"), "up\n");
}

#[test]
fn runs_over_the_per_instance_caps_are_refused_and_leave_nothing() {
    let d = Daemon::start_with_args(None, &["--max-vcpus", "1", "--max-memory", "512M"]);

    let err = d.fails(&["run", "--name", "big", "--vcpus", "2"]);
    assert!(
        err.contains("2 vCPUs is over the per-instance limit of 1 (--max-vcpus)"),
        "{err}"
    );
    let err = d.fails(&["run", "--name", "big", "--memory", "1G"]);
    assert!(
        err.contains("1.0 GiB of memory is over the per-instance limit of 512 MiB (--max-memory)"),
        "{err}"
    );
    assert_eq!(instance_dirs(&d), 0);

    d.ok(&["run", "--name", "fits", "--memory", "512M", "--vcpus", "1"]);
    assert_eq!(d.sh("fits", "echo up"), "up\n");
}

/// A ratio that makes the budget `mib` on this host.
fn overcommit_for(mib: u64) -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    format!("{}", mib as f64 / (kib / 1024) as f64)
}

#[test]
fn the_memory_budget_refuses_a_whole_fork_burst_a_run_and_a_restore() {
    // Room for 1000 MiB of live guests: three 256 MiB forks fit, four do not.
    let d = Daemon::start_with_args(None, &["--memory-overcommit", &overcommit_for(1000)]);
    d.ok(&["run", "--name", "v"]);
    d.ok(&["standby", "v"]);

    let err = d.fails(&["fork", "v", "--name", "f", "--count", "4"]);
    assert!(
        err.contains(
            "fork of 4 × 256 MiB would commit 1.0 GiB of guest memory (0 MiB already committed)"
        ),
        "{err}"
    );
    assert!(err.contains("(--memory-overcommit)"), "{err}");
    assert_eq!(names(&d), vec!["v"]);
    assert_eq!(instance_dirs(&d), 1, "nothing of the refused burst is made");
    assert_eq!(qemu_processes(&d), 0);

    d.ok(&["fork", "v", "--name", "f", "--count", "3"]);
    assert_eq!(d.sh("f-3", "echo up"), "up\n");
    let err = d.fails(&["run", "--name", "w"]);
    assert!(
        err.contains(
            "run of 1 × 256 MiB would commit 1.0 GiB of guest memory (768 MiB already committed)"
        ),
        "{err}"
    );

    d.ok(&["standby", "f-1"]);
    d.ok(&["run", "--name", "w"]);
    let err = d.fails(&["restore", "f-1"]);
    assert!(err.contains("restore of 1 × 256 MiB would commit"), "{err}");
    assert_eq!(d.state("f-1"), "standby");
    assert!(
        d.inspect("f-1")["error"].is_null(),
        "a refused restore is not a failure of the instance"
    );

    d.ok(&["rm", "-f", "w"]);
    d.ok(&["restore", "f-1"]);
    assert_eq!(d.sh("f-1", "echo back"), "back\n");
}

#[test]
fn serve_refuses_limits_that_make_no_sense() {
    let tmp = tempfile::Builder::new()
        .prefix("tine-t")
        .tempdir_in("/tmp")
        .unwrap();
    for (flag, value) in [
        ("--memory-overcommit", "0"),
        ("--memory-overcommit", "NaN"),
        ("--max-vcpus", "0"),
        ("--max-memory", "1M"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tine"))
            .args(["serve", "--data-dir"])
            .arg(tmp.path())
            .args([flag, value])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "serve {flag} {value} started");
        assert!(err.contains(flag), "serve {flag} {value}: {err}");
    }
}

/// Take free space at `dir` down to about `leave` bytes.
fn fill_leaving(dir: &Path, leave: u64) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let f = std::fs::File::create(&filler).unwrap();
    let st = rustix::fs::statvfs(dir).unwrap();
    let free = st.f_bavail * st.f_frsize;
    assert!(free > leave, "only {free} bytes free");
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, free - leave).unwrap();
    filler
}

#[test]
fn standby_snapshot_and_fork_are_refused_up_front_without_the_space_they_write() {
    // ext4: no reflinks, so copies cost their allocated bytes.
    let fs = TestFs::with_size(FsKind::Ext4, 2 << 30);
    let d = Daemon::start_with_args(Some(fs.path()), &["--disk-reserve", "64M"]);
    d.ok(&["run", "--name", "v"]);
    // 64 MiB of disk each fork and snapshot of v must copy.
    d.sh(
        "v",
        "dd if=/dev/urandom of=/root/big bs=1M count=64 2>/dev/null && sync",
    );
    d.ok(&["standby", "v"]);
    d.ok(&["fork", "v", "--name", "f"]);
    d.sh("f", "echo safe > /run/m");
    let filler = fill_leaving(fs.path(), 100 << 20);

    // A fork's RAM goes into its device state: 256 MiB.
    let err = d.fails(&["standby", "f"]);
    assert!(
        err.contains(
            "not enough disk space: standby of f writes about 257 MiB and must leave 64 MiB free"
        ),
        "{err}"
    );
    assert_eq!(d.state("f"), "running");
    assert_eq!(d.sh("f", "cat /run/m"), "safe\n");
    assert!(!dir_of(&d, "f").join("vmstate.tmp").exists());

    let err = d.fails(&["snapshot", "create", "v", "--name", "s"]);
    assert!(
        err.contains("not enough disk space: snapshot of v writes about"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(fs.path().join("snapshots"))
            .unwrap()
            .count(),
        0
    );

    let err = d.fails(&["fork", "v", "--name", "g", "--count", "2"]);
    assert!(
        err.contains("not enough disk space: 2 forks of v writes about"),
        "{err}"
    );
    assert_eq!(names(&d), vec!["f", "v"]);
    assert_eq!(instance_dirs(&d), 2);

    std::fs::remove_file(filler).unwrap();
    d.ok(&["fork", "v", "--name", "g", "--count", "2"]);
    d.ok(&["snapshot", "create", "v", "--name", "s"]);
    d.ok(&["standby", "f"]);
    d.ok(&["restore", "f"]);
    assert_eq!(d.sh("f", "cat /run/m"), "safe\n");
}
