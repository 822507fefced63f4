//! The sync family: SYNC (vmwgfx's scan, transfer and upload in one
//! step), the single tracker operations vmwgfx exposes (ADD/RELEASE_RESOURCE,
//! SCAN, TRANSFER, CLEAR_RESOURCE, CLEAR_ALL, DIRTY_STATE, READBACK,
//! DAMAGE, DAMAGE_RANGES), SNAPSHOT (an exact copy under quiesce, seed 004) and SET_POLICY.
//! Each runs on a blocking slot through the engine ([`crate::sync`]).

use cohmem_proto::{BoPolicy, ByteRange, ErrorCode, Reply, DAMAGE_THEN_SYNC, SYNC_REPORT_RUNS};

use super::display::damage_display;
use super::failure::{fail, ok, sync_failure, Failure, Outcome};
use super::Session;
use crate::bo::Bo;
use crate::server::Daemon;
use crate::sync::{SyncEngine, SyncError};

/// How long a quiesce may wait for its turn and keep retrying.
const QUIESCE_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

impl Session {
    /// SYNC: everything written to BO handle `bo` uploaded to its resources.
    pub(super) async fn sync(&mut self, bo: u32, flags: u32) -> Outcome {
        if flags & !SYNC_REPORT_RUNS != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown SYNC flags {flags:#x}"),
            ));
        }
        let bo_arc = self.handle(bo)?.bo.clone();
        let daemon = self.daemon.clone();
        let report = self
            .blocking(move || {
                let engine = daemon.sync_engine();
                daemon.bypass.note(&engine, &bo_arc);
                let report = engine.sync(&bo_arc, flags & SYNC_REPORT_RUNS != 0)?;
                damage_display(&daemon, &bo_arc, &report);
                Ok::<_, SyncError>(report)
            })
            .await?
            .map_err(|e| fail(ErrorCode::Gpu, format!("upload failed (pages kept dirty): {e}")))?;
        ok(Reply::SyncDone(report))
    }

    /// Runs a tracker operation on a BO of this connection on the blocking pool.
    async fn tracker_op(
        &self,
        bo: u32,
        op: impl FnOnce(&SyncEngine<'_>, &Bo) -> Result<Reply, SyncError> + Send + 'static,
    ) -> Outcome {
        let bo_arc = self.handle(bo)?.bo.clone();
        let daemon = self.daemon.clone();
        let reply = self
            .blocking(move || {
                let engine = daemon.sync_engine();
                daemon.bypass.note(&engine, &bo_arc);
                op(&engine, &bo_arc)
            })
            .await?
            .map_err(sync_failure)?;
        ok(reply)
    }

    /// ADD_RESOURCE: vmwgfx's resource bound to a window of the BO.
    pub(super) async fn add_resource(&self, bo: u32, offset: u64, len: u64) -> Outcome {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| fail(ErrorCode::InvalidArgument, "resource window overflows"))?;
        let daemon = self.daemon.clone();
        self.tracker_op(bo, move |e, b| {
            e.add_resource(b, daemon.gpu.as_ref(), offset..end)
                .map(|index| Reply::ResourceAdded { index })
        })
        .await
    }

    /// RELEASE_RESOURCE: the resource goes (its GPU copy with it).
    pub(super) async fn release_resource(&self, bo: u32, index: u32) -> Outcome {
        self.tracker_op(bo, move |e, b| e.release_resource(b, index).map(|()| Reply::Ok))
            .await
    }

    /// SCAN: vmwgfx's dirty scan (harvest the views into the BO's bitmap).
    pub(super) async fn scan(&self, bo: u32) -> Outcome {
        self.tracker_op(bo, |e, b| Ok(Reply::Scanned(e.scan(b)))).await
    }

    /// TRANSFER: vmwgfx `transfer_to_res` + upload for one resource, no scan.
    pub(super) async fn transfer(&self, bo: u32, index: u32, flags: u32) -> Outcome {
        if flags & !SYNC_REPORT_RUNS != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown TRANSFER flags {flags:#x}"),
            ));
        }
        let daemon = self.daemon.clone();
        self.tracker_op(bo, move |e, b| {
            let report = e.transfer(b, index, flags & SYNC_REPORT_RUNS != 0)?;
            damage_display(&daemon, b, &report);
            Ok(Reply::SyncDone(report))
        })
        .await
    }

    /// CLEAR_RESOURCE: drops one resource's dirty pages.
    pub(super) async fn clear_resource(&self, bo: u32, index: u32) -> Outcome {
        self.tracker_op(bo, move |e, b| e.clear_resource(b, index).map(|()| Reply::Ok))
            .await
    }

    /// CLEAR_ALL: drops the BO's dirty pages.
    pub(super) async fn clear_all(&self, bo: u32) -> Outcome {
        self.tracker_op(bo, |e, b| {
            e.clear_all(b);
            Ok(Reply::Ok)
        })
        .await
    }

    /// DIRTY_STATE: the BO's tracker state.
    pub(super) async fn dirty_state(&self, bo: u32) -> Outcome {
        self.tracker_op(bo, |e, b| Ok(Reply::DirtyState(e.dirty_state(b))))
            .await
    }

    /// READBACK: the GPU copy read back into the BO.
    pub(super) async fn readback(&self, bo: u32, flags: u32) -> Outcome {
        if flags != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown READBACK flags {flags:#x}"),
            ));
        }
        self.tracker_op(bo, |e, b| {
            e.readback(b).map(|r| Reply::ReadbackDone {
                synced_pages: r.synced_pages,
                bytes: r.bytes,
                duration_ns: r.duration_ns,
            })
        })
        .await
    }

    /// DAMAGE: the client reports bytes written (explicit tracking).
    pub(super) async fn damage(&self, bo: u32, offset: u64, len: u64) -> Outcome {
        self.tracker_op(bo, move |e, b| e.damage(b, offset, len).map(|()| Reply::Ok))
            .await
    }

    /// DAMAGE_RANGES: many written ranges at once and, with
    /// [`DAMAGE_THEN_SYNC`], the sync in the same round trip (a cooperative
    /// client's damage and commit).
    pub(super) async fn damage_ranges(&mut self, bo: u32, flags: u32, ranges: &[ByteRange]) -> Outcome {
        if flags & !(DAMAGE_THEN_SYNC | SYNC_REPORT_RUNS) != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown DAMAGE_RANGES flags {flags:#x}"),
            ));
        }
        let ranges = ranges.to_vec();
        if flags & DAMAGE_THEN_SYNC == 0 {
            return self
                .tracker_op(bo, move |e, b| e.damage_ranges(b, &ranges).map(|()| Reply::Ok))
                .await;
        }
        let bo_arc = self.handle(bo)?.bo.clone();
        let daemon = self.daemon.clone();
        let report = self
            .blocking(move || {
                let engine = daemon.sync_engine();
                engine.damage_ranges(&bo_arc, &ranges).map_err(sync_failure)?;
                daemon.bypass.note(&engine, &bo_arc);
                let report = engine
                    .sync(&bo_arc, flags & SYNC_REPORT_RUNS != 0)
                    .map_err(|e| fail(ErrorCode::Gpu, format!("upload failed (pages kept dirty): {e}")))?;
                damage_display(&daemon, &bo_arc, &report);
                Ok::<_, Failure>(report)
            })
            .await??;
        ok(Reply::SyncDone(report))
    }

    /// SNAPSHOT: an exact copy of BO `id` under quiesce. Root may snapshot
    /// any BO; others only BOs this connection holds. Refused while earlier
    /// replies lie unread ([`Session::check_unread_replies`]).
    pub(super) async fn snapshot(&self, id: u64, flags: u32) -> Outcome {
        self.check_unread_replies("SNAPSHOT")?;
        if flags != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown SNAPSHOT flags {flags:#x}"),
            ));
        }
        let bo = self.bo_by_id(id, "snapshot")?;
        let daemon = self.daemon.clone();
        let only_one = only_quiesce(&daemon).await?;
        let (memfd, report) = self
            .blocking(move || {
                let _only_one = only_one;
                daemon.sync_engine().snapshot(&bo, QUIESCE_BOUND).map_err(sync_failure)
            })
            .await??;
        let fd = memfd
            .try_clone_fd()
            .map_err(|e| fail(ErrorCode::Kernel, e.to_string()))?;
        Ok((Reply::Snapshot(report), vec![fd]))
    }

    /// SET_POLICY: pins how BO `id` is tracked (same access rule as SNAPSHOT).
    pub(super) async fn set_policy(&self, id: u64, policy: BoPolicy) -> Outcome {
        let bo = self.bo_by_id_with(id, "set the policy of", true)?;
        let daemon = self.daemon.clone();
        let (previous, method) = self
            .blocking(move || daemon.sync_engine().set_policy(&bo, policy))
            .await?;
        Ok((
            Reply::PolicySet {
                previous,
                method: method as u16,
            },
            vec![],
        ))
    }
}

/// Takes the daemon's quiesce lock (seed 004: one quiesce at a time, and
/// never waiting forever). Waits asynchronously: a request queued behind
/// another client's quiesce holds no thread, so the runtime goes on serving
/// everyone else (issue 14, item 10).
pub(super) async fn only_quiesce(daemon: &Daemon) -> Result<tokio::sync::OwnedMutexGuard<()>, Failure> {
    tokio::time::timeout(QUIESCE_BOUND, daemon.quiesce.clone().lock_owned())
        .await
        .map_err(|_| {
            fail(
                ErrorCode::LimitExceeded,
                format!("another quiesce is running; gave up after {QUIESCE_BOUND:?}"),
            )
        })
}
