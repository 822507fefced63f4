//! Shared mappings of memory that other processes write.
//!
//! DESIGN.md §4: memory another process may write concurrently is never a Rust
//! slice. A [`SharedMapping`] hands out no references into itself; every access
//! is a copy through vm-memory's [`VolatileSlice`] (the type crosvm and
//! Firecracker use for guest memory), or an atomic load or store of one
//! aligned word. A concurrent writer can make a copy observe a torn mix of old
//! and new bytes, never undefined behaviour in the reader's own memory.
//!
//! The mapping itself is memmap2's [`MmapRaw`] (`mmap(MAP_SHARED)` with no
//! address hint, `munmap` on drop, `madvise`): a raw pointer and a length,
//! never a slice. Two things stay ours: an offset that is not a page multiple
//! is refused (memmap2 would round it down and hide the difference), and a
//! mapping made `MADV_DONTFORK` is not unmapped when its Rust value drops in a
//! forked child that never had it ([`SharedMapping::dont_fork`]).
//!
//! What vm-memory's copies are: `VolatileSlice::copy_to`/`copy_from` of bytes
//! use one volatile load/store per aligned word for copies of up to 8 bytes,
//! and `ptr::copy_nonoverlapping` (libc `memcpy`) above that;
//! `copy_to_volatile_slice` is `ptr::copy` (`memmove`). That is the same
//! machine code and the same soundness argument as the hand-written
//! `ptr::copy_nonoverlapping` it replaced (an opaque copy through raw
//! pointers, no reference the compiler could assume stable); no crate offers
//! more until Rust has an atomic per-byte memcpy. What it adds is the
//! bounds-checked `subslice`, so this file has one `unsafe` constructor
//! (and the drop) instead of one unsafe block per helper. The word accessors use
//! `Bytes::load`/`store` (`AtomicU64`, relaxed): unlike a volatile access,
//! a race between atomics is defined in Rust's model.

use std::mem::ManuallyDrop;
use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use memmap2::{Advice, MmapOptions, MmapRaw};
use nix::errno::Errno;
use vm_memory::{Bytes, VolatileSlice};

use crate::error::{Result, SysError};
use crate::fork::ForkEpoch;

/// A `MAP_SHARED` mapping of (part of) a file, unmapped on drop (by the
/// process that has it: see [`SharedMapping::dont_fork`]).
#[derive(Debug)]
pub struct SharedMapping {
    /// Dropped (unmapped) only in [`Drop`], and not in a child that does
    /// not have the range.
    map: ManuallyDrop<MmapRaw>,
    writable: bool,
    /// Set once the mapping is `MADV_DONTFORK`: processes forked after
    /// that epoch do not have the range.
    dont_fork: OnceLock<ForkEpoch>,
}

/// A memmap2 error as this crate's: the errno under `op`, else invalid.
fn io_error(op: &'static str, e: std::io::Error) -> SysError {
    match e.raw_os_error() {
        Some(n) => SysError::os(op, Errno::from_raw(n)),
        None => SysError::Invalid(format!("{op}: {e}")),
    }
}

impl SharedMapping {
    /// Maps `len` bytes of `fd` at `offset` (a page multiple), read-write or
    /// read-only.
    pub fn map(fd: BorrowedFd<'_>, len: u64, offset: u64, writable: bool) -> Result<Self> {
        let len_usize =
            usize::try_from(len).map_err(|_| SysError::Invalid(format!("mapping length {len} too large")))?;
        NonZeroUsize::new(len_usize).ok_or_else(|| SysError::Invalid("mapping length is zero".into()))?;
        libc::off_t::try_from(offset).map_err(|_| SysError::Invalid(format!("offset {offset} too large")))?;
        if offset % crate::page_size() != 0 {
            // What mmap(2) answers; memmap2 would map from the page below.
            return Err(SysError::os("mmap", Errno::EINVAL));
        }
        let mut options = MmapOptions::new();
        options.offset(offset).len(len_usize);
        // memmap2 maps with no address hint and no MAP_FIXED, so the new
        // mapping cannot replace any existing one.
        let map = if writable {
            options.map_raw(&fd)
        } else {
            options.map_raw_read_only(&fd)
        }
        .map_err(|e| io_error("mmap", e))?;
        Ok(Self {
            map: ManuallyDrop::new(map),
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
        self.map
            .advise(Advice::DontFork)
            .map_err(|e| io_error("madvise(MADV_DONTFORK)", e))?;
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
        self.as_ptr() as u64
    }

    /// Raw pointer to the first byte. Writing through it is the caller's
    /// responsibility (see the module comment).
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The whole mapping as a [`VolatileSlice`]: bounds-checked sub-slices
    /// and copies, no references into the memory.
    pub fn volatile(&self) -> VolatileSlice<'_> {
        // vm-memory asks that every other user access the memory
        // volatilely: this process reaches it only through copies and
        // atomics (the module contract; `as_ptr` users promise the same),
        // and a writing client is another process, outside this program's
        // memory model, as a guest is for crosvm.
        // SAFETY: `len` bytes at `as_ptr` stay mapped while `self` is borrowed.
        unsafe { VolatileSlice::new(self.as_ptr(), self.len()) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping was made writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// True for an empty mapping (never constructed; for clippy's sake).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes `offset..offset + len`, bounds-checked.
    fn range(&self, offset: usize, len: usize) -> Result<VolatileSlice<'_>> {
        self.volatile()
            .subslice(offset, len)
            .map_err(|_| SysError::Invalid(format!("range {offset}+{len} outside mapping of {} bytes", self.len())))
    }

    fn check_writable(&self, what: &str) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(SysError::Invalid(format!("{what} is read-only")))
        }
    }

    /// Copies `dst.len()` bytes at `offset` out of the mapping.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.range(offset, dst.len())?.copy_to(dst);
        Ok(())
    }

    /// Copies `src` into the mapping at `offset`.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<()> {
        self.check_writable("mapping")?;
        self.range(offset, src.len())?.copy_from(src);
        Ok(())
    }

    /// Fills `len` bytes at `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<()> {
        self.check_writable("mapping")?;
        let dst = self.range(offset, len)?;
        let pattern = [byte; 4096];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(pattern.len());
            // In bounds: `dst` is `len` bytes long.
            dst.offset(at)
                .map_err(|e| SysError::Invalid(e.to_string()))?
                .copy_from(&pattern[..n]);
            at += n;
        }
        Ok(())
    }

    /// Faults `offset..offset + len` (page aligned) in writable ahead of
    /// use (`MADV_POPULATE_WRITE`, Linux 5.14), so that copies into it later
    /// take no page faults: one call for many pages costs less than a fault
    /// each.
    pub fn populate(&self, offset: usize, len: usize) -> Result<()> {
        self.check_writable("mapping")?;
        self.range(offset, len)?;
        self.map
            .advise_range(Advice::PopulateWrite, offset, len)
            .map_err(|e| io_error("madvise(MADV_POPULATE_WRITE)", e))
    }

    /// Copies `len` bytes from this mapping at `src_offset` into `dst` at
    /// `dst_offset` (two different mappings: the source of an upload and the
    /// device memory it goes to).
    pub fn copy_to(&self, src_offset: usize, dst: &SharedMapping, dst_offset: usize, len: usize) -> Result<()> {
        dst.check_writable("destination mapping")?;
        let from = self.range(src_offset, len)?;
        let to = dst.range(dst_offset, len)?;
        if std::ptr::eq(self, dst) {
            return Err(SysError::Invalid("copy within one mapping".into()));
        }
        from.copy_to_volatile_slice(to);
        Ok(())
    }

    /// The blocks of `block` bytes in `offset..offset + len` whose bytes
    /// differ between this mapping and `other` at the same offsets, as
    /// runs of block indices counted from `offset / block` (a VNC server's
    /// compare against its shadow surface; `offset` and `len` multiples of
    /// `block`, itself a multiple of 8).
    ///
    /// A block another process writes during the compare may be reported
    /// either way, but one that differs for the whole compare is always
    /// reported: each word is read once, and a block is equal only if every
    /// word read was. (libc's `memcmp` is not used: glibc's reloads the
    /// first differing byte to compute its sign and answers "equal" when a
    /// writer made that byte equal in between.)
    pub fn differing_blocks(
        &self,
        other: &SharedMapping,
        offset: usize,
        len: usize,
        block: usize,
    ) -> Result<Vec<std::ops::Range<u64>>> {
        if block == 0 || block % 8 != 0 || offset % block != 0 || len % block != 0 {
            return Err(SysError::Invalid(format!(
                "compare of {offset}+{len} is not in whole blocks of {block} bytes (a multiple of 8)"
            )));
        }
        let a = self.range(offset, len)?;
        let b = other.range(offset, len)?;
        let (pa, pb) = (a.ptr_guard(), b.ptr_guard());
        let first = (offset / block) as u64;
        let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
        for i in 0..len / block {
            let at = i * block;
            // Aligned to 8: page-aligned mappings, `offset` and `block`
            // multiples of 8 (checked above).
            // SAFETY: both pointers are `block` bytes inside live mappings
            // (bounds-checked by `range`, borrowed for this call), 8-aligned.
            let differs = unsafe { words_differ(pa.as_ptr().add(at).cast(), pb.as_ptr().add(at).cast(), block / 8) };
            if differs {
                let idx = first + i as u64;
                match runs.last_mut() {
                    Some(r) if r.end == idx => r.end = idx + 1,
                    _ => runs.push(idx..idx + 1),
                }
            }
        }
        Ok(runs)
    }

    fn check_aligned(offset: usize) -> Result<()> {
        if offset % 8 != 0 {
            return Err(SysError::Invalid(format!("offset {offset} is not 8-byte aligned")));
        }
        Ok(())
    }

    /// Reads an aligned u64 with an atomic (relaxed) load, for counters
    /// other processes update.
    pub fn read_u64(&self, offset: usize) -> Result<u64> {
        let word = self.range(offset, 8)?;
        Self::check_aligned(offset)?;
        word.load(0, Ordering::Relaxed)
            .map_err(|e| SysError::Invalid(e.to_string()))
    }

    /// Writes an aligned u64 with an atomic (relaxed) store.
    pub fn write_u64(&self, offset: usize, value: u64) -> Result<()> {
        self.check_writable("mapping")?;
        let word = self.range(offset, 8)?;
        Self::check_aligned(offset)?;
        word.store(value, 0, Ordering::Relaxed)
            .map_err(|e| SysError::Invalid(e.to_string()))
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        if self.not_inherited() {
            // Leak the MmapRaw: its munmap could hit this child's own
            // mappings at those addresses.
            return;
        }
        // SAFETY: `map` is dropped once, here, and not used afterwards; no
        // reference into the memory exists (module contract).
        unsafe { ManuallyDrop::drop(&mut self.map) };
    }
}

/// True when any of the `words` u64 words at `a` and `b` read differently.
/// Each byte is read once, through a raw pointer (memory another process
/// writes: no reference is made), so a block that differs for the whole
/// call is always found. On x86-64, 16-byte SSE2 loads (the baseline, no
/// detection needed), four at a time: as fast as `memcmp` here; elsewhere
/// volatile word loads.
///
/// # Safety
///
/// `a` and `b` must be 8-byte aligned and valid for reads of `words` words.
unsafe fn words_differ(a: *const u64, b: *const u64, words: usize) -> bool {
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_setzero_si128, _mm_xor_si128,
        };
        while i + 8 <= words {
            // SAFETY: words i..i + 8 (64 bytes) are inside both ranges the
            // caller vouches for; unaligned loads need no alignment.
            let diff = unsafe {
                let (pa, pb) = (a.add(i).cast::<__m128i>(), b.add(i).cast::<__m128i>());
                let x0 = _mm_xor_si128(_mm_loadu_si128(pa), _mm_loadu_si128(pb));
                let x1 = _mm_xor_si128(_mm_loadu_si128(pa.add(1)), _mm_loadu_si128(pb.add(1)));
                let x2 = _mm_xor_si128(_mm_loadu_si128(pa.add(2)), _mm_loadu_si128(pb.add(2)));
                let x3 = _mm_xor_si128(_mm_loadu_si128(pa.add(3)), _mm_loadu_si128(pb.add(3)));
                let any = _mm_or_si128(_mm_or_si128(x0, x1), _mm_or_si128(x2, x3));
                _mm_movemask_epi8(_mm_cmpeq_epi8(any, _mm_setzero_si128())) != 0xffff
            };
            if diff {
                return true;
            }
            i += 8;
        }
    }
    while i < words {
        // SAFETY: `i < words`: inside both ranges the caller vouches for.
        if unsafe { a.add(i).read_volatile() != b.add(i).read_volatile() } {
            return true;
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfd::Memfd;
    use std::os::fd::AsFd;

    /// A block that differs from the other side for the whole compare is
    /// reported, however the bytes change meanwhile: glibc's `memcmp`
    /// reloads the first differing byte to compute its answer and returns 0
    /// when a writer made that byte equal in between (the hot-range test
    /// lost writes to it).
    #[test]
    fn a_block_that_differs_throughout_a_compare_is_always_reported() {
        let ps = crate::page_size() as usize;
        let m = Memfd::create_sealed("t", ps as u64).unwrap();
        let shadow_fd = Memfd::create_sealed("s", ps as u64).unwrap();
        let bo = SharedMapping::map(m.as_fd(), ps as u64, 0, false).unwrap();
        let shadow = SharedMapping::map(shadow_fd.as_fd(), ps as u64, 0, true).unwrap();
        // The shadow holds stamp 0; the writer stores stamps 1, 2, ... whose
        // low bytes come back to the shadow's again and again.
        let w = SharedMapping::map(m.as_fd(), ps as u64, 0, true).unwrap();
        w.write_u64(0, 1 << 8).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut stamp = (1u64 << 8) + 1;
                while !stop.load(Ordering::Relaxed) {
                    w.write_u64(0, stamp).unwrap();
                    stamp += 1;
                }
            })
        };
        let mut missed = 0;
        for _ in 0..200_000 {
            if bo.differing_blocks(&shadow, 0, ps, ps).unwrap().is_empty() {
                missed += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(missed, 0, "compares that found a differing block equal");
    }

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

    #[test]
    fn copies_fills_and_words_are_bounds_checked() {
        let m = Memfd::create_sealed("t", 8192).unwrap();
        let n = Memfd::create_sealed("u", 8192).unwrap();
        let a = SharedMapping::map(m.as_fd(), 8192, 0, true).unwrap();
        let b = SharedMapping::map(n.as_fd(), 4096, 4096, true).unwrap();
        let ro = SharedMapping::map(n.as_fd(), 4096, 0, false).unwrap();
        a.fill(100, 5000, 0xab).unwrap();
        a.copy_to(100, &b, 10, 905).unwrap();
        let mut buf = [0u8; 3];
        b.read_at(10 + 905 - 2, &mut buf).unwrap();
        assert_eq!(buf, [0xab, 0xab, 0x00]);
        assert!(a.copy_to(0, &b, 4000, 97).is_err(), "past the destination");
        assert!(a.copy_to(8000, &b, 0, 193).is_err(), "past the source");
        assert!(a.copy_to(0, &ro, 0, 1).is_err(), "read-only destination");
        assert!(a.copy_to(0, &a, 4096, 1).is_err(), "within one mapping");
        assert!(a.fill(8000, 193, 0).is_err());
        a.write_u64(4096, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(a.read_u64(4096).unwrap(), 0x0102_0304_0506_0708);
        assert!(a.read_u64(4097).is_err(), "unaligned");
        assert!(a.read_u64(8192).is_err(), "past the end");
        assert!(ro.write_u64(0, 1).is_err());
        let unaligned = SharedMapping::map(m.as_fd(), 4096, 100, true).unwrap_err();
        assert_eq!(unaligned.errno(), Some(Errno::EINVAL));
        assert_eq!(a.volatile().len(), 8192);
    }
}
