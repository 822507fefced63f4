//! The checks a request passes before (or while) it is handled, in the
//! order dispatch runs them: the fd count its kind carries, HELLO first and
//! once, the capabilities HELLO granted, the read-only rule of handles
//! imported from an `O_RDONLY` fd; and those handlers call: unread replies
//! holding memfds (issue 15, item 1), the per-connection handle limit, and
//! the per-uid BO quota.

use cohmem_proto::{caps, ErrorCode, Request, SYNC_REPORT_RUNS};

use super::failure::{fail, Failure};
use super::Session;
use crate::quota::BoCharge;

impl Session {
    /// Refuses a request that carries fewer or more fds than its kind does.
    pub(super) fn check_fds(&self, req: &Request, fds: usize) -> Result<(), Failure> {
        let (min_fds, max_fds) = req.fd_count();
        if fds < min_fds || fds > max_fds {
            return Err(fail(
                ErrorCode::BadFds,
                format!(
                    "{} carries {min_fds}..={max_fds} file descriptors, got {fds}",
                    req.name()
                ),
            ));
        }
        Ok(())
    }

    /// HELLO must come first, and only once.
    pub(super) fn check_negotiated(&self, req: &Request) -> Result<(), Failure> {
        match (self.negotiated, req) {
            (false, Request::Hello { .. }) => {}
            (false, _) => return Err(fail(ErrorCode::NotNegotiated, "HELLO must come first")),
            (true, Request::Hello { .. }) => return Err(fail(ErrorCode::NotNegotiated, "HELLO was already done")),
            (true, _) => {}
        }
        Ok(())
    }

    /// Refuses requests that need a capability this session did not negotiate.
    pub(super) fn check_caps(&self, req: &Request) -> Result<(), Failure> {
        let needs = match *req {
            Request::ExportResource { .. } => caps::EXPORT_RESOURCE,
            Request::CreateImage { .. } | Request::ImportImage { .. } => caps::IMAGES,
            Request::Sync { flags, .. } | Request::Transfer { flags, .. } if flags & SYNC_REPORT_RUNS != 0 => {
                caps::SYNC_RUNS
            }
            _ => 0,
        };
        if self.caps & needs != needs {
            return Err(fail(
                ErrorCode::Unsupported,
                format!("{} needs capability {needs:#x}, which HELLO did not grant", req.name()),
            ));
        }
        Ok(())
    }

    /// Refuses what a read-only handle may not do.
    pub(super) fn check_access(&self, req: &Request) -> Result<(), Failure> {
        let Some((bo, what)) = read_only_refusal(req) else {
            return Ok(());
        };
        if self.handles.get(&bo).is_some_and(|h| h.read_only) {
            return Err(fail(
                ErrorCode::PermissionDenied,
                format!(
                    "BO handle {bo} was imported from a read-only fd: it cannot {what} (import a read-write fd of the \
                     BO to do that)"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a request whose reply holds memory (a memfd: SNAPSHOT's copy
    /// of the BO, METRICS' text) while earlier replies lie unread: each
    /// unread reply keeps its memfd alive in the socket, so a client that
    /// never reads could make the daemon hold a copy per request. With this
    /// rule a connection holds at most one such reply unread (issue 15,
    /// item 1). A client that reads each reply before its next request
    /// never meets it.
    pub(super) fn check_unread_replies(&self, request: &str) -> Result<(), Failure> {
        // SAFETY: the socket outlives the session (serve drops it after
        // the session closes), so the fd is open while a request runs.
        let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.socket) };
        let unread = cohmem_sys::seqpacket::unread_output(sock).map_err(|e| fail(ErrorCode::Kernel, e.to_string()))?;
        if unread > 0 {
            return Err(fail(
                ErrorCode::LimitExceeded,
                format!(
                    "{request} refused: {unread} bytes of earlier replies on this connection are unread (a reply \
                     carrying a memfd holds memory until read); read the replies first"
                ),
            ));
        }
        Ok(())
    }

    /// Fails when this connection cannot open another BO handle.
    pub(super) fn check_handle_room(&self) -> Result<(), Failure> {
        if self.handles.len() >= self.daemon.config.max_bos_per_connection {
            return Err(fail(
                ErrorCode::LimitExceeded,
                format!(
                    "connection already holds {} BO handles (limit max_bos_per_connection = {})",
                    self.handles.len(),
                    self.daemon.config.max_bos_per_connection
                ),
            ));
        }
        Ok(())
    }

    /// Charges a new BO of `size` bytes to this connection's uid.
    pub(super) fn charge_bo(&self, size: u64) -> Result<BoCharge, Failure> {
        self.daemon
            .quotas
            .charge_bo(self.info.uid, size)
            .map_err(|e| fail(ErrorCode::LimitExceeded, e.to_string()))
    }
}

/// For requests a read-only handle may not make: the handle, and what the
/// request would do. Reading (DIRTY_STATE, EXPORT_RESOURCE, SNAPSHOT) and
/// uploading (SYNC, SCAN: they record and upload what was written, never
/// drop it) stay allowed; everything that changes the BO's bytes or drops
/// or invents tracking state other holders depend on is refused.
pub(super) fn read_only_refusal(req: &Request) -> Option<(u32, &'static str)> {
    Some(match *req {
        Request::Map { bo, .. } => (
            bo,
            "be mapped for tracking (map it PROT_READ without MAP: a read-only mapping writes nothing)",
        ),
        Request::AddResource { bo, .. } => (bo, "add a resource"),
        Request::ReleaseResource { bo, .. } => (bo, "release a resource"),
        Request::Transfer { bo, .. } => (bo, "transfer dirty pages without a scan"),
        Request::ClearResource { bo, .. } => (bo, "clear a resource's dirty pages"),
        Request::ClearAll { bo } => (bo, "clear the BO's dirty pages"),
        Request::Damage { bo, .. } | Request::DamageRanges { bo, .. } => (bo, "report damage"),
        Request::Readback { bo, .. } => (bo, "read the GPU copy back into the BO"),
        _ => return None,
    })
}
