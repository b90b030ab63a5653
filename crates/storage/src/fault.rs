//! Errno injection for unit tests: forwards every call to the real kernel on
//! a real filesystem, except the calls a rule names, which fail with the
//! rule's errno. Used only for errnos a real filesystem cannot be made to
//! produce on demand.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::path::Path;

use rustix::io::Errno;

use crate::sys::{Real, Sys};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Ficlone,
    SeekData,
    SeekHole,
    CopyFileRange,
    ReadAt,
    WriteAt,
    Link,
    Fsync,
}

const OPS: usize = 8;

struct Rule {
    op: Op,
    /// 1-based call number to fail; `None` fails every call.
    nth: Option<usize>,
    errno: Errno,
}

#[derive(Default)]
pub(crate) struct Faulty {
    rules: Vec<Rule>,
    calls: [Cell<usize>; OPS],
}

impl Faulty {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Every call of `op` fails with `errno`.
    pub(crate) fn fail(mut self, op: Op, errno: Errno) -> Self {
        self.rules.push(Rule {
            op,
            nth: None,
            errno,
        });
        self
    }

    /// Only the `nth` call (1-based) of `op` fails with `errno`.
    pub(crate) fn fail_nth(mut self, op: Op, nth: usize, errno: Errno) -> Self {
        self.rules.push(Rule {
            op,
            nth: Some(nth),
            errno,
        });
        self
    }

    /// How many times `op` was called.
    pub(crate) fn calls(&self, op: Op) -> usize {
        self.calls[op as usize].get()
    }

    fn enter(&self, op: Op) -> io::Result<()> {
        let n = self.calls[op as usize].get() + 1;
        self.calls[op as usize].set(n);
        match self
            .rules
            .iter()
            .find(|r| r.op == op && r.nth.is_none_or(|k| k == n))
        {
            Some(rule) => Err(rule.errno.into()),
            None => Ok(()),
        }
    }
}

impl Sys for Faulty {
    fn ficlone(&self, dst: &File, src: &File) -> io::Result<()> {
        self.enter(Op::Ficlone)?;
        Real.ficlone(dst, src)
    }

    fn seek_data(&self, file: &File, from: u64) -> io::Result<Option<u64>> {
        self.enter(Op::SeekData)?;
        Real.seek_data(file, from)
    }

    fn seek_hole(&self, file: &File, from: u64) -> io::Result<u64> {
        self.enter(Op::SeekHole)?;
        Real.seek_hole(file, from)
    }

    fn copy_file_range(
        &self,
        src: &File,
        so: u64,
        dst: &File,
        doff: u64,
        len: usize,
    ) -> io::Result<usize> {
        self.enter(Op::CopyFileRange)?;
        Real.copy_file_range(src, so, dst, doff, len)
    }

    fn read_at(&self, file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.enter(Op::ReadAt)?;
        Real.read_at(file, buf, off)
    }

    fn write_at(&self, file: &File, buf: &[u8], off: u64) -> io::Result<usize> {
        self.enter(Op::WriteAt)?;
        Real.write_at(file, buf, off)
    }

    fn link(&self, src: &Path, dst: &Path) -> io::Result<()> {
        self.enter(Op::Link)?;
        Real.link(src, dst)
    }

    fn fsync(&self, file: &File) -> io::Result<()> {
        self.enter(Op::Fsync)?;
        Real.fsync(file)
    }
}
