//! `cohmem-bench`: sync cost against dirty density for every write-tracking
//! mechanism, with the baselines measured in the same run (issue 6).
//!
//! * [`floor`]: the kernel floor in this process, no daemon (WP_ASYNC fault,
//!   in-process `PAGEMAP_SCAN` harvest, memcpy of the dirty runs);
//! * [`sync`]: scenarios through a private daemon per mechanism (`auto`,
//!   `uffd-async`, `uffd-sync`, `soft-dirty` where the kernel can, `full`
//!   copy and `explicit` damage as baselines);
//! * [`ipc_floor`]: one SYNC-sized request/reply between two processes,
//!   no daemon (what any round trip costs here);
//! * [`animation`]: the 1920x1080 animation (sprite + ticker) per mechanism;
//! * [`faults`]: first-write latency after a sync (target 3);
//! * [`scale`]: many client processes against one daemon (target 5);
//! * [`report`]: the table, the target lines, JSON and the SVG plot;
//! * [`pattern`], [`stats`]: what is written, and medians/percentiles.
//!
//! Every figure is a median over repetitions after warm-up (the vmwgfx
//! method policy needs 3 syncs to settle), every ratio is between figures
//! measured in the same run.

pub mod animation;
pub mod faults;
pub mod floor;
pub mod ipc_floor;
pub mod pattern;
pub mod report;
pub mod scale;
pub mod shadow_target;
pub mod stats;
pub mod sync;
pub mod sync_floor;

use std::time::{Duration, Instant};

use cohmem_sys::probe::probe_all;
use serde::Serialize;

use self::pattern::{Density, Layout};
use self::stats::Summary;
use crate::SplitMix64;

/// Repetitions of one scenario: `warmup` unmeasured, then at least `min`
/// and at most `max` measured ones, stopping after `min` once `budget` has
/// passed since the scenario started.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Reps {
    /// Unmeasured repetitions first.
    pub warmup: usize,
    /// Fewest measured repetitions.
    pub min: usize,
    /// Most measured repetitions.
    pub max: usize,
    /// Time after which no more than `min` are run.
    pub budget: Duration,
}

impl Reps {
    /// Whether repetition `rep` (0-based, warm-up included) should not run.
    pub fn done(&self, rep: usize, started: Instant) -> bool {
        rep >= self.warmup + self.max || (rep >= self.warmup + self.min && started.elapsed() >= self.budget)
    }

    /// The plan for a BO of `size` bytes.
    pub fn for_size(size: u64, quick: bool) -> Self {
        match (quick, size >= 1 << 30) {
            (true, _) => Self {
                warmup: 3,
                min: 5,
                max: 101,
                budget: Duration::from_millis(150),
            },
            (false, false) => Self {
                warmup: 3,
                min: 7,
                max: 301,
                budget: Duration::from_millis(600),
            },
            (false, true) => Self {
                warmup: 3,
                min: 5,
                max: 21,
                budget: Duration::from_secs(2),
            },
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The reduced run (CI): no 1 GiB BO, fewer repetitions, 10 scale clients.
    pub quick: bool,
    /// Only these mechanisms (default: every one the kernel has, plus auto).
    pub mechanisms: Option<Vec<String>>,
    /// Scale clients (default: 100, 10 with `quick`).
    pub scale_clients: Option<usize>,
    /// Skip the scale scenario.
    pub no_scale: bool,
    /// RNG seed.
    pub seed: u64,
}

/// A mechanism left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Mechanism.
    pub mechanism: String,
    /// Why.
    pub reason: String,
}

/// A clean sync through the daemon (nothing written since the last one).
#[derive(Debug, Clone, Serialize)]
pub struct CleanSync {
    /// Mechanism.
    pub mechanism: String,
    /// BO size.
    pub size: u64,
    /// Round trip.
    pub wall: Summary,
    /// Daemon-reported time.
    pub daemon: Summary,
    /// Most pages one clean sync uploaded.
    pub uploaded_max: u64,
    /// Syncs without writes, after the density scenarios (the last ones
    /// dense), that still uploaded pages: tracking paused for dense writes
    /// uploads the whole BO until a probe finds the writes gone.
    pub settle_syncs: u64,
}

/// In-process harvest of a clean range.
#[derive(Debug, Clone, Serialize)]
pub struct CleanFloor {
    /// Range size.
    pub size: u64,
    /// PAGEMAP_SCAN harvest time.
    pub scan: Summary,
}

/// First-write latencies (target 3).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Faults {
    /// BO / range size used.
    pub size: u64,
    /// Stores timed per pass and thread.
    pub per_pass: u64,
    /// In-process WP_ASYNC fault (kernel floor).
    pub floor_fault: Summary,
    /// In-process store to a writable page (no fault), for scale.
    pub floor_plain: Summary,
    /// Through cohmem with uffd-async, 1 thread.
    pub uffd_async_1: Option<Summary>,
    /// Through cohmem with uffd-async, 4 threads at once.
    pub uffd_async_4: Option<Summary>,
    /// Through cohmem with uffd-sync (daemon round trip), 1 thread.
    pub uffd_sync_1: Option<Summary>,
    /// Same, 4 threads faulting at once.
    pub uffd_sync_4: Option<Summary>,
    /// Synchronous fault resolved by a minimal in-process handler thread
    /// (the floor of a uffd-sync round trip), 1 thread.
    pub sync_floor_1: Option<Summary>,
    /// Same, 4 threads faulting at once.
    pub sync_floor_4: Option<Summary>,
}

/// Joins scoped writer threads; a panicked one is an error.
pub fn join_writers<T>(handles: Vec<std::thread::ScopedJoinHandle<'_, anyhow::Result<T>>>) -> anyhow::Result<Vec<T>> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("writer thread panicked")))
        })
        .collect()
}

/// SYNCs sent a while after the last write, with background upload on.
#[derive(Debug, Clone, Serialize)]
pub struct Background {
    /// BO size.
    pub size: u64,
    /// `--background-upload-us`.
    pub interval_us: u64,
    /// Wait between the last write and the SYNC, ms.
    pub idle_ms: u64,
    /// Pages written per repetition (0.1 %, scattered).
    pub dirty_pages: u64,
    /// The SYNC round trip.
    pub sync: Summary,
    /// Most pages a SYNC still uploaded itself.
    pub left_max: u64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `--quick`.
    pub quick: bool,
    /// `uname -r`.
    pub kernel: String,
    /// CPUs online.
    pub cpus: usize,
    /// Seed.
    pub seed: u64,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
    /// Mechanisms measured.
    pub mechanisms: Vec<String>,
    /// Mechanisms left out.
    pub skipped: Vec<Skipped>,
    /// BO sizes.
    pub sizes: Vec<u64>,
    /// Writer thread counts.
    pub threads: Vec<usize>,
    /// Repetition plans by size.
    pub reps: Vec<(u64, Reps)>,
    /// Kernel floor per (size, density, layout).
    pub floor: Vec<floor::FloorCell>,
    /// Kernel floor of a clean harvest per size.
    pub floor_clean: Vec<CleanFloor>,
    /// One SYNC-sized request/reply between two processes.
    pub ipc_floor: Option<ipc_floor::IpcFloor>,
    /// Daemon scenarios.
    pub cells: Vec<sync::SyncCell>,
    /// The 1080p animation per mechanism.
    pub animation: Vec<animation::AnimationCell>,
    /// Clean syncs per (mechanism, size).
    pub clean: Vec<CleanSync>,
    /// First-write latencies.
    pub faults: Faults,
    /// The scale scenario.
    pub scale: Option<scale::ScaleResult>,
    /// The background-upload scenario.
    pub background: Option<Background>,
    /// The targets.
    pub targets: Vec<report::Target>,
}

/// Every mechanism the daemon knows, in table order.
pub const MECHANISMS: [&str; 7] = [
    "auto",
    "uffd-async",
    "uffd-sync",
    "soft-dirty",
    "full",
    "shadow",
    "explicit",
];

/// Progress on stderr, with the time since the start.
fn note(start: Instant, what: impl std::fmt::Display) {
    eprintln!("[{:6.1}s] {what}", start.elapsed().as_secs_f64());
}

/// Runs the bench.
pub fn run(cfg: &BenchConfig) -> anyhow::Result<Report> {
    let start = Instant::now();
    let caps = probe_all();
    let mut rng = SplitMix64::new(cfg.seed);
    let mut skipped = Vec::new();
    let mut mechanisms = Vec::new();
    for m in MECHANISMS {
        if cfg.mechanisms.as_ref().is_some_and(|only| !only.iter().any(|o| o == m)) {
            continue;
        }
        let lacking = match m {
            "uffd-async" if !caps.uffd_async.ok => Some(caps.uffd_async.detail.clone()),
            "uffd-sync" if !caps.uffd_sync.ok => Some(caps.uffd_sync.detail.clone()),
            "uffd-sync" if !caps.uffd_all_faults.ok => Some(format!(
                "no userfaultfd handling kernel faults: {}",
                caps.uffd_all_faults.detail
            )),
            "soft-dirty" if !caps.soft_dirty.ok => {
                Some(format!("soft-dirty does not work here: {}", caps.soft_dirty.detail))
            }
            "soft-dirty" => {
                let p = caps.soft_dirty_quiesce();
                (!p.ok).then_some(p.detail)
            }
            _ => None,
        };
        match lacking {
            Some(reason) => {
                note(start, format_args!("skipping {m}: {reason}"));
                skipped.push(Skipped {
                    mechanism: m.to_string(),
                    reason,
                });
            }
            None => mechanisms.push(m.to_string()),
        }
    }
    let sizes: Vec<u64> = if cfg.quick {
        vec![64 << 10, 4 << 20, 64 << 20]
    } else {
        vec![64 << 10, 4 << 20, 64 << 20, 1 << 30]
    };
    let threads = vec![1usize, 4];

    // The kernel floor, per size.
    let (mut floor_cells, mut floor_clean) = (Vec::new(), Vec::new());
    if caps.uffd_async.ok {
        for &size in &sizes {
            note(start, format_args!("kernel floor, {}", report::size_label(size)));
            let reps = Reps::for_size(size, cfg.quick);
            let rig = floor::FloorRig::new(size)?;
            for density in Density::ALL {
                for layout in Layout::ALL {
                    floor_cells.push(floor::measure_cell(&rig, density, layout, &reps, &mut rng)?);
                }
            }
            floor_clean.push(CleanFloor {
                size,
                scan: floor::clean_scans(&rig, &reps)?,
            });
        }
    } else {
        note(start, "no kernel floor: this kernel has no WP_ASYNC + PAGEMAP_SCAN");
    }

    note(start, "IPC floor");
    let ipc_floor = Some(ipc_floor::measure(200, if cfg.quick { 2000 } else { 20000 })?);

    // Every mechanism through its own private daemon.
    let (mut cells, mut clean, mut anim) = (Vec::new(), Vec::new(), Vec::new());
    for m in &mechanisms {
        let session = sync::Session::start(m)?;
        note(start, format_args!("{m}, 1080p animation"));
        anim.push(animation::measure(&session, animation::frames(cfg.quick))?);
        for &size in &sizes {
            note(start, format_args!("{m}, {}", report::size_label(size)));
            let reps = Reps::for_size(size, cfg.quick);
            let (bo, map) = session.populated_bo(size)?;
            for density in Density::ALL {
                for layout in Layout::ALL {
                    for &t in &threads {
                        cells.push(sync::measure_cell(
                            &session, &bo, &map, density, layout, t, &reps, &mut rng,
                        )?);
                    }
                }
            }
            // `full` uploads the whole BO at every sync by definition.
            let settle_syncs = if m == "full" || m == "shadow" {
                0
            } else {
                sync::settle(&bo)?
            };
            let (wall, daemon, uploaded_max) = sync::clean_syncs(&bo, &reps)?;
            clean.push(CleanSync {
                mechanism: m.clone(),
                size,
                wall,
                daemon,
                uploaded_max,
                settle_syncs,
            });
        }
    }

    // Background upload (target 6): the SYNC 2 ms after the last write.
    let background = if mechanisms.iter().any(|m| m == "auto") {
        let size = if cfg.quick { 64 << 20 } else { 1 << 30 };
        note(start, format_args!("background upload, {}", report::size_label(size)));
        let session = sync::Session::start_with("auto", &["--background-upload-us", "500"])?;
        let (bo, map) = session.populated_bo(size)?;
        let reps = Reps::for_size(size, cfg.quick);
        let idle = Duration::from_millis(2);
        let (sync, left_max, dirty_pages) =
            sync::background_syncs(&bo, &map, Density::Fraction(0.001), idle, &reps, &mut rng)?;
        Some(Background {
            size,
            interval_us: 500,
            idle_ms: 2,
            dirty_pages,
            sync,
            left_max,
        })
    } else {
        None
    };

    // First-write latency.
    let fault_size = 64u64 << 20;
    let per_pass = 1024u64;
    let passes = if cfg.quick { 4 } else { 16 };
    let mut faults = Faults {
        size: fault_size,
        per_pass,
        ..Faults::default()
    };
    if caps.uffd_async.ok {
        note(start, "first-write latency: kernel floor");
        let rig = floor::FloorRig::new(fault_size)?;
        let (fault, plain) = floor::fault_floor(&rig, per_pass, passes, &mut rng)?;
        faults.floor_fault = Summary::of_ns(fault);
        faults.floor_plain = Summary::of_ns(plain);
    }
    if mechanisms.iter().any(|x| x == "uffd-sync") {
        note(
            start,
            "first-write latency: synchronous fault floor (in-process handler)",
        );
        faults.sync_floor_1 = Some(sync_floor::sync_fault_floor(
            fault_size, 1, per_pass, passes, 1, &mut rng,
        )?);
        faults.sync_floor_4 = Some(sync_floor::sync_fault_floor(
            fault_size, 4, per_pass, passes, 1, &mut rng,
        )?);
    }
    for m in ["uffd-async", "uffd-sync"] {
        if !mechanisms.iter().any(|x| x == m) {
            continue;
        }
        note(start, format_args!("first-write latency: {m}"));
        let session = sync::Session::start(m)?;
        let (bo, map) = session.populated_bo(fault_size)?;
        let one = faults::first_write_latencies(&bo, &map, 1, per_pass, passes, 1, &mut rng)?;
        let four = faults::first_write_latencies(&bo, &map, 4, per_pass, passes, 1, &mut rng)?;
        if m == "uffd-async" {
            faults.uffd_async_1 = Some(one);
            faults.uffd_async_4 = Some(four);
        } else {
            faults.uffd_sync_1 = Some(one);
            faults.uffd_sync_4 = Some(four);
        }
    }

    // Scale.
    let scale = if cfg.no_scale {
        None
    } else {
        let scfg = scale::ScaleConfig {
            clients: cfg.scale_clients.unwrap_or(if cfg.quick { 10 } else { 100 }),
            bos: 10,
            size: 4 << 20,
            density: 0.01,
            rate: 60.0,
            seconds: if cfg.quick { 4.0 } else { 10.0 },
        };
        note(
            start,
            format_args!("scale: {} clients x {} BOs of 4 MiB", scfg.clients, scfg.bos),
        );
        Some(scale::run(&scfg)?)
    };

    let mut report = Report {
        quick: cfg.quick,
        kernel: caps.kernel.clone(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        seed: cfg.seed,
        wall_seconds: 0.0,
        mechanisms,
        skipped,
        reps: sizes.iter().map(|&s| (s, Reps::for_size(s, cfg.quick))).collect(),
        sizes,
        threads,
        floor: floor_cells,
        floor_clean,
        ipc_floor,
        cells,
        animation: anim,
        clean,
        faults,
        scale,
        background,
        targets: Vec::new(),
    };
    report.targets = report::targets(&report);
    report.wall_seconds = start.elapsed().as_secs_f64();
    note(start, "done");
    Ok(report)
}
