//! The copy operations' error type ([`copy_dir`](crate::copy_dir),
//! [`copy_file`](crate::copy_file)). Share and unshare have their own enums in
//! their modules; each wraps this one when its fallback copy fails.

use std::io;
use std::path::{Path, PathBuf};

/// Why a copy failed. Every variant names the path it concerns; the errno is
/// in the `#[source]`. No half-written file is left behind in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    #[error("source {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("destination {path} is inside the source")]
    DestinationInsideSource { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot recreate symlink {path}")]
    Symlink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot reflink into {path}")]
    Reflink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set mode of {path}")]
    SetMode {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot sync {path}")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CopyError {
    /// The underlying I/O error, if any (for errno checks by callers).
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            Self::NotADirectory { .. }
            | Self::DestinationInsideSource { .. }
            | Self::NotAFile { .. } => None,
            Self::Read { source, .. }
            | Self::ReadDir { source, .. }
            | Self::Create { source, .. }
            | Self::CreateDir { source, .. }
            | Self::Symlink { source, .. }
            | Self::Reflink { source, .. }
            | Self::Write { source, .. }
            | Self::SetMode { source, .. }
            | Self::Sync { source, .. } => Some(source),
        }
    }
}

/// `map_err` adapters: `.map_err(CopyError::read(path))`.
macro_rules! adapters {
    ($($fn_name:ident => $variant:ident),* $(,)?) => {
        impl CopyError {
            $(
                pub(crate) fn $fn_name(path: &Path) -> impl FnOnce(io::Error) -> CopyError {
                    let path = path.to_path_buf();
                    move |source| CopyError::$variant { path, source }
                }
            )*
        }
    };
}
adapters!(
    read => Read,
    read_dir => ReadDir,
    create => Create,
    create_dir => CreateDir,
    symlink => Symlink,
    reflink => Reflink,
    write => Write,
    set_mode => SetMode,
    sync => Sync,
);
