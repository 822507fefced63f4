//! Prometheus metrics (issue 7): the daemon's counters, gauges and latency
//! histograms in the OpenMetrics text format (prometheus-client), served over
//! HTTP on `--metrics-listen` and by the METRICS request (`cohmemctl metrics`).
//!
//! The counters are the atomics STATS reports, read at scrape time by a
//! [`Collector`], so a scrape and `cohmemctl status` always agree; the
//! histograms are observed where the work is done (requests, syncs, fault
//! batches). Nothing here is per page or per fault: a fault batch costs one
//! histogram observation.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cohmem_proto::{BoPolicy, Method};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::Daemon;

/// One label (`mechanism`, `request`).
pub type Label = [(&'static str, &'static str); 1];
/// A latency histogram per label value.
pub type LabeledHistogram = Family<Label, Histogram, fn() -> Histogram>;

/// Buckets from 4 µs to 4 s, doubling: a clean sync is tens of
/// microseconds, a full copy of a 4 GiB BO is seconds.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(4e-6, 2.0, 21))
}

/// The daemon's latency histograms.
#[derive(Debug)]
pub struct Latency {
    /// Sync duration as the daemon measured it (scan, transfer, upload), by
    /// the mechanism of the BO's views.
    pub sync: LabeledHistogram,
    /// Request handling time, receive to reply, by request kind.
    pub request: LabeledHistogram,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            sync: Family::new_with_constructor(latency_histogram),
            request: Family::new_with_constructor(latency_histogram),
        }
    }
}

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

/// Most scrapes served at once; a connection beyond them is closed at once.
const MAX_SCRAPES: usize = 4;
/// A scrape that is not over within this (request read, reply written:
/// a client that stops reading included) is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_REQUEST: usize = 8192;

/// Serves `GET /metrics` (and `/`) over HTTP/1.x on `listener` until the
/// runtime stops. Anything else gets a 404 or 405; a slow, stuck or garbage
/// client costs one task and at most [`MAX_REQUEST`] bytes for
/// [`REQUEST_TIMEOUT`], and never keeps the listener from accepting.
pub async fn serve(listener: TcpListener, daemon: Arc<Daemon>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: {MAX_SCRAPES} scrapes in progress; connection closed");
            continue;
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &daemon)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics request failed"),
                Err(_) => tracing::debug!(%peer, "metrics scrape not over in time; dropped"),
            }
            drop(permit);
        });
    }
}

/// Reads one request head and answers it; the connection then closes.
async fn answer(mut stream: TcpStream, daemon: &Arc<Daemon>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return Err(std::io::Error::other("request head too long or cut short"));
        }
        // Only the new bytes (and the 3 before them) can complete the head.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        let tail = &head[from..];
        if tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            // The collector takes every BO's state lock in turn: off the
            // async workers.
            tokio::task::block_in_place(|| render(daemon)),
        ),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "cohmemd: metrics at /metrics\n".to_string(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            format!("no {path}; try /metrics\n"),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_string(),
        ),
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        reply.push_str(&body);
    }
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}
