//! The connection's BO handles: the handle table (a BO and the views mapped
//! through it, local to the connection), the lookups by handle and by
//! daemon-wide BO id with their access rule, fresh handle and view numbers,
//! and the release of handles on DESTROY and on close (each view harvested
//! one last time, as vmwgfx harvests a BO's dirty pages before it goes).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::ErrorCode;

use super::display::finish_shown;
use super::failure::{fail, Failure};
use super::Session;
use crate::bo::{Bo, View};
use crate::server::Daemon;

/// A BO handle open on this connection, with the views mapped through it.
pub(super) struct Handle {
    pub(super) bo: Arc<Bo>,
    pub(super) views: HashMap<u32, Arc<View>>,
    /// Opened from a read-only memfd (IMPORT_BO of an `O_RDONLY` fd): may
    /// read and upload, never change the BO's bytes or the tracking state
    /// other holders depend on (see [`super::checks::read_only_refusal`]).
    pub(super) read_only: bool,
}

impl Session {
    /// The handle `bo` of this connection.
    pub(super) fn handle(&self, bo: u32) -> Result<&Handle, Failure> {
        self.handles.get(&bo).ok_or_else(|| {
            fail(
                ErrorCode::NoSuchBo,
                format!("BO handle {bo} is not open on this connection"),
            )
        })
    }

    /// BO `id` (daemon-wide), if this connection may `what` it: root may
    /// reach any BO; others only BOs this connection holds.
    pub(super) fn bo_by_id(&self, id: u64, what: &str) -> Result<Arc<Bo>, Failure> {
        self.bo_by_id_with(id, what, false)
    }

    /// [`Session::bo_by_id`]; with `write`, a connection that holds the BO
    /// only through read-only handles may not (not even root's: it chose to
    /// act through a read-only import; root without any handle still may).
    pub(super) fn bo_by_id_with(&self, id: u64, what: &str, write: bool) -> Result<Arc<Bo>, Failure> {
        let held = self.handles.values().any(|h| h.bo.id == id && !(write && h.read_only));
        if write && !held && self.handles.values().any(|h| h.bo.id == id) {
            return Err(fail(
                ErrorCode::PermissionDenied,
                format!("this connection holds BO {id} only through read-only handles: it cannot {what} it"),
            ));
        }
        self.daemon
            .bos
            .all()
            .into_iter()
            .find(|b| b.id == id && (held || self.info.uid == 0))
            .ok_or_else(|| {
                fail(
                    ErrorCode::NoSuchBo,
                    format!("no BO {id} that this connection may {what}"),
                )
            })
    }

    /// A view id not in use on this connection (ids wrap after 2^32 maps).
    pub(super) fn fresh_view_id(&mut self) -> u32 {
        loop {
            let id = self.next_view;
            self.next_view = self.next_view.wrapping_add(1).max(1);
            if self.handles.values().all(|h| !h.views.contains_key(&id)) {
                return id;
            }
        }
    }

    pub(super) fn new_handle(&mut self, bo: Arc<Bo>) -> Result<u32, Failure> {
        self.new_handle_with(bo, false)
    }

    pub(super) fn new_handle_with(&mut self, bo: Arc<Bo>, read_only: bool) -> Result<u32, Failure> {
        self.check_handle_room()?;
        let h = self.next_handle;
        self.next_handle = self.next_handle.checked_add(1).ok_or_else(|| {
            fail(
                ErrorCode::LimitExceeded,
                "BO handle numbers exhausted on this connection",
            )
        })?;
        self.handles.insert(
            h,
            Handle {
                bo,
                views: HashMap::new(),
                read_only,
            },
        );
        self.info.bos.fetch_add(1, Ordering::Relaxed);
        Ok(h)
    }

    /// Releases every handle (each view harvested one last time).
    pub(super) async fn close(&mut self) {
        let handles: Vec<Handle> = self.handles.drain().map(|(_, h)| h).collect();
        self.mm = None;
        if handles.is_empty() {
            return;
        }
        let daemon = self.daemon.clone();
        if let Err(f) = self
            .blocking(move || handles.into_iter().for_each(|h| release(&daemon, h)))
            .await
        {
            crate::limited!(warn, "cleanup failed", self.info.id, conn = self.info.id, message = %f.message, "cleanup failed");
        }
    }
}

/// Releases one handle: each view it mapped harvested one last time, and
/// a shown BO synced and committed.
pub(super) fn release(daemon: &Daemon, handle: Handle) {
    let engine = daemon.sync_engine();
    for view in handle.views.values() {
        engine.remove_view(&handle.bo, view);
    }
    finish_shown(daemon, &handle.bo);
}
