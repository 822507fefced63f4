//! The state a connection shares with its BOs and mappings
//! ([`ConnInner`]): the session with the daemon, the calls made on it, and
//! the reconnect that re-establishes a session after the daemon died or
//! restarted (DESIGN.md §5.6).
//!
//! The session knows what was opened on it only as [`Reopen`] objects (the
//! BOs, with their mappings), so it names no type of the modules above it.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use cohmem_proto::{Reply, Request};

use crate::attach::{attach, watch_daemon};
use crate::error::{unexpected, ClientError};
use crate::link::{connect_link, hello, Exchange, Link};
use crate::tracking::{process_tracking, ProcessTracking};

/// Locks `m`, also after a thread panicked holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a reconnect waits for a live daemon to release the old session
/// after closing it.
const OLD_SESSION_BOUND: Duration = Duration::from_secs(5);

/// One request/reply exchange on the session a reconnect is establishing.
pub(crate) type ExchangeFn<'a> =
    &'a mut dyn FnMut(&Request, &[BorrowedFd<'_>]) -> Result<(Reply, Vec<OwnedFd>), Exchange>;

/// Something opened on a session that a reconnect opens again on the new
/// one (a BO, with its mappings).
pub(crate) trait Reopen: Send + Sync {
    /// Opens this object again through `exchange`, on the session that
    /// will be `generation` ([`ConnInner::generation`]) once established.
    fn reopen(&self, generation: u64, exchange: ExchangeFn<'_>) -> Result<(), ClientError>;
}

/// A connection's state, shared by its clones ([`crate::Connection`]) and
/// by the BOs and mappings opened through it.
pub(crate) struct ConnInner {
    link: Mutex<Link>,
    /// The daemon's socket: the key of this process's tracking for it.
    pub socket_path: PathBuf,
    next_id: AtomicU32,
    pub caps: u64,
    pub page_size: u64,
    pub max_bo_size: u64,
    tracking: Mutex<Option<Arc<ProcessTracking>>>,
    /// Every BO opened on this connection: re-imported after a reconnect.
    bos: Mutex<Vec<Weak<dyn Reopen>>>,
    reconnects: AtomicU64,
    /// The process that connected: its forked children share the socket
    /// and must not use it (see [`ClientError::ForkedChild`]).
    owner: u32,
}

/// Whether a request that failed to reach the daemon may be sent again on a
/// new session.
enum Reconnect {
    /// Reconnect first if the link is broken (ordinary requests).
    IfBroken,
    /// Fail with [`ClientError::Disconnected`] instead: releasing requests
    /// (DESTROY, UNMAP) have nothing left to release on a dead session.
    Never,
}

impl ConnInner {
    /// Connects to the daemon at `path` and negotiates the protocol.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let mut inner = ConnInner {
            link: Mutex::new(connect_link(path)?),
            socket_path: path.to_owned(),
            next_id: AtomicU32::new(1),
            caps: 0,
            page_size: 4096,
            max_bo_size: 0,
            tracking: Mutex::new(None),
            bos: Mutex::new(Vec::new()),
            reconnects: AtomicU64::new(0),
            owner: std::process::id(),
        };
        match inner.call_if_connected(|| Some(hello()), &[])? {
            (
                Reply::Hello {
                    caps,
                    page_size,
                    max_bo_size,
                    ..
                },
                _,
            ) => {
                inner.caps = caps;
                inner.page_size = u64::from(page_size);
                inner.max_bo_size = max_bo_size;
            }
            (other, _) => return Err(unexpected("HELLO", &other)),
        }
        Ok(inner)
    }

    /// Sends one request and waits for its reply. A broken session (the
    /// daemon died or restarted) is re-established first; see
    /// [`ConnInner::reconnect`].
    pub fn call(&self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.call_with(|| req.clone(), fds)
    }

    /// Like [`ConnInner::call`], building the request only once the session
    /// is established: requests naming handles read them then, because a
    /// reconnect renumbers them.
    pub fn call_with(
        &self,
        build: impl Fn() -> Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.call_inner(&|| Some(build()), fds, Reconnect::IfBroken, &mut |_| {})
    }

    /// Like [`ConnInner::call_with`]; `record` sees a successful reply
    /// before any other request (or a reconnect) can run.
    pub fn call_and_record(
        &self,
        build: impl Fn() -> Request,
        fds: &[BorrowedFd<'_>],
        mut record: impl FnMut(&Reply),
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.call_inner(&|| Some(build()), fds, Reconnect::IfBroken, &mut record)
    }

    /// Like [`ConnInner::call_with`] but never reconnects; `build` may
    /// decide, under the link lock, that there is nothing to send (`None`:
    /// the call returns [`Reply::Ok`]).
    pub fn call_if_connected(
        &self,
        build: impl Fn() -> Option<Request>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.call_inner(&build, fds, Reconnect::Never, &mut |_| {})
    }

    /// Sessions established so far after the first (read under the link
    /// lock by requests that name views of one session).
    pub fn generation(&self) -> u64 {
        self.reconnects.load(Ordering::Acquire)
    }

    /// How many times the session was re-established.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    fn call_inner(
        &self,
        build: &dyn Fn() -> Option<Request>,
        fds: &[BorrowedFd<'_>],
        reconnect: Reconnect,
        record: &mut dyn FnMut(&Reply),
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.check_owner()?;
        // BOs held during a reconnect are released only after the link lock
        // (dropping the last one sends DESTROY, which takes the lock).
        let mut held = Vec::new();
        let mut link = lock(&self.link);
        let result = (|| {
            for attempt in 0..2 {
                if link.broken {
                    match reconnect {
                        Reconnect::IfBroken => self.reconnect(&mut link, &mut held)?,
                        Reconnect::Never => return Err(ClientError::Disconnected),
                    }
                }
                let Some(req) = build() else {
                    return Ok((Reply::Ok, Vec::new()));
                };
                match self.exchange(&mut link, &req, fds) {
                    // The request never left: the daemon was gone before it
                    // was sent, so it is safe to send it to the next one.
                    Err(Exchange::NotSent(e)) if attempt == 0 && matches!(reconnect, Reconnect::IfBroken) => {
                        let _ = e;
                        continue;
                    }
                    Err(Exchange::NotSent(e) | Exchange::Failed(e)) => return Err(e),
                    Ok(r) => {
                        record(&r.0);
                        return Ok(r);
                    }
                }
            }
            Err(ClientError::Disconnected)
        })();
        drop(link);
        drop(held);
        result
    }

    /// One request/reply exchange on `link` with this connection's next
    /// request id; see [`Link::exchange`].
    fn exchange(
        &self,
        link: &mut Link,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), Exchange> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        link.exchange(id, req, fds)
    }

    /// Fails in a forked child of the process that connected.
    fn check_owner(&self) -> Result<(), ClientError> {
        let pid = std::process::id();
        if pid != self.owner {
            return Err(ClientError::ForkedChild { owner: self.owner, pid });
        }
        Ok(())
    }

    /// Re-establishes the session after the daemon died or restarted, or
    /// after the session fell out of step (DESIGN.md §5.6): closes the old
    /// session and waits until the daemon has released it (a live daemon
    /// would otherwise still hold its views), connects again, re-attaches
    /// the process's tracking, and reopens every live BO ([`Reopen`]: by
    /// its memfd, with its mappings, wholly damaged), so the next sync
    /// uploads everything that could have been written while this
    /// process's writes were not tracked, whichever sharing process
    /// reconnected first. The BOs are put in `held`.
    fn reconnect(&self, link: &mut Link, held: &mut Vec<Arc<dyn Reopen>>) -> Result<(), ClientError> {
        link.sock.close_and_wait(OLD_SESSION_BOUND);
        let mut fresh = connect_link(&self.socket_path)?;
        let daemon_caps = match self.exchange(&mut fresh, &hello(), &[]).map_err(Exchange::into_inner)? {
            (Reply::Hello { caps, .. }, _) => caps,
            (other, _) => return Err(unexpected("HELLO", &other)),
        };
        let tracking = lock(&self.tracking).clone();
        if let Some(pt) = &tracking {
            pt.settle_daemon(fresh.daemon_pid);
            let mechanism = attach(pt, daemon_caps, &mut |r, f| {
                self.exchange(&mut fresh, r, f).map_err(Exchange::into_inner)
            })?;
            pt.reattach(mechanism, &mut || {
                watch_daemon(&mut |r, f| self.exchange(&mut fresh, r, f).map_err(Exchange::into_inner))
            })?;
        }
        held.extend(lock(&self.bos).iter().filter_map(Weak::upgrade));
        for bo in held.iter() {
            bo.reopen(self.generation() + 1, &mut |r, f| self.exchange(&mut fresh, r, f))?;
        }
        *link = fresh;
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Attaches this process's tracking to the connection (once); returns
    /// it with the mechanism the daemon chose for the process.
    pub fn tracking(&self) -> Result<Arc<ProcessTracking>, ClientError> {
        if let Some(t) = lock(&self.tracking).as_ref() {
            return Ok(t.clone());
        }
        // Not held across the calls: a reconnect inside them reads it.
        let pt = process_tracking(&self.socket_path, self.caps & cohmem_proto::caps::MAP_EVENTS != 0)?;
        let mechanism = attach(&pt, self.caps, &mut |r, f| self.call(r, f))?;
        pt.set_mechanism(mechanism, &mut || watch_daemon(&mut |r, f| self.call(r, f)))?;
        Ok(lock(&self.tracking).get_or_insert(pt).clone())
    }

    /// Reconnects now if the session is known to be broken, or if the
    /// process's lifeline says the daemon died.
    pub fn ensure_connected(&self) -> Result<(), ClientError> {
        self.check_owner()?;
        let gone = lock(&self.tracking).as_ref().is_some_and(|t| t.daemon_gone());
        let mut held = Vec::new();
        let mut link = lock(&self.link);
        if gone {
            link.broken = true;
        }
        let result = if link.broken {
            self.reconnect(&mut link, &mut held)
        } else {
            Ok(())
        };
        drop(link);
        drop(held);
        result
    }

    /// Records a BO opened on this connection, for the next reconnect.
    pub fn register<T: Reopen + 'static>(&self, bo: &Arc<T>) {
        let weak: Weak<T> = Arc::downgrade(bo);
        let mut bos = lock(&self.bos);
        bos.retain(|w| w.strong_count() > 0);
        bos.push(weak as Weak<dyn Reopen>);
    }
}
