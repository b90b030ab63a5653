//! Test-only failure injection, compiled in with the `failpoints` feature.
//!
//! `TINE_FAILPOINTS="NAME=ACTION[:MATCH];…"` in the daemon's environment:
//! at `hit(NAME, detail)` where `detail` contains MATCH (or always, without
//! one), ACTION `error` fails the operation and `crash` aborts the daemon
//! (as kill -9 would, mid-operation). Without the feature `hit` is a no-op.

use crate::error::ManagerError;

#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str, detail: &str) -> Result<(), ManagerError> {
    let spec = std::env::var("TINE_FAILPOINTS").unwrap_or_default();
    for entry in spec.split(';').filter(|e| !e.is_empty()) {
        let Some((n, rest)) = entry.split_once('=') else {
            continue;
        };
        if n != name {
            continue;
        }
        let (action, pattern) = rest.split_once(':').unwrap_or((rest, ""));
        if !detail.contains(pattern) {
            continue;
        }
        match action {
            "crash" => {
                tracing::error!(name, detail, "failpoint: crashing");
                std::process::abort();
            }
            _ => return Err(ManagerError::Failed(format!("failpoint {name} hit"))),
        }
    }
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &str, _detail: &str) -> Result<(), ManagerError> {
    Ok(())
}

/// Whether this build has failpoints (tests that need them check it).
pub fn enabled() -> bool {
    cfg!(feature = "failpoints")
}
