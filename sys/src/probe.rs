//! Real probes of what this kernel offers (DESIGN.md §6).
//!
//! Nothing is inferred from version numbers or from a call merely being
//! accepted: each mechanism is exercised on a real memfd mapping and its
//! result checked (this host's kernel accepts `clear_refs` and never sets the
//! soft-dirty bit, which only a real round reveals).

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::mapping::SharedMapping;
use crate::memfd::Memfd;
use crate::pagemap::{PagemapFile, ScanQuery, PM_SOFT_DIRTY};
use crate::softdirty::ClearRefs;
use crate::uffd::{features, UffdFlavor, Userfaultfd, WpFault};
use crate::{page_size, Result, SysError};

/// Outcome of one probe.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Probe {
    /// Whether the mechanism works.
    pub ok: bool,
    /// What was observed (or why it failed).
    pub detail: String,
}

impl Probe {
    fn from(r: Result<String>) -> Self {
        match r {
            Ok(detail) => Self { ok: true, detail },
            Err(e) => Self {
                ok: false,
                detail: e.to_string(),
            },
        }
    }
}

/// Everything `cohmemctl caps` reports.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCaps {
    /// `uname -r`.
    pub kernel: String,
    /// Page size.
    pub page_size: u64,
    /// UFFDIO_API features of a user-mode-only uffd (0 if none can be made).
    pub uffd_features: u64,
    /// Their names.
    pub uffd_feature_names: Vec<&'static str>,
    /// Whether a uffd handling kernel-mode faults can be created (needed for
    /// uffd-sync without EFAULT on syscalls writing into protected pages).
    pub uffd_all_faults: Probe,
    /// `PAGEMAP_SCAN` on /proc/self/pagemap.
    pub pagemap_scan: Probe,
    /// A real WP_ASYNC round: protect, write, harvest, re-harvest.
    pub uffd_async: Probe,
    /// A real synchronous WP round: protect, fault, resolve.
    pub uffd_sync: Probe,
    /// A real soft-dirty round: clear_refs, write, pagemap bit 55.
    pub soft_dirty: Probe,
    /// A real quiesce cycle as the soft-dirty mechanism runs it: uffd
    /// protect, clear_refs, uffd unprotect, then a write must set bit 55.
    pub soft_dirty_after_unprotect: Probe,
    /// inotify `IN_MODIFY` on a memfd for a `pwrite` (writes that bypass
    /// every mapping are detected: DESIGN.md §5.5). Linux 6.14 stopped
    /// reporting events on pseudo files such as memfds.
    pub memfd_modify_events: Probe,
    /// What MAP can verify of a view here: a real round that maps a memfd
    /// with `MADV_DONTFORK` and reads it back from `/proc/self/smaps`
    /// (identity, offset, `dc`), and whether `PROCMAP_QUERY` (Linux 6.11)
    /// exists for the daemon to fall back on when it may not read a
    /// client's smaps.
    pub view_checks: Probe,
    /// A real round of the mapping-change events uffd-async proves views
    /// with: a munmap of a registered range waits for its UNMAP message,
    /// and `Userfaultfd::mm_changing` is true until the message is read.
    pub map_events: Probe,
}

impl KernelCaps {
    /// Whether soft-dirty can be exact here: its read-and-clear must run with
    /// the client's writers quiesced, which needs uffd-sync with kernel
    /// faults, a kernel whose uffd unprotect leaves soft-dirty tracking
    /// intact (probed: Debian's 6.1 makes the page writable without a fault,
    /// so every later write is missed), and `WP_UNPOPULATED` (Linux 6.7;
    /// without it never-touched pages cannot be held). Where it cannot be,
    /// cohmemd refuses soft-dirty with this reason.
    pub fn soft_dirty_quiesce(&self) -> Probe {
        let why = if !self.soft_dirty.ok {
            Some("no soft-dirty to quiesce".to_string())
        } else if !self.uffd_sync.ok {
            Some(format!("no uffd-sync to quiesce with: {}", self.uffd_sync.detail))
        } else if !self.uffd_all_faults.ok {
            Some("no userfaultfd handling kernel faults to quiesce with".to_string())
        } else if !self.soft_dirty_after_unprotect.ok {
            Some(format!(
                "soft-dirty misses writes after a quiesce: {}",
                self.soft_dirty_after_unprotect.detail
            ))
        } else if self.uffd_features & features::WP_UNPOPULATED == 0 {
            Some("no UFFD_FEATURE_WP_UNPOPULATED: never-touched pages cannot be held (inexact; refused)".to_string())
        } else {
            None
        };
        match why {
            None => Probe {
                ok: true,
                detail: "writers quiesced through the sync uffd around every read-and-clear: exact".into(),
            },
            Some(detail) => Probe { ok: false, detail },
        }
    }
}

/// Runs every probe.
pub fn probe_all() -> KernelCaps {
    let uffd_features = Userfaultfd::supported_features(UffdFlavor::UserModeOnly).unwrap_or(0);
    let soft_dirty = Probe::from(probe_soft_dirty());
    KernelCaps {
        kernel: crate::kernel_release(),
        page_size: page_size(),
        uffd_features,
        uffd_feature_names: features::names(uffd_features),
        uffd_all_faults: Probe::from(
            Userfaultfd::create(UffdFlavor::AllFaults)
                .map(|_| "userfaultfd without UFFD_USER_MODE_ONLY permitted".into()),
        ),
        pagemap_scan: Probe::from(probe_pagemap_scan()),
        uffd_async: Probe::from(probe_uffd_async()),
        uffd_sync: Probe::from(probe_uffd_sync()),
        soft_dirty: soft_dirty.clone(),
        memfd_modify_events: Probe::from(probe_memfd_modify_events()),
        view_checks: Probe::from(probe_view_checks()),
        map_events: Probe::from(probe_map_events()),
        soft_dirty_after_unprotect: if soft_dirty.ok {
            Probe::from(probe_soft_dirty_after_unprotect())
        } else {
            Probe {
                ok: false,
                detail: "not probed: no soft-dirty".into(),
            }
        },
    }
}

const PAGES: u64 = 16;

/// A real round of MAP's view checks on a mapping of our own.
fn probe_view_checks() -> Result<String> {
    let ps = page_size();
    let m = Memfd::create_sealed("cohmem-probe-view", 2 * ps)?;
    let id = m.identity()?;
    let map = SharedMapping::map(m.as_fd(), ps, ps, true)?;
    map.dont_fork()?;
    let vmas = crate::smaps::vmas_of(std::process::id() as i32, map.addr()..map.addr() + ps)?;
    match vmas.first() {
        Some(v) if (v.dev, v.inode, v.offset) == (id.dev, id.ino, ps) && v.shared && v.has_flag("dc") => {}
        other => {
            return Err(SysError::Invalid(format!(
                "/proc/self/smaps does not show the probe mapping as mapped: {other:?}"
            )))
        }
    }
    let query = match crate::procmaps::ProcMapsFile::open_self()
        .and_then(|f| f.try_clone_fd())
        .and_then(crate::procmaps::ProcMapsFile::from_fd)
    {
        Ok(_) => "PROCMAP_QUERY present: where cohmemd may not read a client's smaps it still checks inode, \
                  device and offset (not MADV_DONTFORK)"
            .to_string(),
        Err(e) => format!("no PROCMAP_QUERY ({e}): where cohmemd may not read a client's smaps, MAP checks no mapping"),
    };
    Ok(format!(
        "MAP checks from /proc/<pid>/smaps: memfd inode, device and offset, MAP_SHARED, MADV_DONTFORK (VmFlags dc); \
         the uffd by UFFDIO_REGISTER (EBUSY: another uffd); {query}"
    ))
}

/// A real round of the mapping-change events: register a mapping with a
/// WP_ASYNC uffd that asked for them, unmap it on another thread, see
/// `mm_changing` while the UNMAP message waits, read it, and see the change
/// end. An error on the way drops the uffd, which releases the unmapper.
fn probe_map_events() -> Result<String> {
    let wanted = features::WP_ASYNC | features::WP_UNPOPULATED | features::WP_HUGETLBFS_SHMEM | features::MAP_EVENTS;
    let (uffd, _) = Userfaultfd::open(UffdFlavor::UserModeOnly, wanted, wanted)?;
    let (_memfd, map) = test_mapping()?;
    let range = map.addr()..map.addr() + PAGES * page_size();
    uffd.register_wp(range.start, range.end - range.start)?;
    if uffd.mm_changing()? {
        return Err(SysError::Invalid("a change is reported before any".into()));
    }
    let unmapper = std::thread::spawn(move || drop(map));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut events = Vec::new();
    let mut seen_changing = false;
    while events.is_empty() {
        seen_changing |= uffd.mm_changing()?;
        if seen_changing {
            uffd.read_events(&mut events)?;
        }
        if Instant::now() > deadline {
            return Err(SysError::Invalid("no UNMAP message within 5 s of a munmap".into()));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    unmapper
        .join()
        .map_err(|_| SysError::Invalid("the unmapping thread panicked".into()))?;
    let expected = crate::uffd::MapEvent::Unmap {
        start: range.start,
        end: range.end,
    };
    if events != [expected] {
        return Err(SysError::Invalid(format!("munmap gave {events:?}, not {expected:?}")));
    }
    if uffd.mm_changing()? {
        return Err(SysError::Invalid(
            "a change is still reported after its message was read".into(),
        ));
    }
    Ok(
        "a munmap of a registered range waits for its UNMAP message, and UFFDIO_WRITEPROTECT answers EAGAIN \
        until it is read: uffd-async proves views with the fast PAGEMAP_SCAN"
            .into(),
    )
}

/// A real round: watch a memfd, `pwrite` it, read the event.
fn probe_memfd_modify_events() -> Result<String> {
    let watch = crate::inotify::ModifyWatch::new()?;
    let memfd = Memfd::create_sealed("cohmem-probe-inotify", page_size())?;
    let id = watch.watch(memfd.as_fd())?;
    nix::sys::uio::pwrite(memfd.as_fd(), &[1], 0).map_err(|e| SysError::os("pwrite", e))?;
    if watch.drain()?.modified.contains(&id) {
        Ok("a pwrite into a memfd raised IN_MODIFY: writes through the fd are detected".into())
    } else {
        Err(SysError::Invalid(
            "this kernel raises no inotify events on memfds (Linux 6.14 and later): writes through a BO's fd \
             (pwrite, fallocate, MADV_REMOVE) must be reported with DAMAGE"
                .into(),
        ))
    }
}

fn test_mapping() -> Result<(Memfd, SharedMapping)> {
    let ps = page_size();
    let m = Memfd::create_sealed("cohmem-probe", PAGES * ps)?;
    let map = SharedMapping::map(m.as_fd(), PAGES * ps, 0, true)?;
    Ok((m, map))
}

fn probe_pagemap_scan() -> Result<String> {
    let pm = PagemapFile::open_self()?;
    let mut out = Vec::new();
    pm.scan(0..0, ScanQuery::PEEK_WRITTEN, &mut out)?;
    Ok("PAGEMAP_SCAN accepted on /proc/self/pagemap".into())
}

fn pages_of(ranges: &[std::ops::Range<u64>], base: u64) -> Vec<u64> {
    let ps = page_size();
    ranges
        .iter()
        .flat_map(|r| ((r.start - base) / ps)..((r.end - base) / ps))
        .collect()
}

fn probe_uffd_async() -> Result<String> {
    let ps = page_size();
    let want = features::WP_ASYNC | features::WP_UNPOPULATED | features::WP_HUGETLBFS_SHMEM;
    let (uffd, _) = Userfaultfd::open(UffdFlavor::UserModeOnly, want, features::WP_ASYNC)?;
    let (_m, map) = test_mapping()?;
    let pm = PagemapFile::open_self()?;
    let base = map.addr();
    let len = PAGES * ps;
    uffd.register_wp(base, len)?;
    uffd.write_protect(base, len, true)?;
    let mut out = Vec::new();
    pm.scan(base..base + len, ScanQuery::HARVEST_WRITTEN, &mut out)?;
    if !out.is_empty() {
        return Err(SysError::Invalid(format!(
            "freshly protected range reports written pages {:?}",
            pages_of(&out, base)
        )));
    }
    for p in [3u64, 7, 8] {
        map.write_u64((p * ps) as usize, 0xc0ffee)?;
    }
    pm.scan(base..base + len, ScanQuery::HARVEST_WRITTEN, &mut out)?;
    let got = pages_of(&out, base);
    if got != [3, 7, 8] {
        return Err(SysError::Invalid(format!(
            "wrote pages [3, 7, 8], harvest reported {got:?}"
        )));
    }
    out.clear();
    pm.scan(base..base + len, ScanQuery::HARVEST_WRITTEN, &mut out)?;
    if !out.is_empty() {
        return Err(SysError::Invalid("harvest did not re-protect".into()));
    }
    Ok("WP_ASYNC + PAGEMAP_SCAN: wrote pages 3,7,8; harvested exactly those; re-harvest empty".into())
}

fn probe_uffd_sync() -> Result<String> {
    let ps = page_size();
    let want = features::WP_UNPOPULATED | features::WP_HUGETLBFS_SHMEM;
    let (uffd, flavor) = match Userfaultfd::open(UffdFlavor::AllFaults, want, 0) {
        Ok((u, _)) => (u, "kernel faults handled"),
        Err(_) => (
            Userfaultfd::open(UffdFlavor::UserModeOnly, want, 0)?.0,
            "user-mode only: syscalls writing into protected pages would fail with EFAULT",
        ),
    };
    let (_m, map) = test_mapping()?;
    let base = map.addr();
    let len = PAGES * ps;
    uffd.register_wp(base, len)?;
    uffd.write_protect(base, len, true)?;
    let target = base + 5 * ps;
    let map = std::sync::Arc::new(map);
    let writer = {
        let map = map.clone();
        std::thread::spawn(move || map.write_u64((5 * ps) as usize, 42))
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut faults: Vec<WpFault> = Vec::new();
    while faults.is_empty() && Instant::now() < deadline {
        if uffd.read_faults(&mut faults)? == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Unprotect (and wake) whatever happened, so the writer never hangs.
    uffd.write_protect(base, len, false)?;
    writer
        .join()
        .map_err(|_| SysError::Invalid("probe writer thread panicked".into()))??;
    match faults.first() {
        Some(f) if f.address & !(ps - 1) == target => Ok(format!(
            "write-protect fault delivered (flags {:#x}) and resolved; {flavor}",
            f.flags
        )),
        Some(f) => Err(SysError::Invalid(format!(
            "fault at {:#x}, expected {target:#x}",
            f.address
        ))),
        None => Err(SysError::Invalid("no write-protect fault message within 2 s".into())),
    }
}

fn probe_soft_dirty() -> Result<String> {
    let ps = page_size();
    let (_m, map) = test_mapping()?;
    let pm = PagemapFile::open_self()?;
    let mut clear = ClearRefs::open_self()?;
    let addr = map.addr() + 2 * ps;
    map.write_u64(2 * ps as usize, 1)?;
    clear.clear_soft_dirty()?;
    if pm.entry(addr, ps)? & PM_SOFT_DIRTY != 0 {
        return Err(SysError::Invalid("bit 55 still set after clear_refs".into()));
    }
    map.write_u64(2 * ps as usize, 2)?;
    if pm.entry(addr, ps)? & PM_SOFT_DIRTY == 0 {
        return Err(SysError::Invalid(
            "clear_refs accepted, but a write did not set pagemap bit 55 (no CONFIG_MEM_SOFT_DIRTY?)".into(),
        ));
    }
    Ok("clear_refs cleared bit 55 and a write set it again".into())
}

/// The quiesce cycle of the soft-dirty mechanism on one populated page:
/// write-protect it through a synchronous uffd, clear_refs, unprotect it, write
/// it. The write must set bit 55 (if the unprotect made the page writable
/// without a fault, it does not, and soft-dirty misses every such write).
fn probe_soft_dirty_after_unprotect() -> Result<String> {
    let ps = page_size();
    let (uffd, _) = Userfaultfd::open(UffdFlavor::UserModeOnly, 0, 0)?;
    let (_m, map) = test_mapping()?;
    let pm = PagemapFile::open_self()?;
    let mut clear = ClearRefs::open_self()?;
    let (base, len) = (map.addr(), PAGES * ps);
    let addr = base + 3 * ps;
    uffd.register_wp(base, len)?;
    map.write_u64(3 * ps as usize, 1)?; // populate while unprotected
    uffd.write_protect(base, len, true)?;
    clear.clear_soft_dirty()?;
    uffd.write_protect(base, len, false)?;
    let entry = pm.entry(addr, ps)?;
    // Never write into a page still protected: nobody would resolve it.
    if entry & crate::pagemap::PM_UFFD_WP != 0 {
        return Err(SysError::Invalid(
            "page still uffd-protected after the unprotect".into(),
        ));
    }
    if entry & PM_SOFT_DIRTY != 0 {
        return Err(SysError::Invalid("bit 55 still set after clear_refs".into()));
    }
    map.write_u64(3 * ps as usize, 2)?;
    let after = pm.entry(addr, ps)?;
    uffd.unregister(base, len)?;
    if after & PM_SOFT_DIRTY == 0 {
        return Err(SysError::Invalid(
            "a write after uffd protect, clear_refs, uffd unprotect did not set bit 55 (the unprotect made the \
             page writable without a fault)"
                .into(),
        ));
    }
    Ok("a write after uffd protect, clear_refs, uffd unprotect set bit 55".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_run_and_agree_with_pagemap_scan() {
        let caps = super::probe_all();
        // uffd-async needs PAGEMAP_SCAN: it can never work without it.
        if caps.uffd_async.ok {
            assert!(caps.pagemap_scan.ok);
        }
        assert!(!caps.kernel.is_empty());
    }
}
