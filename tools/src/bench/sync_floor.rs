//! The floor of a synchronous write-protect fault round trip (target 3),
//! measured in this process with no daemon: a memfd mapping registered with
//! a synchronous (not `WP_ASYNC`) userfaultfd, and one handler thread that
//! waits in `poll(2)`, reads the fault messages and unprotects each page
//! (`UFFDIO_WRITEPROTECT` mode 0, which wakes the writer) — nothing else: no
//! lookup, no lock, no bookkeeping. Writer threads time their first store to
//! each page exactly as [`super::faults::first_write_latencies`] does through
//! the daemon, so the two can be compared in one run.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::Memfd;
use cohmem_sys::uffd::{features, UffdFlavor, Userfaultfd, WpFault};
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::faults::{interleaved_shares, timed_stores};
use super::pattern::{pick_pages, Layout};
use super::stats::Summary;
use crate::SplitMix64;

/// Per-store latencies of `threads` threads each storing once into
/// `per_thread` scattered pages of a `size`-byte protected range, over
/// `passes` passes (the first `warmup` not counted), every fault resolved by
/// the minimal in-process handler.
pub fn sync_fault_floor(
    size: u64,
    threads: usize,
    per_thread: u64,
    passes: usize,
    warmup: usize,
    rng: &mut SplitMix64,
) -> anyhow::Result<Summary> {
    let ps = cohmem_sys::page_size();
    let fd = Memfd::create_sealed("cohmem-bench-sync-floor", size)?;
    let map = SharedMapping::map(fd.as_fd(), size, 0, true)?;
    let (uffd, _) = Userfaultfd::open(
        UffdFlavor::UserModeOnly,
        features::WP_HUGETLBFS_SHMEM | features::WP_UNPOPULATED,
        features::WP_HUGETLBFS_SHMEM,
    )
    .context("a synchronous write-protect userfaultfd for the fault floor")?;
    uffd.register_wp(map.addr(), size)?;
    map.fill(0, usize::try_from(size)?, 0x5a)?;
    let n = size / ps;
    let stop = AtomicBool::new(false);
    let mut all = Vec::new();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handler = s.spawn(|| handle_faults(&uffd, &stop, ps));
        let result = (|| -> anyhow::Result<()> {
            for pass in 0..passes + warmup {
                uffd.write_protect(map.addr(), size, true)?;
                let pages = pick_pages(rng, n, per_thread * threads as u64, Layout::Scattered);
                let shares = interleaved_shares(&pages, threads);
                let got = timed_stores(&shares, |p| Ok(map.write_u64((p * ps) as usize, pass as u64)?))?;
                if pass >= warmup {
                    all.extend(got.into_iter().flatten());
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        handler
            .join()
            .map_err(|_| anyhow::anyhow!("the fault handler panicked"))??;
        result
    })?;
    // Nothing may be left protected when the mapping goes.
    uffd.write_protect(map.addr(), size, false)?;
    Ok(Summary::of_ns(all))
}

/// The minimal handler: poll, read a batch, unprotect each page.
fn handle_faults(uffd: &Userfaultfd, stop: &AtomicBool, ps: u64) -> anyhow::Result<()> {
    let mut faults: Vec<WpFault> = Vec::with_capacity(64);
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(uffd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::from(20u8)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e).context("poll on the userfaultfd"),
        }
        faults.clear();
        uffd.read_faults(&mut faults)?;
        for f in &faults {
            uffd.write_protect(f.address & !(ps - 1), ps, false)?;
        }
    }
    Ok(())
}
