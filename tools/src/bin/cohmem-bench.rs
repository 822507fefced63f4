//! cohmem-bench: sync cost against dirty density for every write-tracking
//! mechanism and baseline (full copy, explicit damage, the kernel floor),
//! measured in one run against private daemons; prints a table and the
//! target lines, and writes JSON and an SVG plot on request.
//!
//! `cohmem-bench --quick` is the CI run (under 2 minutes: no 1 GiB BO, 10
//! scale clients); the full run regenerates `docs/bench/`
//! (`docs/bench/README.md` has the command).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args as ClapArgs, Parser, Subcommand};
use cohmem_tools::bench::{self, report, scale, BenchConfig};
use cohmem_tools::SplitMix64;

/// Measure cohmem's sync cost against dirty density, with baselines.
#[derive(Debug, Parser)]
#[command(name = "cohmem-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, ClapArgs)]
struct RunArgs {
    /// The reduced run for CI (under 2 minutes): BOs up to 64 MiB, fewer
    /// repetitions, 10 scale clients.
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Draw sync cost against dirty density to this SVG file.
    #[arg(long, value_name = "PATH.svg")]
    plot: Option<PathBuf>,
    /// Also write the table and target lines to this file.
    #[arg(long, value_name = "PATH")]
    table: Option<PathBuf>,
    /// Only these mechanisms (repeat; default: every one the kernel has).
    #[arg(long = "mechanism", value_name = "NAME")]
    mechanisms: Vec<String>,
    /// Scale-scenario client processes (default 100, 10 with --quick).
    #[arg(long)]
    scale_clients: Option<usize>,
    /// Skip the scale scenario.
    #[arg(long)]
    no_scale: bool,
    /// RNG seed (default: fixed, so runs draw the same pages).
    #[arg(long, default_value_t = 0x00c0_44e7)]
    seed: u64,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The 1080p animation alone through one mechanism's private daemon
    /// (for profiling: the daemon's pid is printed first, then the figures).
    Animation {
        /// Mechanism (auto, uffd-async, uffd-sync, soft-dirty, full, shadow, explicit).
        #[arg(long, default_value = "auto")]
        mechanism: String,
        /// Frames measured (after 10 warm-up frames).
        #[arg(long, default_value_t = 300)]
        frames: usize,
    },
    /// One sparse sync scenario alone through one mechanism's private daemon
    /// (for profiling: the daemon's pid is printed first, then the figures).
    Sparse {
        /// Mechanism (auto, uffd-async, uffd-sync, soft-dirty, full, shadow, explicit).
        #[arg(long, default_value = "auto")]
        mechanism: String,
        /// BO size in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
        /// Fraction of the pages written before each sync (at least one page).
        #[arg(long, default_value_t = 0.001)]
        density: f64,
        /// Writer threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Syncs measured (after 3 warm-up ones).
        #[arg(long, default_value_t = 2000)]
        syncs: usize,
    },
    /// The scale scenario alone (for profiling): client processes x 10 BOs of
    /// 4 MiB, 1 % written per BO and frame, one SYNC_MANY per frame at 60 Hz.
    Scale {
        /// Client processes.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Measured window in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Internal: the echo side of the IPC floor (its socket is stdin).
    #[command(hide = true)]
    IpcEcho {
        #[arg(long)]
        reply_bytes: usize,
    },
    /// Internal: one client process of the scale scenario.
    #[command(hide = true)]
    ScaleChild {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        bos: usize,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        density: f64,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        seconds: f64,
        #[arg(long)]
        seed: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::IpcEcho { reply_bytes }) = cli.command {
        return cohmem_tools::bench::ipc_floor::echo_main(reply_bytes);
    }
    if let Some(Cmd::ScaleChild {
        socket,
        bos,
        size,
        density,
        rate,
        seconds,
        seed,
    }) = cli.command
    {
        return scale::child_main(&scale::ChildConfig {
            socket,
            bos,
            size,
            density,
            rate,
            seconds,
            seed,
        });
    }
    if let Some(Cmd::Animation { mechanism, frames }) = &cli.command {
        let session = bench::sync::Session::start(mechanism)?;
        eprintln!("daemon pid {}", session.daemon.pid());
        let a = bench::animation::measure(&session, *frames)?;
        println!(
            "{}: write+sync {} (p99 {}), sync {} (daemon {}), write {}, {} pages/frame, {} frames",
            a.mechanism,
            bench::stats::fmt_ns(a.total.median_ns),
            bench::stats::fmt_ns(a.total.p99_ns),
            bench::stats::fmt_ns(a.sync.median_ns),
            bench::stats::fmt_ns(a.daemon.median_ns),
            bench::stats::fmt_ns(a.write.median_ns),
            a.pages_median,
            a.frames
        );
        return Ok(());
    }
    if let Some(Cmd::Sparse {
        mechanism,
        size_mib,
        density,
        threads,
        syncs,
    }) = &cli.command
    {
        let session = bench::sync::Session::start(mechanism)?;
        eprintln!("daemon pid {}", session.daemon.pid());
        let (bo, map) = session.populated_bo(size_mib << 20)?;
        let reps = bench::Reps {
            warmup: 3,
            min: *syncs,
            max: *syncs,
            budget: std::time::Duration::MAX,
        };
        let mut rng = SplitMix64::new(cli.run.seed);
        let c = bench::sync::measure_cell(
            &session,
            &bo,
            &map,
            bench::pattern::Density::Fraction(*density),
            bench::pattern::Layout::Scattered,
            *threads,
            &reps,
            &mut rng,
        )?;
        println!(
            "{} ({}, {}): {} pages of {}: sync {} (p90 {}, daemon {}), write {}, uploaded {}..{}, {} syncs",
            c.mechanism,
            c.effective,
            c.method,
            c.dirty_pages,
            c.total_pages,
            bench::stats::fmt_ns(c.sync_wall.median_ns),
            bench::stats::fmt_ns(c.sync_wall.p90_ns),
            bench::stats::fmt_ns(c.sync_daemon.median_ns),
            bench::stats::fmt_ns(c.write.median_ns),
            c.uploaded_min,
            c.uploaded_max,
            c.sync_wall.n
        );
        return Ok(());
    }
    if let Some(Cmd::Scale { clients, seconds }) = &cli.command {
        let r = scale::run(&scale::ScaleConfig {
            clients: *clients,
            bos: 10,
            size: 4 << 20,
            density: 0.01,
            rate: 60.0,
            seconds: *seconds,
        })?;
        println!(
            "scale: {} clients: daemon {:.3} cores, BO syncs {} of {} ({:.1}%), SYNC_MANY median {}, worst p99 {}, under-reported {}",
            clients,
            r.daemon_cores,
            r.syncs_done,
            r.syncs_requested,
            100.0 * r.syncs_done as f64 / r.syncs_requested.max(1) as f64,
            bench::stats::fmt_ns(r.sync_median_ns),
            bench::stats::fmt_ns(r.sync_p99_ns),
            r.under_reported
        );
        return Ok(());
    }
    let a = cli.run;
    if let Some(p) = &a.plot {
        anyhow::ensure!(
            p.extension().is_some_and(|e| e == "svg"),
            "--plot writes SVG only: give a PATH ending in .svg"
        );
    }
    let cfg = BenchConfig {
        quick: a.quick,
        mechanisms: (!a.mechanisms.is_empty()).then_some(a.mechanisms),
        scale_clients: a.scale_clients,
        no_scale: a.no_scale,
        seed: if a.seed == 0 {
            SplitMix64::seed_from_time()
        } else {
            a.seed
        },
    };
    let r = bench::run(&cfg)?;
    let text = format!("{}\n{}", report::table(&r), report::target_text(&r));
    print!("{text}");
    if let Some(p) = &a.table {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.json {
        let json = serde_json::to_string_pretty(&r)?;
        std::fs::write(p, json + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.plot {
        report::plot(&r, p)?;
    }
    Ok(())
}
