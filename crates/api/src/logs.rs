//! Serial console logs: the file QEMU writes, streamed; `follow` keeps the
//! stream open and sends what is appended until the instance is removed or
//! the client goes away.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tine_manager::Manager;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::ApiError;

#[derive(Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

const CHUNK: usize = 64 * 1024;
const POLL: Duration = Duration::from_millis(100);

pub async fn logs(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let path = m.console_log(&name)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    tokio::spawn(async move {
        let mut pos = 0u64;
        loop {
            // Reopen each round: a restart truncates/replaces the file.
            if let Ok(mut f) = tokio::fs::File::open(&path).await {
                let len = f.metadata().await.map(|md| md.len()).unwrap_or(0);
                if len < pos {
                    pos = 0;
                }
                if f.seek(std::io::SeekFrom::Start(pos)).await.is_ok() {
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        match f.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                pos += n as u64;
                                if tx.send(Ok(buf[..n].to_vec())).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
            if !q.follow || m.get(&name).is_err() || tx.is_closed() {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}
