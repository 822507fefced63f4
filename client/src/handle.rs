//! The state a BO handle shares with its mappings ([`BoInner`]): the
//! handle and id on the current session, the memfd, and the mappings the
//! daemon knows ([`ViewSlot`]), which a reconnect announces again
//! ([`Reopen`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use cohmem_proto::{ImageInfo, Reply, Request};
use cohmem_sys::memfd::Memfd;

use crate::error::{unexpected, ClientError};
use crate::link::Exchange;
use crate::session::{lock, ConnInner, ExchangeFn, Reopen};

/// A BO's state, shared by its handles ([`crate::Bo`]) and mappings; its
/// drop closes the handle on the daemon.
pub(crate) struct BoInner {
    pub conn: Arc<ConnInner>,
    /// The handle on the current session (renumbered by a reconnect).
    handle: AtomicU32,
    pub size: u64,
    /// The daemon-wide id on the current session.
    id: AtomicU64,
    pub memfd: Memfd,
    /// The layout of an image BO.
    pub image: Option<ImageInfo>,
    /// The live mappings of this BO through this connection.
    views: Mutex<Vec<Weak<ViewSlot>>>,
}

/// One mapping as the daemon knows it: re-announced after a reconnect.
pub(crate) struct ViewSlot {
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
    /// The view id on the current session.
    pub view: AtomicU32,
    /// Set by the UNMAP that retires it: a reconnect skips it.
    pub retired: AtomicBool,
    /// The session ([`ConnInner::generation`]) its view id belongs to.
    pub generation: AtomicU64,
}

impl BoInner {
    /// The state of a BO the daemon just opened on `conn`, registered with
    /// `conn` for its reconnects.
    pub fn open(
        conn: Arc<ConnInner>,
        handle: u32,
        size: u64,
        id: u64,
        memfd: Memfd,
        image: Option<ImageInfo>,
    ) -> Arc<Self> {
        let inner = Arc::new(BoInner {
            conn,
            handle: AtomicU32::new(handle),
            size,
            id: AtomicU64::new(id),
            memfd,
            image,
            views: Mutex::new(Vec::new()),
        });
        inner.conn.register(&inner);
        inner
    }

    /// The handle on the current session.
    pub fn handle(&self) -> u32 {
        self.handle.load(Ordering::Acquire)
    }

    /// The daemon-wide id on the current session.
    pub fn id(&self) -> u64 {
        self.id.load(Ordering::Acquire)
    }

    /// Sends the request `build` makes from the current handle.
    pub fn call(
        &self,
        build: impl Fn(u32) -> Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.conn.call_with(|| build(self.handle()), fds)
    }

    /// Records a mapping announced to the daemon.
    pub fn add_view(&self, slot: &Arc<ViewSlot>) {
        let mut views = lock(&self.views);
        views.retain(|w| w.strong_count() > 0);
        views.push(Arc::downgrade(slot));
    }

    fn live_views(&self) -> Vec<Arc<ViewSlot>> {
        lock(&self.views)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|v| !v.retired.load(Ordering::Acquire))
            .collect()
    }
}

impl Reopen for BoInner {
    /// Re-imports the BO by its memfd (a new daemon adopts it with every
    /// page dirty), re-announces its live mappings and reports the whole BO
    /// damaged.
    fn reopen(&self, generation: u64, exchange: ExchangeFn<'_>) -> Result<(), ClientError> {
        // An image BO is re-imported as the image it was created as, so
        // the new daemon's GPU copy keeps its layout and its syncs keep
        // reporting rectangles. A daemon whose backend lays the image
        // out differently refuses; the BO then goes on as a byte BO
        // (every write still reaches the GPU copy, without rectangles).
        let as_image =
            self.image.and_then(
                |image| match exchange(&Request::ImportImage { image }, &[self.memfd.as_fd()]) {
                    Ok(reply) => Some(Ok(reply)),
                    Err(Exchange::Failed(ClientError::Daemon { .. })) => None,
                    Err(e) => Some(Err(e)),
                },
            );
        let reply = match as_image {
            Some(r) => r,
            None => exchange(&Request::ImportBo, &[self.memfd.as_fd()]),
        };
        let handle = match reply.map_err(Exchange::into_inner)? {
            (Reply::Bo { bo: h, id, .. }, _) => {
                self.id.store(id, Ordering::Release);
                h
            }
            (other, _) => return Err(unexpected("IMPORT_BO", &other)),
        };
        self.handle.store(handle, Ordering::Release);
        for v in self.live_views() {
            let map = Request::Map {
                bo: handle,
                addr: v.addr,
                len: v.len,
                offset: v.offset,
            };
            match exchange(&map, &[]).map_err(Exchange::into_inner)? {
                (Reply::Mapped { view }, _) => {
                    v.view.store(view, Ordering::Release);
                    v.generation.store(generation, Ordering::Release);
                }
                (other, _) => return Err(unexpected("MAP", &other)),
            }
        }
        // The whole BO, not only the live views: a mapping dropped while
        // the session was dead could not say what it wrote.
        let damage = Request::Damage {
            bo: handle,
            offset: 0,
            len: self.size,
        };
        exchange(&damage, &[]).map_err(Exchange::into_inner)?;
        Ok(())
    }
}

impl Drop for BoInner {
    fn drop(&mut self) {
        // Best effort: the daemon releases the handle with the connection
        // anyway, and a dead session has nothing to release.
        let handle = self.handle();
        let _ = self
            .conn
            .call_if_connected(|| Some(Request::Destroy { bo: handle }), &[]);
    }
}
