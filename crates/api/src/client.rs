//! A client of the daemon's API, over its Unix socket or TCP with a token.
//! One HTTP/1 connection per request: simple, and requests are rare next to
//! what they cause (VM boots, forks).

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{
    ErrorBody, ExecFrame, ExecRequest, ExecResult, ForkFrom, ForkOutcome, ForkReport, ForkRequest,
    Health, InstanceInfo, PoolInfo, PoolSpec, PromoteRequest, RestoreRequest, RunRequest,
    SnapshotInfo, SnapshotRequest,
};

#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { addr: String, token: String },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "tcp://{addr}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the tine daemon at {endpoint} (start it with `tine serve`)")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{message}")]
    Api {
        status: u16,
        kind: String,
        message: String,
    },
    #[error("bad answer from the daemon: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client { endpoint }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let connect_err = |e: std::io::Error| ClientError::Connect {
            endpoint: self.endpoint.to_string(),
            source: e,
        };
        let proto = |e: hyper::Error| ClientError::Protocol(e.to_string());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "tine");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Endpoint::Tcp { token, .. } = &self.endpoint {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (mut sender, conn) = match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(connect_err)?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .map_err(proto)?;
                (
                    sender,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
            Endpoint::Tcp { addr, .. } => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(connect_err)?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .map_err(proto)?;
                (
                    sender,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
        };
        drop(conn);
        let resp = sender.send_request(req).await.map_err(proto)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(proto)?.to_bytes();
        Err(api_error(status, &bytes))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request serializes"));
        let resp = self.send(method, path, body).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("{e}")))
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(Method::GET, "/v1/health", None::<&()>).await
    }

    /// Remove leftover TAPs and, with no instance holding an address, the
    /// bridge and NAT rules.
    pub async fn system_cleanup(&self) -> Result<crate::types::CleanupReport, ClientError> {
        self.json(Method::POST, "/v1/system/cleanup", None::<&()>)
            .await
    }

    pub async fn list(&self) -> Result<Vec<InstanceInfo>, ClientError> {
        self.json(Method::GET, "/v1/instances", None::<&()>).await
    }

    pub async fn get(&self, name: &str) -> Result<InstanceInfo, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/instances/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn run(&self, req: &RunRequest) -> Result<InstanceInfo, ClientError> {
        self.json(Method::POST, "/v1/instances", Some(req)).await
    }

    /// start, stop, pause, resume, standby, restore.
    pub async fn action(&self, name: &str, action: &str) -> Result<InstanceInfo, ClientError> {
        self.json(
            Method::POST,
            &format!("/v1/instances/{}/{action}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn remove(&self, name: &str, force: bool) -> Result<InstanceInfo, ClientError> {
        self.json(
            Method::DELETE,
            &format!("/v1/instances/{}?force={force}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn fork(&self, req: &ForkRequest) -> Result<ForkReport, ClientError> {
        self.json(Method::POST, &fork_path(req), Some(req)).await
    }

    /// Fork with progress: `on_fork` is called as each fork completes.
    pub async fn fork_stream(
        &self,
        req: &ForkRequest,
        mut on_fork: impl FnMut(&ForkOutcome),
    ) -> Result<ForkReport, ClientError> {
        let body = serde_json::to_vec(req).expect("request serializes");
        let resp = self
            .send(
                Method::POST,
                &format!("{}?stream=true", fork_path(req)),
                Some(body),
            )
            .await?;
        let mut lines = Lines::new(resp.into_body());
        while let Some(line) = lines.next().await? {
            let v: serde_json::Value =
                serde_json::from_slice(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if let Some(f) = v.get("fork") {
                let f: ForkOutcome = serde_json::from_value(f.clone())
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                on_fork(&f);
            } else if let Some(r) = v.get("report") {
                return serde_json::from_value(r.clone())
                    .map_err(|e| ClientError::Protocol(e.to_string()));
            } else if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                return Err(ClientError::Api {
                    status: 500,
                    kind: "fork".into(),
                    message: e.into(),
                });
            }
        }
        Err(ClientError::Protocol(
            "fork stream ended without a report".into(),
        ))
    }

    pub async fn snapshot_create(
        &self,
        req: &SnapshotRequest,
    ) -> Result<SnapshotInfo, ClientError> {
        self.json(Method::POST, "/v1/snapshots", Some(req)).await
    }

    /// `kind`: "snapshots" or "templates".
    pub async fn snapshot_list(&self, kind: &str) -> Result<Vec<SnapshotInfo>, ClientError> {
        self.json(Method::GET, &format!("/v1/{kind}"), None::<&()>)
            .await
    }

    pub async fn snapshot_get(
        &self,
        kind: &str,
        name: &str,
        wait_compressed: bool,
    ) -> Result<SnapshotInfo, ClientError> {
        let q = if wait_compressed {
            "?wait_compressed=true"
        } else {
            ""
        };
        self.json(
            Method::GET,
            &format!("/v1/{kind}/{}{q}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn snapshot_remove(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<SnapshotInfo, ClientError> {
        self.json(
            Method::DELETE,
            &format!("/v1/{kind}/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn snapshot_restore(
        &self,
        name: &str,
        into: &str,
    ) -> Result<InstanceInfo, ClientError> {
        let req = RestoreRequest { into: into.into() };
        self.json(
            Method::POST,
            &format!("/v1/snapshots/{}/restore", seg(name)),
            Some(&req),
        )
        .await
    }

    /// The daemon's Prometheus metrics text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let resp = self.send(Method::GET, "/metrics", None).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn pools(&self) -> Result<Vec<PoolInfo>, ClientError> {
        self.json(Method::GET, "/v1/pools", None::<&()>).await
    }

    pub async fn pool_set(&self, spec: &PoolSpec) -> Result<PoolInfo, ClientError> {
        self.json(Method::POST, "/v1/pools", Some(spec)).await
    }

    pub async fn pool_remove(&self, from: ForkFrom, source: &str) -> Result<PoolInfo, ClientError> {
        let from = match from {
            ForkFrom::Instance => "instance",
            ForkFrom::Snapshot => "snapshot",
            ForkFrom::Template => "template",
        };
        self.json(
            Method::DELETE,
            &format!("/v1/pools/{from}/{}", seg(source)),
            None::<&()>,
        )
        .await
    }

    pub async fn template_promote(&self, instance: &str) -> Result<SnapshotInfo, ClientError> {
        let req = PromoteRequest {
            instance: instance.into(),
        };
        self.json(Method::POST, "/v1/templates", Some(&req)).await
    }

    pub async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        self.json(
            Method::POST,
            &format!("/v1/instances/{}/exec", seg(name)),
            Some(req),
        )
        .await
    }

    /// Run a command, calling `on_frame` for each output frame as it arrives.
    pub async fn exec_stream(
        &self,
        name: &str,
        req: &ExecRequest,
        mut on_frame: impl FnMut(ExecFrame),
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(req).expect("request serializes");
        let resp = self
            .send(
                Method::POST,
                &format!("/v1/instances/{}/exec?stream=true", seg(name)),
                Some(body),
            )
            .await?;
        let mut lines = Lines::new(resp.into_body());
        while let Some(line) = lines.next().await? {
            let f: ExecFrame =
                serde_json::from_slice(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
            on_frame(f);
        }
        Ok(())
    }

    /// Stream the serial console to `out` (until the end, or forever with follow).
    pub async fn logs(
        &self,
        name: &str,
        follow: bool,
        mut out: impl FnMut(&[u8]),
    ) -> Result<(), ClientError> {
        let resp = self
            .send(
                Method::GET,
                &format!("/v1/instances/{}/logs?follow={follow}", seg(name)),
                None,
            )
            .await?;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                out(data);
            }
        }
        Ok(())
    }
}

/// Newline-delimited lines of a streamed (NDJSON) response body.
struct Lines {
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    fn new(body: Incoming) -> Lines {
        Lines {
            body,
            buf: Vec::new(),
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(Some(self.buf.drain(..=i).collect()));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                self.buf.extend_from_slice(data);
            }
        }
    }
}

fn fork_path(req: &ForkRequest) -> String {
    let kind = match req.from {
        ForkFrom::Instance => "instances",
        ForkFrom::Snapshot => "snapshots",
        ForkFrom::Template => "templates",
    };
    format!("/v1/{kind}/{}/fork", seg(&req.source))
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            kind: b.kind,
            message: b.error,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            kind: "http".into(),
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
        },
    }
}

/// Names are validated by the server; percent-encode anything outside the
/// name alphabet so a bad name reaches it as a name, not as a path.
fn seg(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
