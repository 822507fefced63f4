//! Issue 14, items 2 and 4: the client library undoes a uffd-sync daemon's
//! write protection when, and only when, the daemon has died.
//!
//! - At the per-user connection limit, tracking goes on: the library
//!   watches the daemon through its pidfd (WATCH_DAEMON), not through an
//!   extra connection the daemon could refuse and close, which the library
//!   took for death (every later write was lost).
//! - The daemon killed at random points of a switch from uffd-async to
//!   uffd-sync: no writer stays blocked (the guard watches before any view
//!   is handed to the synchronous uffd), and after a restart the library
//!   re-registers every view with what the new daemon chose, and the writes
//!   reach the new daemon's GPU copy.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohmem_client::{Connection, Mechanism};
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::{spawn_daemon_with, time_scale};
use cohmem_tools::SplitMix64;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// Waits until the daemon counts `n` connections.
fn wait_connections(conn: &Connection, n: u32) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while conn.stats(0)?.daemon.connections != n {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "the daemon never counted {n} connections"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[test]
fn tracking_goes_on_at_the_connection_limit() -> anyhow::Result<()> {
    if !cohmem_tests::caps().uffd_sync.ok {
        eprintln!("uffd-sync unavailable on this kernel");
        return Ok(());
    }
    let daemon = spawn_daemon_with(DAEMON, &["--mechanism", "uffd-sync", "--max-connections-per-user", "2"])?;
    let conn = Connection::connect(daemon.socket())?;
    // The start-up probe's connection is gone; a second connection of
    // this user fills the quota.
    wait_connections(&conn, 1)?;
    let _filler = Connection::connect(daemon.socket())?;
    wait_connections(&conn, 2)?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo(8 * ps as u64)?;
    let map = bo.map()?;
    anyhow::ensure!(conn.mechanism()? == Mechanism::UffdSync);
    let res = bo.export_resource(0)?;
    let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
    // A refused connection is closed about a second later: writes after
    // that are the ones that were lost.
    for round in 1..=3u64 {
        map.write_u64(round as usize * ps, round)?;
        let done = bo.sync_with_runs()?;
        anyhow::ensure!(
            gpu.read_u64(round as usize * ps)? == round && done.pages_list() == [round],
            "round {round}: the write is not in the GPU copy (sync uploaded {:?})",
            done.pages_list()
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    anyhow::ensure!(
        conn.stats(0)?.daemon.connections == 2,
        "the library opened no other connection"
    );
    eprintln!("3 rounds 0.7 s apart at the connection limit (2 of 2): every write uploaded");
    Ok(())
}

/// Prints where each thread of this process waits in the kernel (to tell a
/// writer blocked in a fault from one the scheduler did not run).
fn print_thread_stacks() {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for e in dir.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let stack = std::fs::read_to_string(e.path().join("stack")).unwrap_or_default();
        let top: Vec<&str> = stack.lines().take(5).collect();
        eprintln!("thread {:?} {}: {}", e.file_name(), comm.trim(), top.join(" | "));
    }
}

/// Writer threads counting their completed stores.
struct Writers {
    done: Vec<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Writers {
    fn start(map: &Arc<cohmem_client::Mapping<'static>>, count: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ps = cohmem_sys::page_size() as usize;
        let pages = map.len() / ps;
        let done: Vec<Arc<AtomicU64>> = (0..count).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let threads = (0..count)
            .map(|t| {
                let (map, stop, done) = (map.clone(), stop.clone(), done[t].clone());
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let p = (t + count * (n as usize)) % pages;
                        map.write_u64(p * ps, n)?;
                        n += 1;
                        done.store(n, Ordering::Release);
                        // Mostly asleep: on a loaded machine a spinning
                        // writer can wait for a CPU longer than the bound.
                        if n % 64 == 0 {
                            std::thread::sleep(Duration::from_micros(20));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        Self { done, stop, threads }
    }

    /// Completed stores per writer.
    fn counts(&self) -> Vec<u64> {
        self.done.iter().map(|d| d.load(Ordering::Acquire)).collect()
    }

    fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        }
        Ok(())
    }
}

#[test]
fn the_daemon_killed_during_a_switch_to_uffd_sync_blocks_no_writer() -> anyhow::Result<()> {
    let caps = cohmem_tests::caps();
    if !(caps.uffd_sync.ok && caps.uffd_async.ok) {
        eprintln!("this kernel lacks uffd-async or uffd-sync");
        return Ok(());
    }
    let scale = time_scale();
    // The VM tier's emulated machine runs fewer iterations (each is a
    // daemon restart).
    let iterations = (100 / scale).max(5);
    let bound = Duration::from_millis(100) * scale;
    let mut rng = SplitMix64::new(SplitMix64::seed_from_time());
    let mut daemon = spawn_daemon_with(DAEMON, &["--mechanism", "auto"])?;
    let ps = cohmem_sys::page_size() as usize;
    let mut worst = Duration::ZERO;
    let (mut switched, mut torn) = (0, 0);
    for i in 0..iterations {
        let conn = Connection::connect(daemon.socket())?;
        let bo = conn.create_bo(64 * ps as u64)?;
        let map = Arc::new(bo.map_detached()?);
        anyhow::ensure!(conn.mechanism()? == Mechanism::UffdAsync, "auto picks uffd-async here");
        let writers = Writers::start(&map, 2);
        let switcher = {
            let conn = conn.clone();
            std::thread::spawn(move || conn.set_mechanism(Mechanism::UffdSync))
        };
        let delay = Duration::from_micros(rng.below(1500));
        std::thread::sleep(delay);
        daemon.kill9()?;
        let killed = Instant::now();
        let at_kill = writers.counts();
        // Every writer completes a store after the kill within the bound.
        loop {
            let now = writers.counts();
            if now.iter().zip(&at_kill).all(|(n, k)| n > k) {
                worst = worst.max(killed.elapsed());
                break;
            }
            if killed.elapsed() >= bound {
                print_thread_stacks();
            }
            anyhow::ensure!(
                killed.elapsed() < bound,
                "iteration {i} (daemon killed {delay:?} into SET_MECHANISM): writers blocked {:?} after the kill \
                 (stores per writer at the kill {at_kill:?}, now {now:?})",
                killed.elapsed()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        match switcher.join().map_err(|_| anyhow::anyhow!("switcher panicked"))? {
            Ok(_) => switched += 1,
            Err(_) => torn += 1,
        }
        writers.stop()?;
        // A restarted daemon takes the process back: a write after the
        // restart reaches its GPU copy, and no writer blocks.
        daemon.restart()?;
        map.write_u64(5 * ps, 0xfeed + i as u64)?;
        bo.sync()?;
        let res = bo.export_resource(0)?;
        let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
        for p in 0..64 {
            let (want, got) = (map.read_u64(p * ps)?, gpu.read_u64(p * ps)?);
            anyhow::ensure!(
                want == got,
                "iteration {i}: after the restart page {p} has {got:#x} on the GPU, {want:#x} in the BO"
            );
        }
        let again = Writers::start(&map, 2);
        bo.sync()?;
        let synced = Instant::now();
        let before = again.counts();
        while !again.counts().iter().zip(&before).all(|(n, b)| n > b) {
            if synced.elapsed() >= bound {
                print_thread_stacks();
            }
            anyhow::ensure!(
                synced.elapsed() < bound,
                "iteration {i}: writers stalled after the restart ({:?})",
                conn.mechanism()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        again.stop()?;
        drop(map);
        drop(bo);
        drop(conn);
    }
    eprintln!(
        "{iterations} kills during SET_MECHANISM ({switched} after the switch completed, {torn} torn): every \
         writer resumed within {worst:?} (bound {bound:?}); every GPU copy exact after the restart"
    );
    Ok(())
}
