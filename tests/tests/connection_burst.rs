//! Issue 15, item 3: a burst of connections costs the daemon a bounded,
//! returned amount. About 20,000 connections at once made the daemon run
//! out of fds (nobody could connect) and grow from about 5 MB to 1.2 GB,
//! which it kept: each refused connection held a 64 KiB receive buffer for
//! up to a second. Refusals now read only a request header, wait 250 ms at
//! most and are answered at most 256 at a time; an established client keeps
//! syncing through the burst, and fds and memory come back afterwards.
//!
//! One test in this binary: it uses most of the process's fds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohmem_client::Connection;
use cohmem_sys::seqpacket::SeqpacketSocket;
use cohmem_tests::{process_fds as fds, process_rss_kib as rss_kib, spawn_daemon, time_scale};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

#[test]
fn a_connection_burst_leaves_established_clients_syncing_and_returns_its_cost() -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    // Room for the test's own fds.
    let burst = (hard.min(20_000) as usize).saturating_sub(500);
    let daemon = spawn_daemon(DAEMON)?;
    let pid = daemon.pid();
    let socket = daemon.socket().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let bystander = {
        let (socket, stop) = (socket.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<(u64, Duration)> {
            let conn = Connection::connect(&socket)?;
            let ps = cohmem_sys::page_size() as usize;
            let bo = conn.create_bo(16 * ps as u64)?;
            let map = bo.map()?;
            let (mut syncs, mut worst) = (0u64, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                map.write_u64((syncs as usize % 16) * ps, syncs)?;
                let t = Instant::now();
                let done = bo.sync()?;
                worst = worst.max(t.elapsed());
                anyhow::ensure!(done.pages == 1, "the bystander's sync uploaded {} pages", done.pages);
                syncs += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok((syncs, worst))
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (fds_before, rss_before) = (fds(pid), rss_kib(pid)?);
    let t0 = Instant::now();
    let mut socks = Vec::with_capacity(burst);
    let mut refused_at_connect = 0usize;
    let (mut fds_peak, mut rss_peak) = (fds_before, rss_before);
    for i in 0..burst {
        match SeqpacketSocket::connect(&socket) {
            Ok(s) => socks.push(s),
            Err(_) => refused_at_connect += 1,
        }
        if i % 1000 == 0 {
            fds_peak = fds_peak.max(fds(pid));
            rss_peak = rss_peak.max(rss_kib(pid)?);
        }
    }
    let opened = t0.elapsed();
    fds_peak = fds_peak.max(fds(pid));
    rss_peak = rss_peak.max(rss_kib(pid)?);
    // Someone else of this user is refused, typed, while the burst holds
    // the quota.
    let late = Connection::connect(&socket);
    drop(socks);
    drop(late);
    let t1 = Instant::now();
    let fds_after = loop {
        let n = fds(pid);
        if n <= fds_before || t1.elapsed() > Duration::from_secs(10) * time_scale() {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kib(pid)?;
    stop.store(true, Ordering::Relaxed);
    let (syncs, worst) = bystander.join().map_err(|_| anyhow::anyhow!("bystander panicked"))??;
    eprintln!(
        "{burst} connections in {opened:?} ({refused_at_connect} failed to connect): daemon fds {fds_before} / peak \
         {fds_peak} / after {fds_after}, RSS {rss_before} / peak {rss_peak} / after {rss_after} KiB; the \
         established client made {syncs} syncs, worst {worst:?}"
    );
    anyhow::ensure!(syncs > 10, "the established client stopped syncing ({syncs} syncs)");
    anyhow::ensure!(
        worst < Duration::from_secs(2) * time_scale(),
        "a sync of the established client took {worst:?}"
    );
    anyhow::ensure!(
        fds_after <= fds_before,
        "the daemon kept {} fds",
        fds_after - fds_before
    );
    anyhow::ensure!(
        rss_peak < rss_before + 256 * 1024,
        "the burst grew the daemon by {} KiB",
        rss_peak - rss_before
    );
    anyhow::ensure!(
        rss_after < rss_before + 64 * 1024,
        "the daemon kept {} KiB after the burst",
        rss_after.saturating_sub(rss_before)
    );
    Ok(())
}
