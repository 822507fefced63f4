//! Buffer objects and their views.
//!
//! A BO is a sealed memfd owned and mapped by the daemon (DESIGN.md §1), with
//! its dirty state, the views client processes announced, and one GPU
//! resource per page-aligned window (one window covering the whole BO for
//! now). BOs are found again by the identity of their memfd, so possessing
//! the memfd is the only way to import one: there is no global name.

use std::collections::HashMap;
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::{FileIdentity, Memfd};

use crate::dirty::DirtyState;
use crate::gpu::{GpuBackend, GpuError, GpuResource};
use crate::mm::MmSubscription;
use crate::tracker::TrackError;

/// A GPU resource bound to a byte window of a BO.
pub struct Resource {
    /// Window in the BO, bytes, page aligned.
    pub window: Range<u64>,
    /// The device buffer.
    pub gpu: Box<dyn GpuResource>,
}

/// Per-BO counters.
#[derive(Debug, Default)]
pub struct BoCounters {
    /// Completed syncs.
    pub syncs: AtomicU64,
    /// Pages uploaded.
    pub pages_uploaded: AtomicU64,
    /// Bytes uploaded.
    pub bytes_uploaded: AtomicU64,
}

/// One buffer object.
pub struct Bo {
    /// Daemon-wide id (display only).
    pub id: u64,
    /// Size in bytes, a page multiple.
    pub size: u64,
    /// Page size used for all page arithmetic.
    pub page_size: u64,
    memfd: Memfd,
    identity: FileIdentity,
    /// The daemon's own mapping: the source of every upload.
    pub mapping: SharedMapping,
    dirty: Mutex<DirtyState>,
    views: RwLock<Vec<Arc<View>>>,
    /// GPU resources, ascending windows.
    pub resources: Vec<Resource>,
    /// Serialises syncs of this BO.
    pub sync_lock: Mutex<()>,
    /// Counters.
    pub counters: BoCounters,
}

/// One mapping of a BO in one client process.
pub struct View {
    /// Connection-local view id.
    pub id: u32,
    /// The client process's subscription.
    pub mm: Arc<MmSubscription>,
    /// Start address in the client.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the BO.
    pub bo_offset: u64,
    dead: AtomicBool,
}

impl View {
    /// Creates a view record.
    pub fn new(id: u32, mm: Arc<MmSubscription>, addr: u64, len: u64, bo_offset: u64) -> Self {
        Self {
            id,
            mm,
            addr,
            len,
            bo_offset,
            dead: AtomicBool::new(false),
        }
    }

    /// Address range in the client.
    pub fn range(&self) -> Range<u64> {
        self.addr..self.addr + self.len
    }
}

/// Locks a mutex, recovering from poisoning (a panicked holder left valid data).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bo {
    /// Creates a sealed memfd of `size` bytes (a page multiple), maps it and
    /// allocates its GPU resource.
    pub fn create(id: u64, size: u64, gpu: &dyn GpuBackend) -> Result<Self, GpuError> {
        let page_size = cohmem_sys::page_size();
        let memfd = Memfd::create_sealed(&format!("cohmem-bo-{id}"), size)?;
        let identity = memfd.identity()?;
        let mapping = SharedMapping::map(memfd.as_fd(), size, 0, false)?;
        let resource = Resource {
            window: 0..size,
            gpu: gpu.create_resource(size)?,
        };
        Ok(Self {
            id,
            size,
            page_size,
            memfd,
            identity,
            mapping,
            dirty: Mutex::new(DirtyState::new(size / page_size)),
            views: RwLock::new(Vec::new()),
            resources: vec![resource],
            sync_lock: Mutex::new(()),
            counters: BoCounters::default(),
        })
    }

    /// The memfd (to pass to the creator).
    pub fn memfd(&self) -> &Memfd {
        &self.memfd
    }

    /// Locks the dirty state.
    pub fn dirty(&self) -> MutexGuard<'_, DirtyState> {
        lock(&self.dirty)
    }

    /// A snapshot of the live views.
    pub fn views(&self) -> Vec<Arc<View>> {
        self.views.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Number of live views.
    pub fn view_count(&self) -> usize {
        self.views.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Adds a view (already protected by its tracker).
    pub fn add_view(&self, view: Arc<View>) {
        self.views
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(view);
    }

    /// Removes a view from the BO and its mm, harvesting it one last time so
    /// nothing written through it is lost (whole view marked dirty if the
    /// harvest is impossible, e.g. the process exited).
    pub fn remove_view(&self, view: &Arc<View>) {
        self.views
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|v| !Arc::ptr_eq(v, view));
        view.mm.remove_view(view.addr);
        // Under the sync lock: a concurrent sync must not transfer before this
        // last harvest is recorded, or a write completed before its SYNC was
        // sent could miss that sync. A failure marks the view dirty whole.
        let _serial = lock(&self.sync_lock);
        let _ = self.harvest_view(view);
        view.dead.store(true, Ordering::Release);
    }

    /// Collects the written pages of one view into the dirty state. A view
    /// whose process is gone, or whose scan fails, is marked dirty whole:
    /// what cannot be proven clean is dirty.
    pub fn harvest_view(&self, view: &View) -> Result<(), TrackError> {
        if view.dead.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut ranges = Vec::new();
        let result = view.mm.tracker.collect(view.range(), &mut ranges);
        let ps = self.page_size;
        let mut dirty = self.dirty();
        for r in &ranges {
            let start = r.start.max(view.addr) - view.addr + view.bo_offset;
            let end = r.end.min(view.addr + view.len) - view.addr + view.bo_offset;
            dirty.record(start / ps..end.div_ceil(ps));
        }
        if let Err(e) = &result {
            let first = view.bo_offset / ps;
            dirty.record(first..first + view.len / ps);
            if matches!(e, TrackError::Gone) {
                // The process exited: its view can never be written again.
                view.dead.store(true, Ordering::Release);
            } else {
                tracing::warn!(bo = self.id, view = view.id, error = %e, "harvest failed; view marked dirty whole");
            }
        }
        result
    }
}

/// All live BOs, findable by memfd identity.
#[derive(Default)]
pub struct BoStore {
    by_identity: Mutex<HashMap<FileIdentity, Weak<Bo>>>,
    next_id: AtomicU64,
}

impl BoStore {
    /// A fresh daemon-wide BO id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a new BO.
    pub fn insert(&self, bo: &Arc<Bo>) {
        let mut map = lock(&self.by_identity);
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(bo.identity, Arc::downgrade(bo));
    }

    /// The live BO whose memfd has this identity.
    pub fn find(&self, identity: FileIdentity) -> Option<Arc<Bo>> {
        lock(&self.by_identity)
            .get(&identity)
            .and_then(Weak::upgrade)
    }

    /// All live BOs.
    pub fn all(&self) -> Vec<Arc<Bo>> {
        let mut v: Vec<Arc<Bo>> = lock(&self.by_identity)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        v.sort_by_key(|b| b.id);
        v
    }
}
