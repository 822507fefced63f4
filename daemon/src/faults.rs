//! The fault service: one thread that waits on every synchronous userfaultfd
//! at once (epoll), reads fault messages in batches and resolves them.
//!
//! This is vmwgfx's `vm_mkwrite` (spec §4.9) in userspace: for each
//! write-protect fault it finds the view and BO from the address (seed 003's
//! address → view map), then — holding the BO's state lock — records the page
//! (MKWRITE), marks it writable, and unprotects it, which wakes the faulting
//! thread. Recording and unprotecting are one step with respect to scans and
//! transfers, which take the same lock (spec item 17c). A fault on an address
//! that belongs to no view is unprotected at once, so a client never hangs on
//! a view the daemon has already forgotten.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use cohmem_proto::Method;
use cohmem_sys::uffd::WpFault;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use crate::bo::{lock, Bo, BoState, MmSubscription, View};
use crate::mm::FaultHook;
use crate::tracker::WriteTracker;

/// Faults read per uffd per wake-up, at most.
const BATCH: usize = 1024;

/// The shared fault service.
pub struct FaultService {
    epoll: Epoll,
    /// Each registration's process and the tracker whose uffd it watches,
    /// by registration token (the epoll data): during a mechanism switch a
    /// process has two, and each uffd is read for its own tracker.
    subscriptions: Mutex<HashMap<u64, Watched>>,
    next_token: AtomicU64,
    stop: AtomicBool,
    /// Faults resolved so far.
    pub faults: AtomicU64,
    /// Time to record and resolve each batch of faults (metrics).
    pub batch_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// What one registration watches.
struct Watched {
    mm: Weak<MmSubscription>,
    tracker: Weak<dyn WriteTracker>,
}

/// Keeps one uffd registered; deregisters it on drop (before the uffd is
/// closed: the client still holds the same file, so epoll would not forget it
/// by itself).
pub struct FaultRegistration {
    service: Arc<FaultService>,
    fd: RawFd,
    token: u64,
}

impl FaultHook for FaultRegistration {
    /// Starts delivering the uffd's fault messages to the fault thread
    /// (`EPOLL_CTL_MOD` of a watched fd allocates nothing).
    fn arm(&self) -> std::io::Result<()> {
        // SAFETY: the registration is dropped before the uffd is closed
        // (see the type's comment), so the fd is open here.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let mut event = EpollEvent::new(EpollFlags::EPOLLIN, self.token);
        self.service.epoll.modify(fd, &mut event).map_err(std::io::Error::from)
    }
}

impl Drop for FaultRegistration {
    fn drop(&mut self) {
        // SAFETY: the registration is owned by the subscription that owns the
        // uffd, and is dropped before it, so the fd is still open here.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        if let Err(e) = self.service.epoll.delete(fd) {
            tracing::warn!(error = %e, "removing a uffd from the fault service failed");
        }
        lock(&self.service.subscriptions).remove(&self.token);
    }
}

impl FaultService {
    /// Starts the fault thread.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?;
        let service = Arc::new(Self {
            epoll,
            subscriptions: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            faults: AtomicU64::new(0),
            batch_seconds: crate::latency::latency_histogram(),
        });
        let worker = Arc::downgrade(&service);
        std::thread::Builder::new()
            .name("cohmem-faults".into())
            .spawn(move || run(worker))?;
        Ok(service)
    }

    /// Watches the uffd of `mm`'s tracker, if it has one to read. The
    /// registration must be stored in the subscription (dropped before its
    /// uffd).
    pub fn register(self: &Arc<Self>, mm: &Arc<MmSubscription>) -> std::io::Result<Option<Box<dyn FaultHook>>> {
        match self.register_tracker(mm, &mm.tracker())? {
            Some(reg) => {
                reg.arm()?;
                Ok(Some(Box::new(reg)))
            }
            None => Ok(None),
        }
    }

    /// Adds `uffd` of `mm` to the fault service, not armed yet: a mechanism
    /// switch registers the new tracker's uffd before it moves any view, so
    /// a refusal (the only step that allocates) changes nothing, and arms it
    /// once the tracker is in place ([`FaultRegistration::arm`]). The
    /// registration must be dropped before `uffd` is closed.
    pub fn register_tracker(
        self: &Arc<Self>,
        mm: &Arc<MmSubscription>,
        tracker: &Arc<dyn WriteTracker>,
    ) -> std::io::Result<Option<FaultRegistration>> {
        let Some(uffd) = tracker.fault_uffd() else {
            return Ok(None);
        };
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let reg = self.watch(uffd.as_fd(), token)?;
        lock(&self.subscriptions).insert(
            token,
            Watched {
                mm: Arc::downgrade(mm),
                tracker: Arc::downgrade(tracker),
            },
        );
        Ok(Some(reg))
    }

    /// The epoll part of [`FaultService::register_tracker`].
    fn watch(self: &Arc<Self>, uffd: BorrowedFd<'_>, token: u64) -> std::io::Result<FaultRegistration> {
        self.epoll
            .add(uffd, EpollEvent::new(EpollFlags::empty(), token))
            .map_err(std::io::Error::from)?;
        Ok(FaultRegistration {
            service: self.clone(),
            fd: uffd.as_raw_fd(),
            token,
        })
    }

    /// Asks the thread to stop (it notices within 100 ms).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn run(service: Weak<FaultService>) {
    let mut events = vec![EpollEvent::empty(); 64];
    let mut faults: Vec<WpFault> = Vec::with_capacity(BATCH);
    loop {
        let Some(svc) = service.upgrade() else {
            return;
        };
        if svc.stop.load(Ordering::Relaxed) {
            return;
        }
        let n = match svc.epoll.wait(&mut events, 100u16) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "epoll_wait failed; fault service stopping");
                return;
            }
        };
        for ev in &events[..n] {
            let watched = lock(&svc.subscriptions)
                .get(&ev.data())
                .and_then(|w| Some((w.mm.upgrade()?, w.tracker.upgrade()?)));
            if let Some((mm, tracker)) = watched {
                if ev.events().contains(EpollFlags::EPOLLERR) {
                    // The client cleared O_NONBLOCK on the shared file: poll
                    // then reports an error every time. Set it again.
                    if let Some(uffd) = tracker.fault_uffd() {
                        crate::limited!(
                            warn,
                            "uffd made blocking",
                            mm.id,
                            mm = mm.id,
                            "a client cleared O_NONBLOCK on its userfaultfd; set again"
                        );
                        let _ = uffd.ensure_nonblocking();
                    }
                }
                faults.clear();
                drain(&mm, tracker.as_ref(), &mut faults);
                if !faults.is_empty() {
                    let t0 = std::time::Instant::now();
                    resolve(&mm, &tracker, &faults);
                    svc.batch_seconds.observe(t0.elapsed().as_secs_f64());
                    svc.faults.fetch_add(faults.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Reads pending fault messages (non-blocking) up to [`BATCH`].
fn drain(mm: &MmSubscription, tracker: &dyn WriteTracker, out: &mut Vec<WpFault>) {
    if tracker.drain_map_events() {
        return;
    }
    let Some(uffd) = tracker.fault_uffd() else {
        return;
    };
    while out.len() < BATCH {
        match uffd.read_faults(out) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(mm = mm.id, error = %e, "reading faults failed");
                break;
            }
        }
    }
}

/// The faults of one batch that hit one BO: (view, page address) pairs.
type BoFaults = (Arc<Bo>, Vec<(Arc<View>, u64)>);

/// Records and unprotects a batch of faults of one process, one BO lock
/// acquisition per BO. `tracker` is the mechanism whose uffd they were read
/// from: a fault read just before a mechanism switch is only woken (its
/// writer retries, and faults again under the new mechanism if it must).
fn resolve(mm: &MmSubscription, tracker: &Arc<dyn WriteTracker>, faults: &[WpFault]) {
    let Some(uffd) = tracker.fault_uffd() else {
        return;
    };
    let ps = cohmem_sys::page_size();
    let mut by_bo: HashMap<u64, BoFaults> = HashMap::new();
    for f in faults {
        let page = f.address & !(ps - 1);
        if tracker.park(page) {
            continue;
        }
        match mm.view_at(page).and_then(|v| v.bo.upgrade().map(|b| (v, b))) {
            Some((view, bo)) => by_bo
                .entry(bo.id)
                .or_insert_with(|| (bo, Vec::new()))
                .1
                .push((view, page)),
            None => {
                // No view (already unmapped on our side): never leave the
                // client waiting. Only wake: whatever is mapped here now is
                // not ours to unprotect; a write that faults again reaches
                // whoever tracks it.
                let _ = uffd.wake(page, ps);
            }
        }
    }
    for (_, (bo, pages)) in by_bo {
        let mut st = bo.state();
        // A switch replaces the tracker with the state locks of all the
        // process's BOs held, so this check cannot race with one.
        if !Arc::ptr_eq(tracker, &mm.tracker()) {
            for (_, page) in pages {
                let _ = uffd.wake(page, ps);
            }
            continue;
        }
        if st.quiesced {
            // A quiesce holds this BO's writers: they wait until it ends.
            st.deferred.extend(pages);
            continue;
        }
        for (view, page) in pages {
            resolve_one(&mut st, &view, page);
        }
    }
}

/// Records one write-protect fault (MKWRITE), marks the page writable and
/// unprotects it, waking the writer. The caller holds the BO's state lock.
pub fn resolve_one(st: &mut BoState, view: &View, page: u64) {
    let ps = cohmem_sys::page_size();
    if view.dead.load(std::sync::atomic::Ordering::Acquire) {
        // The view was removed after the fault was read (or while it was
        // parked): its address may belong to another mapping now, so only
        // wake the writer; if it faults again, that fault is current.
        if let Some(uffd) = view.mm.tracker().fault_uffd() {
            let _ = uffd.wake(page, ps);
        }
        return;
    }
    let mkwrite = matches!(st.tracker.as_ref().map(|t| t.method), Some(Method::MkWrite));
    let view_page = (page - view.addr) / ps;
    if lock(&view.writable).insert(view_page) && mkwrite {
        let p = view_page + view.bo_offset / ps;
        if let Some(t) = st.tracker.as_mut() {
            t.dirty.record(p..p + 1);
        }
    }
    if let Some(uffd) = view.mm.tracker().fault_uffd() {
        if let Err(e) = uffd.write_protect(page, ps, false) {
            // A failed unprotect does not wake the waiter: wake it anyway.
            tracing::debug!(mm = view.mm.id, error = %e, "unprotecting a faulted page failed");
            let _ = uffd.wake(page, ps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohmem_sys::uffd::{UffdFlavor, Userfaultfd};

    /// Issue 14, suspicion (e): a registration the fault service refuses is
    /// an error the switch sees before it moves any view (here epoll refuses
    /// a regular file, EPERM; in a daemon it would be ENOMEM or the
    /// `max_user_watches` limit), and an accepted one stays silent until
    /// armed.
    #[test]
    fn a_refused_registration_is_an_error_and_an_accepted_one_waits_to_be_armed() {
        let service = FaultService::start().unwrap();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let refused = service.watch(file.as_fd(), 1);
        assert!(refused.is_err(), "epoll accepted a regular file");
        let (uffd, _) = Userfaultfd::open(UffdFlavor::UserModeOnly, 0, 0).unwrap();
        let reg = service.watch(uffd.as_fd(), 2).unwrap();
        reg.arm().unwrap();
        drop(reg);
        service.shutdown();
    }
}
