//! `/proc/<pid>/maps`: the `PROCMAP_QUERY` ioctl (Linux 6.11).
//!
//! The daemon must prove at every sync that a view is still mapped where it
//! was announced (vmwgfx never has to: its VMAs are its own). A
//! `PAGEMAP_SCAN` that reports every page (category mask 0) proves it, but
//! leaves the kernel's fast path for uffd harvests and costs about 15× a
//! harvest over a large clean view (issue 6, target 4). `PROCMAP_QUERY` asks
//! for one VMA at a time under the mmap lock, so proving that a range is
//! covered costs one call per VMA, not per page.
//!
//! Like the pagemap, the file is opened by the client (`/proc/self/maps`) and
//! passed over `SCM_RIGHTS`: it stays bound to the client's mm, and queries
//! after the client exits fail with ESRCH.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use linux_raw_sys::general::{procmap_query, procmap_query_flags, PROCFS_IOCTL_MAGIC};
use nix::errno::Errno;

use crate::error::{OsContext, Result, SysError};
use crate::pagemap::errno_of;

nix::ioctl_readwrite!(
    /// `PROCMAP_QUERY` on a `/proc/<pid>/maps` fd.
    ioctl_procmap_query, PROCFS_IOCTL_MAGIC, 17, procmap_query
);

/// One VMA as `PROCMAP_QUERY` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Offset of `start` in the mapped file.
    pub offset: u64,
    /// Inode of the mapped file (0 for anonymous memory).
    pub inode: u64,
    /// Device of the mapped file, encoded like `st_dev`.
    pub dev: u64,
    /// `PROCMAP_QUERY_VMA_*` permission bits.
    pub flags: u64,
}

/// An open `/proc/<pid>/maps` of some process, used for `PROCMAP_QUERY`.
#[derive(Debug)]
pub struct ProcMapsFile {
    file: File,
}

impl ProcMapsFile {
    /// Opens the calling process's `/proc/self/maps`.
    pub fn open_self() -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/proc/self/maps")
            .map_err(|e| SysError::os("open /proc/self/maps", errno_of(&e)))?;
        Ok(Self { file })
    }

    /// Adopts a maps fd received from a client, checked with one query: only
    /// a maps file on a kernel with `PROCMAP_QUERY` answers it.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        let me = Self { file: File::from(fd) };
        match me.vma_at_or_after(0) {
            Ok(_) => Ok(me),
            Err(e) if matches!(e.errno(), Some(Errno::ENOTTY | Errno::EINVAL)) => Err(SysError::Invalid(
                "passed fd is not a maps file supporting PROCMAP_QUERY (Linux 6.11)".into(),
            )),
            Err(e) => Err(e),
        }
    }

    /// The pid whose maps file this is, as the kernel names the open file
    /// (`/proc/<pid>/maps`); `None` if the name does not have that form.
    pub fn owner_pid(&self) -> Option<i32> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", self.file.as_raw_fd())).ok()?;
        let s = link.to_str()?;
        s.strip_prefix("/proc/")?.strip_suffix("/maps")?.parse().ok()
    }

    /// The VMA containing `addr`, or else the first one after it; `None`
    /// when there is none.
    pub fn vma_at_or_after(&self, addr: u64) -> Result<Option<Vma>> {
        let mut q = procmap_query {
            size: std::mem::size_of::<procmap_query>() as u64,
            query_flags: procmap_query_flags::PROCMAP_QUERY_COVERING_OR_NEXT_VMA as u64,
            query_addr: addr,
            vma_start: 0,
            vma_end: 0,
            vma_flags: 0,
            vma_page_size: 0,
            vma_offset: 0,
            inode: 0,
            dev_major: 0,
            dev_minor: 0,
            vma_name_size: 0,
            build_id_size: 0,
            vma_name_addr: 0,
            build_id_addr: 0,
        };
        // SAFETY: `q` is a valid procmap_query whose name and build-id
        // buffers have size 0 (the kernel writes no string); it outlives the
        // call, and the kernel only fills its fields.
        match unsafe { ioctl_procmap_query(self.file.as_raw_fd(), &mut q) } {
            Ok(_) => Ok(Some(Vma {
                start: q.vma_start,
                end: q.vma_end,
                offset: q.vma_offset,
                inode: q.inode,
                dev: crate::smaps::makedev(q.dev_major.into(), q.dev_minor.into()),
                flags: q.vma_flags,
            })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err::<Option<Vma>, _>(e).op("PROCMAP_QUERY"),
        }
    }

    /// Bytes of `range` not covered by any VMA (0: the range is mapped from
    /// end to end). One query per VMA met.
    pub fn uncovered(&self, range: Range<u64>) -> Result<u64> {
        let mut missing = 0;
        let mut at = range.start;
        while at < range.end {
            match self.vma_at_or_after(at)? {
                Some(v) if v.end > at => {
                    missing += v.start.saturating_sub(at).min(range.end - at);
                    at = v.end;
                }
                _ => {
                    missing += range.end - at;
                    break;
                }
            }
        }
        Ok(missing)
    }

    /// Whether `v` is a `MAP_SHARED` mapping.
    pub fn is_shared(v: &Vma) -> bool {
        v.flags & procmap_query_flags::PROCMAP_QUERY_VMA_SHARED as u64 != 0
    }

    /// Duplicates the fd (to hand it to the daemon).
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.file
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| SysError::os("dup", errno_of(&e)))
    }
}

impl AsFd for ProcMapsFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::SharedMapping;
    use crate::memfd::Memfd;

    fn supported() -> Option<ProcMapsFile> {
        let m = ProcMapsFile::open_self().ok()?;
        match ProcMapsFile::from_fd(m.try_clone_fd().ok()?) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    #[test]
    fn a_mapping_is_covered_and_a_hole_is_counted() {
        let Some(maps) = supported() else { return };
        let ps = crate::page_size();
        let len = 16 * ps;
        let m = Memfd::create_sealed("t", len).unwrap();
        let map = SharedMapping::map(m.as_fd(), len, 0, true).unwrap();
        let base = map.addr();
        assert_eq!(maps.uncovered(base..base + len).unwrap(), 0);
        let v = maps.vma_at_or_after(base).unwrap().unwrap();
        assert!(v.start <= base && v.end >= base + len, "{v:?}");
        let id = m.identity().unwrap();
        assert_eq!((v.dev, v.inode), (id.dev, id.ino), "the VMA maps the memfd");
        // Punch a 3-page hole into the middle.
        // SAFETY: pages of our own mapping that nothing else refers to.
        unsafe {
            nix::sys::mman::munmap(
                std::ptr::NonNull::new((base + 4 * ps) as *mut _).unwrap(),
                (3 * ps) as usize,
            )
        }
        .unwrap();
        assert_eq!(maps.uncovered(base..base + len).unwrap(), 3 * ps);
        assert_eq!(maps.uncovered(base..base + 4 * ps).unwrap(), 0);
        std::mem::forget(map); // partly unmapped already
    }

    #[test]
    fn owner_pid_names_the_opener() {
        let Some(maps) = supported() else { return };
        assert_eq!(maps.owner_pid(), Some(std::process::id() as i32));
    }

    #[test]
    fn a_file_that_is_not_maps_is_refused() {
        let m = Memfd::create_sealed("t", 4096).unwrap();
        let err = ProcMapsFile::from_fd(m.try_clone_fd().unwrap()).unwrap_err();
        assert!(err.to_string().contains("not a maps file"), "{err}");
    }
}
