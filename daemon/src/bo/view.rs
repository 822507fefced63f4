//! A view: one mapping of a BO in one client process (vmwgfx: a VMA of the
//! BO), with its MKWRITE state (the pages known writable, and those a
//! re-protection left dirty), and the mm subscription over such views
//! (seed 003).

use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};

use crate::dirty::PageSet;
use crate::mm::{MappedView, Registry, Subscription};

use super::Bo;

/// One client process's subscription, over this store's views (seed 003).
pub type MmSubscription = Subscription<View>;
/// Every live subscription, over this store's views.
pub type MmRegistry = Registry<View>;

/// One mapping of a BO in one client process.
pub struct View {
    /// Connection-local view id.
    pub id: u32,
    /// The BO this view maps (weak: the BO owns its views).
    pub bo: Weak<Bo>,
    /// The client process's subscription.
    pub mm: Arc<MmSubscription>,
    /// Start address in the client.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the BO.
    pub bo_offset: u64,
    /// Set once the process is gone or the view was removed.
    pub dead: AtomicBool,
    /// Held across a harvest of the view (from its `dead` check to the
    /// tracker's answer) and around its detach: a harvest that found the
    /// view live ends before the client can be told the view is gone and
    /// map something else at its address (a tracker knows a view only by
    /// its address range; soft-dirty hands a range whatever bits it read
    /// there, and a harvest waiting for its mm-wide cycle would take a new
    /// view's bits for the old one's BO pages).
    pub harvest: Mutex<()>,
    /// Set once a scan found the view unscannable (moved, unmapped,
    /// replaced): it is marked dirty whole at every scan.
    pub broken: AtomicBool,
    /// View-relative pages known to be writable (not write-protected) right
    /// now: the MKWRITE "PTE is writable" state. Only touched with the BO's
    /// state lock held.
    pub writable: Mutex<PageSet>,
    /// View-relative pages re-protected by an MKWRITE scan since the last
    /// clean-and-record: vmwgfx leaves their hardware dirty bit set, so the
    /// next clean-and-record reports them again. Only touched with the BO's
    /// state lock held.
    pub stale_dirty: Mutex<PageSet>,
}

impl View {
    /// Creates a view record (all pages protected).
    pub fn new(
        id: u32,
        bo: Weak<Bo>,
        mm: Arc<MmSubscription>,
        addr: u64,
        len: u64,
        bo_offset: u64,
        page_size: u64,
    ) -> Self {
        Self {
            id,
            bo,
            mm,
            addr,
            len,
            bo_offset,
            dead: AtomicBool::new(false),
            harvest: Mutex::new(()),
            broken: AtomicBool::new(false),
            writable: Mutex::new(PageSet::new(len / page_size)),
            stale_dirty: Mutex::new(PageSet::new(len / page_size)),
        }
    }

    /// Address range in the client.
    pub fn range(&self) -> Range<u64> {
        self.addr..self.addr + self.len
    }

    /// BO pages this view maps.
    pub fn bo_pages(&self, page_size: u64) -> Range<u64> {
        let first = self.bo_offset / page_size;
        first..first + self.len / page_size
    }
}

impl MappedView for View {
    fn range(&self) -> Range<u64> {
        View::range(self)
    }
}
