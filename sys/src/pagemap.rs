//! `/proc/<pid>/pagemap`: `PAGEMAP_SCAN` and raw 64-bit entries.
//!
//! With uffd WP_ASYNC, `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING` reports the
//! pages written since they were last protected *and* re-protects them in the
//! same walk: the "protect before collect" of seed 001's
//! `clean_record_shared_mapping_range`, done atomically per page by the kernel.
//! The fd may belong to another process: a client opens its own
//! `/proc/self/pagemap` and passes it over SCM_RIGHTS; the file stays bound to
//! the client's mm, and scans after the client exits fail with ESRCH.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use linux_raw_sys::general::{page_region, pm_scan_arg};
use nix::errno::Errno;

use crate::error::{OsContext, Result, SysError};

nix::ioctl_readwrite!(
    /// `PAGEMAP_SCAN` on a pagemap fd.
    ioctl_pagemap_scan, b'f', 16, pm_scan_arg
);

/// `PAGE_IS_WRITTEN` category bit.
pub const PAGE_IS_WRITTEN: u64 = linux_raw_sys::general::PAGE_IS_WRITTEN as u64;
/// `PAGE_IS_SOFT_DIRTY` category bit.
pub const PAGE_IS_SOFT_DIRTY: u64 = linux_raw_sys::general::PAGE_IS_SOFT_DIRTY as u64;
/// `PM_SCAN_WP_MATCHING`: write-protect the matching pages.
pub const PM_SCAN_WP_MATCHING: u64 = linux_raw_sys::general::PM_SCAN_WP_MATCHING as u64;
/// `PM_SCAN_CHECK_WPASYNC`: fail with EPERM unless the range is registered
/// with an async-WP userfaultfd.
pub const PM_SCAN_CHECK_WPASYNC: u64 = linux_raw_sys::general::PM_SCAN_CHECK_WPASYNC as u64;

/// Pagemap entry bit 55: soft-dirty.
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// Pagemap entry bit 57: the PTE is uffd write-protected.
pub const PM_UFFD_WP: u64 = 1 << 57;

/// Regions fetched per ioctl call.
const REGIONS_PER_CALL: usize = 512;

/// One `PAGEMAP_SCAN` query.
#[derive(Debug, Clone, Copy)]
pub struct ScanQuery {
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// Pages must have all of these categories.
    pub category_mask: u64,
    /// Categories reported in each region.
    pub return_mask: u64,
}

impl ScanQuery {
    /// Harvest written pages and re-protect them (uffd-async collection).
    pub const HARVEST_WRITTEN: Self = Self {
        flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
    };
    /// Harvest written pages and re-protect them, and report every other
    /// page of the range's VMAs too (`category_mask` 0): the caller learns
    /// which parts of the range are still mapped and registered.
    pub const HARVEST_ALL: Self = Self {
        flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        category_mask: 0,
        return_mask: PAGE_IS_WRITTEN,
    };
    /// Report written pages, change nothing.
    pub const PEEK_WRITTEN: Self = Self {
        flags: 0,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
    };
}

/// An open pagemap file of some process.
#[derive(Debug)]
pub struct PagemapFile {
    file: File,
}

impl PagemapFile {
    /// Opens the calling process's `/proc/self/pagemap`.
    pub fn open_self() -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/proc/self/pagemap")
            .map_err(|e| SysError::os("open /proc/self/pagemap", errno_of(&e)))?;
        Ok(Self { file })
    }

    /// Adopts a pagemap fd without the PAGEMAP_SCAN check (kernels before 6.7
    /// have no PAGEMAP_SCAN; entries are still readable, and
    /// [`PagemapFile::owner_pid`] still identifies the file).
    pub fn from_fd_unchecked(fd: OwnedFd) -> Self {
        Self { file: File::from(fd) }
    }

    /// Adopts a pagemap fd received from a client. The fd is checked with a
    /// zero-length `PAGEMAP_SCAN`, which only a pagemap file accepts.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        let me = Self { file: File::from(fd) };
        let mut out = Vec::new();
        match me.scan(0..0, ScanQuery::PEEK_WRITTEN, &mut out) {
            Ok(()) => Ok(me),
            Err(e) if e.errno() == Some(Errno::ENOTTY) || e.errno() == Some(Errno::EINVAL) => Err(SysError::Invalid(
                "passed fd is not a pagemap file supporting PAGEMAP_SCAN".into(),
            )),
            Err(e) => Err(e),
        }
    }

    /// The pid whose pagemap this is, as the kernel names the open file
    /// (`/proc/<pid>/pagemap`; `/proc/self/pagemap` resolves to the opener's
    /// pid). `None` if the name does not have that form, e.g. a file opened
    /// in another pid namespace's procfs.
    pub fn owner_pid(&self) -> Option<i32> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", self.file.as_raw_fd())).ok()?;
        let s = link.to_str()?;
        s.strip_prefix("/proc/")?.strip_suffix("/pagemap")?.parse().ok()
    }

    /// Runs `query` over `[range.start, range.end)` (addresses in the file's
    /// process), continuing from `walk_end` until the whole range is done,
    /// and appends the matching address ranges to `out` (adjacent ranges
    /// merged).
    pub fn scan(&self, range: Range<u64>, query: ScanQuery, out: &mut Vec<Range<u64>>) -> Result<()> {
        self.scan_each(range, query, |r, _| match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        })
    }

    /// Like [`PagemapFile::scan`], calling `each(range, categories)` for every
    /// region the kernel returns (regions differ in their returned categories).
    pub fn scan_each(&self, range: Range<u64>, query: ScanQuery, mut each: impl FnMut(Range<u64>, u64)) -> Result<()> {
        let mut regions = vec![
            page_region {
                start: 0,
                end: 0,
                categories: 0
            };
            REGIONS_PER_CALL
        ];
        let mut start = range.start;
        loop {
            let mut arg = pm_scan_arg {
                size: std::mem::size_of::<pm_scan_arg>() as u64,
                flags: query.flags,
                start,
                end: range.end,
                walk_end: 0,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: query.category_mask,
                category_anyof_mask: 0,
                return_mask: query.return_mask,
            };
            // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at
            // `regions`, a live buffer of exactly `vec_len` page_region
            // entries that the kernel fills; both outlive the call.
            let n = unsafe { ioctl_pagemap_scan(self.file.as_raw_fd(), &mut arg) }.op("PAGEMAP_SCAN")?;
            let n = usize::try_from(n).unwrap_or(0).min(regions.len());
            for r in &regions[..n] {
                each(r.start..r.end, r.categories);
            }
            if arg.walk_end >= range.end || arg.walk_end <= start {
                return Ok(());
            }
            start = arg.walk_end;
        }
    }

    /// Reads the 64-bit pagemap entry of the page at `addr`.
    pub fn entry(&self, addr: u64, page_size: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.file
            .read_exact_at(&mut b, addr / page_size * 8)
            .map_err(|e| SysError::os("pread(pagemap)", errno_of(&e)))?;
        Ok(u64::from_le_bytes(b))
    }

    /// Pages of `[range.start, range.end)` whose pagemap entry has the
    /// soft-dirty bit (55) set, as page indices from `range.start`. Reads the
    /// 64-bit entries in chunks (works without PAGEMAP_SCAN, e.g. on 6.1).
    pub fn soft_dirty_pages(&self, range: Range<u64>, page_size: u64) -> Result<Vec<u64>> {
        const CHUNK: u64 = 4096;
        let pages = (range.end - range.start) / page_size;
        let mut out = Vec::new();
        let mut buf = vec![0u8; (CHUNK * 8) as usize];
        let mut done = 0;
        while done < pages {
            let n = (pages - done).min(CHUNK);
            let bytes = &mut buf[..(n * 8) as usize];
            self.file
                .read_exact_at(bytes, (range.start / page_size + done) * 8)
                .map_err(|e| SysError::os("pread(pagemap)", errno_of(&e)))?;
            for (i, e) in bytes.chunks_exact(8).enumerate() {
                let entry = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
                if entry & PM_SOFT_DIRTY != 0 {
                    out.push(done + i as u64);
                }
            }
            done += n;
        }
        Ok(out)
    }

    /// Duplicates the fd (to hand it to the daemon).
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.file
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| SysError::os("dup", errno_of(&e)))
    }
}

impl AsFd for PagemapFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

pub(crate) fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::SharedMapping;
    use crate::memfd::Memfd;
    use crate::uffd::{features, UffdFlavor, Userfaultfd};

    /// A memfd mapping of `pages` pages, registered with a WP_ASYNC uffd and
    /// write-protected, and this process's pagemap.
    fn protected_mapping(pages: u64) -> (Memfd, SharedMapping, Userfaultfd, PagemapFile) {
        let ps = crate::page_size();
        let m = Memfd::create_sealed("t", pages * ps).unwrap();
        let map = SharedMapping::map(m.as_fd(), pages * ps, 0, true).unwrap();
        let (uffd, _) = Userfaultfd::open(
            UffdFlavor::UserModeOnly,
            features::WP_ASYNC | features::WP_UNPOPULATED,
            features::WP_ASYNC,
        )
        .unwrap();
        uffd.register_wp(map.addr(), pages * ps).unwrap();
        uffd.write_protect(map.addr(), pages * ps, true).unwrap();
        (m, map, uffd, PagemapFile::open_self().unwrap())
    }

    /// More runs than one ioctl call returns: the scan must continue from
    /// `walk_end` and still report every page (pagemap_ioctl.c's "every
    /// other page" and walk_end cases).
    #[test]
    fn harvest_continues_from_walk_end_across_calls() {
        let ps = crate::page_size();
        let pages = 4 * REGIONS_PER_CALL as u64;
        let (_m, map, _uffd, pm) = protected_mapping(pages);
        let (base, len) = (map.addr(), pages * ps);
        for p in (0..pages).step_by(2) {
            map.write_u64((p * ps) as usize, p).unwrap();
        }
        let mut out = Vec::new();
        pm.scan(base..base + len, ScanQuery::HARVEST_WRITTEN, &mut out).unwrap();
        assert_eq!(out.len() as u64, pages / 2, "one run per written page");
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, r)| r.start == base + 2 * i as u64 * ps && r.end == r.start + ps));
        out.clear();
        pm.scan(base..base + len, ScanQuery::HARVEST_WRITTEN, &mut out).unwrap();
        assert!(out.is_empty(), "harvest must re-protect everything it reported");
    }

    /// A harvest that reports every page also reveals holes: pages of the
    /// range that are no longer mapped are simply absent.
    #[test]
    fn harvest_all_reports_written_pages_and_coverage() {
        let ps = crate::page_size();
        let pages = 64u64;
        let (_m, map, _uffd, pm) = protected_mapping(pages);
        let (base, len) = (map.addr(), pages * ps);
        map.write_u64((5 * ps) as usize, 1).unwrap();
        let (mut covered, mut written) = (0, Vec::new());
        pm.scan_each(base..base + len, ScanQuery::HARVEST_ALL, |r, c| {
            covered += r.end - r.start;
            if c & PAGE_IS_WRITTEN != 0 {
                written.push(r);
            }
        })
        .unwrap();
        assert_eq!(covered, len, "every page of a mapped range is reported");
        assert_eq!(written, vec![base + 5 * ps..base + 6 * ps]);
        // Unmap the second half behind the scanner's back: it is missing.
        // SAFETY: the second half of our own mapping; nothing refers to it.
        unsafe {
            nix::sys::mman::munmap(
                std::ptr::NonNull::new((base + len / 2) as *mut _).unwrap(),
                (len / 2) as usize,
            )
        }
        .unwrap();
        let mut covered = 0;
        pm.scan_each(base..base + len, ScanQuery::HARVEST_ALL, |r, _| {
            covered += r.end - r.start
        })
        .unwrap();
        assert_eq!(covered, len / 2);
        std::mem::forget(map); // its second half is gone; do not unmap twice
    }

    #[test]
    fn owner_pid_names_the_opener() {
        let pm = PagemapFile::open_self().unwrap();
        assert_eq!(pm.owner_pid(), Some(std::process::id() as i32));
    }

    #[test]
    fn a_file_that_is_not_pagemap_is_refused() {
        let m = Memfd::create_sealed("t", 4096).unwrap();
        let err = PagemapFile::from_fd(m.try_clone_fd().unwrap()).unwrap_err();
        assert!(err.to_string().contains("not a pagemap"), "{err}");
    }
}
