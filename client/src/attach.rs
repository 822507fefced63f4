//! The requests that hand this process's write tracking to a session:
//! ATTACH_MM (the uffds and pagemap fd, offered only when the daemon does
//! not have them yet) and WATCH_DAEMON (the daemon's pidfd, the lifeline
//! that undoes the daemon's protection if it dies). Both run through a
//! caller's `call`, so the reconnect can use them on a session it is still
//! establishing.

use std::os::fd::{BorrowedFd, OwnedFd};

use cohmem_proto::{ErrorCode, Mechanism, Reply, Request, ATTACH_MECHANISM_SHIFT};

use crate::error::{unexpected, ClientError};
use crate::link::CallResult;
use crate::tracking::{requested_mechanism, ProcessTracking};

/// WATCH_DAEMON through `call`: the daemon's pidfd, or `None` where the
/// daemon cannot give one (no pidfds in its kernel, or an older daemon).
pub(crate) fn watch_daemon(
    call: &mut dyn FnMut(&Request, &[BorrowedFd<'_>]) -> CallResult,
) -> Result<Option<OwnedFd>, ClientError> {
    match call(&Request::WatchDaemon, &[]) {
        Ok((Reply::DaemonProcess, mut fds)) => Ok(fds.pop()),
        Ok((other, _)) => Err(unexpected("WATCH_DAEMON", &other)),
        Err(e) if matches!(e.code(), Some(ErrorCode::Kernel | ErrorCode::UnknownRequest)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// ATTACH_MM through `call`: first without fds (another connection of the
/// process may have attached it already), then offering the fds the
/// daemon (its HELLO `daemon_caps`) can take.
pub(crate) fn attach(
    pt: &ProcessTracking,
    daemon_caps: u64,
    call: &mut dyn FnMut(&Request, &[BorrowedFd<'_>]) -> CallResult,
) -> Result<Mechanism, ClientError> {
    let requested = u32::from(requested_mechanism()? as u16) << ATTACH_MECHANISM_SHIFT;
    let (offer_flags, features, fds) = pt.offer(daemon_caps);
    let bare = Request::AttachMm {
        token: pt.token,
        uffd_features: features,
        flags: requested,
    };
    let result = match call(&bare, &[]) {
        Err(e) if e.code() == Some(ErrorCode::NeedMmFds) => {
            let with_fds = Request::AttachMm {
                token: pt.token,
                uffd_features: features,
                flags: requested | offer_flags,
            };
            call(&with_fds, &fds)
        }
        other => other,
    };
    match result? {
        (Reply::MmAttached { mechanism, .. }, _) => Ok(mechanism),
        (other, _) => Err(unexpected("ATTACH_MM", &other)),
    }
}
