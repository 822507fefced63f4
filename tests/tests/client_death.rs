//! Issue 5 "client death": a client killed with SIGKILL at any point —
//! right after connecting, after creating or mapping a BO, with dirty pages,
//! with a SYNC in flight, or with threads running into write-protect faults
//! — releases everything it held in the daemon: connections, subscriptions,
//! BOs, views, fds and memory. 10,000 such lives (helper processes,
//! `cohmem-test-churn`) leave the daemon's open fd count where it started
//! and its memory within a small allowance of it; both are printed.

use std::process::Command;
use std::time::{Duration, Instant};

use cohmem_client::{Connection, Mechanism};
use cohmem_proto::DaemonStats;
use cohmem_tests::spawn_daemon;
use cohmem_tools::DaemonProcess;

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");
const CHURN: &str = env!("CARGO_BIN_EXE_cohmem-test-churn");
const STAGES: [&str; 6] = ["connected", "created", "mapped", "written", "in-request", "in-fault"];

/// Open fds and resident KiB of a process.
fn fds_and_rss(pid: u32) -> anyhow::Result<(usize, u64)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok((fds, rss))
}

/// Runs `n` client lives, `parallel` at a time, cycling through the stages
/// and the mechanisms this kernel has.
fn churn(daemon: &DaemonProcess, n: usize, parallel: usize, mechanisms: &[Mechanism]) -> anyhow::Result<()> {
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..n.min(i + parallel))
            .map(|k| {
                Command::new(CHURN)
                    .arg(daemon.socket())
                    .arg(STAGES[k % STAGES.len()])
                    .env(
                        "COHMEM_MECHANISM",
                        mechanisms[(k / STAGES.len()) % mechanisms.len()].name(),
                    )
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for (k, mut child) in (i..).zip(batch) {
            let status = child.wait()?;
            use std::os::unix::process::ExitStatusExt;
            anyhow::ensure!(
                status.signal() == Some(libc::SIGKILL),
                "client life {k} ({}) ended with {status} instead of SIGKILL",
                STAGES[k % STAGES.len()]
            );
        }
        i += parallel;
    }
    Ok(())
}

/// Waits until the daemon holds nothing but `probe`'s own connection.
fn settle(probe: &Connection) -> anyhow::Result<DaemonStats> {
    let t0 = Instant::now();
    loop {
        let s = probe.stats(0)?.daemon;
        if s.connections == 1 && s.bos == 0 && s.views == 0 && s.mm_subscriptions == 0 {
            return Ok(s);
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "the daemon still holds {} connections, {} subscriptions, {} BOs, {} views",
            s.connections,
            s.mm_subscriptions,
            s.bos,
            s.views
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ten_thousand_client_deaths_leak_nothing() -> anyhow::Result<()> {
    let cycles: usize = std::env::var("COHMEM_CHURN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut mechanisms = vec![Mechanism::UffdSync];
    if cohmem_tests::caps().uffd_async.ok {
        mechanisms.push(Mechanism::UffdAsync);
    }
    let daemon = spawn_daemon(DAEMON)?;
    let pid = daemon.pid();
    // Warm-up: the allocator's and tokio's pools reach their working size.
    churn(&daemon, 300, 4, &mechanisms)?;
    let probe = Connection::connect(daemon.socket())?;
    settle(&probe)?;
    let (fds0, rss0) = fds_and_rss(pid)?;
    let t0 = Instant::now();
    churn(&daemon, cycles, 4, &mechanisms)?;
    let took = t0.elapsed();
    let stats = settle(&probe)?;
    let (fds1, rss1) = fds_and_rss(pid)?;
    eprintln!(
        "{cycles} client lives killed at {} stages under {mechanisms:?} in {took:.1?}: \
         daemon fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB; {} syncs, {} errors answered",
        STAGES.len(),
        stats.syncs,
        stats.errors
    );
    assert_eq!(
        fds1, fds0,
        "the daemon's open fds did not return to their starting level"
    );
    assert!(
        rss1 <= rss0 + 4096,
        "the daemon's memory grew by {} KiB over {cycles} client lives",
        rss1 - rss0
    );
    assert!(stats.syncs > 0, "no client life got as far as a sync");
    Ok(())
}
