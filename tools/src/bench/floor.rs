//! The kernel floor, measured in this process with no daemon: a memfd
//! mapping registered with a `WP_ASYNC` userfaultfd (the write-protect fault
//! is resolved in the kernel), an in-process `PAGEMAP_SCAN` harvest
//! (`PM_SCAN_WP_MATCHING`: report and re-protect in one walk) of the same
//! range, and a memcpy of exactly the harvested runs into a second memfd
//! mapping standing in for the GPU resource. Everything goes through the
//! cohmem-sys wrappers; shared memory is written only with
//! [`SharedMapping`] copies.

use std::ops::Range;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::Memfd;
use cohmem_sys::pagemap::{PagemapFile, ScanQuery};
use cohmem_sys::uffd::{features, UffdFlavor, Userfaultfd};
use serde::Serialize;

use super::pattern::{pick_pages, Density, Layout};
use super::stats::{nanos, Summary};
use super::Reps;
use crate::SplitMix64;

/// A write-protected source range and its "GPU" copy, in this process.
pub struct FloorRig {
    // The memfds outlive the mappings' use; kept for clarity of ownership.
    _src_fd: Memfd,
    _dst_fd: Memfd,
    src: SharedMapping,
    dst: SharedMapping,
    uffd: Userfaultfd,
    pagemap: PagemapFile,
    size: u64,
    page: u64,
}

impl FloorRig {
    /// Maps two memfds of `size` bytes, registers the source with a
    /// `WP_ASYNC` uffd, populates both (so that faults measured later are
    /// write-protect faults, not page allocations) and protects the source.
    pub fn new(size: u64) -> anyhow::Result<Self> {
        let page = cohmem_sys::page_size();
        let src_fd = Memfd::create_sealed("cohmem-bench-floor-src", size)?;
        let dst_fd = Memfd::create_sealed("cohmem-bench-floor-dst", size)?;
        let src = SharedMapping::map(src_fd.as_fd(), size, 0, true)?;
        let dst = SharedMapping::map(dst_fd.as_fd(), size, 0, true)?;
        let (uffd, _) = Userfaultfd::open(
            UffdFlavor::UserModeOnly,
            features::WP_ASYNC | features::WP_UNPOPULATED | features::WP_HUGETLBFS_SHMEM,
            features::WP_ASYNC | features::WP_HUGETLBFS_SHMEM,
        )
        .context("a WP_ASYNC userfaultfd for the kernel floor")?;
        uffd.register_wp(src.addr(), size)?;
        let pagemap = PagemapFile::open_self()?;
        let len = usize::try_from(size).context("floor size")?;
        src.fill(0, len, 0x5a)?;
        src.copy_to(0, &dst, 0, len)?;
        let rig = Self {
            _src_fd: src_fd,
            _dst_fd: dst_fd,
            src,
            dst,
            uffd,
            pagemap,
            size,
            page,
        };
        rig.protect_all()?;
        Ok(rig)
    }

    /// Pages in the range.
    pub fn pages(&self) -> u64 {
        self.size / self.page
    }

    /// Write-protects the whole source range.
    pub fn protect_all(&self) -> anyhow::Result<()> {
        Ok(self.uffd.write_protect(self.src.addr(), self.size, true)?)
    }

    /// Rewrites every byte of `pages` (one `memset` a page); returns the time.
    pub fn write_pages(&self, pages: &[u64], byte: u8) -> anyhow::Result<Duration> {
        let ps = self.page as usize;
        let t = Instant::now();
        for &p in pages {
            self.src.fill(p as usize * ps, ps, byte)?;
        }
        Ok(t.elapsed())
    }

    /// The first write (one aligned u64) to each of `pages`, each timed on
    /// its own, in nanoseconds.
    pub fn timed_writes(&self, pages: &[u64], value: u64) -> anyhow::Result<Vec<u64>> {
        let ps = self.page as usize;
        let mut out = Vec::with_capacity(pages.len());
        for &p in pages {
            let t = Instant::now();
            self.src.write_u64(p as usize * ps, value)?;
            out.push(nanos(t.elapsed()));
        }
        Ok(out)
    }

    /// `PAGEMAP_SCAN` harvest (report written pages and re-protect them) of
    /// the whole range; the runs found are put in `out` (offsets in the range).
    pub fn harvest(&self, out: &mut Vec<Range<u64>>) -> anyhow::Result<Duration> {
        out.clear();
        let base = self.src.addr();
        let t = Instant::now();
        self.pagemap
            .scan(base..base + self.size, ScanQuery::HARVEST_WRITTEN, out)?;
        let d = t.elapsed();
        for r in out.iter_mut() {
            *r = r.start - base..r.end - base;
        }
        Ok(d)
    }

    /// Copies `runs` (offsets) from the source into the "GPU" mapping.
    pub fn copy(&self, runs: &[Range<u64>]) -> anyhow::Result<Duration> {
        let t = Instant::now();
        for r in runs {
            self.src.copy_to(
                r.start as usize,
                &self.dst,
                r.start as usize,
                (r.end - r.start) as usize,
            )?;
        }
        Ok(t.elapsed())
    }
}

/// The floor for one (size, density, layout).
#[derive(Debug, Clone, Serialize)]
pub struct FloorCell {
    /// Range size in bytes.
    pub size: u64,
    /// Density label.
    pub density: String,
    /// Pages written per repetition.
    pub dirty_pages: u64,
    /// Pages in the range.
    pub total_pages: u64,
    /// Layout.
    pub layout: Layout,
    /// Rewriting the dirty pages (one thread, WP_ASYNC faults included).
    pub write: Summary,
    /// In-process PAGEMAP_SCAN harvest of the whole range.
    pub harvest: Summary,
    /// memcpy of the harvested runs.
    pub copy: Summary,
    /// harvest + copy, per repetition: the floor a sync is compared with.
    pub sync: Summary,
    /// write + harvest + copy, per repetition.
    pub total: Summary,
    /// Fewest pages one harvest reported (must equal `dirty_pages`).
    pub harvested_min: u64,
}

/// Measures the floor of one (density, layout) on `rig`.
pub fn measure_cell(
    rig: &FloorRig,
    density: Density,
    layout: Layout,
    reps: &Reps,
    rng: &mut SplitMix64,
) -> anyhow::Result<FloorCell> {
    let n = rig.pages();
    let k = density.pages_of(n);
    let (mut write, mut harvest, mut copy, mut sync, mut total) = (vec![], vec![], vec![], vec![], vec![]);
    let mut harvested_min = u64::MAX;
    let mut runs = Vec::new();
    let started = Instant::now();
    for rep in 0.. {
        if reps.done(rep, started) {
            break;
        }
        let pages = pick_pages(rng, n, k, layout);
        let w = rig.write_pages(&pages, rep as u8)?;
        let h = rig.harvest(&mut runs)?;
        let c = rig.copy(&runs)?;
        if rep >= reps.warmup {
            let got: u64 = runs.iter().map(|r| (r.end - r.start) / rig.page).sum();
            harvested_min = harvested_min.min(got);
            write.push(w);
            harvest.push(h);
            copy.push(c);
            sync.push(h + c);
            total.push(w + h + c);
        }
    }
    Ok(FloorCell {
        size: rig.size,
        density: density.label(),
        dirty_pages: k,
        total_pages: n,
        layout,
        write: Summary::of(&write),
        harvest: Summary::of(&harvest),
        copy: Summary::of(&copy),
        sync: Summary::of(&sync),
        total: Summary::of(&total),
        harvested_min,
    })
}

/// Harvests of the clean (fully protected, nothing written) range.
pub fn clean_scans(rig: &FloorRig, reps: &Reps) -> anyhow::Result<Summary> {
    let mut runs = Vec::new();
    let mut out = Vec::new();
    let started = Instant::now();
    for rep in 0.. {
        if reps.done(rep, started) {
            break;
        }
        let d = rig.harvest(&mut runs)?;
        anyhow::ensure!(runs.is_empty(), "a clean range harvested {} runs", runs.len());
        if rep >= reps.warmup {
            out.push(d);
        }
    }
    Ok(Summary::of(&out))
}

/// First-write latency floor: per-write timings of the first store to
/// `count` scattered pages after a protect, and of a store to the same pages
/// once they are writable again (no fault), over `passes` passes.
pub fn fault_floor(
    rig: &FloorRig,
    count: u64,
    passes: usize,
    rng: &mut SplitMix64,
) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let (mut faulting, mut plain) = (Vec::new(), Vec::new());
    for pass in 0..passes {
        let pages = pick_pages(rng, rig.pages(), count, Layout::Scattered);
        rig.protect_all()?;
        faulting.extend(rig.timed_writes(&pages, pass as u64)?);
        plain.extend(rig.timed_writes(&pages, pass as u64 + 1)?);
    }
    rig.protect_all()?;
    Ok((faulting, plain))
}
