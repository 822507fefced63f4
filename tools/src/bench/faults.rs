//! Write overhead (target 3): the latency of the first store to a page after
//! a sync. Under uffd-async it is a write-protect fault the kernel resolves
//! itself, compared with the same fault in a plain process
//! ([`super::floor::fault_floor`]); under uffd-sync it is a round trip to the
//! daemon's fault thread, measured with 1 and 4 threads faulting at once.

use std::sync::Barrier;
use std::time::Instant;

use cohmem_client::{Bo, Mapping};
use serde::Serialize;

use super::pattern::{pick_pages, Layout};
use super::stats::{nanos, Summary};
use crate::SplitMix64;

/// Per-store latencies of first writes after a sync.
#[derive(Debug, Clone, Serialize)]
pub struct FaultResult {
    /// Mechanism of the daemon.
    pub mechanism: String,
    /// Threads faulting at once.
    pub threads: usize,
    /// BO size in bytes.
    pub size: u64,
    /// Latency of one first store (nanoseconds).
    pub latency: Summary,
}

/// `passes` rounds of: `threads` threads each store once into `per_thread`
/// distinct pages (disjoint between threads), each store timed, all threads
/// released together; then a sync re-protects. The first `warmup` passes
/// are not counted.
pub fn first_write_latencies(
    bo: &Bo,
    map: &Mapping,
    threads: usize,
    per_thread: u64,
    passes: usize,
    warmup: usize,
    rng: &mut SplitMix64,
) -> anyhow::Result<Summary> {
    let ps = cohmem_sys::page_size() as usize;
    let n = bo.size() / ps as u64;
    let mut all = Vec::new();
    for pass in 0..passes + warmup {
        let pages = pick_pages(rng, n, per_thread * threads as u64, Layout::Scattered);
        let shares = interleaved_shares(&pages, threads);
        let got = timed_stores(&shares, |p| Ok(map.write_u64(p as usize * ps, pass as u64)?))?;
        bo.sync()?;
        if pass >= warmup {
            all.extend(got.into_iter().flatten());
        }
    }
    Ok(Summary::of_ns(all))
}

/// `pages` dealt to `threads` threads in turn: each thread's pages spread
/// over the whole range.
pub fn interleaved_shares(pages: &[u64], threads: usize) -> Vec<Vec<u64>> {
    (0..threads)
        .map(|t| pages.iter().skip(t).step_by(threads).copied().collect())
        .collect()
}

/// One thread per share, all released together; each times `store(page)`
/// for every page of its share, one at a time. Returns the latencies (ns)
/// per thread.
pub fn timed_stores(
    shares: &[Vec<u64>],
    store: impl Fn(u64) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<Vec<Vec<u64>>> {
    let barrier = Barrier::new(shares.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| {
                let (barrier, store) = (&barrier, &store);
                s.spawn(move || -> anyhow::Result<Vec<u64>> {
                    let mut lat = Vec::with_capacity(share.len());
                    barrier.wait();
                    for &p in share {
                        let t = Instant::now();
                        store(p)?;
                        lat.push(nanos(t.elapsed()));
                    }
                    Ok(lat)
                })
            })
            .collect();
        super::join_writers(handles)
    })
}
