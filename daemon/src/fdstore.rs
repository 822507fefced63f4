//! BOs kept across a daemon restart in the service manager's file
//! descriptor store (issue 5 "restart without data loss"; DESIGN.md §5.5).
//!
//! Under systemd (`$NOTIFY_SOCKET` set, `FileDescriptorStoreMax=` in the
//! unit) every BO's memfd is handed to the store as `cohmem-bo.<id>.<uid>`
//! when the BO is created or adopted, and removed from it when the BO dies.
//! After a restart (crash included) systemd passes the stored memfds back
//! (`$LISTEN_FDS`, `$LISTEN_FDNAMES`); the daemon adopts each as BO `<id>`
//! charged to `<uid>`, with a fresh GPU resource and every page dirty
//! (nobody tracked the writes made while it was down). A client that
//! re-imports its memfd then finds the same BO — same id, shared with every
//! other process that imported it — instead of a new one. Adopted BOs that
//! no client re-imports within the grace period are released.

use std::os::fd::AsFd;
use std::sync::Arc;

use cohmem_sys::memfd::Memfd;
use cohmem_sys::sdnotify;

use crate::bo::Bo;
use crate::server::Daemon;

const PREFIX: &str = "cohmem-bo";

/// A BO's entry in the fd store; removed from the store on drop.
#[derive(Debug)]
pub struct StoredBo {
    name: String,
}

impl Drop for StoredBo {
    fn drop(&mut self) {
        if let Err(e) = sdnotify::remove_stored(&self.name) {
            tracing::warn!(name = %self.name, error = %e, "could not remove a BO from the fd store");
        }
    }
}

fn name(id: u64, uid: u32) -> String {
    format!("{PREFIX}.{id}.{uid}")
}

/// Hands BO `bo`'s memfd to the fd store (when there is one and the
/// daemon is configured to use it); the BO holds the entry for its life.
pub fn store(daemon: &Daemon, bo: &Bo, uid: u32) {
    if !daemon.config.fdstore || !sdnotify::available() {
        return;
    }
    let name = name(bo.id, uid);
    match sdnotify::store_fds(&name, &[bo.memfd().as_fd()]) {
        Ok(()) => bo.hold_stored(StoredBo { name }),
        Err(e) => tracing::warn!(bo = bo.id, error = %e, "could not store a BO in the fd store"),
    }
}

/// Parses `cohmem-bo.<id>.<uid>`.
fn parse(name: &str) -> Option<(u64, u32)> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (id, uid) = rest.split_once('.')?;
    Some((id.parse().ok()?, uid.parse().ok()?))
}

/// Adopts the BOs the service manager passed back at start. Returns them:
/// the caller keeps them alive for the grace period.
pub fn adopt_stored(daemon: &Daemon) -> Vec<Arc<Bo>> {
    let passed = match sdnotify::take_listen_fds() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the fds passed at start");
            return Vec::new();
        }
    };
    let mut adopted = Vec::new();
    for (fd, fd_name) in passed {
        let Some((id, uid)) = parse(&fd_name) else {
            tracing::warn!(name = %fd_name, "closing a passed fd that is no stored BO");
            continue;
        };
        let memfd = match Memfd::from_fd(fd) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(name = %fd_name, error = %e, "stored fd is no memfd");
                continue;
            }
        };
        let size = memfd.size();
        let bo = match Bo::adopt(id, memfd, daemon.gpu.as_ref()) {
            Ok(bo) => bo,
            Err(e) => {
                tracing::warn!(name = %fd_name, error = %e, "could not adopt a stored BO");
                continue;
            }
        };
        match daemon.quotas.charge_bo(uid, size) {
            Ok(charge) => bo.hold_charge(charge),
            Err(e) => tracing::warn!(bo = id, error = %e, "adopted BO is over its user's quota"),
        }
        // Still in the store under the same name: only the guard is new.
        bo.hold_stored(StoredBo { name: fd_name });
        let bo = Arc::new(bo);
        daemon.bos.reserve_id(id);
        daemon.bos.insert(&bo);
        tracing::info!(bo = id, uid, size, "BO adopted from the fd store");
        adopted.push(bo);
    }
    adopted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_rejected() {
        assert_eq!(parse(&name(42, 1000)), Some((42, 1000)));
        assert_eq!(parse("cohmem-bo.1"), None);
        assert_eq!(parse("cohmem-bo.x.1"), None);
        assert_eq!(parse("cohmem.sock"), None);
        assert_eq!(parse("other-bo.1.2"), None);
    }
}
