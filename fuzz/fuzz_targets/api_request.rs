//! API request bodies, decoded exactly as the routes decode them (axum's
//! `Json` extractor), then checked by the manager's own validation. The
//! first byte picks the request type; the rest is the body.
#![no_main]

use axum::Json;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use tine_agent_proto::{encode, parse_request, Op, Request};
use tine_api::types::{
    ExecRequest, ForkRequest, PoolSpec, PromoteRequest, RestoreRequest, RunRequest, SnapshotRequest,
};
use tine_manager::names::validate_name;

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    Json::<T>::from_bytes(bytes).ok().map(|Json(t)| t)
}

/// The documented name rule, written independently of `validate_name`.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => {
            if let Some(r) = body::<RunRequest>(rest) {
                if r.validate().is_ok() {
                    assert!(r.name.as_deref().is_none_or(is_name));
                }
            }
        }
        1 => {
            if let Some(r) = body::<ForkRequest>(rest) {
                if let Ok(names) = r.names() {
                    assert_eq!(names.len() as u32, r.count.unwrap_or(1));
                    assert!(names.iter().all(|n| is_name(n)), "{names:?}");
                }
            }
        }
        2 => {
            // What the host then sends the agent must frame as one line and
            // come back as the same request.
            if let Some(r) = body::<ExecRequest>(rest) {
                if tine_manager::validate_exec(&r).is_ok() {
                    let req = Request {
                        id: 1,
                        op: Op::Exec(r),
                    };
                    let line = encode(&req);
                    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
                    assert_eq!(parse_request(&line[..line.len() - 1]).unwrap(), req);
                }
            }
        }
        3 => {
            if let Some(r) = body::<SnapshotRequest>(rest) {
                if r.validate().is_ok() {
                    assert!(is_name(&r.name));
                }
            }
        }
        4 => {
            if let Some(p) = body::<PoolSpec>(rest) {
                if p.validate().is_ok() {
                    assert!(is_name(&p.source) && p.size >= 1);
                }
            }
        }
        5 => {
            if let Some(r) = body::<RestoreRequest>(rest) {
                let _ = validate_name(&r.into);
            }
        }
        6 => {
            if let Some(r) = body::<PromoteRequest>(rest) {
                let _ = validate_name(&r.instance);
            }
        }
        _ => {
            // A name as it arrives in a URL path.
            if let Ok(s) = std::str::from_utf8(rest) {
                assert_eq!(validate_name(s).is_ok(), is_name(s), "{s:?}");
            }
        }
    }
});
