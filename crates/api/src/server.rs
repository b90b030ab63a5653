//! The daemon's HTTP server: routes, auth, listeners.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tine_manager::Manager;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tracing::info;

use crate::error::ApiError;
use crate::types::{
    ExecRequest, ExecResult, ForkFrom, ForkRequest, Health, InstanceInfo, PoolInfo, PoolSpec,
    PromoteRequest, RestoreRequest, RunRequest, SnapshotInfo, SnapshotRequest,
};

/// Requests are small JSON documents; exec stdin is capped by the agent.
const BODY_LIMIT: usize = 1 << 20;

type Mgr = State<Arc<Manager>>;

pub fn router(mgr: Arc<Manager>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/system/cleanup", post(system_cleanup))
        .route("/v1/instances", get(list).post(run))
        .route("/v1/instances/{name}", get(inspect).delete(remove))
        .route("/v1/instances/{name}/exec", post(exec))
        .route("/v1/instances/{name}/fork", post(fork))
        .route("/v1/instances/{name}/logs", get(crate::logs::logs))
        .route("/v1/instances/{name}/{action}", post(action))
        .route("/v1/snapshots", get(snapshots).post(snapshot_create))
        .route(
            "/v1/snapshots/{name}",
            get(snapshot_inspect).delete(snapshot_remove),
        )
        .route("/v1/snapshots/{name}/restore", post(snapshot_restore))
        .route("/v1/snapshots/{name}/fork", post(snapshot_fork))
        .route("/v1/templates", get(templates).post(template_promote))
        .route(
            "/v1/templates/{name}",
            get(template_inspect).delete(template_remove),
        )
        .route("/v1/templates/{name}/fork", post(template_fork))
        .route("/v1/pools", get(pools).post(pool_set))
        .route(
            "/v1/pools/{from}/{source}",
            axum::routing::delete(pool_remove),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(mgr)
}

async fn system_cleanup(State(m): Mgr) -> Result<Json<crate::types::CleanupReport>, ApiError> {
    Ok(Json(m.system_cleanup().await?))
}

async fn health(State(m): Mgr) -> Json<Health> {
    Json(Health {
        version: env!("CARGO_PKG_VERSION").into(),
        accel: m.accel().accel.as_str().into(),
        accel_warning: m.accel().warning.clone(),
        instances: m.list().len(),
    })
}

async fn metrics(State(m): Mgr) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.metrics_text(),
    )
        .into_response()
}

async fn list(State(m): Mgr) -> Json<Vec<InstanceInfo>> {
    Json(m.list())
}

async fn run(
    State(m): Mgr,
    Json(req): Json<RunRequest>,
) -> Result<(StatusCode, Json<InstanceInfo>), ApiError> {
    Ok((StatusCode::CREATED, Json(m.run(req).await?)))
}

async fn inspect(State(m): Mgr, Path(name): Path<String>) -> Result<Json<InstanceInfo>, ApiError> {
    Ok(Json(m.get(&name)?))
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove(
    State(m): Mgr,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<InstanceInfo>, ApiError> {
    Ok(Json(m.remove(&name, q.force).await?))
}

async fn action(
    State(m): Mgr,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<InstanceInfo>, ApiError> {
    let info = match action.as_str() {
        "start" => m.start(&name).await?,
        "stop" => m.stop(&name).await?,
        "pause" => m.pause(&name).await?,
        "resume" => m.resume(&name).await?,
        "standby" => m.standby(&name).await?,
        "restore" => m.restore(&name).await?,
        other => return Err(ApiError::bad_request(format!("unknown action {other:?}"))),
    };
    Ok(Json(info))
}

#[derive(Deserialize, Default)]
struct StreamQuery {
    #[serde(default)]
    stream: bool,
}

async fn fork(
    State(m): Mgr,
    Path(name): Path<String>,
    Query(q): Query<StreamQuery>,
    Json(req): Json<ForkRequest>,
) -> Result<Response, ApiError> {
    fork_from(m, name, ForkFrom::Instance, q.stream, req).await
}

/// Plain: one `ForkReport`. Streamed: NDJSON, one `{"fork": outcome}` line
/// per fork as it completes, then `{"report": report}` or `{"error": …}`.
async fn fork_from(
    m: Arc<Manager>,
    source: String,
    from: ForkFrom,
    stream: bool,
    mut req: ForkRequest,
) -> Result<Response, ApiError> {
    req.source = source;
    req.from = from;
    if !stream {
        return Ok(Json(m.fork(req).await?).into_response());
    }
    let (line_tx, line_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(128);
    tokio::spawn(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel(128);
        let fork = m.fork_with_progress(req, Some(tx));
        tokio::pin!(fork);
        let result = loop {
            tokio::select! {
                Some(outcome) = rx.recv() => {
                    let _ = line_tx.send(ndjson(&serde_json::json!({ "fork": outcome }))).await;
                }
                r = &mut fork => break r,
            }
        };
        while let Ok(outcome) = rx.try_recv() {
            let _ = line_tx
                .send(ndjson(&serde_json::json!({ "fork": outcome })))
                .await;
        }
        let last = match result {
            Ok(report) => serde_json::json!({ "report": report }),
            Err(e) => serde_json::json!({ "error": ApiError::from(e).message }),
        };
        let _ = line_tx.send(ndjson(&last)).await;
    });
    let body = ReceiverStream::new(line_rx).map(Ok::<_, std::convert::Infallible>);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

fn ndjson(v: &serde_json::Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(v).expect("json");
    line.push(b'\n');
    line
}

async fn snapshots(State(m): Mgr) -> Json<Vec<SnapshotInfo>> {
    Json(m.snapshots(false))
}

async fn snapshot_create(
    State(m): Mgr,
    Json(req): Json<SnapshotRequest>,
) -> Result<(StatusCode, Json<SnapshotInfo>), ApiError> {
    Ok((StatusCode::CREATED, Json(m.snapshot_create(req).await?)))
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait_compressed: bool,
}

async fn snapshot_inspect(
    State(m): Mgr,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<SnapshotInfo>, ApiError> {
    if q.wait_compressed {
        return Ok(Json(m.snapshot_wait_compressed(&name).await?));
    }
    Ok(Json(m.snapshot(&name, false)?))
}

async fn snapshot_remove(
    State(m): Mgr,
    Path(name): Path<String>,
) -> Result<Json<SnapshotInfo>, ApiError> {
    Ok(Json(m.snapshot_remove(&name, false).await?))
}

async fn snapshot_restore(
    State(m): Mgr,
    Path(name): Path<String>,
    Json(req): Json<RestoreRequest>,
) -> Result<Json<InstanceInfo>, ApiError> {
    Ok(Json(m.snapshot_restore(&name, &req.into).await?))
}

async fn snapshot_fork(
    State(m): Mgr,
    Path(name): Path<String>,
    Query(q): Query<StreamQuery>,
    Json(req): Json<ForkRequest>,
) -> Result<Response, ApiError> {
    fork_from(m, name, ForkFrom::Snapshot, q.stream, req).await
}

async fn pools(State(m): Mgr) -> Json<Vec<PoolInfo>> {
    Json(m.pools())
}

async fn pool_set(State(m): Mgr, Json(spec): Json<PoolSpec>) -> Result<Json<PoolInfo>, ApiError> {
    Ok(Json(m.pool_set(spec).await?))
}

async fn pool_remove(
    State(m): Mgr,
    Path((from, source)): Path<(String, String)>,
) -> Result<Json<PoolInfo>, ApiError> {
    let from = match from.as_str() {
        "instance" => ForkFrom::Instance,
        "snapshot" => ForkFrom::Snapshot,
        "template" => ForkFrom::Template,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown pool kind {other:?}"
            )))
        }
    };
    Ok(Json(m.pool_remove(from, &source).await?))
}

async fn templates(State(m): Mgr) -> Json<Vec<SnapshotInfo>> {
    Json(m.snapshots(true))
}

async fn template_promote(
    State(m): Mgr,
    Json(req): Json<PromoteRequest>,
) -> Result<(StatusCode, Json<SnapshotInfo>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(m.template_promote(&req.instance).await?),
    ))
}

async fn template_inspect(
    State(m): Mgr,
    Path(name): Path<String>,
) -> Result<Json<SnapshotInfo>, ApiError> {
    Ok(Json(m.snapshot(&name, true)?))
}

async fn template_remove(
    State(m): Mgr,
    Path(name): Path<String>,
) -> Result<Json<SnapshotInfo>, ApiError> {
    Ok(Json(m.snapshot_remove(&name, true).await?))
}

async fn template_fork(
    State(m): Mgr,
    Path(name): Path<String>,
    Query(q): Query<StreamQuery>,
    Json(req): Json<ForkRequest>,
) -> Result<Response, ApiError> {
    fork_from(m, name, ForkFrom::Template, q.stream, req).await
}

#[derive(Deserialize)]
struct ExecQuery {
    #[serde(default)]
    stream: bool,
}

async fn exec(
    State(m): Mgr,
    Path(name): Path<String>,
    Query(q): Query<ExecQuery>,
    Json(req): Json<ExecRequest>,
) -> Result<Response, ApiError> {
    if !q.stream {
        let out = m.exec(&name, req).await?;
        let res = ExecResult {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.status.code,
            signal: out.status.signal,
            timed_out: out.status.timed_out,
        };
        return Ok(Json(res).into_response());
    }
    let rx = m.exec_stream(&name, req).await?;
    let lines = ReceiverStream::new(rx).map(|ev| {
        let frame = crate::types::frame_of(ev);
        let mut line = serde_json::to_vec(&frame).expect("frame serializes");
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(line)
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// Where the daemon listens.
pub struct Listeners {
    pub unix: PathBuf,
    /// Optional TCP address; requires `token`.
    pub tcp: Option<std::net::SocketAddr>,
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another tine daemon is already listening on {0}")]
    AlreadyRunning(PathBuf),
    #[error("a TCP listener requires a token (--token or TINE_TOKEN)")]
    TokenRequired,
    #[error("cannot listen on {what}")]
    Listen {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    mgr: Arc<Manager>,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = router(mgr);
    let unix = bind_unix(&listeners.unix).await?;
    info!(socket = %listeners.unix.display(), "API listening");
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = listeners.tcp {
        let token = listeners
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or(ServeError::TokenRequired)?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Listen {
                what: addr.to_string(),
                source: e,
            })?;
        info!(%addr, "API listening on TCP (bearer token required)");
        let token = Arc::new(token);
        let authed = app.clone().layer(middleware::from_fn(move |req, next| {
            let token = token.clone();
            async move { require_token(&token, req, next).await }
        }));
        let mut rx = tx.subscribe();
        tasks.spawn(async move {
            let _ = axum::serve(tcp, authed)
                .with_graceful_shutdown(async move {
                    let _ = rx.recv().await;
                })
                .await;
        });
    }
    let mut rx = tx.subscribe();
    tasks.spawn(async move {
        let _ = axum::serve(unix, app)
            .with_graceful_shutdown(async move {
                let _ = rx.recv().await;
            })
            .await;
    });
    shutdown.await;
    let _ = tx.send(());
    while tasks.join_next().await.is_some() {}
    let _ = std::fs::remove_file(&listeners.unix);
    Ok(())
}

async fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, ServeError> {
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(ServeError::AlreadyRunning(path.into()));
    }
    let listen_err = |e| ServeError::Listen {
        what: path.display().to_string(),
        source: e,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path).map_err(listen_err)?;
    // Owner only: the socket grants full control of every VM.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    Ok(l)
}

async fn require_token(token: &str, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant time, and the same answer for every path: a 401 reveals nothing.
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        next.run(req).await
    } else {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "unauthorized",
            message: "missing or wrong bearer token".into(),
        }
        .into_response()
    }
}
