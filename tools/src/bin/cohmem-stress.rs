//! cohmem-stress: many client processes writing random patterns into their
//! BOs, a sync after every round, and a byte-for-byte check of the GPU copy
//! after every sync. `--chaos` SIGKILLs clients and the daemon at random
//! moments (the daemon comes back on the same socket) and checks that no
//! write made before a completed sync is lost and that no client hangs.
//!
//! The last line on stdout is `verified: syncs=S pages=P bytes=B lost=L`
//! (pages and bytes compared with what the clients wrote; lost: compared
//! pages that differed). Exit status 1 on a lost page, a hung client, a
//! failed client or a daemon that died by itself.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Parser, Subcommand};
use cohmem_tools::stress::{run_stress, worker_main, Outcome, StressConfig, WorkerConfig};
use cohmem_tools::SplitMix64;

/// Stress cohmemd with many client processes and verify every sync.
#[derive(Debug, Parser)]
#[command(name = "cohmem-stress", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, ClapArgs)]
#[group(id = "daemon_choice", required = false, multiple = false)]
struct DaemonChoice {
    /// Use the daemon listening on this socket.
    #[arg(long, group = "daemon_choice")]
    socket: Option<PathBuf>,
    /// Start a private daemon (`--gpu soft` unless --daemon-arg names one).
    #[arg(long, group = "daemon_choice")]
    spawn_daemon: bool,
}

#[derive(Debug, ClapArgs)]
struct RunArgs {
    #[command(flatten)]
    daemon: DaemonChoice,
    /// An extra argument for the spawned daemon (repeat it; e.g.
    /// `--daemon-arg=--mechanism --daemon-arg=uffd-sync`).
    #[arg(long = "daemon-arg", allow_hyphen_values = true, value_name = "ARG")]
    daemon_args: Vec<String>,
    /// Client processes at a time.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// BOs per client.
    #[arg(long, default_value_t = 2)]
    bos: u32,
    /// Bytes per BO (suffixes K, M, G: powers of 1024).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    bo_size: u64,
    /// Write/sync rounds per client (default 100 unless --duration).
    #[arg(long, conflicts_with = "duration")]
    rounds: Option<u64>,
    /// Run for this many seconds instead of a number of rounds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Writer threads per client.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Master seed (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// SIGKILL clients and the daemon at random moments (needs --spawn-daemon).
    #[arg(long, requires = "spawn_daemon")]
    chaos: bool,
    /// Mean milliseconds between two chaos events.
    #[arg(long, default_value_t = 700, value_name = "MS")]
    chaos_interval_ms: u64,
    /// A client without progress for this many seconds is hung.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    hang_timeout: f64,
    /// Also print the outcome as one JSON line (before the summary line).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: one client process, driven by the parent over a pipe.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Debug, ClapArgs)]
struct WorkerArgs {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    bos: u32,
    #[arg(long)]
    bo_size: u64,
    #[arg(long)]
    threads: usize,
    #[arg(long)]
    seed: u64,
    /// 0: until the parent says stop.
    #[arg(long)]
    rounds: u64,
    #[arg(long)]
    retry: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = num.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    let v = n
        .checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or("size too large")?;
    if v == 0 {
        return Err("size must be at least 1 byte".into());
    }
    Ok(v)
}

fn secs(what: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("{what}: {v} is not a duration in seconds"))
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Cmd::Worker(w)) => {
            let cfg = WorkerConfig {
                socket: w.socket,
                bos: w.bos,
                bo_size: w.bo_size,
                threads: w.threads,
                seed: w.seed,
                rounds: w.rounds,
                retry: w.retry,
            };
            // The error is reported on stdout to the parent.
            i32::from(worker_main(&cfg).is_err())
        }
        None => match parent(cli.run) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("cohmem-stress: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}

fn parent(a: RunArgs) -> anyhow::Result<bool> {
    if a.daemon.socket.is_none() && !a.daemon.spawn_daemon {
        bail!("say which daemon: --socket PATH or --spawn-daemon");
    }
    if !a.daemon_args.is_empty() && !a.daemon.spawn_daemon {
        bail!("--daemon-arg needs --spawn-daemon");
    }
    if a.clients == 0 || a.bos == 0 || a.threads == 0 {
        bail!("--clients, --bos and --threads must be at least 1");
    }
    let seed = a.seed.unwrap_or_else(SplitMix64::seed_from_time);
    let cfg = StressConfig {
        socket: a.daemon.socket,
        daemon_args: a.daemon_args,
        clients: a.clients,
        bos: a.bos,
        bo_size: a.bo_size,
        rounds: a.rounds.unwrap_or(100),
        duration: a.duration.map(|d| secs("--duration", d)).transpose()?,
        threads: a.threads,
        seed,
        chaos: a.chaos,
        chaos_interval: Duration::from_millis(a.chaos_interval_ms.max(1)),
        hang_timeout: secs("--hang-timeout", a.hang_timeout)?,
    };
    println!(
        "cohmem-stress: seed {seed}, {} clients × {} BOs of {} bytes, {} threads, {}{}",
        cfg.clients,
        cfg.bos,
        cfg.bo_size,
        cfg.threads,
        match cfg.duration {
            Some(d) => format!("{:.1} s", d.as_secs_f64()),
            None => format!("{} rounds each", cfg.rounds),
        },
        if cfg.chaos { ", chaos" } else { "" }
    );
    let exe = std::env::current_exe().context("locating this executable")?;
    let outcome = run_stress(&cfg, &exe)?;
    print_outcome(&outcome, &cfg, a.json)?;
    Ok(outcome.ok())
}

fn print_outcome(o: &Outcome, cfg: &StressConfig, json: bool) -> anyhow::Result<()> {
    let t = &o.tally;
    if t.lost > 0 {
        println!(
            "failure: {} pages lost (their GPU copy differed from what the client wrote before the sync)",
            t.lost
        );
    }
    for f in &o.failures {
        println!("failure: {f}");
    }
    println!(
        "rounds: {} in {:.2} s; written: ops={} pages={} bytes={}; uploaded: pages={} bytes={}; retries={} unverified_syncs={} reconnects={}",
        t.rounds,
        o.elapsed_s,
        t.ops,
        t.written_pages,
        t.written_bytes,
        t.uploaded_pages,
        t.uploaded_bytes,
        t.retries,
        t.unverified_syncs,
        t.reconnects
    );
    println!(
        "clients: spawned={} completed={}",
        o.workers_spawned, o.workers_completed
    );
    if cfg.chaos {
        println!(
            "chaos: daemon_restarts={} client_kills={} signal_storms={} signals_handled={} forks={} switches={}",
            o.daemon_restarts, o.client_kills, o.signal_storms, t.signals, t.forks, t.switches
        );
    }
    println!("result: {}", if o.ok() { "ok" } else { "FAILED" });
    if json {
        println!("{}", serde_json::to_string(o).context("encoding JSON")?);
    }
    println!(
        "verified: syncs={} pages={} bytes={} lost={}",
        t.syncs, t.pages, t.bytes, t.lost
    );
    Ok(())
}
