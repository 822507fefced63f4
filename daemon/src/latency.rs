//! The daemon's latency histograms (Prometheus histograms, from the
//! maintained `prometheus-client` crate): kept in the counters of every
//! layer that measures time (syncs, requests, the fault service's batches),
//! rendered by the metrics endpoint (`metrics`). Its own module,
//! below every layer, so that measuring never means naming the server.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

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
