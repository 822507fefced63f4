//! memfd: the backing store of every BO (DESIGN.md §1: a sealed memfd).
//!
//! A BO is created with `MFD_ALLOW_SEALING` and sealed with
//! `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`, so no client can truncate it
//! under the daemon's mapping (which would SIGBUS the daemon) or change the seals.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::error::{OsContext, Result, SysError};
use crate::pagemap::errno_of;

/// Seals a BO carries: size fixed, seals fixed.
pub const BO_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Device and inode of an open file: identifies a memfd across processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// An owned memfd of fixed size.
#[derive(Debug)]
pub struct Memfd {
    file: File,
    size: u64,
}

impl Memfd {
    /// Creates a memfd of `size` bytes and applies `seals` (`F_SEAL_*` bits).
    pub fn create(name: &str, size: u64, seals: i32) -> Result<Self> {
        let cname = CString::new(name).map_err(|_| SysError::Invalid(format!("memfd name {name:?} contains NUL")))?;
        let fd =
            memfd_create(cname.as_c_str(), MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).op("memfd_create")?;
        let file = File::from(fd);
        file.set_len(size)
            .map_err(|e| SysError::os("ftruncate", errno_of(&e)))?;
        let memfd = Self { file, size };
        if seals != 0 {
            memfd.add_seals(seals)?;
        }
        Ok(memfd)
    }

    /// Creates a BO memfd sealed with [`BO_SEALS`].
    pub fn create_sealed(name: &str, size: u64) -> Result<Self> {
        Self::create(name, size, BO_SEALS)
    }

    /// A memfd holding `bytes`, sealed against every change (for handing a
    /// read-only blob, such as the metrics text, to another process).
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self> {
        let memfd = Self::create(name, bytes.len() as u64, 0)?;
        memfd
            .file
            .write_all_at(bytes, 0)
            .map_err(|e| SysError::os("pwrite", errno_of(&e)))?;
        memfd.add_seals(BO_SEALS | libc::F_SEAL_WRITE)?;
        Ok(memfd)
    }

    /// Adopts an fd received from elsewhere; checks that it is a regular file
    /// (memfds are) and reads its size.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| SysError::os("fstat", errno_of(&e)))?;
        if !meta.file_type().is_file() {
            return Err(SysError::Invalid("fd is not a memfd (not a regular file)".into()));
        }
        Ok(Self { file, size: meta.len() })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds `F_SEAL_*` seals.
    pub fn add_seals(&self, seals: i32) -> Result<()> {
        fcntl(&self.file, FcntlArg::F_ADD_SEALS(SealFlag::from_bits_retain(seals))).op("F_ADD_SEALS")?;
        Ok(())
    }

    /// The current seals (`F_SEAL_*` bits).
    pub fn seals(&self) -> Result<i32> {
        fcntl(&self.file, FcntlArg::F_GET_SEALS).op("F_GET_SEALS")
    }

    /// Device and inode, for recognising the same memfd passed back later.
    pub fn identity(&self) -> Result<FileIdentity> {
        fd_identity(self.file.as_fd())
    }

    /// Reads `buf.len()` bytes at `offset` with `pread` (no mapping involved).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| SysError::os("pread", errno_of(&e)))
    }

    /// Duplicates the fd (for passing to a client).
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.file
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| SysError::os("dup", errno_of(&e)))
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Device and inode of any open fd.
pub fn fd_identity(fd: BorrowedFd<'_>) -> Result<FileIdentity> {
    let st = nix::sys::stat::fstat(fd).op("fstat")?;
    Ok(FileIdentity {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// What an open file description lets its holder do (`F_GETFL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdAccess {
    /// Opened for reading and writing.
    ReadWrite,
    /// Opened for reading only.
    ReadOnly,
    /// Opened for writing only.
    WriteOnly,
    /// An `O_PATH` fd: no access to the contents at all.
    Path,
}

/// The access mode of `fd`'s open file description.
pub fn fd_access(fd: BorrowedFd<'_>) -> Result<FdAccess> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).op("fcntl(F_GETFL)")?);
    if flags.contains(OFlag::O_PATH) {
        return Ok(FdAccess::Path);
    }
    Ok(match flags & OFlag::O_ACCMODE {
        OFlag::O_RDONLY => FdAccess::ReadOnly,
        OFlag::O_WRONLY => FdAccess::WriteOnly,
        _ => FdAccess::ReadWrite,
    })
}

/// Size of a regular file behind an fd (`fstat`).
pub fn fd_size(fd: BorrowedFd<'_>) -> Result<u64> {
    let st = nix::sys::stat::fstat(fd).op("fstat")?;
    Ok(st.st_size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_mode_of_a_reopened_memfd_is_seen() {
        use std::os::unix::fs::OpenOptionsExt;
        let m = Memfd::create_sealed("t", 4096).unwrap();
        assert_eq!(fd_access(m.as_fd()).unwrap(), FdAccess::ReadWrite);
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&m.as_fd()));
        let ro = std::fs::File::open(&path).unwrap();
        assert_eq!(fd_access(ro.as_fd()).unwrap(), FdAccess::ReadOnly);
        let opath = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&path)
            .unwrap();
        assert_eq!(fd_access(opath.as_fd()).unwrap(), FdAccess::Path);
    }

    #[test]
    fn sealed_memfd_cannot_shrink_or_grow() {
        let m = Memfd::create_sealed("t", 8192).unwrap();
        assert_eq!(m.seals().unwrap() & BO_SEALS, BO_SEALS);
        assert!(m.file.set_len(4096).is_err());
        assert!(m.file.set_len(16384).is_err());
        assert!(
            m.add_seals(libc::F_SEAL_WRITE).is_err(),
            "F_SEAL_SEAL must forbid new seals"
        );
    }

    #[test]
    fn identity_survives_dup() {
        let m = Memfd::create_sealed("t", 4096).unwrap();
        let dup = Memfd::from_fd(m.try_clone_fd().unwrap()).unwrap();
        assert_eq!(m.identity().unwrap(), dup.identity().unwrap());
        assert_eq!(dup.size(), 4096);
    }
}
