//! The admin family: HELLO (version and capability negotiation), STATS
//! (daemon counters, and the connections and BOs this connection may see),
//! METRICS (the OpenMetrics text in a memfd) and WATCH_DAEMON (a pidfd of
//! the daemon).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{
    BoRow, ConnectionRow, DaemonStats, ErrorCode, Reply, StatsReport, BO_ROW_PAUSED, PROTOCOL_VERSION, STATS_BOS,
    STATS_CONNECTIONS,
};
use cohmem_sys::memfd::Memfd;

use super::failure::{fail, ok, Outcome};
use super::Session;
use crate::bo::Bo;
use crate::server::{ConnectionInfo, Daemon};

impl Session {
    /// HELLO: the protocol version both speak, and the capabilities granted.
    pub(super) fn hello(&mut self, min: u16, max: u16, wanted: u64) -> Outcome {
        if min > max || !(min..=max).contains(&PROTOCOL_VERSION) {
            return Err(fail(
                ErrorCode::UnsupportedVersion,
                format!("client speaks versions {min}..={max}; daemon speaks {PROTOCOL_VERSION}"),
            ));
        }
        self.negotiated = true;
        self.caps = wanted & self.daemon.caps;
        ok(Reply::Hello {
            version: PROTOCOL_VERSION,
            caps: self.caps,
            max_frame: MAX_FRAME as u32,
            page_size: cohmem_sys::page_size() as u32,
            max_bo_size: self.daemon.config.max_bo_size,
        })
    }

    /// STATS: refused with flags it does not know; else the report, built
    /// off the async workers.
    pub(super) fn stats_request(&self, flags: u32) -> Outcome {
        // STATS_BOS takes every BO's state lock in turn, which a sync or
        // snapshot may hold for long: off the async workers, or a few
        // STATS callers stall every client (issue 14, suspicion a).
        if flags & !(STATS_CONNECTIONS | STATS_BOS) != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown STATS flags {:#x}", flags & !(STATS_CONNECTIONS | STATS_BOS)),
            ));
        }
        ok(Reply::Stats(tokio::task::block_in_place(|| self.stats(flags))))
    }

    /// The STATS report, with the rows `flags` asks for.
    fn stats(&self, flags: u32) -> StatsReport {
        let d = &self.daemon;
        let all_conns = d.connections();
        let all_bos = d.bos.all();
        // Root sees everything; other users see their own connections and
        // the BOs their connections hold.
        let privileged = self.info.uid == 0;
        let mut connections = Vec::new();
        if flags & STATS_CONNECTIONS != 0 {
            connections = all_conns
                .iter()
                .filter(|ci| privileged || ci.uid == self.info.uid)
                .map(|ci| connection_row(ci))
                .collect();
        }
        let mut bos = Vec::new();
        if flags & STATS_BOS != 0 {
            let own: Vec<u64> = self.handles.values().map(|h| h.bo.id).collect();
            bos = all_bos
                .iter()
                .filter(|b| privileged || own.contains(&b.id))
                .map(|b| bo_row(b))
                .collect();
        }
        StatsReport {
            daemon: daemon_stats(d, &all_conns, &all_bos),
            connections,
            bos,
            truncated: false,
        }
    }

    /// METRICS: the OpenMetrics text in a sealed memfd. Refused while
    /// earlier replies lie unread ([`Session::check_unread_replies`]).
    pub(super) async fn metrics(&self) -> Outcome {
        self.check_unread_replies("METRICS")?;
        let text = tokio::task::block_in_place(|| crate::metrics::render(&self.daemon));
        let memfd = Memfd::from_bytes("cohmem-metrics", text.as_bytes())
            .map_err(|e| fail(ErrorCode::Kernel, format!("writing the metrics memfd: {e}")))?;
        let fd = memfd
            .try_clone_fd()
            .map_err(|e| fail(ErrorCode::Kernel, e.to_string()))?;
        Ok((Reply::Metrics { len: text.len() as u64 }, vec![fd]))
    }
}

/// WATCH_DAEMON: a pidfd of this process, so that a client knows for
/// certain when the daemon has exited (its library undoes uffd-sync
/// protection then, and only then).
pub(super) fn watch_daemon() -> Outcome {
    let pidfd = cohmem_sys::pidfd::Pidfd::open(std::process::id() as i32)
        .map_err(|e| fail(ErrorCode::Kernel, format!("a pidfd of the daemon: {e}")))?;
    Ok((Reply::DaemonProcess, vec![pidfd.into()]))
}

/// One connection's STATS row.
fn connection_row(ci: &ConnectionInfo) -> ConnectionRow {
    ConnectionRow {
        id: ci.id,
        pid: ci.pid as u32,
        uid: ci.uid,
        bos: ci.bos.load(Ordering::Relaxed),
        views: ci.views.load(Ordering::Relaxed),
        requests: ci.requests.load(Ordering::Relaxed),
    }
}

/// One BO's STATS row (takes its state lock).
fn bo_row(b: &Bo) -> BoRow {
    let (dirty_pages, method, policy, flags) = {
        let st = b.state();
        let (dirty, method, paused) = st.tracker.as_ref().map_or((0, 0, false), |t| {
            (t.dirty.dirty_pages(), t.method as u16, t.paused.is_some())
        });
        let flags = if paused { BO_ROW_PAUSED } else { 0 };
        (dirty, method, st.policy as u16, flags)
    };
    BoRow {
        id: b.id,
        size: b.size,
        views: b.view_count() as u32,
        dirty_pages,
        syncs: b.counters.syncs.load(Ordering::Relaxed),
        pages_uploaded: b.counters.pages_uploaded.load(Ordering::Relaxed),
        bytes_uploaded: b.counters.bytes_uploaded.load(Ordering::Relaxed),
        method,
        sync_retries: b.counters.sync_retries.load(Ordering::Relaxed),
        sync_exclusive: b.counters.sync_exclusive.load(Ordering::Relaxed),
        policy,
        flags,
    }
}

/// The daemon-wide part of STATS.
fn daemon_stats(d: &Daemon, all_conns: &[Arc<ConnectionInfo>], all_bos: &[Arc<Bo>]) -> DaemonStats {
    let c = &d.counters;
    DaemonStats {
        uptime_ms: d.uptime_ms(),
        connections: all_conns.len() as u32,
        mm_subscriptions: d.mms.live() as u32,
        bos: all_bos.len() as u32,
        views: all_bos.iter().map(|b| b.view_count() as u32).sum(),
        syncs: c.syncs.load(Ordering::Relaxed),
        pages_uploaded: c.pages_uploaded.load(Ordering::Relaxed),
        bytes_uploaded: c.bytes_uploaded.load(Ordering::Relaxed),
        upload_failures: c.upload_failures.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
        method_switches: c.method_switches.load(Ordering::Relaxed),
        extra_pages: c.extra_pages.load(Ordering::Relaxed),
        sync_retries: c.sync_retries.load(Ordering::Relaxed),
        sync_exclusive: c.sync_exclusive.load(Ordering::Relaxed),
        faults: d.faults.faults.load(Ordering::Relaxed),
        backend: format!("{} [{}]", d.gpu.name(), d.gpu_reason),
    }
}
