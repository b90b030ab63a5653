//! The QEMU command line for a microvm guest. Pure: unit-tested, no I/O.

use std::path::Path;

use crate::{Accel, Boot, MemoryMapping, VmSpec};

pub const QMP_SOCKET: &str = "qmp.sock";
pub const AGENT_SOCKET: &str = "agent.sock";
pub const CONSOLE_LOG: &str = "console.log";
pub const PID_FILE: &str = "qemu.pid";
/// QEMU's stdout and stderr (and its `-d` log, which goes to stderr).
pub const QEMU_LOG: &str = "qemu.log";

/// No legacy PIT or PIC: with the PIT, a guest under TCG sometimes takes
/// its first timer tick as vector 0 while still booting ("divide error" in
/// start_kernel, then a triple fault: QEMU exits silently with
/// -no-reboot). Measured with bare QEMU on this host: 4–8 of 8 boots with
/// it, 0 of 16 without. The kernel uses the LAPIC timer and the IOAPIC.
pub const MACHINE: &str = "microvm,memory-backend=mem,pit=off,pic=off";

/// The virtio-serial port name the guest agent looks for.
pub const AGENT_PORT_NAME: &str = "tine.agent";

/// QEMU's seccomp filter: no obsolete syscalls, no set*id, no
/// fork/exec, no scheduler or resource changes.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// QEMU's option syntax uses ',' as a separator; double it inside values.
fn esc(path: &Path) -> String {
    p(path).replace(',', ",,")
}

/// The root disk: a qcow2 overlay on the shared guest image.
/// `drop-cache=off`: activating the disk after a state load must not evict
/// the page cache of the image every VM shares (QEMU drops it for
/// migrations between hosts; ours stay on one host, where the page cache
/// is coherent).
pub fn root_drive(overlay: &Path) -> String {
    format!(
        "id=root,file={},format=qcow2,if=none,file.drop-cache=off,backing.file.drop-cache=off",
        esc(overlay)
    )
}

/// `paused`: a restore stays stopped after loading (see `Hypervisor::prestart`).
pub fn build(spec: &VmSpec, boot: &Boot, paused: bool) -> Vec<String> {
    let mapping = match boot {
        Boot::Fresh => MemoryMapping::Shared,
        Boot::Restore { mapping, .. } => *mapping,
    };
    // A private mapping opens the file read-only (its inode is shared
    // with the source and siblings); `rom=off` keeps guest RAM writable,
    // copy-on-write.
    let share = match mapping {
        MemoryMapping::Shared => "on",
        MemoryMapping::Private => "off,readonly=on,rom=off",
    };
    let (accel, cpu) = match spec.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let mut cmdline = spec.cmdline.clone();
    if spec.accel == Accel::Tcg {
        // microvm under TCG hangs calibrating the TSC without this.
        cmdline.push_str(" tsc_early_khz=2000000");
    }
    let run = &spec.run_dir;
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("tine,debug-threads=on"),
        "-machine".into(),
        MACHINE.into(),
        "-accel".into(),
        accel.into(),
        "-cpu".into(),
        cpu.into(),
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-object".into(),
        format!(
            "memory-backend-file,id=mem,size={}M,mem-path={},share={share}",
            spec.memory_mib,
            esc(&spec.memory_file)
        ),
        "-kernel".into(),
        p(&spec.kernel),
        "-initrd".into(),
        p(&spec.initrd),
        "-append".into(),
        cmdline,
        "-chardev".into(),
        // Appending: the daemon drops the file's oldest part in place
        // (collapse range), and QEMU must keep writing at its new end.
        format!("file,id=con,path={},append=on", esc(&run.join(CONSOLE_LOG))),
        "-serial".into(),
        "chardev:con".into(),
        "-drive".into(),
        root_drive(&spec.root_disk),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!(
            "socket,id=agent,path={},server=on,wait=off",
            esc(&run.join(AGENT_SOCKET))
        ),
        "-device".into(),
        format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}"),
    ];
    if let Some(net) = &spec.network {
        // After the agent port, so the virtio-mmio layout of a VM without a
        // NIC is what it was before NICs existed (saved states stay loadable).
        args.extend([
            "-netdev".into(),
            format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={}", net.mac),
        ]);
    }
    args.extend([
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", esc(&run.join(QMP_SOCKET))),
        "-pidfile".into(),
        p(&run.join(PID_FILE)),
    ]);
    args.extend(["-sandbox".into(), SANDBOX.into()]);
    if matches!(boot, Boot::Restore { .. }) {
        // The state is loaded over QMP (x-ignore-shared is a capability
        // that can only be set there, before the load starts).
        args.extend(["-incoming".into(), "defer".into()]);
        if paused {
            // Loaded, vCPUs stopped until `cont` (a warm pool entry).
            args.push("-S".into());
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            run_dir: PathBuf::from("/d"),
            memory_mib: 256,
            vcpus: 2,
            kernel: "/img/vmlinux".into(),
            initrd: "/img/initrd.img".into(),
            cmdline: "console=ttyS0".into(),
            root_disk: "/d/overlay.qcow2".into(),
            memory_file: "/d/mem,ory".into(),
            accel,
            network: None,
        }
    }

    fn joined(args: &[String]) -> String {
        args.join(" ")
    }

    #[test]
    fn fresh_boot_maps_memory_shared_and_waits_for_nothing() {
        let a = joined(&build(&spec(Accel::Tcg), &Boot::Fresh, false));
        assert!(a.contains("mem-path=/d/mem,,ory,share=on"));
        assert!(!a.contains("-incoming"));
    }

    #[test]
    fn private_restore_maps_memory_copy_on_write_and_defers_incoming() {
        let boot = Boot::Restore {
            state_file: "/s".into(),
            mapping: MemoryMapping::Private,
            ram_in_state: false,
        };
        let a = joined(&build(&spec(Accel::Tcg), &boot, false));
        assert!(a.contains("share=off,readonly=on,rom=off"), "{a}");
        assert!(a.ends_with("-incoming defer"));
        let paused = joined(&build(&spec(Accel::Tcg), &boot, true));
        assert!(paused.ends_with("-incoming defer -S"));
    }

    #[test]
    fn a_nic_is_a_virtio_net_device_on_its_tap_after_the_agent_port() {
        let mut s = spec(Accel::Tcg);
        s.network = Some(crate::NetDevice {
            tap: "tn0123456789ab".into(),
            mac: "02:74:0a:d1:00:02".into(),
        });

        let a = joined(&build(&s, &Boot::Fresh, false));

        let netdev = "-netdev tap,id=net0,ifname=tn0123456789ab,script=no,downscript=no \
                      -device virtio-net-device,netdev=net0,mac=02:74:0a:d1:00:02";
        assert!(a.contains(netdev), "{a}");
        assert!(a.find("virtserialport").unwrap() < a.find("virtio-net-device").unwrap());
    }

    #[test]
    fn no_network_means_no_nic() {
        let a = joined(&build(&spec(Accel::Tcg), &Boot::Fresh, false));
        assert!(!a.contains("-netdev") && !a.contains("virtio-net"));
    }

    #[test]
    fn tcg_gets_tsc_hint_and_max_cpu() {
        let a = build(&spec(Accel::Tcg), &Boot::Fresh, false);
        assert!(a.contains(&"console=ttyS0 tsc_early_khz=2000000".to_string()));
        assert!(a.contains(&"max".to_string()));
    }

    #[test]
    fn seccomp_sandbox_is_on_and_qmp_is_the_only_monitor() {
        let args = build(&spec(Accel::Tcg), &Boot::Fresh, false);
        let at = args.iter().position(|a| a == "-sandbox").unwrap();
        assert!(
            args[at + 1].starts_with("on,obsolete=deny,"),
            "{}",
            args[at + 1]
        );
        assert!(args[at + 1].contains("resourcecontrol=deny"));
        assert!(args.contains(&"-nodefaults".to_string()));
        assert_eq!(args.iter().filter(|a| *a == "-qmp").count(), 1);
        assert!(!args
            .iter()
            .any(|a| a == "-monitor" || a == "-mon" || a == "-gdb"));
    }

    #[test]
    fn console_file_is_opened_for_appending() {
        let a = build(&spec(Accel::Tcg), &Boot::Fresh, false);
        assert!(a
            .iter()
            .any(|x| x.starts_with("file,id=con,") && x.ends_with(",append=on")));
    }

    #[test]
    fn kvm_uses_host_cpu_and_plain_cmdline() {
        let a = build(&spec(Accel::Kvm), &Boot::Fresh, false);
        assert!(a.contains(&"console=ttyS0".to_string()));
        assert!(a.contains(&"host".to_string()));
    }
}
