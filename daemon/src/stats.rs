//! Daemon-wide counters reported by STATS, `cohmemctl status` and the
//! metrics endpoint (plain atomics: every layer may count into them).

use std::sync::atomic::AtomicU64;

/// Counters shared by every connection.
#[derive(Debug, Default)]
pub struct DaemonCounters {
    /// Completed syncs.
    pub syncs: AtomicU64,
    /// Pages uploaded.
    pub pages_uploaded: AtomicU64,
    /// Bytes uploaded.
    pub bytes_uploaded: AtomicU64,
    /// Uploads that failed.
    pub upload_failures: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
    /// vmwgfx method switches.
    pub method_switches: AtomicU64,
    /// Pages marked dirty without proof of a write (method switches, views
    /// that could not be scanned): the price of never under-reporting.
    pub extra_pages: AtomicU64,
    /// Sync read sections retried after a collision.
    pub sync_retries: AtomicU64,
    /// Syncs that took the exclusive path.
    pub sync_exclusive: AtomicU64,
    /// Times tracking of a BO paused for dense writes.
    pub dense_pauses: AtomicU64,
    /// Pages of eager (uffd-sync) views found writable without the daemon
    /// knowing (a mapping put back and registered again behind the
    /// library), recorded as written.
    pub unrecorded_writable: AtomicU64,
    /// Latency histograms (metrics).
    pub latency: crate::latency::Latency,
}

/// Background syncs done, and the pages they uploaded.
#[derive(Debug, Default)]
pub struct BackgroundCounters {
    /// Syncs run by the background thread.
    pub syncs: AtomicU64,
    /// Pages they uploaded.
    pub pages: AtomicU64,
}
