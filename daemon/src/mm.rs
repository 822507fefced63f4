//! mm subscriptions: one refcounted record per client process (seed 003,
//! `mmu_notifier_get/put`).
//!
//! The first connection of a process hands over its userfaultfd and pagemap
//! fd; every later connection of the same process (same peer pid and the
//! per-process token the client library picks) joins the same subscription.
//! The subscription lives while any connection or view holds it
//! (`Arc` refcount) and keeps an address → view map, used to refuse
//! overlapping views and to dispatch fault addresses to BOs.
//!
//! This module sits between the mechanisms ([`crate::tracker`]) and the BO
//! store (`bo`): it is generic over the view type (the BO store
//! instantiates it with its `View` as `bo::MmSubscription`), and knows the
//! fault service only as a [`FaultHook`] it keeps, so no module below the BO
//! store names one above it.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use crate::tracker::{ProcessViews, WriteTracker};

/// A mapping in a client process, as the subscription sees it: an address
/// range (the BO store's `View`).
pub trait MappedView: Send + Sync + 'static {
    /// The view's address range in the client.
    fn range(&self) -> Range<u64>;
}

/// A subscription's registration with the fault service (uffd-sync), kept
/// for as long as its mechanism lasts and dropped (deregistered) before
/// the mechanism's uffd closes.
pub trait FaultHook: Send + Sync {
    /// Starts delivering the uffd's faults to the fault service.
    fn arm(&self) -> std::io::Result<()>;
}

/// The fds a client process offered in ATTACH_MM, kept for the life of its
/// subscription: each mechanism is built from duplicates of them
/// (`switch`).
#[derive(Debug, Default)]
pub struct MechanismOffer {
    /// WP_ASYNC userfaultfd and the process's pagemap.
    pub asynchronous: Option<(OwnedFd, OwnedFd)>,
    /// Synchronous userfaultfd.
    pub synchronous: Option<OwnedFd>,
    /// Pagemap and clear_refs, for soft-dirty.
    pub soft_dirty: Option<(OwnedFd, OwnedFd)>,
    /// The process's `/proc/self/maps`, for `PROCMAP_QUERY` coverage proofs.
    pub maps: Option<OwnedFd>,
    /// ATTACH_MM flags (what the fds are and what they can do).
    pub flags: u32,
    /// Features of the WP_ASYNC userfaultfd.
    pub uffd_features: u64,
}

/// Identifies a client process's subscription: (peer pid, client token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmKey {
    /// Peer pid from SO_PEERCRED.
    pub pid: i32,
    /// Random token the client library chose for its process.
    pub token: u64,
}

/// One client process's write tracking, over views of type `V`.
pub struct Subscription<V: MappedView> {
    /// Daemon-wide id.
    pub id: u64,
    /// Registry key.
    pub key: MmKey,
    /// Peer uid.
    pub uid: u32,
    /// Registration with the fault service (uffd-sync); declared before
    /// `tracker` so that it is dropped, and deregistered, before the uffd
    /// closes.
    fault_registration: Mutex<Option<Box<dyn FaultHook>>>,
    /// The mechanism observing this process's views; replaced only by a
    /// mechanism switch (`switch`).
    tracker: RwLock<Arc<dyn WriteTracker>>,
    /// Everything the process offered in ATTACH_MM, kept so that its
    /// mechanism can be switched later.
    pub offer: MechanismOffer,
    /// Held shared while a view is being attached (MAP), exclusively by a
    /// mechanism switch, so that no view is attached to the old mechanism
    /// after the switch has collected the views.
    switching: RwLock<()>,
    views: Mutex<BTreeMap<u64, Weak<V>>>,
}

impl<V: MappedView> Subscription<V> {
    fn views(&self) -> MutexGuard<'_, BTreeMap<u64, Weak<V>>> {
        self.views.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current mechanism.
    pub fn tracker(&self) -> Arc<dyn WriteTracker> {
        self.tracker.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the mechanism; the caller holds every lock a switch needs
    /// (see `switch`) and registered the new tracker's fault uffd
    /// with the fault service already (`registration`), so nothing can
    /// fail here.
    pub(crate) fn replace_tracker(
        self: &Arc<Self>,
        tracker: Arc<dyn WriteTracker>,
        registration: Option<Box<dyn FaultHook>>,
    ) {
        // The old registration goes first (the old uffd stays open until
        // the old tracker is dropped, after this function).
        let mut slot = self.fault_registration.lock().unwrap_or_else(|p| p.into_inner());
        *slot = None;
        let old = std::mem::replace(&mut *self.tracker.write().unwrap_or_else(|p| p.into_inner()), tracker);
        self.bind_tracker();
        if let Some(reg) = &registration {
            if let Err(e) = reg.arm() {
                tracing::error!(mm = self.id, error = %e, "arming the new uffd in the fault service failed");
            }
        }
        *slot = registration;
        drop(slot);
        drop(old);
    }

    /// Hands the current mechanism this subscription's views.
    fn bind_tracker(self: &Arc<Self>) {
        let views: Arc<dyn ProcessViews> = self.clone();
        self.tracker().bind_mm(Arc::downgrade(&views));
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
    pub fn live_views(&self) -> Vec<Arc<V>> {
        self.views().values().filter_map(Weak::upgrade).collect()
    }

    /// Reserves `range` for `view`; fails if it overlaps a live view.
    pub fn insert_view(&self, range: Range<u64>, view: &Arc<V>) -> Result<(), Range<u64>> {
        let mut views = self.views();
        views.retain(|_, v| v.strong_count() > 0);
        if let Some((_, prev)) = views.range(..range.end).next_back() {
            if let Some(prev) = prev.upgrade() {
                let prev = prev.range();
                if prev.end > range.start {
                    return Err(prev);
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

    /// The view containing `addr`, if any.
    pub fn view_at(&self, addr: u64) -> Option<Arc<V>> {
        let views = self.views();
        let (_, v) = views.range(..=addr).next_back()?;
        v.upgrade().filter(|v| addr < v.range().end)
    }
}

impl<V: MappedView> ProcessViews for Subscription<V> {
    fn view_ranges(&self) -> Vec<Range<u64>> {
        self.views()
            .values()
            .filter_map(Weak::upgrade)
            .map(|v| v.range())
            .collect()
    }

    fn view_range_at(&self, addr: u64) -> Option<Range<u64>> {
        self.view_at(addr).map(|v| v.range())
    }
}

impl<V: MappedView> Drop for Subscription<V> {
    fn drop(&mut self) {
        // Mapping changes whose messages wait on a uffd the daemon lets go
        // of would wait for a reader that never comes: read them, without
        // waiting (this may run on a runtime worker). Later ones, and one
        // whose message is not queued yet, wait until the client's library
        // attaches again (or its guard, if the daemon dies).
        self.tracker().release_map_events(std::time::Duration::ZERO);
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
pub struct Registry<V: MappedView> {
    map: Mutex<HashMap<MmKey, Weak<Subscription<V>>>>,
    next_id: AtomicU64,
}

impl<V: MappedView> Default for Registry<V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<V: MappedView> Registry<V> {
    fn map(&self) -> MutexGuard<'_, HashMap<MmKey, Weak<Subscription<V>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live subscription for `key`, if any.
    pub fn get(&self, key: MmKey) -> Option<Arc<Subscription<V>>> {
        self.map().get(&key).and_then(Weak::upgrade)
    }

    /// Returns the live subscription for `key`, or creates one with
    /// `tracker`, registered with the fault service by `register` (which
    /// returns `None` for a mechanism that takes no faults). The bool is
    /// true when an existing one was joined.
    pub fn get_or_insert(
        &self,
        key: MmKey,
        uid: u32,
        tracker: Box<dyn WriteTracker>,
        offer: MechanismOffer,
        register: impl FnOnce(&Arc<Subscription<V>>) -> std::io::Result<Option<Box<dyn FaultHook>>>,
    ) -> std::io::Result<(Arc<Subscription<V>>, bool)> {
        let mut map = self.map();
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return Ok((existing, true));
        }
        map.retain(|_, w| w.strong_count() > 0);
        let sub = Arc::new(Subscription {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            key,
            uid,
            fault_registration: Mutex::new(None),
            tracker: RwLock::new(Arc::from(tracker)),
            offer,
            switching: RwLock::new(()),
            views: Mutex::new(BTreeMap::new()),
        });
        sub.bind_tracker();
        if let Some(reg) = register(&sub)? {
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
