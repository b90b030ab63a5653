//! Errno classes that decide whether an operation falls back or fails.
//!
//! One table per decision, so the rules the copy engine follows are readable
//! in one place: "unsupported"-class answers fall back to a slower path, every
//! other errno is a real error that propagates.

use std::io;
use std::path::PathBuf;

use rustix::io::Errno;
use serde::Serialize;

/// An errno with its symbolic name, as recorded in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OsErrno {
    /// Raw errno value.
    pub code: i32,
    /// Symbolic name (`"EXDEV"`), or `"E?"` when not one tine names.
    pub name: &'static str,
}

impl OsErrno {
    /// Wraps a raw errno value.
    pub fn new(code: i32) -> Self {
        let name = NAMES
            .iter()
            .find(|(e, _)| e.raw_os_error() == code)
            .map_or("E?", |(_, n)| n);
        Self { code, name }
    }

    /// The errno carried by an I/O error, if it came from the OS.
    pub fn of(err: &io::Error) -> Option<Self> {
        err.raw_os_error().map(Self::new)
    }
}

/// Why an operation left its fast path: the errno and the file that got it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fallback {
    /// The "unsupported"-class answer.
    pub errno: OsErrno,
    /// The file being copied or linked when the answer came.
    pub path: PathBuf,
}

impl Fallback {
    pub(crate) fn new(err: &io::Error, path: &std::path::Path) -> Self {
        Self {
            errno: OsErrno::new(err.raw_os_error().unwrap_or_default()),
            path: path.to_path_buf(),
        }
    }
}

const NAMES: &[(Errno, &str)] = &[
    (Errno::OPNOTSUPP, "EOPNOTSUPP"),
    (Errno::XDEV, "EXDEV"),
    (Errno::INVAL, "EINVAL"),
    (Errno::NOTTY, "ENOTTY"),
    (Errno::TXTBSY, "ETXTBSY"),
    (Errno::ISDIR, "EISDIR"),
    (Errno::PERM, "EPERM"),
    (Errno::MLINK, "EMLINK"),
    (Errno::NOSYS, "ENOSYS"),
    (Errno::IO, "EIO"),
    (Errno::NOSPC, "ENOSPC"),
    (Errno::DQUOT, "EDQUOT"),
    (Errno::ACCESS, "EACCES"),
    (Errno::NOENT, "ENOENT"),
    (Errno::EXIST, "EEXIST"),
    (Errno::ROFS, "EROFS"),
];

/// FICLONE answers meaning "this file or filesystem cannot reflink".
/// EOPNOTSUPP and ENOTSUP are the same value on Linux.
const REFLINK_UNSUPPORTED: &[Errno] = &[
    Errno::OPNOTSUPP,
    Errno::XDEV,
    Errno::INVAL,
    Errno::NOTTY,
    Errno::TXTBSY,
    Errno::ISDIR,
];

/// link(2) answers after which a copy still gives the caller a usable file:
/// another filesystem, a filesystem without hardlinks (or protected_hardlinks),
/// or an inode at its link limit.
const LINK_UNSUPPORTED: &[Errno] = &[Errno::XDEV, Errno::PERM, Errno::MLINK, Errno::OPNOTSUPP];

/// copy_file_range answers after which read/write still works.
const RANGE_UNSUPPORTED: &[Errno] = &[Errno::XDEV, Errno::INVAL, Errno::OPNOTSUPP, Errno::NOSYS];

/// lseek(SEEK_DATA) answers of a filesystem that cannot report holes.
const SEEK_UNSUPPORTED: &[Errno] = &[Errno::INVAL, Errno::OPNOTSUPP, Errno::NOSYS];

fn is_in(err: &io::Error, table: &[Errno]) -> bool {
    err.raw_os_error()
        .is_some_and(|code| table.iter().any(|e| e.raw_os_error() == code))
}

pub(crate) fn reflink_unsupported(err: &io::Error) -> bool {
    is_in(err, REFLINK_UNSUPPORTED)
}

pub(crate) fn link_unsupported(err: &io::Error) -> bool {
    is_in(err, LINK_UNSUPPORTED)
}

pub(crate) fn range_unsupported(err: &io::Error) -> bool {
    is_in(err, RANGE_UNSUPPORTED)
}

pub(crate) fn seek_unsupported(err: &io::Error) -> bool {
    is_in(err, SEEK_UNSUPPORTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enotsup_is_classified_as_unsupported_reflink() {
        let err = io::Error::from_raw_os_error(Errno::NOTSUP.raw_os_error());

        assert!(reflink_unsupported(&err));
    }

    #[test]
    fn eio_is_never_a_fallback() {
        let err = io::Error::from(Errno::IO);

        assert_eq!(
            [
                reflink_unsupported(&err),
                link_unsupported(&err),
                range_unsupported(&err)
            ],
            [false, false, false]
        );
    }

    #[test]
    fn errno_name_is_symbolic() {
        assert_eq!(OsErrno::new(Errno::XDEV.raw_os_error()).name, "EXDEV");
    }
}
