//! The daemon-wide state every connection shares ([`Daemon`]): the BO
//! store, the mm registry (seed 003), the fault service, the GPU backend,
//! quotas, counters, and the bounds on blocking work. The listening socket
//! that hands connections to `connection` is `listener`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cohmem_proto::caps;
use cohmem_sys::probe::KernelCaps;

use crate::bo::{lock, BoStore, MmRegistry};
use crate::config::DaemonConfig;
use crate::faults::FaultService;
use crate::gpu::{open_backend, GpuBackend};
use crate::quota::QuotaTable;
use crate::stats::{BackgroundCounters, DaemonCounters};

/// Live view of one connection, for STATS.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// Daemon-wide id.
    pub id: u64,
    /// Peer pid.
    pub pid: i32,
    /// Peer uid.
    pub uid: u32,
    /// BO handles open.
    pub bos: AtomicU32,
    /// Views mapped.
    pub views: AtomicU32,
    /// Requests handled.
    pub requests: AtomicU64,
}

/// Blocking sections (requests running on a runtime thread through
/// `block_in_place`) at once, in all: below tokio's blocking pool (8
/// threads), so that a worker handing off its core always finds a thread
/// and the runtime keeps serving everyone (issue 14, item 10).
pub const BLOCKING_SECTIONS: usize = 6;
/// Blocking sections at once per user: one user's connections cannot take
/// every section, whatever they send.
pub const BLOCKING_SECTIONS_PER_USER: usize = 3;

/// Bounds blocking work in all and per user. Requests wait for a slot
/// asynchronously (fair, first come first served), holding no thread.
pub struct BlockingSlots {
    all: Arc<tokio::sync::Semaphore>,
    per_user: Mutex<HashMap<u32, Arc<tokio::sync::Semaphore>>>,
    per_user_limit: usize,
}

/// One blocking section's slot, released on drop.
pub struct BlockingSlot {
    _user: tokio::sync::OwnedSemaphorePermit,
    _all: tokio::sync::OwnedSemaphorePermit,
}

impl BlockingSlots {
    /// `total` sections at once, `per_user` of them for one uid.
    pub fn new(total: usize, per_user: usize) -> Self {
        Self {
            all: Arc::new(tokio::sync::Semaphore::new(total)),
            per_user: Mutex::new(HashMap::new()),
            per_user_limit: per_user,
        }
    }

    /// Waits for a slot for `uid` (its own bound first, then the total).
    pub async fn acquire(&self, uid: u32) -> BlockingSlot {
        let user = {
            let mut map = lock(&self.per_user);
            // Users with nothing running are forgotten (bounded by the
            // users connected).
            let limit = self.per_user_limit;
            map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < limit);
            map.entry(uid)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit)))
                .clone()
        };
        // Neither semaphore is ever closed, so acquiring cannot fail.
        let user = match user.acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable!("BlockingSlots never closes its semaphores"),
        };
        let all = match self.all.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable!("BlockingSlots never closes its semaphores"),
        };
        BlockingSlot { _user: user, _all: all }
    }
}

/// Bounds the syncs that run on a runtime worker itself, without the
/// `block_in_place` hand-off (a small BO's SYNC: the hand-off costs more
/// than the sync). A client decides how long its own harvest takes (its
/// views, its `mmap_lock`), so these are few: one per user and, in all, one
/// fewer than the workers, so at least one worker always serves everyone
/// else. Taken with `try_acquire` only: a sync that finds none runs in a
/// blocking section instead, never waits.
pub struct InlineSlots {
    limit: usize,
    running: Mutex<(usize, HashMap<u32, usize>)>,
}

/// One inline sync's slot, released on drop.
pub struct InlineSlot<'a> {
    slots: &'a InlineSlots,
    uid: u32,
}

impl InlineSlots {
    /// `limit` inline syncs at once in all, one per user.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            running: Mutex::new((0, HashMap::new())),
        }
    }

    /// One fewer than tokio's default worker count (the cores), at least one.
    pub fn for_this_machine() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)))
    }

    /// A slot for `uid`, if it has none and the total allows one.
    pub fn try_acquire(&self, uid: u32) -> Option<InlineSlot<'_>> {
        let mut running = lock(&self.running);
        let (total, per_user) = &mut *running;
        if *total >= self.limit || per_user.contains_key(&uid) {
            return None;
        }
        *total += 1;
        per_user.insert(uid, 1);
        Some(InlineSlot { slots: self, uid })
    }
}

impl Drop for InlineSlot<'_> {
    fn drop(&mut self) {
        let mut running = lock(&self.slots.running);
        running.0 -= 1;
        running.1.remove(&self.uid);
    }
}

/// State shared by all connections.
pub struct Daemon {
    /// Configuration.
    pub config: DaemonConfig,
    /// GPU backend.
    pub gpu: Box<dyn GpuBackend>,
    /// Why that backend was chosen.
    pub gpu_reason: String,
    /// Capabilities this daemon offers in HELLO.
    pub caps: u64,
    /// What the kernel offers (probed at start).
    pub kernel: KernelCaps,
    /// Live BOs.
    pub bos: BoStore,
    /// Live mm subscriptions.
    pub mms: MmRegistry,
    /// Counters.
    pub counters: DaemonCounters,
    /// The uffd-sync fault service.
    pub faults: Arc<FaultService>,
    /// Held by the one quiesce that may run at a time (seed 004). An
    /// asynchronous lock: requests wait for it without holding a thread
    /// the runtime needs for other clients.
    pub quiesce: Arc<tokio::sync::Mutex<()>>,
    /// What every uid holds, against the per-user limits.
    pub quotas: QuotaTable,
    /// Blocking sections at once, in all and per user.
    pub blocking: BlockingSlots,
    /// Syncs running on a runtime worker itself, in all and per user.
    pub inline: InlineSlots,
    /// Writes through BO fds (inotify), where the kernel reports them.
    pub bypass: crate::bypass::BypassWatch,
    /// What the background upload did (`--background-upload-us`).
    pub background: BackgroundCounters,
    /// The display output (`--display`).
    pub display: Option<Arc<crate::display::Display>>,
    /// Mapping changes read from uffd-async clients, one count per uffd.
    pub map_events: crate::tracker::map_events::MapEventsRegistry,
    connections: Mutex<HashMap<u64, Arc<ConnectionInfo>>>,
    next_connection: AtomicU64,
    started: Instant,
}

impl Daemon {
    /// The sync engine, with this daemon's counters and tracking policy.
    pub fn sync_engine(&self) -> crate::sync::SyncEngine<'_> {
        crate::sync::SyncEngine::with_policy(&self.counters, self.config.tracking)
    }

    /// Probes the kernel, opens the GPU backend and starts the fault service.
    pub fn new(config: DaemonConfig) -> std::io::Result<Self> {
        let kernel = cohmem_sys::probe::probe_all();
        let (gpu, gpu_reason) = open_backend(&config.gpu)
            .map_err(|e| std::io::Error::other(format!("GPU backend {:?}: {e}", config.gpu)))?;
        let mut offered = caps::EXPORT_RESOURCE | caps::SYNC_RUNS | caps::IMAGES;
        if kernel.uffd_async.ok {
            offered |= caps::UFFD_ASYNC;
        }
        if kernel.uffd_async.ok && kernel.map_events.ok {
            // Clients then ask for them; a uffd that has them anyway is read
            // whatever this says (its changes wait for the read).
            offered |= caps::MAP_EVENTS;
        }
        if kernel.uffd_sync.ok {
            offered |= caps::UFFD_SYNC;
        }
        let faults = FaultService::start()?;
        let quotas = QuotaTable::new(config.user_limits);
        let bypass = crate::bypass::BypassWatch::new(kernel.memfd_modify_events.ok);
        // A display that cannot work at all (no KMS device) stops the start;
        // one whose device has another master only refuses SHOW.
        let display = match &config.display {
            Some(c) => Some(
                crate::display::Display::open(gpu.as_ref(), c.clone())
                    .map_err(|e| std::io::Error::other(format!("--display: {e}")))?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            gpu,
            gpu_reason,
            caps: offered,
            kernel,
            bos: BoStore::default(),
            mms: MmRegistry::default(),
            counters: DaemonCounters::default(),
            faults,
            quiesce: Arc::new(tokio::sync::Mutex::new(())),
            quotas,
            bypass,
            blocking: BlockingSlots::new(BLOCKING_SECTIONS, BLOCKING_SECTIONS_PER_USER),
            inline: InlineSlots::for_this_machine(),
            background: BackgroundCounters::default(),
            display,
            map_events: Default::default(),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Registers a new connection.
    pub fn add_connection(&self, pid: i32, uid: u32) -> Arc<ConnectionInfo> {
        let info = Arc::new(ConnectionInfo {
            id: self.next_connection.fetch_add(1, Ordering::Relaxed) + 1,
            pid,
            uid,
            bos: AtomicU32::new(0),
            views: AtomicU32::new(0),
            requests: AtomicU64::new(0),
        });
        lock(&self.connections).insert(info.id, info.clone());
        info
    }

    /// Forgets a closed connection.
    pub fn remove_connection(&self, id: u64) {
        lock(&self.connections).remove(&id);
    }

    /// All open connections, by id.
    pub fn connections(&self) -> Vec<Arc<ConnectionInfo>> {
        let mut v: Vec<_> = lock(&self.connections).values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Milliseconds since start.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One user gets at most its share of blocking sections; another user
    /// still gets one while the first waits.
    #[tokio::test]
    async fn one_user_cannot_take_every_blocking_section() {
        let slots = BlockingSlots::new(4, 2);
        let a1 = slots.acquire(1).await;
        let _a2 = slots.acquire(1).await;
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), slots.acquire(1)).await;
        assert!(third.is_err(), "a user's third section must wait");
        let b = tokio::time::timeout(std::time::Duration::from_millis(50), slots.acquire(2)).await;
        assert!(b.is_ok(), "another user is not held up");
        drop(a1);
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), slots.acquire(1)).await;
        assert!(again.is_ok(), "a released slot is reused");
    }
}
