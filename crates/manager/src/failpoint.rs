//! Test-only failure injection, compiled in with the `failpoints` feature.
//!
//! `TINE_FAILPOINTS="NAME=ACTION[:MATCH];…"` in the daemon's environment:
//! at `hit(NAME, detail)` where `detail` contains MATCH (or always, without
//! one), ACTION `error` fails the operation and `crash` aborts the daemon
//! (as kill -9 would, mid-operation), and `pause` creates
//! `$TINE_FAILPOINT_DIR/NAME.paused` and waits until the test removes it
//! (so the test can kill -9 a VM process right there). Without the feature
//! `hit` is a no-op. The points and what tests check at each:
//! crates/cli/tests/faults.rs.

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
            "pause" => pause(name, detail),
            _ => return Err(ManagerError::Failed(format!("failpoint {name} hit"))),
        }
    }
    Ok(())
}

#[cfg(feature = "failpoints")]
fn pause(name: &str, detail: &str) {
    let dir =
        std::env::var_os("TINE_FAILPOINT_DIR").expect("failpoint pause needs TINE_FAILPOINT_DIR");
    let marker = std::path::Path::new(&dir).join(format!("{name}.paused"));
    std::fs::write(&marker, detail).expect("write the failpoint marker");
    tracing::warn!(
        name,
        detail,
        "failpoint: paused until {} is removed",
        marker.display()
    );
    // Other requests keep being served on the runtime's other threads.
    tokio::task::block_in_place(|| {
        while marker.exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
}

/// `hit` at a point that cannot fail the operation: only `crash` and
/// `pause` act there.
pub(crate) fn reach(name: &str, detail: &str) {
    let _ = hit(name, detail);
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
