//! The per-process write tracking handed to the daemon (seed 003: one
//! registration per mm, shared by every connection of the process).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, Weak};

use cohmem_sys::pagemap::PagemapFile;
use cohmem_sys::uffd::{features, UffdFlavor, Userfaultfd};

use crate::ClientError;

/// This process's userfaultfd and pagemap fd.
pub(crate) struct ProcessTracking {
    pub pid: u32,
    pub token: u64,
    pub uffd: Userfaultfd,
    pub pagemap: PagemapFile,
    pub features: u64,
}

static PROCESS: Mutex<Option<Weak<ProcessTracking>>> = Mutex::new(None);

/// The process's tracking, created on first use. A forked child gets its own
/// (registrations are per mm and not inherited).
pub(crate) fn process_tracking() -> Result<Arc<ProcessTracking>, ClientError> {
    let mut slot = PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if let Some(pt) = slot.as_ref().and_then(Weak::upgrade) {
        if pt.pid == pid {
            return Ok(pt);
        }
    }
    let wanted = features::WP_ASYNC | features::WP_UNPOPULATED | features::WP_HUGETLBFS_SHMEM;
    // User-mode-only is enough for WP_ASYNC: the kernel resolves the faults
    // itself, so syscalls writing into protected pages work too.
    let (uffd, enabled) = Userfaultfd::open(UffdFlavor::UserModeOnly, wanted, features::WP_ASYNC)?;
    let pagemap = PagemapFile::open_self()?;
    let mut h = RandomState::new().build_hasher();
    h.write_u32(pid);
    let pt = Arc::new(ProcessTracking {
        pid,
        token: h.finish(),
        uffd,
        pagemap,
        features: enabled,
    });
    *slot = Some(Arc::downgrade(&pt));
    Ok(pt)
}
