//! Prometheus metrics (issue 7): the daemon's counters, gauges and latency
//! histograms in the OpenMetrics text format (prometheus-client), served over
//! HTTP on `--metrics-listen` and by the METRICS request (`cohmemctl metrics`).
//!
//! The counters are the atomics STATS reports, read at scrape time by a
//! [`Collector`], so a scrape and `cohmemctl status` always agree; the
//! histograms are observed where the work is done (requests, syncs, fault
//! batches). Nothing here is per page or per fault: a fault batch costs one
//! histogram observation.
//!
//! The HTTP side, [`serve`] in the `http` submodule, is hyper, which replaced
//! a hand-written HTTP/1.x answerer (issue 18 item 4), behind a connection
//! cap and a deadline.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::{BoPolicy, Method};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::latency::Label;
use crate::server::Daemon;

mod http;

pub use http::serve;

/// The text a scrape returns: every metric of `daemon`, OpenMetrics text
/// ending in `# EOF`.
pub fn render(daemon: &Arc<Daemon>) -> String {
    let mut registry = Registry::with_prefix("cohmem");
    registry.register_with_unit(
        "sync_duration",
        "Time the daemon spent on a sync: scan, transfer and upload",
        Unit::Seconds,
        daemon.counters.latency.sync.clone(),
    );
    registry.register_with_unit(
        "request_duration",
        "Time from receiving a request to its reply being ready",
        Unit::Seconds,
        daemon.counters.latency.request.clone(),
    );
    registry.register_with_unit(
        "fault_batch_duration",
        "Time to record and resolve one batch of uffd-sync write faults",
        Unit::Seconds,
        daemon.faults.batch_seconds.clone(),
    );
    registry.register_collector(Box::new(DaemonCollector(daemon.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        // Only a fmt::Write into a String: cannot fail in practice.
        tracing::warn!(error = %e, "encoding metrics failed");
        let _ = writeln!(out, "# EOF");
    }
    out
}

/// Reads the daemon's counters and live objects at scrape time.
struct DaemonCollector(Arc<Daemon>);

impl std::fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DaemonCollector")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<Unit>, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, unit.as_ref(), c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<Unit>, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)
}

/// A gauge with one label, a sample per `(value, count)`.
fn labeled_gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    samples: &[(&'static str, i64)],
) -> std::fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for &(value, n) in samples {
        let labels: Label = [(label, value)];
        ConstGauge::new(n).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for DaemonCollector {
    // One call per metric, in the order of the README's metrics list: a
    // table rather than logic, kept in one place so a metric's name, help
    // and source read side by side.
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let d = &self.0;
        let c = &d.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut enc;
        counter(e, "syncs", "Completed syncs", None, get(&c.syncs))?;
        counter(
            e,
            "pages_uploaded",
            "Pages uploaded to GPU resources",
            None,
            get(&c.pages_uploaded),
        )?;
        counter(
            e,
            "uploaded",
            "Bytes uploaded to GPU resources",
            Some(Unit::Bytes),
            get(&c.bytes_uploaded),
        )?;
        counter(
            e,
            "upload_failures",
            "Uploads that failed (their pages stay dirty)",
            None,
            get(&c.upload_failures),
        )?;
        counter(
            e,
            "error_replies",
            "Requests answered with an error",
            None,
            get(&c.errors),
        )?;
        counter(
            e,
            "method_switches",
            "vmwgfx tracking method switches (MKWRITE <-> PAGETABLE)",
            None,
            get(&c.method_switches),
        )?;
        counter(
            e,
            "extra_pages",
            "Pages marked dirty without proof of a write (never under-report)",
            None,
            get(&c.extra_pages),
        )?;
        counter(
            e,
            "unrecorded_writable_pages",
            "Pages of uffd-sync views found writable without a fault (mapped again behind the library), recorded as written",
            None,
            get(&c.unrecorded_writable),
        )?;
        counter(
            e,
            "sync_retries",
            "Sync read sections retried after a collision with a view change",
            None,
            get(&c.sync_retries),
        )?;
        counter(
            e,
            "exclusive_syncs",
            "Syncs that took the exclusive path",
            None,
            get(&c.sync_exclusive),
        )?;
        counter(
            e,
            "dense_pauses",
            "Times tracking of a BO paused for dense writes",
            None,
            get(&c.dense_pauses),
        )?;
        counter(
            e,
            "faults",
            "uffd-sync write-protect faults resolved by the daemon",
            None,
            get(&d.faults.faults),
        )?;
        counter(
            e,
            "background_syncs",
            "Syncs done by the background upload",
            None,
            get(&d.background.syncs),
        )?;
        counter(
            e,
            "background_pages",
            "Pages uploaded by the background upload",
            None,
            get(&d.background.pages),
        )?;
        if let Some(display) = &d.display {
            let dc = &display.counters;
            counter(
                e,
                "display_commits",
                "Damage commits sent to the display device",
                None,
                get(&dc.commits),
            )?;
            counter(
                e,
                "display_clips",
                "Clip rectangles in display damage commits",
                None,
                get(&dc.clips),
            )?;
            counter(
                e,
                "display_commit_failures",
                "Display damage commits that failed (their rectangles are kept)",
                None,
                get(&dc.failures),
            )?;
            counter(
                e,
                "display_commit_nanoseconds",
                "Time spent in display damage commits, nanoseconds",
                None,
                get(&dc.commit_ns),
            )?;
        }

        let bos = d.bos.all();
        let (mut dirty, mut bytes, mut paused) = (0u64, 0u64, 0i64);
        let mut by_method = [("none", 0i64), ("pagetable", 0), ("mkwrite", 0)];
        let mut by_policy = BoPolicy::ALL.map(|p| (p.name(), 0i64));
        for b in &bos {
            bytes += b.size;
            let st = b.state();
            by_policy[st.policy as usize].1 += 1;
            let method = st.tracker.as_ref().map_or(Method::None, |t| t.method);
            by_method[method as usize].1 += 1;
            if let Some(t) = st.tracker.as_ref() {
                dirty += t.dirty.dirty_pages();
                paused += i64::from(t.paused.is_some());
            }
        }
        let connections = d.connections().len() as i64;
        let views: i64 = bos.iter().map(|b| b.view_count() as i64).sum();
        gauge(e, "connections", "Open client connections", None, connections)?;
        gauge(
            e,
            "client_processes",
            "Client processes with write tracking attached",
            None,
            d.mms.live() as i64,
        )?;
        gauge(e, "bos", "Live buffer objects", None, bos.len() as i64)?;
        gauge(e, "bo", "Bytes of live buffer objects", Some(Unit::Bytes), bytes as i64)?;
        gauge(e, "views", "Client mappings of BOs", None, views)?;
        gauge(
            e,
            "dirty_pages",
            "Pages recorded written and not uploaded yet",
            None,
            dirty as i64,
        )?;
        gauge(
            e,
            "paused_bos",
            "BOs whose tracking is paused (every sync uploads the whole BO)",
            None,
            paused,
        )?;
        labeled_gauge(
            e,
            "bos_by_method",
            "Live BOs by vmwgfx tracking method",
            "method",
            &by_method,
        )?;
        labeled_gauge(
            e,
            "bos_by_policy",
            "Live BOs by operator policy (set-policy)",
            "policy",
            &by_policy,
        )?;
        gauge(
            e,
            "uptime",
            "Seconds since the daemon started",
            Some(Unit::Seconds),
            (d.uptime_ms() / 1000) as i64,
        )?;
        Ok(())
    }
}
