//! mm subscriptions: one refcounted record per client process (seed 003,
//! `mmu_notifier_get/put`).
//!
//! The first connection of a process hands over its userfaultfd and pagemap
//! fd; every later connection of the same process (same peer pid and the
//! per-process token the client library picks) joins the same subscription.
//! The subscription lives while any connection or view holds it
//! (`Arc` refcount) and keeps an address → view map, used to refuse
//! overlapping views and, later, to dispatch fault addresses to BOs.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use crate::bo::View;
use crate::faults::{FaultRegistration, FaultService};
use crate::switch::MechanismOffer;
use crate::tracker::WriteTracker;

/// Identifies a client process's subscription: (peer pid, client token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmKey {
    /// Peer pid from SO_PEERCRED.
    pub pid: i32,
    /// Random token the client library chose for its process.
    pub token: u64,
}

/// One client process's write tracking.
pub struct MmSubscription {
    /// Daemon-wide id.
    pub id: u64,
    /// Registry key.
    pub key: MmKey,
    /// Peer uid.
    pub uid: u32,
    /// Registration with the fault service (uffd-sync); declared before
    /// `tracker` so that it is dropped, and deregistered, before the uffd
    /// closes.
    fault_registration: Mutex<Option<FaultRegistration>>,
    /// The mechanism observing this process's views; replaced only by a
    /// mechanism switch ([`crate::switch`]).
    tracker: RwLock<Arc<dyn WriteTracker>>,
    /// Everything the process offered in ATTACH_MM, kept so that its
    /// mechanism can be switched later.
    pub offer: MechanismOffer,
    /// Held shared while a view is being attached (MAP), exclusively by a
    /// mechanism switch, so that no view is attached to the old mechanism
    /// after the switch has collected the views.
    switching: RwLock<()>,
    views: Mutex<BTreeMap<u64, Weak<View>>>,
}

impl MmSubscription {
    fn views(&self) -> MutexGuard<'_, BTreeMap<u64, Weak<View>>> {
        self.views.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current mechanism.
    pub fn tracker(&self) -> Arc<dyn WriteTracker> {
        self.tracker.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the mechanism; the caller holds every lock a switch needs
    /// (see [`crate::switch`]) and registered the new tracker's fault uffd
    /// with the fault service already (`registration`), so nothing can
    /// fail here.
    pub(crate) fn replace_tracker(
        self: &Arc<Self>,
        tracker: Arc<dyn WriteTracker>,
        registration: Option<FaultRegistration>,
    ) {
        // The old registration goes first (the old uffd stays open until
        // the old tracker is dropped, after this function).
        let mut slot = self.fault_registration.lock().unwrap_or_else(|p| p.into_inner());
        *slot = None;
        let old = std::mem::replace(&mut *self.tracker.write().unwrap_or_else(|p| p.into_inner()), tracker);
        self.tracker().bind_mm(Arc::downgrade(self));
        if let Some(reg) = &registration {
            if let Err(e) = reg.arm() {
                tracing::error!(mm = self.id, error = %e, "arming the new uffd in the fault service failed");
            }
        }
        *slot = registration;
        drop(slot);
        drop(old);
    }

    /// Shared side of the switching lock (MAP holds it while attaching).
    pub fn attaching(&self) -> RwLockReadGuard<'_, ()> {
        self.switching.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Exclusive side of the switching lock.
    pub(crate) fn switching(&self) -> RwLockWriteGuard<'_, ()> {
        self.switching.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The live views.
    pub fn live_views(&self) -> Vec<Arc<View>> {
        self.views().values().filter_map(Weak::upgrade).collect()
    }

    /// Reserves `range` for `view`; fails if it overlaps a live view.
    pub fn insert_view(&self, range: Range<u64>, view: &Arc<View>) -> Result<(), Range<u64>> {
        let mut views = self.views();
        views.retain(|_, v| v.strong_count() > 0);
        if let Some((_, prev)) = views.range(..range.end).next_back() {
            if let Some(prev) = prev.upgrade() {
                if prev.addr + prev.len > range.start {
                    return Err(prev.addr..prev.addr + prev.len);
                }
            }
        }
        views.insert(range.start, Arc::downgrade(view));
        Ok(())
    }

    /// Forgets the view at `addr`.
    pub fn remove_view(&self, addr: u64) {
        self.views().remove(&addr);
    }

    /// Address ranges of the live views.
    pub fn view_ranges(&self) -> Vec<Range<u64>> {
        self.views()
            .values()
            .filter_map(Weak::upgrade)
            .map(|v| v.range())
            .collect()
    }

    /// The view containing `addr`, if any.
    pub fn view_at(&self, addr: u64) -> Option<Arc<View>> {
        let views = self.views();
        let (_, v) = views.range(..=addr).next_back()?;
        v.upgrade().filter(|v| addr < v.addr + v.len)
    }
}

impl Drop for MmSubscription {
    fn drop(&mut self) {
        crate::limited!(
            info,
            "mm subscription released",
            self.id,
            mm = self.id,
            pid = self.key.pid,
            "mm subscription released"
        );
    }
}

/// All live subscriptions, keyed by process.
#[derive(Default)]
pub struct MmRegistry {
    map: Mutex<HashMap<MmKey, Weak<MmSubscription>>>,
    next_id: AtomicU64,
}

impl MmRegistry {
    fn map(&self) -> MutexGuard<'_, HashMap<MmKey, Weak<MmSubscription>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live subscription for `key`, if any.
    pub fn get(&self, key: MmKey) -> Option<Arc<MmSubscription>> {
        self.map().get(&key).and_then(Weak::upgrade)
    }

    /// Returns the live subscription for `key`, or creates one with
    /// `tracker` (registered with the fault service if it takes faults).
    /// The bool is true when an existing one was joined.
    pub fn get_or_insert(
        &self,
        key: MmKey,
        uid: u32,
        tracker: Box<dyn WriteTracker>,
        offer: MechanismOffer,
        faults: &Arc<FaultService>,
    ) -> std::io::Result<(Arc<MmSubscription>, bool)> {
        let mut map = self.map();
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return Ok((existing, true));
        }
        map.retain(|_, w| w.strong_count() > 0);
        let sub = Arc::new(MmSubscription {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            key,
            uid,
            fault_registration: Mutex::new(None),
            tracker: RwLock::new(Arc::from(tracker)),
            offer,
            switching: RwLock::new(()),
            views: Mutex::new(BTreeMap::new()),
        });
        sub.tracker().bind_mm(Arc::downgrade(&sub));
        if let Some(reg) = faults.register(&sub)? {
            *sub.fault_registration.lock().unwrap_or_else(|p| p.into_inner()) = Some(reg);
        }
        map.insert(key, Arc::downgrade(&sub));
        Ok((sub, false))
    }

    /// Number of live subscriptions.
    pub fn live(&self) -> usize {
        self.map().values().filter(|w| w.strong_count() > 0).count()
    }
}
