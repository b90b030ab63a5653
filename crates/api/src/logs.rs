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
use tine_manager::{console, Manager};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::ApiError;

#[derive(Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

const CHUNK: usize = 64 * 1024;
const POLL: Duration = Duration::from_millis(100);
/// A trim under way takes a few ms at most.
const TRIMMING: Duration = Duration::from_millis(5);

pub async fn logs(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let (path, trims) = m.console_log(&name)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    tokio::spawn(async move {
        // `pos` is where the next read starts; `seen` is how many bytes
        // trims had cut off the file's start when `pos` was last valid.
        let mut pos: Option<u64> = None;
        let mut seen = trims.stamp().map_or(0, |(_, d)| d);
        loop {
            // Reopen each round: a restart truncates/replaces the file.
            if let Ok(mut f) = tokio::fs::File::open(&path).await {
                let mut buf = vec![0u8; CHUNK];
                // A trim may move offsets: each chunk is read between two
                // stamps that agree, else read again.
                loop {
                    let Some((stamp, dropped)) = trims.stamp() else {
                        tokio::time::sleep(TRIMMING).await;
                        continue;
                    };
                    let len = f.metadata().await.map(|md| md.len()).unwrap_or(0);
                    let shift = dropped - seen;
                    seen = dropped;
                    let p = match pos {
                        // Past what the trims cut, and not beyond the end.
                        Some(p) if p >= shift && p - shift <= len => p - shift,
                        _ => console::first_byte(&path).unwrap_or(0),
                    };
                    pos = Some(p);
                    if f.seek(std::io::SeekFrom::Start(p)).await.is_err() {
                        break;
                    }
                    let n = match f.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if !trims.unchanged(stamp) {
                        continue;
                    }
                    pos = Some(p + n as u64);
                    if tx.send(Ok(buf[..n].to_vec())).await.is_err() {
                        return;
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
