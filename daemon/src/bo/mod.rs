//! Buffer objects and their views.
//!
//! A BO is a sealed memfd owned and mapped by the daemon (DESIGN.md §1), with
//! the views client processes announced, its GPU resources at page-aligned
//! windows, and — while at least one resource exists — a vmwgfx tracker
//! ([`DirtyTracker`]). BOs are found again by the identity of their memfd, so
//! possessing the memfd is the only way to import one: there is no global
//! name. The operations on a BO's tracker live in `sync`.

use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::{FileIdentity, Memfd};

use crate::dirty::DirtyState;
use crate::gpu::{GpuBackend, GpuError, GpuResource};
use crate::policy::DirtyTracker;
use crate::quota::BoCharge;

/// Why a client's memfd cannot be adopted as a BO.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// Empty, or not a whole number of pages.
    #[error("a BO memfd must be a non-zero multiple of the page size; this one has {0} bytes")]
    Size(u64),
    /// Missing F_SEAL_SHRINK or F_SEAL_GROW.
    #[error("a BO memfd must be sealed with F_SEAL_SHRINK and F_SEAL_GROW (seals are {0:#x})")]
    NotSealed(i32),
    /// Mapping it or creating its resource failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// Reading its seals failed.
    #[error(transparent)]
    Sys(#[from] cohmem_sys::SysError),
    /// An image BO this daemon's backend would lay out differently.
    #[error("{0}")]
    Layout(String),
}

pub use crate::resource::Resource;

mod hot;
mod shadow;
mod store;
mod view;
pub use hot::{split_runs, HotPages, HotRange, HOT_CHUNK_PAGES, HOT_WHOLE_SHADOW_BYTES};
pub use shadow::Shadow;
pub use store::BoStore;
pub use view::{MmRegistry, MmSubscription, View};

/// Per-BO counters.
#[derive(Debug, Default)]
pub struct BoCounters {
    /// Completed syncs.
    pub syncs: AtomicU64,
    /// Pages uploaded.
    pub pages_uploaded: AtomicU64,
    /// Bytes uploaded.
    pub bytes_uploaded: AtomicU64,
    /// Method switches.
    pub method_switches: AtomicU64,
    /// Sync read sections retried after colliding with a structural change.
    pub sync_retries: AtomicU64,
    /// Syncs that took the exclusive path (seed 000's fallback).
    pub sync_exclusive: AtomicU64,
    /// Pages marked dirty without proof of a write (switches, dead views).
    pub extra_pages: AtomicU64,
    /// Times tracking was paused for dense writes ([`crate::policy::DensePolicy`]).
    pub dense_pauses: AtomicU64,
    /// Daemon time of the last completed sync, in ns (0 before the first):
    /// a connection runs the next one on its runtime thread when it was short.
    pub last_sync_ns: AtomicU64,
}

/// The mutable state of a BO, behind one lock (vmwgfx's BO reservation):
/// every tracker operation holds it from start to end.
pub struct BoState {
    /// The vmwgfx tracker; `None` while no resource is bound.
    pub tracker: Option<DirtyTracker>,
    /// Resource slots; indices stay stable, released slots become `None`.
    pub resources: Vec<Option<Arc<Resource>>>,
    /// True while a quiesce holds this BO's writers (seed 004): the fault
    /// service parks uffd-sync faults in `deferred` instead of resolving them.
    pub quiesced: bool,
    /// Faults parked during a quiesce: (view, page address).
    pub deferred: Vec<(Arc<View>, u64)>,
    /// How an operator pinned this BO's tracking (SET_POLICY); a tracker
    /// created later starts under it.
    pub policy: cohmem_proto::BoPolicy,
    /// Pages found written while the BO had no tracker (no resource bound
    /// yet, or the last one released): the next tracker starts from them,
    /// so no harvest is ever thrown away. `None` while nothing is pending.
    pub untracked: Option<DirtyState>,
    /// Pages in the BO (N), for `untracked`.
    pages: u64,
    /// While the BO is compared instead of tracked (the `shadow` policy, or
    /// `auto`'s choice for a small BO): the copy the GPU resources hold for
    /// every page not marked dirty. Only with a tracker: dropped with it.
    /// Its bytes change only in an upload, under `Bo::sync_lock`.
    pub shadow: Option<Arc<Shadow>>,
    /// Pages rewritten at every sync, compared instead of tracked
    /// (`auto` only; see [`HotPages`]). Reset with the tracker.
    pub hot: HotPages,
    /// BO pages whose new bytes a shadow (whole or hot) took in an upload
    /// to some resources only (a TRANSFER): other resources whose windows
    /// cover them have not received them, and no compare will find them
    /// again. Every SYNC uploads them to every resource; a TRANSFER to its
    /// own resource too. Sorted, disjoint.
    pub shadow_owed: Vec<Range<u64>>,
}

impl BoState {
    /// Records BO pages `range` as written: into the tracker, or while the
    /// BO has none, into [`BoState::untracked`] for the next tracker.
    pub fn record_written(&mut self, range: Range<u64>) {
        match self.tracker.as_mut() {
            Some(t) => t.dirty.record(range),
            None => self
                .untracked
                .get_or_insert_with(|| DirtyState::new(self.pages))
                .record(range),
        }
    }

    /// Records BO page `page` as found written by a harvest, unless it is
    /// in an active hot range, whose compare after every harvest finds
    /// what changed there (a harvest reports those unprotected pages
    /// whether written or not).
    pub fn record_harvested(&mut self, page: u64) {
        if self.hot.covers(page) {
            return;
        }
        self.hot.note_written(page);
        self.record_written(page..page + 1);
    }

    /// Installs a new tracker, which starts from the pages recorded while
    /// the BO had none.
    pub fn start_tracker(&mut self, mut tracker: DirtyTracker) {
        if let Some(pending) = self.untracked.take() {
            for r in pending.runs() {
                tracker.dirty.record(r);
            }
        }
        self.tracker = Some(tracker);
    }

    /// Drops the tracker (the last resource was released), keeping its
    /// recorded pages for the next one.
    pub fn stop_tracker(&mut self) {
        // The next tracker starts with a full copy; the shadow says nothing then.
        self.shadow = None;
        // Hot pages left unprotected are reported by the next harvest.
        self.hot = HotPages::default();
        // No resource is left to owe anything to.
        self.shadow_owed.clear();
        if let Some(t) = self.tracker.take() {
            if t.dirty.dirty_pages() > 0 {
                self.untracked = Some(t.dirty);
            }
        }
    }
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
    /// The layout of an image BO (its whole-BO resource is the image);
    /// `None` for a byte BO.
    pub image: Option<cohmem_proto::ImageInfo>,
    state: Mutex<BoState>,
    views: RwLock<Vec<Arc<View>>>,
    /// Serialises syncs and transfers of this BO from start to end of upload,
    /// so a sync never returns while an earlier one still copies its pages.
    pub sync_lock: Mutex<()>,
    /// Set once a resource was exported through an fd that lets another
    /// process write the GPU copy (a dma-buf): the daemon is then not its
    /// only writer, so `auto` never compares the BO with a shadow of what
    /// it uploaded (a rewrite with unchanged bytes must still be uploaded
    /// over whatever the other side put there).
    pub gpu_shared: std::sync::atomic::AtomicBool,
    /// Seed 000's sequence count: odd while a structural change (a view
    /// added or removed) runs; syncs read it around their scan-and-copy.
    structure_seq: AtomicU64,
    /// Serialises structural changes; a sync holds it on its exclusive path.
    structure_writers: Mutex<()>,
    /// Counters.
    pub counters: BoCounters,
    /// The quota charge of the uid that created or adopted the BO,
    /// released when the BO dies.
    charge: OnceLock<BoCharge>,
    /// What the server layer keeps for exactly as long as the BO lives: its
    /// entries in the service manager's fd store (`fdstore`),
    /// removed when this is dropped. Opaque here: the BO store sits below
    /// the systemd glue and never names its types.
    stored: OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

pub use crate::locking::lock;

impl Bo {
    /// Creates a sealed memfd of `size` bytes (a page multiple) and maps it;
    /// with `default_resource`, also binds a GPU resource covering the whole
    /// BO (which creates the tracker).
    pub fn create(id: u64, size: u64, gpu: &dyn GpuBackend, default_resource: bool) -> Result<Self, GpuError> {
        let memfd = Memfd::create_sealed(&format!("cohmem-bo-{id}"), size)?;
        let make = |size| gpu.create_resource(size);
        Self::from_memfd(id, memfd, default_resource.then_some(make))
    }

    /// Creates an image BO (DESIGN.md §8): the backend allocates the
    /// linear `width` × `height` image in `fourcc` first; the BO is a sealed
    /// memfd of its size rounded up to pages, whose bytes take the image's
    /// layout (pitch, offset), bound to it as the whole-BO resource. Fails
    /// with [`GpuError::TooLarge`] when the image needs more than
    /// `max_size` bytes (nothing is kept then).
    pub fn create_image(
        id: u64,
        width: u32,
        height: u32,
        fourcc: u32,
        max_size: u64,
        gpu: &dyn GpuBackend,
    ) -> Result<Self, GpuError> {
        let ps = cohmem_sys::page_size();
        let image = gpu.create_image(width, height, fourcc)?;
        let size = image.size().div_ceil(ps) * ps;
        if size > max_size {
            return Err(GpuError::TooLarge {
                size,
                reason: format!("a {width}x{height} image needs {size} bytes; the limit is max_bo_size = {max_size}"),
            });
        }
        let memfd = Memfd::create_sealed(&format!("cohmem-image-{id}"), size)?;
        Self::from_memfd(id, memfd, Some(move |_size| Ok(image)))
    }

    /// Adopts a BO memfd this daemon does not know — one a client kept
    /// across a daemon restart, or one from the service manager's fd store
    /// (DESIGN.md §5.5) — as BO `id` with a GPU resource covering it: the
    /// `stored` buffer (with its pitch) where the backend can take it back,
    /// else a new one. Every page starts dirty, so the first sync uploads
    /// the whole BO: nobody tracked the writes made meanwhile. The memfd
    /// must be a page multiple and sealed against shrinking and growing
    /// ([`BO_SEALS`](cohmem_sys::memfd::BO_SEALS)), so that the daemon's
    /// mapping can never fault on a truncated file.
    pub fn adopt(
        id: u64,
        memfd: Memfd,
        gpu: &dyn GpuBackend,
        stored: Option<(OwnedFd, u64)>,
    ) -> Result<Self, AdoptError> {
        let page_size = cohmem_sys::page_size();
        let size = memfd.size();
        if size == 0 || size % page_size != 0 {
            return Err(AdoptError::Size(size));
        }
        let seals = memfd.seals()?;
        let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals & needed != needed {
            return Err(AdoptError::NotSealed(seals));
        }
        let make = |size| match stored {
            Some((fd, pitch)) => gpu.adopt_resource(fd, size, pitch).or_else(|e| {
                tracing::warn!(bo = id, error = %e, "stored GPU buffer not adopted; creating a new one");
                gpu.create_resource(size)
            }),
            None => gpu.create_resource(size),
        };
        let bo = Self::from_memfd(id, memfd, Some(make))?;
        if let Some(t) = bo.state().tracker.as_mut() {
            t.dirty.record(0..bo.pages());
        }
        bo.counters.extra_pages.fetch_add(bo.pages(), Ordering::Relaxed);
        Ok(bo)
    }

    /// Adopts the memfd of an image BO created with layout `image` (by an
    /// earlier daemon): the backend allocates the same image, which must
    /// come out with the same pitch and offset and the memfd's size, else
    /// [`AdoptError::Layout`] says what differs. Every page starts dirty,
    /// as in [`Bo::adopt`].
    pub fn adopt_image(
        id: u64,
        memfd: Memfd,
        gpu: &dyn GpuBackend,
        image: cohmem_proto::ImageInfo,
    ) -> Result<Self, AdoptError> {
        let page_size = cohmem_sys::page_size();
        let size = memfd.size();
        let seals = memfd.seals()?;
        let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals & needed != needed {
            return Err(AdoptError::NotSealed(seals));
        }
        let resource = gpu.create_image(image.width, image.height, image.fourcc)?;
        let made = resource.image();
        let made_size = resource.size().div_ceil(page_size) * page_size;
        match made {
            Some(m) if m.pitch == image.pitch && m.offset == image.offset && made_size == size => {}
            _ => {
                return Err(AdoptError::Layout(format!(
                    "{} lays a {}x{} {} image out as {}; the BO has pitch {}, offset {} and {size} bytes",
                    gpu.name(),
                    image.width,
                    image.height,
                    cohmem_proto::fourcc::name(image.fourcc),
                    made.map_or("a byte buffer".to_string(), |m| format!(
                        "pitch {}, offset {} and {made_size} bytes",
                        m.pitch, m.offset
                    )),
                    image.pitch,
                    image.offset
                )))
            }
        }
        let bo = Self::from_memfd(id, memfd, Some(move |_size| Ok(resource)))?;
        if let Some(t) = bo.state().tracker.as_mut() {
            t.dirty.record(0..bo.pages());
        }
        bo.counters.extra_pages.fetch_add(bo.pages(), Ordering::Relaxed);
        Ok(bo)
    }

    /// The BO of `memfd`, mapped, with a whole-BO resource from
    /// `default_resource` (which also creates the tracker) if given.
    fn from_memfd(
        id: u64,
        memfd: Memfd,
        default_resource: Option<impl FnOnce(u64) -> Result<Box<dyn GpuResource>, GpuError>>,
    ) -> Result<Self, GpuError> {
        let page_size = cohmem_sys::page_size();
        let size = memfd.size();
        let identity = memfd.identity()?;
        let mapping = SharedMapping::map(memfd.as_fd(), size, 0, false)?;
        let mut state = BoState {
            tracker: None,
            resources: Vec::new(),
            quiesced: false,
            deferred: Vec::new(),
            policy: cohmem_proto::BoPolicy::Auto,
            untracked: None,
            pages: size / page_size,
            shadow: None,
            hot: HotPages::default(),
            shadow_owed: Vec::new(),
        };
        let mut image = None;
        if let Some(make) = default_resource {
            let resource = Resource::new(0..size, make(size)?);
            image = resource.image();
            state.resources.push(Some(Arc::new(resource)));
            state.start_tracker(DirtyTracker::new(size / page_size));
        }
        Ok(Self {
            id,
            size,
            page_size,
            memfd,
            identity,
            mapping,
            image,
            state: Mutex::new(state),
            views: RwLock::new(Vec::new()),
            sync_lock: Mutex::new(()),
            gpu_shared: std::sync::atomic::AtomicBool::new(false),
            structure_seq: AtomicU64::new(0),
            structure_writers: Mutex::new(()),
            counters: BoCounters::default(),
            charge: OnceLock::new(),
            stored: OnceLock::new(),
        })
    }

    /// Attaches the quota charge the BO holds for its life (once).
    pub fn hold_charge(&self, charge: BoCharge) {
        let _ = self.charge.set(charge);
    }

    /// The quota charge the BO holds (`None` for a BO made without one:
    /// the engine's own tests).
    pub fn charge(&self) -> Option<&BoCharge> {
        self.charge.get()
    }

    /// Attaches the BO's fd store entry (once), removed when the BO dies
    /// (the entry's own `Drop` removes it from the store).
    pub fn hold_stored(&self, entry: Box<dyn std::any::Any + Send + Sync>) {
        let _ = self.stored.set(entry);
    }

    /// Pages in the BO (N).
    pub fn pages(&self) -> u64 {
        self.size / self.page_size
    }

    /// The memfd (to pass to the creator).
    pub fn memfd(&self) -> &Memfd {
        &self.memfd
    }

    /// Locks the BO's state (tracker and resources).
    pub fn state(&self) -> MutexGuard<'_, BoState> {
        lock(&self.state)
    }

    /// A snapshot of the live views (readers never block view changes of
    /// other BOs; seed 002's read-mostly list).
    pub fn views(&self) -> Vec<Arc<View>> {
        self.views.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Number of live views.
    pub fn view_count(&self) -> usize {
        self.views.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Runs a structural change (a view added or removed) as the write side
    /// of the sequence count: syncs whose read section overlaps it retry.
    pub fn structural_change<T>(&self, change: impl FnOnce() -> T) -> T {
        let _change = self.begin_structural_change();
        change()
    }

    /// Starts a structural change that lasts until the guard is dropped.
    pub fn begin_structural_change(&self) -> StructuralChange<'_> {
        let writers = lock(&self.structure_writers);
        self.structure_seq.fetch_add(1, Ordering::SeqCst);
        StructuralChange {
            seq: &self.structure_seq,
            _writers: writers,
        }
    }

    /// The current sequence count (odd: a structural change is running).
    pub fn structure_seq(&self) -> u64 {
        self.structure_seq.load(Ordering::SeqCst)
    }

    /// Blocks structural changes (the exclusive path of a sync).
    pub fn block_structural_changes(&self) -> MutexGuard<'_, ()> {
        lock(&self.structure_writers)
    }

    /// Adds a view (already protected by its tracker). Callers hold the state
    /// lock, so that tracker operations see a stable view list.
    pub fn add_view(&self, view: Arc<View>) {
        self.views.write().unwrap_or_else(|p| p.into_inner()).push(view);
    }

    /// Drops a view from the list (the caller harvested it first), after
    /// any harvest of it still running ([`View::harvest`]).
    pub fn detach_view(&self, view: &Arc<View>) {
        self.views
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|v| !Arc::ptr_eq(v, view));
        let _harvest = lock(&view.harvest);
        view.mm.remove_view(view.addr);
        view.dead.store(true, Ordering::Release);
    }
}

/// A running structural change: the sequence count stays odd, and other
/// structural changes wait, until it is dropped.
pub struct StructuralChange<'b> {
    seq: &'b AtomicU64,
    _writers: MutexGuard<'b, ()>,
}

impl Drop for StructuralChange<'_> {
    fn drop(&mut self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
    }
}
