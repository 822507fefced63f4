//! The sync family: SYNC (vmwgfx's scan, transfer and upload in one
//! step), the single tracker operations vmwgfx exposes (ADD/RELEASE_RESOURCE,
//! SCAN, TRANSFER, CLEAR_RESOURCE, CLEAR_ALL, DIRTY_STATE, READBACK,
//! DAMAGE, DAMAGE_RANGES), SYNC_MANY, SNAPSHOT (an exact copy under quiesce, seed 004) and SET_POLICY.
//! Each runs on a blocking slot through the engine ([`crate::sync`]),
//! except the SYNC of a small BO nobody else holds, which runs in place.

use std::sync::Arc;

use cohmem_proto::{
    BoPolicy, BoSyncOutcome, ByteRange, ErrorCode, Mechanism, Reply, SyncReport, DAMAGE_THEN_SYNC, SYNC_REPORT_RUNS,
};

use super::display::damage_display;
use super::failure::{fail, ok, sync_failure, Failure, Outcome};
use super::Session;
use crate::bo::Bo;
use crate::server::Daemon;
use crate::sync::{SyncEngine, SyncError};

/// Largest BO a SYNC may run on the connection's runtime thread.
const INLINE_SYNC_MAX_BYTES: u64 = 4 << 20;
/// Largest BO a SYNC may run there when its last sync was short.
const INLINE_SYNC_LARGE_MAX_BYTES: u64 = 1 << 30;
/// Longest last sync of a BO larger than [`INLINE_SYNC_MAX_BYTES`] whose
/// next sync may run on the runtime thread.
const INLINE_SYNC_MAX_NS: u64 = 200_000;
/// Most views a BO synced on the runtime thread may have.
const INLINE_SYNC_MAX_VIEWS: usize = 8;

/// Whether a sync of `bo` looks short enough to run on a runtime thread: a
/// small BO, or a larger one whose last sync took at most
/// [`INLINE_SYNC_MAX_NS`] (a sparse sync of a 64 MiB BO: handing the
/// thread over cost about 15 µs of its 80 µs in the daemon on the test VM),
/// with few views, no display output (a commit waits for the device, and
/// SHOW may come at any time), and no view tracked by soft-dirty (its
/// harvest clears the whole process's bits under a quiesce). What a client
/// can still stretch (its own `mmap_lock`, a burst of writes after short
/// syncs) is bounded by [`crate::server::InlineSlots`].
fn may_sync_inline(daemon: &Daemon, bo: &Bo) -> bool {
    let short = || {
        let last = bo.counters.last_sync_ns.load(std::sync::atomic::Ordering::Relaxed);
        bo.size <= INLINE_SYNC_LARGE_MAX_BYTES && last != 0 && last <= INLINE_SYNC_MAX_NS
    };
    (bo.size <= INLINE_SYNC_MAX_BYTES || short()) && daemon.display.is_none() && {
        let views = bo.views();
        views.len() <= INLINE_SYNC_MAX_VIEWS && views.iter().all(|v| v.mm.tracker().mechanism() != Mechanism::SoftDirty)
    }
}

/// A sync's reply, its rectangles sent to the display output.
fn finish_sync(daemon: &Daemon, bo: &Bo, report: Result<SyncReport, SyncError>) -> Result<SyncReport, Failure> {
    let report = report.map_err(|e| fail(ErrorCode::Gpu, format!("upload failed (pages kept dirty): {e}")))?;
    damage_display(daemon, bo, &report);
    Ok(report)
}

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
        let report = self.sync_bo(bo_arc, flags & SYNC_REPORT_RUNS != 0).await?;
        ok(Reply::SyncDone(report))
    }

    /// SYNC_MANY: every BO of a frame's submission synced in one round trip,
    /// each as SYNC would (inline or in a blocking section), in order; a
    /// BO that fails gets its error code in its outcome and the rest go on.
    pub(super) async fn sync_many(&mut self, flags: u32, bos: &[u32]) -> Outcome {
        if flags != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown SYNC_MANY flags {flags:#x}"),
            ));
        }
        let mut outcomes = Vec::with_capacity(bos.len());
        for &bo in bos {
            let synced = match self.handle(bo) {
                Ok(h) => {
                    let bo_arc = h.bo.clone();
                    self.sync_bo(bo_arc, false).await
                }
                Err(f) => Err(f),
            };
            outcomes.push(match synced {
                Ok(r) => BoSyncOutcome {
                    bo,
                    status: 0,
                    mechanism: r.mechanism,
                    pages: r.pages,
                    bytes: r.bytes,
                    duration_ns: r.duration_ns,
                },
                Err(f) => BoSyncOutcome {
                    bo,
                    status: f.code.to_wire(),
                    ..BoSyncOutcome::default()
                },
            });
        }
        ok(Reply::SyncManyDone(outcomes))
    }

    /// A slot to work on `bo` on this runtime thread, if the work looks
    /// short ([`may_sync_inline`]) and this user and the daemon have one free.
    fn inline_slot(&self, bo: &Bo) -> Option<crate::server::InlineSlot<'_>> {
        may_sync_inline(&self.daemon, bo)
            .then(|| self.daemon.inline.try_acquire(self.info.uid))
            .flatten()
    }

    /// Syncs `bo` and hands its rectangles to the display output. A small
    /// BO that nobody else is syncing is synced right here, on this runtime
    /// thread ([`Session::inline_slot`]): handing the thread over to another
    /// (`block_in_place`) costs more than such a sync (about 10 µs of a
    /// 25 µs round trip on the test machine). Otherwise, or when another
    /// sync, quiesce or mechanism switch holds the BO, it runs in a
    /// blocking section like every other long operation.
    async fn sync_bo(&self, bo: Arc<Bo>, with_runs: bool) -> Result<SyncReport, Failure> {
        let daemon = self.daemon.clone();
        if let Some(_slot) = self.inline_slot(&bo) {
            let engine = daemon.sync_engine();
            daemon.bypass.note(&engine, &bo);
            if let Some(report) = engine.try_sync(&bo, with_runs) {
                return finish_sync(&daemon, &bo, report);
            }
        }
        self.blocking(move || {
            let engine = daemon.sync_engine();
            daemon.bypass.note(&engine, &bo);
            let report = engine.sync(&bo, with_runs);
            finish_sync(&daemon, &bo, report)
        })
        .await?
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
        let bo_arc = self.handle(bo)?.bo.clone();
        if may_sync_inline(&self.daemon, &bo_arc) {
            self.daemon
                .sync_engine()
                .damage_ranges(&bo_arc, ranges)
                .map_err(sync_failure)?;
        } else {
            let (daemon, target, ranges) = (self.daemon.clone(), bo_arc.clone(), ranges.to_vec());
            self.blocking(move || daemon.sync_engine().damage_ranges(&target, &ranges))
                .await?
                .map_err(sync_failure)?;
        }
        if flags & DAMAGE_THEN_SYNC == 0 {
            return ok(Reply::Ok);
        }
        let report = self.sync_bo(bo_arc, flags & SYNC_REPORT_RUNS != 0).await?;
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
