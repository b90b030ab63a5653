//! Accelerator choice: KVM when the CPU has hardware virtualization and
//! /dev/kvm opens, TCG otherwise (with a warning the caller shows).
//!
//! /dev/kvm alone is not enough: PVM hosts expose it without vmx/svm and
//! stock guests fail there (see ENVIRONMENT.md), so both are required.

use std::fs::OpenOptions;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?} (expected kvm or tcg)"
            )),
        }
    }
}

/// The result of automatic detection.
#[derive(Debug, Clone, Serialize)]
pub struct AccelChoice {
    pub accel: Accel,
    /// Set when falling back to TCG: why, for the user to see.
    pub warning: Option<String>,
}

/// Pick KVM if the CPU flags show vmx/svm and /dev/kvm opens read-write.
pub fn detect_accel() -> AccelChoice {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpu_has_virt(&cpuinfo);
    let kvm_ok = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    match (hw, kvm_ok) {
        (true, true) => AccelChoice {
            accel: Accel::Kvm,
            warning: None,
        },
        (false, _) => AccelChoice {
            accel: Accel::Tcg,
            warning: Some(
                "CPU shows no vmx/svm: using TCG software emulation (slow); override with --accel"
                    .into(),
            ),
        },
        (true, false) => AccelChoice {
            accel: Accel::Tcg,
            warning: Some("/dev/kvm is not usable: using TCG software emulation (slow)".into()),
        },
    }
}

fn cpu_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_with_vmx_count_as_hardware_virtualization() {
        assert!(cpu_has_virt("flags\t\t: fpu vme vmx sse\n"));
    }

    #[test]
    fn flags_without_vmx_or_svm_do_not() {
        assert!(!cpu_has_virt(
            "flags\t\t: fpu vme sse hypervisor\nmodel name: svm-like\n"
        ));
    }

    #[test]
    fn accel_parses_known_names_and_rejects_others() {
        assert_eq!("kvm".parse::<Accel>().unwrap(), Accel::Kvm);
        assert_eq!("tcg".parse::<Accel>().unwrap(), Accel::Tcg);
        assert!("hvf".parse::<Accel>().is_err());
    }
}
