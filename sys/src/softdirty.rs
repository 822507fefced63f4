//! Soft-dirty: `/proc/<pid>/clear_refs` and pagemap bit 55.
//!
//! Writing `4` to clear_refs clears the soft-dirty bit of every page of the
//! whole mm (there is no range form) and write-protects the PTEs; the next
//! write sets the bit again. A kernel without CONFIG_MEM_SOFT_DIRTY accepts
//! the write and never sets the bit, so support is only ever established by a
//! real round (`probe`), never by the write succeeding.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::error::{Result, SysError};
use crate::pagemap::errno_of;

/// An open clear_refs file of some process.
#[derive(Debug)]
pub struct ClearRefs {
    file: File,
}

impl ClearRefs {
    /// Opens `/proc/self/clear_refs` for writing.
    pub fn open_self() -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/proc/self/clear_refs")
            .map_err(|e| SysError::os("open /proc/self/clear_refs", errno_of(&e)))?;
        Ok(Self { file })
    }

    /// Adopts a clear_refs fd passed by a client.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { file: File::from(fd) }
    }

    /// Clears the soft-dirty bits of the file's whole mm.
    pub fn clear_soft_dirty(&mut self) -> Result<()> {
        self.file
            .write_all(b"4")
            .map_err(|e| SysError::os("write(clear_refs)", errno_of(&e)))
    }
}

impl std::os::fd::AsFd for ClearRefs {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}
