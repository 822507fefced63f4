//! What a SYNC or TRANSFER reply reports, and the upload counters it
//! accounts into (per BO and daemon-wide).

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use cohmem_proto::limits::MAX_REPORTED_RUNS;
use cohmem_proto::{Mechanism, Run, SyncReport};

use super::{method_of, SyncEngine};
use crate::bo::{Bo, BoState, View};

/// At most [`MAX_REPORTED_RUNS`] of `ranges` as the wire's runs.
pub(super) fn to_runs(ranges: &[Range<u64>]) -> Vec<Run> {
    ranges
        .iter()
        .take(MAX_REPORTED_RUNS)
        .map(|r| Run {
            first_page: r.start as u32,
            pages: (r.end - r.start) as u32,
        })
        .collect()
}

impl SyncEngine<'_> {
    pub(super) fn report(
        &self,
        bo: &Bo,
        st: &BoState,
        views: &[Arc<View>],
        runs: &[Range<u64>],
        t0: Instant,
        with_runs: bool,
    ) -> SyncReport {
        let pages: u64 = runs.iter().map(|r| r.end - r.start).sum();
        let bytes = pages * bo.page_size;
        bo.counters.syncs.fetch_add(1, Ordering::Relaxed);
        bo.counters.pages_uploaded.fetch_add(pages, Ordering::Relaxed);
        bo.counters.bytes_uploaded.fetch_add(bytes, Ordering::Relaxed);
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.counters.pages_uploaded.fetch_add(pages, Ordering::Relaxed);
        self.counters.bytes_uploaded.fetch_add(bytes, Ordering::Relaxed);
        let listed = if with_runs { to_runs(runs) } else { Vec::new() };
        let mechanism = views.first().map_or(Mechanism::None, |v| v.mm.tracker().mechanism());
        SyncReport {
            pages,
            bytes,
            run_count: runs.len() as u32,
            mechanism: mechanism as u16,
            method: method_of(st) as u16,
            runs_truncated: listed.len() < runs.len(),
            duration_ns: t0.elapsed().as_nanos() as u64,
            views_scanned: views.iter().filter(|v| !v.dead.load(Ordering::Relaxed)).count() as u32,
            runs: listed,
            damage: None,
        }
    }
}
