//! Suspicions from a code review (issue 14) turned into measurements: a
//! long hold of one BO's state lock must not stall other clients through
//! STATS (a), and a mechanism switch must not stall other processes' write
//! faults for longer than the switch itself (b). Bounds are generous
//! (scaled by COHMEM_TIME_SCALE) and the numbers are printed.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohmem_client::{Connection, Mechanism};
use cohmem_proto::{STATS_BOS, STATS_CONNECTIONS};
use cohmem_tests::{spawn_daemon_for, time_scale, WriterChild};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");
/// The writer child binary.
const WRITER: &str = env!("CARGO_BIN_EXE_cohmem-test-writer");

fn max_and_median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort_unstable();
    (
        v.last().copied().unwrap_or_default(),
        v.get(v.len() / 2).copied().unwrap_or_default(),
    )
}

/// (a) A BO whose state lock is held long (SNAPSHOT of a big, wholly
/// written BO: the harvest of every page runs under it) while two clients
/// call STATS with STATS_BOS (each waits for that lock) must not stall a
/// third client's small syncs: STATS must not block the daemon's async
/// workers (there are as many as cores, 2 here).
#[test]
fn stats_waiting_for_a_busy_bo_does_not_stall_other_clients() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdAsync)?;
    let socket = daemon.socket().to_path_buf();
    let ps = cohmem_sys::page_size();
    let stop = Arc::new(AtomicBool::new(false));
    // The long holder: snapshots of a 256 MiB BO written whole (a 16th of
    // it on an emulated machine, COHMEM_TIME_SCALE > 1, where one snapshot
    // of 256 MiB outlasts the whole measurement).
    let big_size: u64 = if time_scale() > 1 { 16 << 20 } else { 256 << 20 };
    let big = Connection::connect(&socket)?;
    let big_bo = big.create_bo(big_size)?;
    let big_map = big_bo.map_detached()?;
    for p in 0..big_map.len() as u64 / ps {
        big_map.write_u64((p * ps) as usize, p)?;
    }
    let id = big_bo.id();
    let holder = {
        let stop = stop.clone();
        let big_map = Arc::new(big_map);
        std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
            let mut took = Vec::new();
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Rewrite every page so that the harvest has all to record.
                for p in 0..big_map.len() as u64 / ps {
                    big_map.write_u64((p * ps) as usize, round)?;
                }
                let t0 = Instant::now();
                let _snapshot = big.snapshot(id)?;
                took.push(t0.elapsed());
                round += 1;
            }
            drop(big_bo);
            Ok(took)
        })
    };
    let stats: Vec<_> = (0..2)
        .map(|_| {
            let (stop, socket) = (stop.clone(), socket.clone());
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let conn = Connection::connect(&socket)?;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    conn.stats(STATS_BOS | STATS_CONNECTIONS)?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    // The measured client: small syncs, each timed.
    let small = Connection::connect(&socket)?;
    let bo = small.create_bo(16 * ps)?;
    let map = bo.map()?;
    std::thread::sleep(Duration::from_millis(200));
    let mut latencies = Vec::new();
    let t_end = Instant::now() + Duration::from_secs(4) * time_scale().min(4);
    let mut v = 0u64;
    while Instant::now() < t_end {
        v += 1;
        map.write_u64(((v % 16) * ps) as usize, v)?;
        let t0 = Instant::now();
        bo.sync()?;
        latencies.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let holds = holder.join().map_err(|_| anyhow::anyhow!("holder panicked"))??;
    let mut calls = 0;
    for s in stats {
        calls += s.join().map_err(|_| anyhow::anyhow!("stats client panicked"))??;
    }
    let (worst, median) = max_and_median(latencies.clone());
    let (worst_hold, median_hold) = max_and_median(holds.clone());
    eprintln!(
        "small syncs: {} (median {median:?}, worst {worst:?}); snapshots of {} MiB: {} (median {median_hold:?}, worst {worst_hold:?}); STATS calls: {calls}",
        latencies.len(),
        big_size >> 20,
        holds.len()
    );
    anyhow::ensure!(
        !holds.is_empty() && calls > 0,
        "the load did not run ({} snapshots, {calls} STATS calls)",
        holds.len()
    );
    // A worker blocked in STATS for the holder's lock makes a small sync wait
    // for about a snapshot's harvest; unblocked, it waits for nothing of it.
    // A blocked worker stalls a sync for a whole harvest (seconds at
    // 256 MiB); 300 ms leaves room for a loaded 2-core machine.
    let bound = Duration::from_millis(300) * time_scale();
    anyhow::ensure!(
        worst < bound,
        "a small sync took {worst:?} (bound {bound:?}) while STATS waited for a busy BO"
    );
    Ok(())
}

/// (b) A process tracked by uffd-sync keeps writing (each write timed, each
/// a first write after a sync: a fault the daemon's single fault thread
/// resolves) while another process switches its own mechanism back and
/// forth, with a third process writing the BO the switching process maps
/// (so the fault thread meets the BO locks a switch holds). The worst
/// write latency must stay bounded (a switch of a few views takes
/// milliseconds).
#[test]
fn mechanism_switches_do_not_stall_other_processes_faults() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdSync)?;
    let socket: PathBuf = daemon.socket().to_path_buf();
    let ps = cohmem_sys::page_size();
    let pages = 256u64;
    // B: the test process, switching; it maps BO Y (64 MiB) that C writes.
    let b = Connection::connect(&socket)?;
    let y = b.create_bo(64 << 20)?;
    let y_map = y.map_detached()?;
    let y_pages = y_map.len() as u64 / ps;
    for p in 0..y_pages {
        y_map.write_u64((p * ps) as usize, p)?;
    }
    let y_memfd = y.memfd().try_clone_to_owned()?;
    let mut c = WriterChild::spawn(WRITER.as_ref(), &socket, y_memfd.as_fd(), 0, 0)?;
    c.send_only("writeloop")?;
    // A: a writer child of its own BO X.
    let owner = Connection::connect(&socket)?;
    let x = owner.create_bo(pages * ps)?;
    let x_memfd = x.memfd().try_clone_to_owned()?;
    let mut a = WriterChild::spawn(WRITER.as_ref(), &socket, x_memfd.as_fd(), 0, 0)?;
    let stop = Arc::new(AtomicBool::new(false));
    let switcher = {
        let stop = stop.clone();
        std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
            let mut took = Vec::new();
            let mut to = Mechanism::UffdAsync;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                b.set_mechanism(to)?;
                took.push(t0.elapsed());
                to = if to == Mechanism::UffdAsync {
                    Mechanism::UffdSync
                } else {
                    Mechanism::UffdAsync
                };
            }
            drop(y_map);
            Ok(took)
        })
    };
    let mut writes = Vec::new();
    let t_end = Instant::now() + Duration::from_secs(4);
    let mut rng = cohmem_tools::SplitMix64::new(11);
    let mut seed = 0;
    while Instant::now() < t_end {
        seed += 1;
        for p in rng.distinct(pages, 8) {
            let t0 = Instant::now();
            a.write_pages(seed, &[p])?;
            writes.push(t0.elapsed());
        }
        let synced = a.command("sync")?;
        anyhow::ensure!(synced.starts_with("synced"), "A's sync: {synced}");
    }
    stop.store(true, Ordering::Relaxed);
    let switches = switcher.join().map_err(|_| anyhow::anyhow!("switcher panicked"))??;
    c.kill()?;
    a.quit()?;
    let (worst, median) = max_and_median(writes.clone());
    let (worst_switch, median_switch) = max_and_median(switches.clone());
    eprintln!(
        "A's writes: {} (median {median:?}, worst {worst:?}); B's switches: {} (median {median_switch:?}, worst {worst_switch:?})",
        writes.len(),
        switches.len()
    );
    anyhow::ensure!(switches.len() >= 4, "too few switches ran: {}", switches.len());
    let bound = (worst_switch + Duration::from_millis(100)).max(Duration::from_millis(250)) * time_scale();
    anyhow::ensure!(worst < bound, "a write of A took {worst:?} (bound {bound:?})");
    Ok(())
}
