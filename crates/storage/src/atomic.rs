//! Crash-safe replacement of a file: temp file in the same directory, fsync,
//! rename over, fsync the directory. After a crash the path holds either the
//! old or the new contents, never a mix; a leftover temp file ends with
//! [`TEMP_SUFFIX`](crate::TEMP_SUFFIX), so `copy_dir` never carries it along.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dir::TEMP_SUFFIX;

/// Replaces `path` with `bytes` atomically and durably (mode 0644 before
/// umask). Concurrent writers of one path are safe: each uses its own temp
/// file and the last rename wins.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tag = format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = temp_path(path, &tag)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        // Best effort: the write error is what the caller needs to see.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(parent(path))
}

/// fsyncs a directory, making renames and links inside it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `.{name}.{tag}.tmp` next to `path`: hidden, and skipped by `copy_dir`.
pub(crate) fn temp_path(path: &Path, tag: &str) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(".");
    tmp.push(tag);
    tmp.push(TEMP_SUFFIX);
    Ok(parent(path).join(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_path_is_hidden_sibling_with_temp_suffix() {
        let tmp = temp_path(Path::new("/a/b/memory"), "unshare").unwrap();

        assert_eq!(tmp, Path::new("/a/b/.memory.unshare.tmp"));
    }

    #[test]
    fn bare_name_has_current_dir_as_parent() {
        assert_eq!(parent(Path::new("memory")), Path::new("."));
    }

    #[test]
    fn write_atomic_replaces_contents_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        fs::write(&path, b"old").unwrap();

        write_atomic(&path, b"new").unwrap();

        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            (fs::read(&path).unwrap(), names),
            (b"new".to_vec(), vec![OsString::from("record.json")])
        );
    }
}
