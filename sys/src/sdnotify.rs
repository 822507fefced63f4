//! The service manager's notification protocol (`sd_notify(3)`) and its
//! file descriptor store (`FDSTORE=1`), through the sd-notify crate, and
//! the fds a service manager passes at start (`sd_listen_fds(3)`).
//!
//! Everything here is a no-op without `$NOTIFY_SOCKET`: the daemon runs the
//! same with or without systemd.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

pub use sd_notify::NotifyState;

use crate::{Result, SysError};

fn io(op: &'static str, e: std::io::Error) -> SysError {
    SysError::os(op, nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// True when a service manager listens (`$NOTIFY_SOCKET` is set).
pub fn available() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

/// Sends state changes (`READY=1`, `STATUS=…`, `STOPPING=1`, …).
pub fn notify(states: &[NotifyState<'_>]) -> Result<()> {
    sd_notify::notify(states).map_err(|e| io("sd_notify", e))
}

/// Hands `fds` to the service manager's fd store under `name` (which must
/// not contain `:`); it gives them back at the next start.
pub fn store_fds(name: &str, fds: &[BorrowedFd<'_>]) -> Result<()> {
    if name.contains(':') || name.len() > 255 {
        return Err(SysError::Invalid(format!("fd store name {name:?} is not valid")));
    }
    sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], fds)
        .map_err(|e| io("sd_notify(FDSTORE=1)", e))
}

/// Removes every fd stored under `name`.
pub fn remove_stored(name: &str) -> Result<()> {
    sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)])
        .map_err(|e| io("sd_notify(FDSTOREREMOVE=1)", e))
}

/// The watchdog interval the service manager asked for (`WatchdogSec=`, as
/// `$WATCHDOG_USEC` for this process); `None` when there is no watchdog.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled()
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the fds the service manager passed to this process
/// (`$LISTEN_PID` is this process, `$LISTEN_FDS` of them from fd 3, named by
/// `$LISTEN_FDNAMES`), once; later calls return nothing.
pub fn take_listen_fds() -> Result<Vec<(OwnedFd, String)>> {
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    let fds = sd_notify::listen_fds_with_names().map_err(|e| io("sd_listen_fds", e))?;
    Ok(fds
        .map(|(raw, name)| {
            // SAFETY: the service manager passed these fds to this process
            // ($LISTEN_PID matched), nothing else here knows them, and TAKEN
            // makes this the only place that ever takes ownership of them.
            (unsafe { OwnedFd::from_raw_fd(raw) }, name)
        })
        .collect())
}
