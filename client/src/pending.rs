//! Syncing without blocking the caller's thread ([`Bo::sync_in_background`]):
//! the sync runs on a helper thread, and its completion is both a
//! [`Future`] (for any async runtime) and a readable file descriptor (for
//! an event loop: epoll, calloop, glib, tokio's `AsyncFd`).
//!
//! The protocol itself stays blocking (one request in flight per
//! connection); what this gives a compositor or a game loop is a frame's
//! sync that does not stall the thread that drives it, and a completion
//! signal it can poll.

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::bo::Bo;
use crate::error::ClientError;
use crate::results::SyncResult;
use crate::session::lock;

/// What the helper thread and the [`PendingSync`] share.
#[derive(Default)]
struct Shared {
    result: Option<Result<SyncResult, ClientError>>,
    waker: Option<Waker>,
}

/// A sync running on a helper thread ([`Bo::sync_in_background`]).
///
/// Await it, poll [`PendingSync::as_fd`] for readability, or call
/// [`PendingSync::try_take`] / [`PendingSync::wait`]. Dropping it does not
/// cancel the sync (it completes; its result is dropped).
pub struct PendingSync {
    shared: Arc<Mutex<Shared>>,
    /// Becomes readable when the result is in.
    signal: UnixStream,
}

impl std::fmt::Debug for PendingSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSync")
            .field("done", &lock(&self.shared).result.is_some())
            .finish()
    }
}

impl Bo {
    /// Starts [`Bo::sync`] on a helper thread and returns at once: the
    /// calling thread goes on (drawing the next frame, serving its event
    /// loop) while the daemon uploads. Writes made after this call reach
    /// this sync or the next one.
    ///
    /// ```no_run
    /// # async fn frame(bo: &cohmem_client::Bo) -> Result<(), cohmem_client::ClientError> {
    /// let done = bo.sync_in_background()?.await?; // in any async runtime
    /// println!("{} pages", done.pages);
    /// # Ok(()) }
    /// ```
    ///
    /// From an event loop without a runtime, register
    /// [`PendingSync::as_fd`] for readability and call
    /// [`PendingSync::try_take`] when it is readable.
    ///
    /// # Errors
    ///
    /// [`ClientError::Sys`] when the completion socket cannot be created,
    /// [`ClientError::Protocol`] when the helper thread cannot be started.
    /// The sync's own errors come with its result.
    pub fn sync_in_background(&self) -> Result<PendingSync, ClientError> {
        let (signal, notify) = UnixStream::pair()
            .map_err(|e| ClientError::Protocol(format!("cannot create the completion socket: {e}")))?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let bo = self.clone();
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("cohmem-sync".into())
            .spawn(move || {
                let result = bo.sync();
                let waker = {
                    let mut s = lock(&theirs);
                    s.result = Some(result);
                    s.waker.take()
                };
                let _ = (&notify).write_all(&[1]);
                if let Some(w) = waker {
                    w.wake();
                }
            })
            .map_err(|e| ClientError::Protocol(format!("cannot start the sync thread: {e}")))?;
        Ok(PendingSync { shared, signal })
    }
}

impl PendingSync {
    /// A file descriptor that becomes readable when the sync is done (and
    /// stays readable). Poll it for `POLLIN`, then call
    /// [`PendingSync::try_take`].
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.signal.as_fd()
    }

    /// True once the result is in.
    pub fn is_done(&self) -> bool {
        lock(&self.shared).result.is_some()
    }

    /// The result if the sync is done (taken: a second call returns
    /// `None`), without blocking.
    pub fn try_take(&mut self) -> Option<Result<SyncResult, ClientError>> {
        lock(&self.shared).result.take()
    }

    /// Blocks until the sync is done and returns its result.
    ///
    /// # Errors
    ///
    /// Those of [`Bo::sync`]; [`ClientError::Protocol`] when the result was
    /// already taken ([`PendingSync::try_take`]) or the helper thread died.
    pub fn wait(mut self) -> Result<SyncResult, ClientError> {
        if let Some(r) = self.try_take() {
            return r;
        }
        let mut byte = [0u8; 1];
        // The helper writes one byte after storing the result (or the
        // socket closes when it dies).
        let _ = (&self.signal).read(&mut byte);
        self.try_take().unwrap_or_else(|| {
            Err(ClientError::Protocol(
                "the sync's result was already taken, or its thread died".into(),
            ))
        })
    }
}

impl Future for PendingSync {
    type Output = Result<SyncResult, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = lock(&self.shared);
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
