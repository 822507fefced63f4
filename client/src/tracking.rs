//! The per-process write tracking handed to the daemon (seed 003: one
//! registration per mm, shared by every connection of the process).
//!
//! The process offers what its kernel and privileges allow: a WP_ASYNC
//! userfaultfd with its pagemap fd (uffd-async), and a synchronous
//! userfaultfd (uffd-sync), created to handle kernel-mode faults where
//! permitted. The daemon picks one mechanism per process; every mapping of the
//! process is then registered with the matching uffd. The guard that keeps
//! a uffd-sync client from hanging when its daemon dies is in
//! `sync_guard.rs`.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use cohmem_proto::{
    Mechanism, ATTACH_SYNC_ALL_FAULTS, ATTACH_WITH_CLEAR_REFS, ATTACH_WITH_FDS, ATTACH_WITH_MAPS, ATTACH_WITH_SYNC_UFFD,
};
use cohmem_sys::pagemap::PagemapFile;
use cohmem_sys::procmaps::ProcMapsFile;
use cohmem_sys::softdirty::ClearRefs;
use cohmem_sys::uffd::{features, UffdFlavor, Userfaultfd};

use crate::error::ClientError;
use crate::sync_guard::{lock_ranges, MappedRanges, SyncGuard};

/// The uffd-async pair.
pub(crate) struct AsyncTracking {
    pub uffd: Userfaultfd,
    pub pagemap: PagemapFile,
    pub features: u64,
}

/// How long a reconnect waits for the daemon of a broken session to be
/// known exited before taking it for alive (a process closes its sockets
/// a moment before its pidfd says it exited).
const DAEMON_EXIT_BOUND: Duration = Duration::from_secs(1);

/// Asks the daemon of the current session for its pidfd (WATCH_DAEMON):
/// `None` where it cannot give one.
pub(crate) type FetchPidfd<'a> = &'a mut dyn FnMut() -> Result<Option<OwnedFd>, ClientError>;

/// This process's tracking fds.
pub(crate) struct ProcessTracking {
    pub pid: u32,
    pub token: u64,
    pub asynchronous: Option<AsyncTracking>,
    pub synchronous: Option<Userfaultfd>,
    /// The synchronous uffd handles kernel-mode faults.
    pub sync_all_faults: bool,
    /// `/proc/self/pagemap` and `/proc/self/clear_refs`, for soft-dirty.
    pub soft_dirty: Option<(PagemapFile, ClearRefs)>,
    /// `/proc/self/maps`, with which the daemon proves views are still
    /// mapped cheaply (`PROCMAP_QUERY`).
    pub maps: Option<ProcMapsFile>,
    /// Started when the daemon picks uffd-sync for this process; replaced
    /// when the process moves to a restarted daemon.
    sync_guard: Mutex<Option<Arc<SyncGuard>>>,
    /// Started when the daemon picks uffd-async and the WP_ASYNC uffd
    /// delivers mapping changes: if the daemon dies, it releases any
    /// munmap waiting for its message to be read.
    events_guard: Mutex<Option<Arc<SyncGuard>>>,
    daemon: PathBuf,
    /// The mechanism the daemon tracks this process with
    /// ([`Mechanism::None`] before the first ATTACH_MM).
    mechanism: Mutex<Mechanism>,
    /// Held shared while a mapping is registered or unregistered,
    /// exclusively while the mechanism is switched.
    switching: RwLock<()>,
    /// Every tracked mapping of the process for this daemon.
    mapped: MappedRanges,
}

impl Drop for ProcessTracking {
    fn drop(&mut self) {
        for slot in [&self.sync_guard, &self.events_guard] {
            if let Some(g) = slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                g.stop_watching();
            }
        }
    }
}

impl ProcessTracking {
    /// ATTACH_MM flags and fds offering everything this process has that
    /// the daemon (its HELLO `daemon_caps`) can take: a WP_ASYNC uffd with
    /// mapping-change messages only to a daemon that reads them (a change
    /// of a view would otherwise wait for good).
    pub fn offer(&self, daemon_caps: u64) -> (u32, u64, Vec<BorrowedFd<'_>>) {
        let mut flags = 0;
        let mut fds = Vec::new();
        let mut features = 0;
        let readable = |a: &&AsyncTracking| {
            a.features & features::MAP_EVENTS == 0 || daemon_caps & cohmem_proto::caps::MAP_EVENTS != 0
        };
        if let Some(a) = self.asynchronous.as_ref().filter(readable) {
            flags |= ATTACH_WITH_FDS;
            fds.push(a.uffd.as_fd());
            fds.push(a.pagemap.as_fd());
            features = a.features;
        }
        if let Some(s) = &self.synchronous {
            flags |= ATTACH_WITH_SYNC_UFFD;
            if self.sync_all_faults {
                flags |= ATTACH_SYNC_ALL_FAULTS;
            }
            fds.push(s.as_fd());
        }
        if let (Some((pagemap, clear_refs)), Some(_)) = (&self.soft_dirty, &self.synchronous) {
            flags |= ATTACH_WITH_CLEAR_REFS;
            fds.push(pagemap.as_fd());
            fds.push(clear_refs.as_fd());
        }
        if let Some(maps) = &self.maps {
            flags |= ATTACH_WITH_MAPS;
            fds.push(maps.as_fd());
        }
        (flags, features, fds)
    }

    /// The guard for uffd-sync, started on first use (`fetch` asks the
    /// daemon for its pidfd).
    fn sync_guard(&self, fetch: FetchPidfd<'_>) -> Result<Arc<SyncGuard>, ClientError> {
        let mut slot = self.sync_guard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = slot.as_ref() {
            return Ok(g.clone());
        }
        let uffd = self
            .synchronous
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("uffd-sync without a synchronous uffd".into()))?;
        let g = SyncGuard::start(&self.daemon, fetch()?, uffd, self.mapped.clone(), false)?;
        Ok(slot.insert(g).clone())
    }

    /// Starts the guard `mechanism` needs before mappings reach its uffd:
    /// the synchronous uffd's, or that of a WP_ASYNC uffd with
    /// mapping-change messages; nothing for the others.
    pub fn guard_for(&self, mechanism: Mechanism, fetch: FetchPidfd<'_>) -> Result<(), ClientError> {
        match mechanism {
            Mechanism::UffdSync | Mechanism::SoftDirty if self.synchronous.is_some() => {
                self.sync_guard(fetch).map(|_| ())
            }
            Mechanism::UffdAsync => self.events_guard(fetch),
            _ => Ok(()),
        }
    }

    /// The guard for a WP_ASYNC uffd that delivers mapping changes,
    /// started on first use; nothing where it delivers none.
    fn events_guard(&self, fetch: FetchPidfd<'_>) -> Result<(), ClientError> {
        let Some(a) = self
            .asynchronous
            .as_ref()
            .filter(|a| a.features & features::MAP_EVENTS != 0)
        else {
            return Ok(());
        };
        let mut slot = self.events_guard.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(SyncGuard::start(
                &self.daemon,
                fetch()?,
                &a.uffd,
                self.mapped.clone(),
                true,
            )?);
        }
        Ok(())
    }

    /// True once the guard knows the daemon is gone.
    pub fn daemon_gone(&self) -> bool {
        [&self.sync_guard, &self.events_guard].iter().any(|slot| {
            let slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.as_ref().is_some_and(|g| g.daemon_gone())
        })
    }

    /// A broken session was closed and a new one reached the daemon whose
    /// socket peer is `daemon_pid`: if the guard's daemon is gone (or, for
    /// a lifeline, another process answers now), retire the guard (a new one
    /// starts when the new daemon picks a synchronous mechanism). A guard
    /// whose daemon is still alive stays: that daemon still tracks the
    /// process, and unprotecting would lose writes.
    pub fn settle_daemon(&self, daemon_pid: i32) {
        for slot in [&self.sync_guard, &self.events_guard] {
            let old = {
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                let retire = slot
                    .as_ref()
                    .is_some_and(|g| g.watches_another_than(daemon_pid) || g.gone_within(DAEMON_EXIT_BOUND));
                if retire {
                    slot.take()
                } else {
                    None
                }
            };
            if let Some(g) = old {
                g.retire();
            }
        }
    }

    /// After ATTACH_MM on a new session: hands every mapping of the process
    /// to the uffd of the mechanism the daemon chose, whatever uffd each
    /// one is registered with now (a daemon that died in the middle of a
    /// mechanism switch leaves some with each), and records the mechanism.
    pub fn reattach(&self, mechanism: Mechanism, fetch: FetchPidfd<'_>) -> Result<(), ClientError> {
        let new = self.uffd_for(mechanism)?;
        // The guard watches the daemon before any mapping reaches the
        // synchronous uffd.
        self.guard_for(mechanism, fetch)?;
        let old: Vec<&Userfaultfd> = self
            .asynchronous
            .as_ref()
            .map(|a| &a.uffd)
            .into_iter()
            .chain(self.synchronous.as_ref())
            .collect();
        let ranges = lock_ranges(&self.mapped).clone();
        for r in ranges {
            let len = r.end - r.start;
            for u in &old {
                // Not registered with this one: nothing to undo.
                let _ = u.unregister(r.start, len);
                let _ = u.wake(r.start, len);
            }
            if let Some(u) = new {
                u.register_wp(r.start, len)?;
            }
        }
        self.set_mechanism(mechanism, fetch)
    }

    /// The mechanism the daemon tracks this process with.
    pub fn mechanism(&self) -> Mechanism {
        *self.mechanism.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the mechanism the daemon reported; starts the guard when it
    /// uses the synchronous uffd, and claims soft-dirty.
    pub fn set_mechanism(&self, mechanism: Mechanism, fetch: FetchPidfd<'_>) -> Result<(), ClientError> {
        self.uffd_for(mechanism)?;
        self.guard_for(mechanism, fetch)?;
        if mechanism == Mechanism::SoftDirty {
            claim_soft_dirty(self)?;
        }
        *self.mechanism.lock().unwrap_or_else(|p| p.into_inner()) = mechanism;
        Ok(())
    }

    /// Shared side of the switching lock (mapping and unmapping).
    pub fn mapping_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.switching.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Exclusive side of the switching lock.
    pub fn switch_guard(&self) -> RwLockWriteGuard<'_, ()> {
        self.switching.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a mapping (before MAP, so that a dying daemon's protection
    /// can always be undone).
    pub fn add_mapped(&self, range: Range<u64>) {
        lock_ranges(&self.mapped).push(range);
    }

    /// Forgets the mapping starting at `start`.
    pub fn remove_mapped(&self, start: u64) {
        lock_ranges(&self.mapped).retain(|r| r.start != start);
    }

    /// The uffd that mappings are registered with under `mechanism`; `None`
    /// for mechanisms that track nothing (`full`, `explicit`).
    pub fn uffd_for(&self, mechanism: Mechanism) -> Result<Option<&Userfaultfd>, ClientError> {
        if matches!(mechanism, Mechanism::Full | Mechanism::Explicit) {
            return Ok(None);
        }
        let uffd = match mechanism {
            Mechanism::UffdAsync => self.asynchronous.as_ref().map(|a| &a.uffd),
            Mechanism::UffdSync | Mechanism::SoftDirty => self.synchronous.as_ref(),
            _ => None,
        };
        uffd.map(Some)
            .ok_or_else(|| ClientError::Protocol(format!("daemon chose {mechanism}, which this process did not offer")))
    }
}

/// One tracking per daemon: a synchronous uffd's fault messages must reach
/// exactly the daemon that tracks the mappings registered with it, so two
/// daemons never share one uffd.
static PROCESS: Mutex<Option<HashMap<PathBuf, Weak<ProcessTracking>>>> = Mutex::new(None);

/// The process's tracking for the daemon at `daemon`, created on first use.
/// A forked child gets its own (registrations are per mm and not inherited).
///
/// `map_events`: the daemon reads mapping-change messages
/// (`caps::MAP_EVENTS`), so the WP_ASYNC uffd asks the kernel for them.
pub(crate) fn process_tracking(daemon: &Path, map_events: bool) -> Result<Arc<ProcessTracking>, ClientError> {
    let mut guard = PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    let pid = std::process::id();
    let key = daemon.canonicalize().unwrap_or_else(|_| daemon.to_owned());
    if let Some(pt) = map.get(&key).and_then(Weak::upgrade) {
        if pt.pid == pid {
            return Ok(pt);
        }
    }
    map.retain(|_, w| w.strong_count() > 0);
    let mut wanted = features::WP_ASYNC | features::WP_UNPOPULATED | features::WP_HUGETLBFS_SHMEM;
    if map_events {
        wanted |= features::MAP_EVENTS;
    }
    // User-mode-only is enough for WP_ASYNC: the kernel resolves the faults
    // itself, so syscalls writing into protected pages work too.
    let asynchronous = Userfaultfd::open(UffdFlavor::UserModeOnly, wanted, features::WP_ASYNC)
        .and_then(|(uffd, features)| {
            Ok(AsyncTracking {
                uffd,
                pagemap: PagemapFile::open_self()?,
                features,
            })
        })
        .ok();
    let sync_features = features::WP_UNPOPULATED | features::WP_HUGETLBFS_SHMEM;
    let (synchronous, sync_all_faults) = match Userfaultfd::open(UffdFlavor::AllFaults, sync_features, 0) {
        Ok((uffd, _)) => (Some(uffd), true),
        Err(_) => (
            Userfaultfd::open(UffdFlavor::UserModeOnly, sync_features, 0)
                .ok()
                .map(|(u, _)| u),
            false,
        ),
    };
    let mut h = RandomState::new().build_hasher();
    h.write_u32(pid);
    let pt = Arc::new(ProcessTracking {
        pid,
        token: h.finish(),
        asynchronous,
        synchronous,
        sync_all_faults,
        soft_dirty: PagemapFile::open_self().ok().zip(ClearRefs::open_self().ok()),
        maps: ProcMapsFile::open_self().ok(),
        sync_guard: Mutex::new(None),
        events_guard: Mutex::new(None),
        daemon: key.clone(),
        mechanism: Mutex::new(Mechanism::None),
        switching: RwLock::new(()),
        mapped: Arc::new(Mutex::new(Vec::new())),
    });
    map.insert(key, Arc::downgrade(&pt));
    Ok(pt)
}

/// clear_refs clears the soft-dirty bits of the whole process, so only one
/// daemon per process may track it with soft-dirty: the first that asks.
static SOFT_DIRTY_OWNER: Mutex<Option<(PathBuf, u32)>> = Mutex::new(None);

/// Claims soft-dirty for the daemon of `tracking` once that daemon chose it:
/// fails if another daemon's live tracking of this process holds it.
pub(crate) fn claim_soft_dirty(tracking: &ProcessTracking) -> Result<(), ClientError> {
    let alive = |d: &Path| {
        PROCESS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|m| m.get(d))
            .is_some_and(|w| w.strong_count() > 0)
    };
    let mut owner = SOFT_DIRTY_OWNER.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if let Some((d, p)) = owner.as_ref() {
        if *p == pid && *d != tracking.daemon && alive(d) {
            return Err(ClientError::Protocol(format!(
                "the daemon at {} already tracks this process with soft-dirty, which clear_refs makes \
                 process-wide; use another mechanism for the daemon at {}",
                d.display(),
                tracking.daemon.display()
            )));
        }
    }
    *owner = Some((tracking.daemon.clone(), pid));
    Ok(())
}

/// The mechanism this process asks for: `$COHMEM_MECHANISM`
/// (`uffd-async`, `uffd-sync`, `full`, `explicit`), else the daemon's choice.
pub(crate) fn requested_mechanism() -> Result<Mechanism, ClientError> {
    match std::env::var("COHMEM_MECHANISM").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(Mechanism::None),
        Ok("uffd-async") => Ok(Mechanism::UffdAsync),
        Ok("uffd-sync") => Ok(Mechanism::UffdSync),
        Ok("soft-dirty") => Ok(Mechanism::SoftDirty),
        Ok("full") => Ok(Mechanism::Full),
        Ok("explicit") => Ok(Mechanism::Explicit),
        Ok(other) => Err(ClientError::Protocol(format!(
            "COHMEM_MECHANISM={other:?} is not one of auto, uffd-async, uffd-sync, full, explicit"
        ))),
    }
}
