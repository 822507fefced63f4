//! Presenting a [`Report`]: the table, the target lines (each a ratio of
//! medians measured in the same run, with its goal and MET or MISSED), and
//! the SVG plot of sync cost against dirty density.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use super::floor::FloorCell;
use super::pattern::Layout;
use super::stats::{fmt_ns, ratio, Summary};
use super::sync::SyncCell;
use super::Report;

/// `64 KiB`, `4 MiB`, `1 GiB`.
pub fn size_label(size: u64) -> String {
    if size >= 1 << 30 && size % (1 << 30) == 0 {
        format!("{} GiB", size >> 30)
    } else if size >= 1 << 20 && size % (1 << 20) == 0 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

/// One target's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// 1 to 6.
    pub number: u32,
    /// Short name.
    pub name: String,
    /// The measured ratio (or figure) the goal is about.
    pub measured: Option<f64>,
    /// The goal, in words.
    pub goal: String,
    /// `Some(true)`: met; `Some(false)`: missed; `None`: not measured.
    pub met: Option<bool>,
    /// The figures behind it, one per line.
    pub details: Vec<String>,
}

impl Target {
    /// `target N: <ratio> (goal …) MET|MISSED`.
    pub fn line(&self) -> String {
        let measured = match self.measured {
            Some(v) => format!("{v:.3}"),
            None => "n/a".into(),
        };
        let verdict = match self.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "NOT MEASURED",
        };
        format!("target {}: {measured} (goal {}) {verdict}", self.number, self.goal)
    }
}

fn find_cell<'a>(
    r: &'a Report,
    mechanism: &str,
    size: u64,
    density: &str,
    layout: Layout,
    threads: usize,
) -> Option<&'a SyncCell> {
    r.cells.iter().find(|c| {
        c.mechanism == mechanism && c.size == size && c.density == density && c.layout == layout && c.threads == threads
    })
}

fn find_floor<'a>(r: &'a Report, size: u64, density: &str, layout: Layout) -> Option<&'a FloorCell> {
    r.floor
        .iter()
        .find(|c| c.size == size && c.density == density && c.layout == layout)
}

fn med(s: &Summary) -> String {
    fmt_ns(s.median_ns)
}

/// The largest BO size measured: the sparse and harvest targets' size
/// (1 GiB in the full run; smaller with `--quick`, and labelled so).
fn target_size(r: &Report) -> u64 {
    r.sizes.iter().copied().max().unwrap_or(0)
}

fn size_note(r: &Report, size: u64) -> String {
    if size == 1 << 30 {
        size_label(size)
    } else {
        format!(
            "{} (REDUCED from 1 GiB{})",
            size_label(size),
            if r.quick { " by --quick" } else { "" }
        )
    }
}

/// Computes targets (1)–(7) from the report's figures.
pub fn targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let big = target_size(r);

    // (1) Sparse.
    {
        let auto = find_cell(r, "auto", big, "0.1%", Layout::Scattered, 1);
        let floor = find_floor(r, big, "0.1%", Layout::Scattered);
        let full = find_cell(r, "full", big, "0.1%", Layout::Scattered, 1);
        let explicit = find_cell(r, "explicit", big, "0.1%", Layout::Scattered, 1);
        let mut t = Target {
            number: 1,
            name: "sparse".into(),
            measured: None,
            goal: "auto sync / floor <= 1.5 and full copy / auto sync >= 50".into(),
            met: None,
            details: vec![format!("BO {}, 0.1% scattered, 1 writer thread", size_note(r, big))],
        };
        if let (Some(a), Some(f)) = (auto, floor) {
            let to_floor = ratio(a.sync_cost.median_ns, f.sync.median_ns);
            t.measured = to_floor;
            t.details.push(format!(
                "auto ({}, {}): sync round trip {} (daemon {}); floor: harvest {} + memcpy {} = {} ({} pages)",
                a.effective,
                a.method,
                med(&a.sync_wall),
                med(&a.sync_daemon),
                med(&f.harvest),
                med(&f.copy),
                med(&f.sync),
                f.dirty_pages
            ));
            if let Some(d) = ratio(a.sync_daemon.median_ns, f.sync.median_ns) {
                t.details.push(format!("daemon-side time / floor: {d:.3}"));
            }
            if let Some(ipc) = &r.ipc_floor {
                let bound = ipc.round_trip.median_ns + f.sync.median_ns * 13 / 10;
                t.details.push(format!(
                    "IPC floor ({} B request / {} B reply between two processes, no daemon): {} (p99 {}); \
                     round trip / (IPC floor + 1.3 x floor = {}): {}",
                    ipc.request_bytes,
                    ipc.reply_bytes,
                    med(&ipc.round_trip),
                    fmt_ns(ipc.round_trip.p99_ns),
                    fmt_ns(bound),
                    ratio(a.sync_wall.median_ns, bound).map_or("n/a".into(), |x| format!("{x:.3}"))
                ));
            }
            let speedup = full.and_then(|fc| ratio(fc.sync_cost.median_ns, a.sync_cost.median_ns));
            if let (Some(fc), Some(s)) = (full, speedup) {
                t.details.push(format!(
                    "full copy sync {} = {s:.1}x auto (goal >= 50x)",
                    med(&fc.sync_cost)
                ));
            }
            if let Some(e) = explicit {
                if let Some(x) = ratio(a.sync_cost.median_ns, e.sync_cost.median_ns) {
                    t.details.push(format!(
                        "explicit batched damage ({} pages' runs and the sync in one DAMAGE_RANGES round trip) = {}; auto / explicit: {x:.3}",
                        e.dirty_pages,
                        med(&e.sync_cost)
                    ));
                }
            }
            t.met = match (to_floor, speedup) {
                (Some(x), Some(s)) => Some(x <= 1.5 && s >= 50.0),
                _ => None,
            };
        }
        out.push(t);
    }

    // (2) Dense.
    {
        let size = 64 << 20;
        let mut t = Target {
            number: 2,
            name: "dense".into(),
            measured: None,
            goal: "auto (write + sync) / full copy (write + sync) <= 1.2".into(),
            met: None,
            details: vec!["BO 64 MiB, 100% rewritten every frame, 1 writer thread".into()],
        };
        let auto = find_cell(r, "auto", size, "100%", Layout::Clustered, 1);
        let full = find_cell(r, "full", size, "100%", Layout::Clustered, 1);
        if let (Some(a), Some(f)) = (auto, full) {
            t.measured = ratio(a.total.median_ns, f.total.median_ns);
            t.met = t.measured.map(|x| x <= 1.2);
            t.details.push(format!(
                "auto ({}, {}): write {} + sync {} = {}; full: write {} + sync {} = {}",
                a.effective,
                a.method,
                med(&a.write),
                med(&a.sync_wall),
                med(&a.total),
                med(&f.write),
                med(&f.sync_wall),
                med(&f.total)
            ));
        }
        for th in [4] {
            if let (Some(a), Some(f)) = (
                find_cell(r, "auto", size, "100%", Layout::Clustered, th),
                find_cell(r, "full", size, "100%", Layout::Clustered, th),
            ) {
                if let Some(x) = ratio(a.total.median_ns, f.total.median_ns) {
                    t.details.push(format!(
                        "with {th} writer threads: auto {} / full {} = {x:.3}",
                        med(&a.total),
                        med(&f.total)
                    ));
                }
            }
        }
        out.push(t);
    }

    // (3) Write overhead.
    {
        let f = &r.faults;
        let mut t = Target {
            number: 3,
            name: "write overhead".into(),
            measured: None,
            goal: "uffd-async first write / kernel floor <= 1.3 and uffd-sync median <= 10 us with 4 threads".into(),
            met: None,
            details: vec![format!(
                "first store to a page after a sync, BO {}, {} stores a pass and thread, each timed",
                size_label(f.size),
                f.per_pass
            )],
        };
        t.details.push(format!(
            "kernel floor (WP_ASYNC fault in-process): median {} p99 {}; store without fault: median {}",
            med(&f.floor_fault),
            fmt_ns(f.floor_fault.p99_ns),
            med(&f.floor_plain)
        ));
        let async_ratio = f
            .uffd_async_1
            .as_ref()
            .and_then(|a| ratio(a.median_ns, f.floor_fault.median_ns));
        for (name, s) in [
            ("uffd-async, 1 thread", &f.uffd_async_1),
            ("uffd-async, 4 threads", &f.uffd_async_4),
        ] {
            if let Some(s) = s {
                t.details.push(format!(
                    "{name}: median {} p99 {} (median / floor {:.3})",
                    med(s),
                    fmt_ns(s.p99_ns),
                    ratio(s.median_ns, f.floor_fault.median_ns).unwrap_or(f64::NAN)
                ));
            }
        }
        for (name, s, floor) in [
            ("uffd-sync, 1 thread", &f.uffd_sync_1, &f.sync_floor_1),
            ("uffd-sync, 4 threads", &f.uffd_sync_4, &f.sync_floor_4),
        ] {
            if let Some(s) = s {
                t.details.push(format!(
                    "{name}: fault round trip median {} p99 {}",
                    med(s),
                    fmt_ns(s.p99_ns)
                ));
            }
            if let Some(fl) = floor {
                t.details.push(format!(
                    "  floor, minimal in-process handler thread: median {} p99 {}{}",
                    med(fl),
                    fmt_ns(fl.p99_ns),
                    s.as_ref()
                        .and_then(|s| ratio(s.median_ns, fl.median_ns))
                        .map_or(String::new(), |x| format!(" (daemon / floor {x:.3})"))
                ));
            }
        }
        if let Some(fl) = &f.sync_floor_4 {
            if fl.median_ns > 10_000 {
                t.details.push(format!(
                    "  the 10 us goal is below this machine's floor: 4 threads faulting at once into a handler that does nothing else already take a median {}",
                    med(fl)
                ));
            }
        }
        t.measured = async_ratio;
        let sync_ok = f.uffd_sync_4.as_ref().map(|s| s.median_ns <= 10_000);
        t.met = match (async_ratio, sync_ok) {
            (Some(x), Some(s)) => Some(x <= 1.3 && s),
            (Some(x), None) => {
                t.details.push("uffd-sync not measured (skipped)".into());
                Some(x <= 1.3)
            }
            _ => None,
        };
        out.push(t);
    }

    // (4) Harvest.
    {
        let mut t = Target {
            number: 4,
            name: "harvest".into(),
            measured: None,
            goal: "clean sync through the daemon / in-process PAGEMAP_SCAN <= 1.2".into(),
            met: None,
            details: vec![format!("clean view of {}, populated and protected", size_note(r, big))],
        };
        let through = r.clean.iter().find(|c| c.mechanism == "auto" && c.size == big);
        let floor = r.floor_clean.iter().find(|c| c.size == big);
        if let (Some(d), Some(f)) = (through, floor) {
            t.measured = ratio(d.wall.median_ns, f.scan.median_ns);
            t.met = t.measured.map(|x| x <= 1.2);
            t.details.push(format!(
                "auto: clean sync round trip {} (daemon {}, {} pages uploaded at most); in-process scan {}",
                med(&d.wall),
                med(&d.daemon),
                d.uploaded_max,
                med(&f.scan)
            ));
            if let Some(x) = ratio(d.daemon.median_ns, f.scan.median_ns) {
                t.details.push(format!("daemon-side time / in-process scan: {x:.3}"));
            }
            t.details.push(format!(
                "before these, once the dense scenarios stopped writing, {} syncs still uploaded (tracking paused for dense writes until a probe)",
                d.settle_syncs
            ));
        }
        out.push(t);
    }

    // (5) Scale.
    {
        let mut t = Target {
            number: 5,
            name: "scale".into(),
            measured: None,
            goal: "daemon <= 1 core and memory beyond the BOs < 0.1% of bytes tracked, at the requested sync rate"
                .into(),
            met: None,
            details: Vec::new(),
        };
        if let Some(s) = &r.scale {
            let c = &s.config;
            let mem_ratio = s.memory_beyond_bos as f64 / s.bytes_tracked.max(1) as f64;
            let achieved = s.syncs_done as f64 / s.syncs_requested.max(1) as f64;
            t.measured = Some(s.daemon_cores);
            t.details.push(format!(
                "{} client processes{} x {} BOs of {}, {}% dirty, {} Hz, {:.1} s window",
                c.clients,
                if c.clients < 100 { " (REDUCED from 100)" } else { "" },
                c.bos,
                size_label(c.size),
                c.density * 100.0,
                c.rate,
                s.window_seconds
            ));
            t.details.push(format!(
                "daemon CPU {:.2} s in {:.2} s = {:.3} cores; memory beyond the BOs (RssAnon growth) {} KiB = {:.4}% of {} tracked (RssAnon idle {} KiB, peak {} KiB; RssShmem peak {} MiB)",
                s.daemon_cpu_seconds,
                s.window_seconds,
                s.daemon_cores,
                s.memory_beyond_bos >> 10,
                mem_ratio * 100.0,
                size_label(s.bytes_tracked),
                s.memory_idle.anon >> 10,
                s.memory_peak.anon >> 10,
                s.memory_peak.shmem >> 20
            ));
            t.details.push(format!(
                "BO syncs: {} of {} requested ({:.1}%), {} late frames of {}, SYNC_MANY round trip (all of a client's BOs) median {} (worst client p99 {}), under-reported BO syncs {}",
                s.syncs_done,
                s.syncs_requested,
                achieved * 100.0,
                s.late_frames,
                s.frames,
                fmt_ns(s.sync_median_ns),
                fmt_ns(s.sync_p99_ns),
                s.under_reported
            ));
            t.met = Some(s.daemon_cores <= 1.0 && mem_ratio < 0.001 && achieved >= 0.95);
            if achieved < 0.95 {
                t.details.push(
                    "the clients could not keep the requested rate on this machine, so the load was lower than asked"
                        .into(),
                );
            }
        }
        out.push(t);
    }

    // (6) Background upload.
    {
        let mut t = Target {
            number: 6,
            name: "background upload".into(),
            measured: None,
            goal:
                "SYNC >= 2 ms after the last write (background upload on) / explicit-damage sync of the same pages <= 1"
                    .into(),
            met: None,
            details: Vec::new(),
        };
        if let Some(b) = &r.background {
            let explicit = find_cell(r, "explicit", b.size, "0.1%", Layout::Scattered, 1);
            t.details.push(format!(
                "BO {}, {} pages (0.1%) scattered, --background-upload-us {}, SYNC {} ms after the last write: round trip {} (p90 {}), at most {} pages left to it",
                size_label(b.size),
                b.dirty_pages,
                b.interval_us,
                b.idle_ms,
                med(&b.sync),
                fmt_ns(b.sync.p90_ns),
                b.left_max
            ));
            if let Some(e) = explicit {
                t.measured = ratio(b.sync.median_ns, e.sync_cost.median_ns);
                t.details.push(format!(
                    "explicit batched damage of the same pages: {} ({} pages' runs and the sync in one DAMAGE_RANGES round trip)",
                    med(&e.sync_cost),
                    e.dirty_pages
                ));
                t.met = t.measured.map(|x| x <= 1.0);
            }
        } else {
            t.details.push("not measured (auto not among the mechanisms)".into());
        }
        out.push(t);
    }
    out.push(super::shadow_target::target(r));
    out
}

/// The target lines and their details.
pub fn target_text(r: &Report) -> String {
    let mut s = String::new();
    for t in &r.targets {
        let _ = writeln!(s, "{}", t.line());
        for d in &t.details {
            let _ = writeln!(s, "    {d}");
        }
    }
    s
}

/// The full table: one row per (size, density, layout, threads, mechanism),
/// plus the kernel floor (one thread) under each (size, density, layout).
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "cohmem-bench{}: kernel {}, {} CPUs, wall {:.0} s, seed {}",
        if r.quick { " --quick" } else { "" },
        r.kernel,
        r.cpus,
        r.wall_seconds,
        r.seed
    );
    let _ = writeln!(s, "mechanisms: {}", r.mechanisms.join(", "));
    for k in &r.skipped {
        let _ = writeln!(s, "skipped {}: {}", k.mechanism, k.reason);
    }
    let _ = writeln!(
        s,
        "figures: medians over repetitions after 3 warm-up syncs (n = repetitions); 'sync' = what the client pays to get its writes uploaded: the SYNC round trip, for explicit one DAMAGE_RANGES request carrying every written run and the sync (one round trip); 'daemon' = time the daemon reports for the SYNC (floor: the PAGEMAP_SCAN part); floor = in-process WP_ASYNC + PAGEMAP_SCAN harvest + memcpy of the dirty runs, no daemon"
    );
    let header = format!(
        "{:>7} {:>7} {:>9} {:>3} {:>10} {:>10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>3}",
        "size",
        "density",
        "layout",
        "thr",
        "mechanism",
        "method",
        "dirty",
        "uploaded",
        "write",
        "sync",
        "sync p90",
        "daemon",
        "total",
        "n"
    );
    for &size in &r.sizes {
        let _ = writeln!(s, "\n{header}");
        for density in super::pattern::Density::ALL.map(|d| d.label()) {
            for layout in Layout::ALL {
                for &threads in &r.threads {
                    if threads == 1 {
                        if let Some(f) = find_floor(r, size, &density, layout) {
                            let _ = writeln!(
                                s,
                                "{:>7} {:>7} {:>9} {:>3} {:>10} {:>10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>3}",
                                size_label(size),
                                density,
                                layout.label(),
                                1,
                                "floor",
                                "-",
                                f.dirty_pages,
                                f.harvested_min,
                                med(&f.write),
                                med(&f.sync),
                                fmt_ns(f.sync.p90_ns),
                                med(&f.harvest),
                                med(&f.total),
                                f.sync.n
                            );
                        }
                    }
                    for m in &r.mechanisms {
                        let Some(c) = find_cell(r, m, size, &density, layout, threads) else {
                            continue;
                        };
                        let uploaded = if c.uploaded_min == c.uploaded_max {
                            c.uploaded_min.to_string()
                        } else {
                            format!("{}-{}", c.uploaded_min, c.uploaded_max)
                        };
                        let _ = writeln!(
                            s,
                            "{:>7} {:>7} {:>9} {:>3} {:>10} {:>10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>3}{}",
                            size_label(size),
                            density,
                            layout.label(),
                            threads,
                            if m == "auto" { format!("auto:{}", short(&c.effective)) } else { m.clone() },
                            c.method,
                            c.dirty_pages,
                            uploaded,
                            med(&c.write),
                            med(&c.sync_cost),
                            fmt_ns(c.sync_cost.p90_ns),
                            med(&c.sync_daemon),
                            med(&c.total),
                            c.sync_wall.n,
                            if c.under_reported() { "  UNDER-REPORTED" } else { "" }
                        );
                    }
                }
            }
        }
    }
    let _ = writeln!(s, "\nclean syncs (nothing written since the last sync):");
    for &size in &r.sizes {
        if let Some(f) = r.floor_clean.iter().find(|c| c.size == size) {
            let _ = writeln!(
                s,
                "{:>7} {:>10}: {:>10} (in-process PAGEMAP_SCAN)",
                size_label(size),
                "floor",
                med(&f.scan)
            );
        }
        for c in r.clean.iter().filter(|c| c.size == size) {
            let _ = writeln!(
                s,
                "{:>7} {:>10}: {:>10} round trip, {:>10} daemon, {} pages uploaded at most",
                size_label(size),
                c.mechanism,
                med(&c.wall),
                med(&c.daemon),
                c.uploaded_max
            );
        }
    }
    if !r.animation.is_empty() {
        let _ = writeln!(
            s,
            "1080p animation: a {}x{} XRGB8888 image BO, a 64x64 sprite moving and a 200x20 ticker redrawn per frame, write + one sync per frame (explicit: the frame's 3 rectangles with the sync, one round trip)",
            super::animation::WIDTH,
            super::animation::HEIGHT
        );
        for a in &r.animation {
            let _ = writeln!(
                s,
                "{:>12}: write+sync {:>10} (p99 {:>10}), sync {:>10} (p99 {:>10}, daemon {:>10}), write {:>10}, {} pages/frame, {} frames",
                a.mechanism,
                med(&a.total),
                fmt_ns(a.total.p99_ns),
                med(&a.sync),
                fmt_ns(a.sync.p99_ns),
                med(&a.daemon),
                med(&a.write),
                a.pages_median,
                a.frames
            );
        }
        let find = |m: &str| r.animation.iter().find(|a| a.mechanism == m);
        if let (Some(a), Some(e)) = (find("auto"), find("explicit")) {
            if let Some(x) = ratio(a.total.median_ns, e.total.median_ns) {
                let _ = writeln!(
                    s,
                    "animation: auto / explicit batched (write + sync) = {x:.3} (issue 19 goal <= 1.3)"
                );
            }
        }
    }
    s
}

fn short(mechanism: &str) -> &str {
    match mechanism {
        "uffd-async" => "async",
        "uffd-sync" => "sync",
        other => other,
    }
}

/// A fixed, readable colour per line (by the start of its label).
fn color_of(label: &str) -> RGBAColor {
    let rgb = match label.split_whitespace().next().unwrap_or("") {
        "auto" => RGBColor(214, 39, 40),
        "uffd-async" => RGBColor(31, 119, 180),
        "uffd-sync" => RGBColor(44, 160, 44),
        "soft-dirty" => RGBColor(140, 86, 75),
        "full" => RGBColor(0, 0, 0),
        "explicit" => RGBColor(255, 127, 14),
        "shadow" => RGBColor(23, 190, 207),
        _ => RGBColor(148, 103, 189),
    };
    rgb.to_rgba()
}

/// The BO size the plot shows: 1 GiB in the full run, else the largest.
pub fn plot_size(r: &Report) -> u64 {
    target_size(r)
}

/// Draws sync cost against dirty density (log-log) at [`plot_size`],
/// scattered writes, one writer thread: one line per mechanism and the
/// kernel floor.
pub fn plot(r: &Report, path: &Path) -> anyhow::Result<()> {
    let size = plot_size(r);
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for m in &r.mechanisms {
        let pts: Vec<(f64, f64)> = r
            .cells
            .iter()
            .filter(|c| c.mechanism == *m && c.size == size && c.layout == Layout::Scattered && c.threads == 1)
            .map(|c| {
                (
                    c.dirty_pages as f64 / c.total_pages as f64,
                    c.sync_cost.median_ns as f64 / 1e3,
                )
            })
            .collect();
        let label = match m.as_str() {
            "auto" => format!(
                "auto ({})",
                pts.first()
                    .and(r.cells.iter().find(|c| c.mechanism == "auto"))
                    .map_or("?", |c| c.effective.as_str())
            ),
            "full" => "full copy (baseline)".into(),
            "explicit" => "explicit batched damage (baseline)".into(),
            "shadow" => "shadow compare (baseline)".into(),
            other => other.into(),
        };
        series.push((label, pts));
    }
    let floor: Vec<(f64, f64)> = r
        .floor
        .iter()
        .filter(|c| c.size == size && c.layout == Layout::Scattered)
        .map(|c| {
            (
                c.dirty_pages as f64 / c.total_pages as f64,
                c.sync.median_ns as f64 / 1e3,
            )
        })
        .collect();
    series.push(("kernel floor (PAGEMAP_SCAN + memcpy, no daemon)".into(), floor));
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    anyhow::ensure!(!all.is_empty(), "nothing to plot at {}", size_label(size));
    let (xmin, xmax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (ymin, ymax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let caption = format!(
        "cohmem sync cost vs dirty density: {} BO, scattered writes, 1 thread{}",
        size_label(size),
        if r.quick { " (--quick)" } else { "" }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (xmin / 1.5..xmax * 1.5).log_scale(),
            ((ymin / 2.0).max(1e-3)..ymax * 2.0).log_scale(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("fraction of pages written between syncs")
        .y_desc("sync cost, µs (median)")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (label, pts) in &series {
        let color = color_of(label);
        let style = ShapeStyle {
            color,
            filled: true,
            stroke_width: 2,
        };
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, style)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
