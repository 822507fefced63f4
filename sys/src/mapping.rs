//! Shared mappings of memory that other processes write.
//!
//! DESIGN.md §4: memory another process may write concurrently is never a Rust
//! slice. A [`SharedMapping`] hands out no references into itself; every access
//! is a copy through raw pointers (`ptr::copy_nonoverlapping`), the same
//! contract as crosvm's `VolatileSlice`. A concurrent writer can make a copy
//! observe a torn mix of old and new bytes, never undefined behaviour in the
//! reader's own memory.

use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::OnceLock;

use crate::fork::ForkEpoch;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::error::{OsContext, Result, SysError};

/// A `MAP_SHARED` mapping of (part of) a file, unmapped on drop (by the
/// process that has it: see [`SharedMapping::dont_fork`]).
#[derive(Debug)]
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    /// Set once the mapping is `MADV_DONTFORK`: processes forked after
    /// that epoch do not have the range.
    dont_fork: OnceLock<ForkEpoch>,
}

// SAFETY: the mapping is plain memory owned by this value; it is accessed only
// through copies (never references), which are sound from any thread.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; no method hands out a reference into the mapped memory.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps `len` bytes of `fd` at `offset` (a page multiple), read-write or
    /// read-only.
    pub fn map(fd: BorrowedFd<'_>, len: u64, offset: u64, writable: bool) -> Result<Self> {
        let len_usize =
            usize::try_from(len).map_err(|_| SysError::Invalid(format!("mapping length {len} too large")))?;
        let nz = NonZeroUsize::new(len_usize).ok_or_else(|| SysError::Invalid("mapping length is zero".into()))?;
        let off = libc::off_t::try_from(offset).map_err(|_| SysError::Invalid(format!("offset {offset} too large")))?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (no address hint, no
        // MAP_FIXED) cannot alias any existing Rust object.
        let ptr = unsafe { mmap(None, nz, prot, MapFlags::MAP_SHARED, fd, off) }.op("mmap")?;
        Ok(Self {
            ptr: ptr.cast(),
            len: len_usize,
            writable,
            dont_fork: OnceLock::new(),
        })
    }

    /// Keeps the mapping out of children created by `fork` (`MADV_DONTFORK`):
    /// a child's writes could not be tracked (tracking is per address space),
    /// so the child does not get the mapping at all. Dropped in such a
    /// child (an inherited Rust value of a mapping it does not have), the
    /// value does not `munmap`: those addresses may hold the child's own
    /// mappings by then.
    pub fn dont_fork(&self) -> Result<()> {
        // SAFETY: advice on a range this value owns; MADV_DONTFORK changes
        // only what a future fork copies, not this process's memory.
        unsafe { nix::sys::mman::madvise(self.ptr.cast(), self.len, nix::sys::mman::MmapAdvise::MADV_DONTFORK) }
            .op("madvise(MADV_DONTFORK)")?;
        let _ = self.dont_fork.set(ForkEpoch::now());
        Ok(())
    }

    /// True in a child forked after [`SharedMapping::dont_fork`]: the
    /// range is not mapped in this process.
    pub fn not_inherited(&self) -> bool {
        self.dont_fork.get().is_some_and(|e| e.forked_since())
    }

    /// Start address of the mapping.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Raw pointer to the first byte. Writing through it is the caller's
    /// responsibility (see the module comment).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping was made writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// True for an empty mapping (never constructed; for clippy's sake).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(SysError::Invalid(format!(
                "range {offset}+{len} outside mapping of {} bytes",
                self.len
            ))),
        }
    }

    /// Copies `dst.len()` bytes at `offset` out of the mapping.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.check(offset, dst.len())?;
        // SAFETY: the source range was bounds-checked against this live
        // mapping; `dst` is a distinct Rust buffer, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `src` into the mapping at `offset`.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(SysError::Invalid("mapping is read-only".into()));
        }
        self.check(offset, src.len())?;
        // SAFETY: destination bounds-checked against this live, writable
        // mapping; `src` is a Rust buffer outside it.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len()) };
        Ok(())
    }

    /// Fills `len` bytes at `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<()> {
        if !self.writable {
            return Err(SysError::Invalid("mapping is read-only".into()));
        }
        self.check(offset, len)?;
        // SAFETY: bounds-checked against this live, writable mapping.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(offset), byte, len) };
        Ok(())
    }

    /// Copies `len` bytes from this mapping at `src_offset` into `dst` at
    /// `dst_offset` (two different mappings: the source of an upload and the
    /// device memory it goes to).
    pub fn copy_to(&self, src_offset: usize, dst: &SharedMapping, dst_offset: usize, len: usize) -> Result<()> {
        if !dst.writable {
            return Err(SysError::Invalid("destination mapping is read-only".into()));
        }
        self.check(src_offset, len)?;
        dst.check(dst_offset, len)?;
        if std::ptr::eq(self, dst) {
            return Err(SysError::Invalid("copy within one mapping".into()));
        }
        // SAFETY: both ranges were bounds-checked against live mappings, and
        // they belong to two distinct mappings, which the kernel never places
        // at overlapping addresses.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(src_offset), dst.ptr.as_ptr().add(dst_offset), len)
        };
        Ok(())
    }

    /// Reads an aligned u64 with a volatile load (for counters other
    /// processes update).
    pub fn read_u64(&self, offset: usize) -> Result<u64> {
        self.check(offset, 8)?;
        if offset % 8 != 0 {
            return Err(SysError::Invalid(format!("offset {offset} is not 8-byte aligned")));
        }
        // SAFETY: in bounds and aligned (mappings are page aligned); a
        // volatile load of plain memory.
        Ok(unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(offset).cast::<u64>()) })
    }

    /// Writes an aligned u64 with a volatile store.
    pub fn write_u64(&self, offset: usize, value: u64) -> Result<()> {
        if !self.writable {
            return Err(SysError::Invalid("mapping is read-only".into()));
        }
        self.check(offset, 8)?;
        if offset % 8 != 0 {
            return Err(SysError::Invalid(format!("offset {offset} is not 8-byte aligned")));
        }
        // SAFETY: in bounds, aligned, writable; a volatile store to plain memory.
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(offset).cast::<u64>(), value) };
        Ok(())
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        if self.not_inherited() {
            return;
        }
        // SAFETY: the range was returned by mmap in `map` and is unmapped
        // only here; no reference into it exists (module contract).
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            eprintln!("cohmem-sys: munmap of {} bytes failed: {e}", self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfd::Memfd;
    use std::os::fd::AsFd;

    #[test]
    fn two_mappings_of_one_memfd_see_each_other() {
        let m = Memfd::create_sealed("t", 8192).unwrap();
        let a = SharedMapping::map(m.as_fd(), 8192, 0, true).unwrap();
        let b = SharedMapping::map(m.as_fd(), 8192, 0, false).unwrap();
        a.write_at(4096, b"hello").unwrap();
        let mut buf = [0u8; 5];
        b.read_at(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(b.write_at(0, b"x").is_err());
        assert!(a.read_at(8190, &mut buf).is_err());
    }
}
