//! inotify `IN_MODIFY` on memfds: noticing the changes to a BO that no
//! write fault reports (DESIGN.md §5.5).
//!
//! A client holds its BO's memfd, so it can change the bytes without
//! touching any tracked mapping: `write`/`pwrite` on the fd, `fallocate`
//! (`PUNCH_HOLE` zeroes a range), `madvise(MADV_REMOVE)` on a mapping
//! (which punches a hole through the file). The kernel reports each of these
//! as `IN_MODIFY` on the inode (`fsnotify_modify` runs before the system
//! call returns), while stores through a mapping never generate it. The
//! event names the file, not the range.
//!
//! The watch is added through `/proc/self/fd/N`, which resolves to the
//! memfd's own inode.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::error::{OsContext, Result};

/// One watched file (an inotify watch descriptor).
pub type WatchId = WatchDescriptor;

/// What one [`ModifyWatch::drain`] found.
#[derive(Debug, Default)]
pub struct Drained {
    /// Files modified (possibly repeated).
    pub modified: Vec<WatchId>,
    /// Watches the kernel removed (their file is gone).
    pub removed: Vec<WatchId>,
    /// The kernel's queue overflowed: events were lost, so any watched file
    /// may have been modified.
    pub overflowed: bool,
}

/// A non-blocking inotify instance watching files for `IN_MODIFY`.
#[derive(Debug)]
pub struct ModifyWatch {
    inotify: Inotify,
}

impl ModifyWatch {
    /// A new instance (non-blocking, close-on-exec).
    pub fn new() -> Result<Self> {
        Ok(Self {
            inotify: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).op("inotify_init1")?,
        })
    }

    /// Watches the file `fd` is open on. Watching one inode twice gives
    /// the same id.
    pub fn watch(&self, fd: BorrowedFd<'_>) -> Result<WatchId> {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        self.inotify
            .add_watch(path.as_str(), AddWatchFlags::IN_MODIFY)
            .op("inotify_add_watch")
    }

    /// Stops watching (an id the kernel already removed is not an error).
    pub fn unwatch(&self, id: WatchId) -> Result<()> {
        match self.inotify.rm_watch(id) {
            Ok(()) | Err(Errno::EINVAL) => Ok(()),
            Err(e) => Err(crate::SysError::os("inotify_rm_watch", e)),
        }
    }

    /// Reads every queued event without blocking.
    pub fn drain(&self) -> Result<Drained> {
        let mut out = Drained::default();
        loop {
            match self.inotify.read_events() {
                Ok(events) => {
                    for e in events {
                        if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                            out.overflowed = true;
                        } else if e.mask.contains(AddWatchFlags::IN_IGNORED) {
                            out.removed.push(e.wd);
                        } else if e.mask.contains(AddWatchFlags::IN_MODIFY) {
                            out.modified.push(e.wd);
                        }
                    }
                }
                Err(Errno::EAGAIN) => return Ok(out),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(crate::SysError::os("read(inotify)", e)),
            }
        }
    }
}

impl AsFd for ModifyWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::SharedMapping;
    use crate::memfd::Memfd;

    /// Where the kernel raises events on memfds (up to Linux 6.13), each
    /// way of changing the file through it is seen and a mapped store is
    /// not; where it raises none (6.14 and later), none of them is.
    #[test]
    fn fd_writes_are_seen_where_the_kernel_reports_them_and_mapped_stores_never() {
        let w = ModifyWatch::new().unwrap();
        let m = Memfd::create_sealed("t", 8192).unwrap();
        let id = w.watch(m.as_fd()).unwrap();
        assert!(w.drain().unwrap().modified.is_empty());
        let map = SharedMapping::map(m.as_fd(), 8192, 0, true).unwrap();
        map.write_u64(0, 7).unwrap();
        assert!(w.drain().unwrap().modified.is_empty(), "a mapped store is no IN_MODIFY");
        nix::sys::uio::pwrite(m.as_fd(), b"x", 4096).unwrap();
        let reported = !w.drain().unwrap().modified.is_empty();
        let expect: &[WatchId] = if reported { &[id] } else { &[] };
        eprintln!(
            "{}: memfd events {}",
            crate::kernel_release(),
            if reported { "raised" } else { "not raised" }
        );
        nix::fcntl::fallocate(
            m.as_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        )
        .unwrap();
        assert_eq!(w.drain().unwrap().modified, expect, "fallocate(PUNCH_HOLE)");
        // SAFETY: MADV_REMOVE on the test's own mapping, which it reads only
        // through copies.
        unsafe {
            nix::sys::mman::madvise(
                std::ptr::NonNull::new(map.as_ptr().cast()).unwrap(),
                4096,
                nix::sys::mman::MmapAdvise::MADV_REMOVE,
            )
        }
        .unwrap();
        assert_eq!(w.drain().unwrap().modified, expect, "madvise(MADV_REMOVE)");
        assert_eq!(map.read_u64(0).unwrap(), 0, "MADV_REMOVE zeroed the page");
        assert_eq!(
            crate::probe::probe_all().memfd_modify_events.ok,
            reported,
            "the probe agrees with what was seen"
        );
    }
}
