//! zstd compression of a snapshot's memory file, cancellable.
//!
//! Runs after the snapshot is durable, into `memory.zst.tmp`, renamed to
//! `memory.zst` when complete; only then is the raw file dropped. Anything
//! that needs the memory cancels a running compression (the raw file is
//! still there) or decompresses into a real file first.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("cancelled")]
    Cancelled,
    #[error("{path} is corrupt")]
    Corrupt {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} does not decompress to {expected} bytes")]
    WrongSize { path: String, expected: u64 },
    #[error("write decompressed data")]
    Write(#[source] io::Error),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CompressError {
    let path = path.display().to_string();
    move |source| CompressError::Io { what, path, source }
}

/// Compress `src` into `dst` via `dst.tmp`; returns the compressed size.
/// On error or cancel the temp file is removed and `dst` is untouched.
pub fn compress(
    src: &Path,
    dst: &Path,
    level: i32,
    cancel: &AtomicBool,
) -> Result<u64, CompressError> {
    let tmp = dst.with_extension("zst.tmp");
    let result = (|| {
        let mut input = std::fs::File::open(src).map_err(io_err("open", src))?;
        let out = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        let mut enc =
            zstd::stream::Encoder::new(out, level).map_err(io_err("start zstd for", &tmp))?;
        copy_cancellable(&mut input, &mut enc, cancel, src, &tmp)?;
        let out = enc.finish().map_err(io_err("finish", &tmp))?;
        out.sync_all().map_err(io_err("fsync", &tmp))?;
        std::fs::rename(&tmp, dst).map_err(io_err("rename", dst))?;
        Ok(std::fs::metadata(dst).map(|m| m.len()).unwrap_or(0))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Decompress `src` into `dst` via a temp file (sparse: zero runs are holes).
/// The result must be exactly `expected` bytes (the guest's RAM size).
pub fn decompress(src: &Path, dst: &Path, expected: u64) -> Result<(), CompressError> {
    let tmp = dst.with_extension("raw.tmp");
    let result = (|| {
        let input = std::fs::File::open(src).map_err(io_err("open", src))?;
        let mut out =
            SparseWriter::new(std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?);
        unpack(input, &mut out, expected, src)?;
        let f = out.finish().map_err(io_err("finish", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        std::fs::rename(&tmp, dst).map_err(io_err("rename", dst))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Decode the zstd stream `input` (read from `src`) into `out`. It must give
/// exactly `expected` bytes: a damaged or substituted file must neither fill
/// the disk nor make a memory file of the wrong size.
pub fn unpack(
    input: impl Read,
    out: &mut impl Write,
    expected: u64,
    src: &Path,
) -> Result<(), CompressError> {
    let corrupt = |source| CompressError::Corrupt {
        path: src.display().to_string(),
        source,
    };
    let dec = zstd::stream::Decoder::new(input).map_err(corrupt)?;
    // One byte past `expected` tells "too long" without reading the rest.
    let mut dec = dec.take(expected.saturating_add(1));
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(e)),
        };
        total += n as u64;
        if total > expected {
            break;
        }
        out.write_all(&buf[..n]).map_err(CompressError::Write)?;
    }
    if total != expected {
        return Err(CompressError::WrongSize {
            path: src.display().to_string(),
            expected,
        });
    }
    Ok(())
}

fn copy_cancellable(
    r: &mut impl Read,
    w: &mut impl Write,
    cancel: &AtomicBool,
    src: &Path,
    dst: &Path,
) -> Result<(), CompressError> {
    let mut buf = vec![0u8; CHUNK];
    let mut first = true;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(CompressError::Cancelled);
        }
        let n = r.read(&mut buf).map_err(io_err("read", src))?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n]).map_err(io_err("write", dst))?;
        if std::mem::take(&mut first) {
            // A compression half done (tests crash the daemon here).
            crate::failpoint::reach("compress-writing", &src.display().to_string());
        }
    }
}

/// Writes zero-filled 4 KiB blocks as holes, so a decompressed memory file
/// takes the space of its data, like the original.
struct SparseWriter {
    file: std::fs::File,
    len: u64,
}

impl SparseWriter {
    fn new(file: std::fs::File) -> Self {
        SparseWriter { file, len: 0 }
    }

    fn finish(self) -> io::Result<std::fs::File> {
        self.file.set_len(self.len)?;
        Ok(self.file)
    }
}

impl Write for SparseWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        for block in buf.chunks(4096) {
            if block.iter().all(|&b| b == 0) {
                self.file.seek(SeekFrom::Current(block.len() as i64))?;
            } else {
                self.file.write_all(block)?;
            }
            self.len += block.len() as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_bytes_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, zst, back) = (
            dir.path().join("m"),
            dir.path().join("m.zst"),
            dir.path().join("m2"),
        );
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(8 << 20).unwrap();
        std::fs::write(dir.path().join("x"), b"").unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[7u8; 4096 * 3], 1 << 20).unwrap();
        drop(f);

        compress(&raw, &zst, 3, &AtomicBool::new(false)).unwrap();
        decompress(&zst, &back, 8 << 20).unwrap();

        assert_eq!(std::fs::read(&raw).unwrap(), std::fs::read(&back).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(
            std::fs::metadata(&back).unwrap().blocks() * 512 < 1 << 20,
            "holes preserved"
        );
    }

    #[test]
    fn a_stream_longer_or_shorter_than_expected_is_refused() {
        let packed = zstd::encode_all(&[1u8; 5000][..], 3).unwrap();
        let p = Path::new("m.zst");

        let long = unpack(&packed[..], &mut Vec::new(), 4999, p).unwrap_err();
        let short = unpack(&packed[..], &mut Vec::new(), 5001, p).unwrap_err();
        let mut exact = Vec::new();
        unpack(&packed[..], &mut exact, 5000, p).unwrap();

        assert!(matches!(long, CompressError::WrongSize { .. }), "{long:?}");
        assert!(
            matches!(short, CompressError::WrongSize { .. }),
            "{short:?}"
        );
        assert_eq!(exact, [1u8; 5000]);
    }

    #[test]
    fn garbage_is_corrupt_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (zst, raw) = (dir.path().join("m.zst"), dir.path().join("m"));
        std::fs::write(&zst, b"not zstd at all").unwrap();

        let err = decompress(&zst, &raw, 4096).unwrap_err();

        assert!(matches!(err, CompressError::Corrupt { .. }), "{err:?}");
        assert!(!raw.exists() && !dir.path().join("m.raw.tmp").exists());
    }

    #[test]
    fn cancelled_compression_leaves_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, zst) = (dir.path().join("m"), dir.path().join("m.zst"));
        std::fs::write(&raw, vec![1u8; 4 << 20]).unwrap();

        let err = compress(&raw, &zst, 3, &AtomicBool::new(true)).unwrap_err();

        assert!(matches!(err, CompressError::Cancelled));
        assert!(!zst.exists());
        assert!(!dir.path().join("m.zst.tmp").exists());
    }
}
