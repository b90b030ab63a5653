//! The one place where manager errors become HTTP status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tine_manager::admission::LimitError;
use tine_manager::error::chain;
use tine_manager::network::NetworkError;
use tine_manager::ManagerError;

use crate::types::ErrorBody;

pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_argument",
            message: message.into(),
        }
    }
}

pub fn status_of(e: &ManagerError) -> (StatusCode, &'static str) {
    match e {
        ManagerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        ManagerError::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
        ManagerError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
        ManagerError::Conflict { .. } => (StatusCode::CONFLICT, "invalid_state"),
        ManagerError::Busy { .. } => (StatusCode::CONFLICT, "busy"),
        ManagerError::Image(_) => (StatusCode::UNPROCESSABLE_ENTITY, "image"),
        ManagerError::Network(n) => network_status(n),
        ManagerError::Limit(l) => limit_status(l),
        ManagerError::Hypervisor(tine_manager::HvError::BinaryMissing { .. }) => {
            (StatusCode::SERVICE_UNAVAILABLE, "hypervisor_missing")
        }
        ManagerError::Hypervisor(_) => (StatusCode::INTERNAL_SERVER_ERROR, "hypervisor"),
        ManagerError::Agent { .. } => (StatusCode::BAD_GATEWAY, "agent"),
        ManagerError::Io { .. } | ManagerError::Failed(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    }
}

/// Over a per-instance cap: a bad request. Over the host's budget: the
/// request is fine but conflicts with what the host holds now.
fn limit_status(e: &LimitError) -> (StatusCode, &'static str) {
    match e {
        LimitError::Vcpus { .. } | LimitError::Memory { .. } => {
            (StatusCode::BAD_REQUEST, "over_limit")
        }
        LimitError::Overcommit { .. } => (StatusCode::CONFLICT, "insufficient_memory"),
        LimitError::Disk { .. } => (StatusCode::CONFLICT, "insufficient_disk"),
    }
}

fn network_status(e: &NetworkError) -> (StatusCode, &'static str) {
    match e {
        NetworkError::InvalidSubnet(_)
        | NetworkError::InvalidBridge(_)
        | NetworkError::InvalidDns(_)
        | NetworkError::Overlap { .. }
        | NetworkError::Disabled => (StatusCode::BAD_REQUEST, "invalid_argument"),
        NetworkError::Exhausted { .. } => (StatusCode::SERVICE_UNAVAILABLE, "network_exhausted"),
        NetworkError::SubnetInUse { .. } | NetworkError::BridgeInUse { .. } => {
            (StatusCode::CONFLICT, "network_in_use")
        }
        NetworkError::Spawn { .. } | NetworkError::Command { .. } | NetworkError::Io { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "network")
        }
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> ApiError {
        let (status, kind) = status_of(&e);
        ApiError {
            status,
            kind,
            message: chain(&e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            kind: self.kind.into(),
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_bad_requests_and_a_full_host_is_a_conflict() {
        let caps = ManagerError::Limit(LimitError::Vcpus { vcpus: 4, max: 2 });
        assert_eq!(status_of(&caps), (StatusCode::BAD_REQUEST, "over_limit"));
        let full = ManagerError::Limit(LimitError::Overcommit {
            what: "fork".into(),
            count: 25,
            each_mib: 256,
            committed_mib: 0,
            ratio: 2.0,
            host_mib: 1024,
            budget_mib: 2048,
        });
        assert_eq!(
            status_of(&full),
            (StatusCode::CONFLICT, "insufficient_memory")
        );
        let disk = ManagerError::Limit(LimitError::Disk {
            what: "standby".into(),
            need: 1,
            reserve: 1,
            free: 0,
            path: "/d".into(),
        });
        assert_eq!(
            status_of(&disk),
            (StatusCode::CONFLICT, "insufficient_disk")
        );
    }
}
