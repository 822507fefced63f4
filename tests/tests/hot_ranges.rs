//! Hot ranges (issue 19, item 5): pages a client rewrites at every sync are
//! left writable and compared with a shadow instead of write-faulting every
//! frame. Checked by bytes (every resource equals the BO after each sync,
//! through a resource added, a READBACK and mechanism switches while
//! ranges are hot; no write completed before a SYNC is missing with a
//! writer thread racing the syncs) and by the client's page faults (they
//! stop with hot ranges, and do not without them).

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cohmem_client::{Bo, Connection, Mechanism};
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::{caps, expect_uffd_async_refused, spawn_daemon_with};
use nix::sys::resource::{getrusage, UsageWho};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// BO pages: 1 MiB, over `--auto-shadow-max-bytes` (tracked, not compared whole).
const PAGES: usize = 256;
/// The pages rewritten every round.
const HOT: std::ops::Range<usize> = 16..48;

/// Minor faults of this thread so far.
fn faults() -> anyhow::Result<i64> {
    Ok(getrusage(UsageWho::RUSAGE_THREAD)?.minor_page_faults())
}

/// Every resource of `bo` (index, mapped GPU copy, BO byte window) equals
/// the BO's bytes.
fn check_resources(bo: &Bo, gpus: &[(u32, SharedMapping, std::ops::Range<usize>)], what: &str) -> anyhow::Result<()> {
    let map = bo.map()?;
    let mut want = vec![0u8; bo.size() as usize];
    map.read(0, &mut want)?;
    for (index, gpu, window) in gpus {
        let mut got = vec![0u8; window.len()];
        gpu.read_at(0, &mut got)?;
        if let Some(i) = got.iter().zip(&want[window.clone()]).position(|(a, b)| a != b) {
            let page = (window.start + i) / cohmem_sys::page_size() as usize;
            anyhow::bail!(
                "{what}: resource {index} differs from the BO at byte {} (page {page})",
                window.start + i
            );
        }
    }
    Ok(())
}

/// Runs `rounds` of: rewrite the hot pages (and two others), sync, compare
/// every resource with the BO. Returns the median faults of the hot
/// rewrites after the first five rounds.
fn rounds(
    conn: &Connection,
    bo: &Bo,
    gpus: &mut Vec<(u32, SharedMapping, std::ops::Range<usize>)>,
    mut stamp: u64,
    with_events: bool,
) -> anyhow::Result<i64> {
    let ps = cohmem_sys::page_size() as usize;
    let map = bo.map()?;
    let mut hot_faults = Vec::new();
    for round in 0..60u64 {
        match (with_events, round) {
            (true, 20) => {
                let index = bo.add_resource((8 * ps) as u64, (64 * ps) as u64)?;
                let res = bo.export_resource(index)?;
                gpus.push((
                    index,
                    SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?,
                    8 * ps..72 * ps,
                ));
            }
            (true, 25) => {
                bo.readback()?;
            }
            (true, 30) => {
                conn.set_mechanism(Mechanism::UffdSync)?;
            }
            (true, 40) => {
                conn.set_mechanism(Mechanism::UffdAsync)?;
            }
            _ => {}
        }
        let before = faults()?;
        for page in HOT {
            stamp += 1;
            // Rows of a sprite: a few bytes here and there in each page.
            map.write_u64(page * ps + ((stamp as usize * 64) % ps), stamp)?;
        }
        hot_faults.push(faults()? - before);
        // A page rewritten with the bytes it had: nothing to upload there.
        if round % 7 == 3 {
            let mut old = [0u8; 8];
            map.read(HOT.start * ps + 8, &mut old)?;
            map.write(HOT.start * ps + 8, &[0xee; 8])?;
            map.write(HOT.start * ps + 8, &old)?;
        }
        for page in [(round as usize * 13) % PAGES, 200 + (round as usize % 50)] {
            stamp += 1;
            map.write_u64(page * ps + 128, stamp)?;
        }
        bo.sync()?;
        check_resources(bo, gpus, &format!("round {round}"))?;
    }
    hot_faults.drain(..5);
    hot_faults.sort_unstable();
    Ok(hot_faults[hot_faults.len() / 2])
}

#[test]
fn rewritten_pages_stop_faulting_and_every_resource_keeps_the_bo_bytes() -> anyhow::Result<()> {
    if !caps().uffd_async.ok || !caps().uffd_sync.ok {
        return expect_uffd_async_refused(DAEMON);
    }
    let ps = cohmem_sys::page_size() as usize;
    let mut medians = Vec::new();
    for hot_max in ["4096", "0"] {
        let daemon = spawn_daemon_with(DAEMON, &["--mechanism", "uffd-async", "--auto-hot-max-pages", hot_max])?;
        let conn = Connection::connect(daemon.socket())?;
        let bo = conn.create_bo((PAGES * ps) as u64)?;
        let res = bo.export_resource(0)?;
        let mut gpus = vec![(
            0,
            SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?,
            0..PAGES * ps,
        )];
        let median = rounds(&conn, &bo, &mut gpus, 1 << 40, hot_max != "0")?;
        medians.push(median);
        println!(
            "--auto-hot-max-pages {hot_max}: median faults of {} hot page rewrites: {median}",
            HOT.len()
        );
    }
    let hot = HOT.len() as i64;
    anyhow::ensure!(
        medians[0] <= hot / 8,
        "with hot ranges the rewrites still fault: median {} of {hot}",
        medians[0]
    );
    anyhow::ensure!(
        medians[1] >= hot * 3 / 4,
        "without hot ranges every rewrite should fault once: median {} of {hot}",
        medians[1]
    );
    Ok(())
}

#[test]
fn no_write_completed_before_a_sync_is_missing_while_ranges_are_hot() -> anyhow::Result<()> {
    if !caps().uffd_async.ok {
        return expect_uffd_async_refused(DAEMON);
    }
    let ps = cohmem_sys::page_size() as usize;
    let daemon = spawn_daemon_with(DAEMON, &["--mechanism", "uffd-async"])?;
    let conn = Connection::connect(daemon.socket())?;
    let bo = Arc::new(conn.create_bo((PAGES * ps) as u64)?);
    let res = bo.export_resource(0)?;
    let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
    // Page p's word holds the last stamp written; completed[p] the last one
    // whose write had finished.
    let completed: Arc<Vec<AtomicU64>> = Arc::new((0..PAGES).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (bo, completed, stop) = (bo.clone(), completed.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let map = bo.map()?;
            let mut stamp = 0u64;
            while !stop.load(Ordering::Relaxed) {
                stamp += 1;
                // Mostly the hot pages, sometimes one of the others.
                let page = match stamp % 11 {
                    0 => (stamp as usize / 11) % PAGES,
                    _ => HOT.start + (stamp as usize % HOT.len()),
                };
                map.write_u64(page * ps, stamp)?;
                completed[page].store(stamp, Ordering::Release);
            }
            Ok(stamp)
        })
    };
    let mut lost = Vec::new();
    let syncs = 2000;
    for n in 0..syncs {
        let before: Vec<u64> = completed.iter().map(|c| c.load(Ordering::Acquire)).collect();
        bo.sync()?;
        for (page, &want) in before.iter().enumerate() {
            let got = gpu.read_u64(page * ps)?;
            if got < want {
                lost.push(format!(
                    "sync {n}: page {page} completed {want} before SYNC, GPU has {got}"
                ));
            }
        }
        if lost.len() > 10 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    println!("{writes} writes, {syncs} syncs, {} lost", lost.len());
    anyhow::ensure!(lost.is_empty(), "lost writes: {lost:#?}");
    Ok(())
}

/// Rewrites pages [`HOT`] of `bo` through `map` over 8 syncs (hot when the
/// daemon keeps hot ranges), stamping from `stamp`.
fn warm(bo: &Bo, map: &cohmem_client::Mapping<'_>, stamp: &mut u64) -> anyhow::Result<()> {
    let ps = cohmem_sys::page_size() as usize;
    for _ in 0..8 {
        for page in HOT {
            *stamp += 1;
            map.write_u64(page * ps + 64, *stamp)?;
        }
        bo.sync()?;
    }
    Ok(())
}

/// The operations besides SYNC that see a hot page's write (the view stays
/// mapped: the write is in no bitmap until something harvests or compares
/// it): a TRANSFER of one resource leaves an overlapping resource's copy to
/// the next SYNC; SCAN, SET_POLICY and the view's removal put the write in
/// the bitmap for a TRANSFER (found by a review: each lost the write before).
#[test]
fn transfer_scan_set_policy_and_unmap_see_hot_writes() -> anyhow::Result<()> {
    if !caps().uffd_async.ok {
        return expect_uffd_async_refused(DAEMON);
    }
    let ps = cohmem_sys::page_size() as usize;
    let size = (PAGES * ps) as u64;
    let mut stamp = 1u64 << 40;
    let daemon = spawn_daemon_with(DAEMON, &["--mechanism", "uffd-async"])?;
    let conn = Connection::connect(daemon.socket())?;
    let gpu = |bo: &Bo, index: u32| -> anyhow::Result<SharedMapping> {
        let res = bo.export_resource(index)?;
        Ok(SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?)
    };

    // TRANSFER of resource 0, then SYNC: resource 1 (pages 8..72) too.
    let bo = conn.create_bo(size)?;
    let map = bo.map()?;
    warm(&bo, &map, &mut stamp)?;
    let r1 = bo.add_resource((8 * ps) as u64, (64 * ps) as u64)?;
    let g1 = gpu(&bo, r1)?;
    // No sync: the new resource's hot pages are marked, so the TRANSFER
    // takes page 20 and refreshes the shadow with it.
    map.write_u64(20 * ps + 64, 0xdead)?;
    bo.transfer(0)?;
    // A second TRANSFER finds the shadow already holding page 20's bytes
    // (found by a second review: resource 1 was then forgotten).
    bo.transfer(0)?;
    bo.sync()?;
    anyhow::ensure!(
        g1.read_u64(12 * ps + 64)? == 0xdead,
        "TRANSFER 0 + SYNC: resource 1 missed page 20"
    );

    // SCAN, then TRANSFER: the scan's harvest puts the write in the bitmap.
    let bo = conn.create_bo(size)?;
    let map = bo.map()?;
    let g0 = gpu(&bo, 0)?;
    warm(&bo, &map, &mut stamp)?;
    map.write_u64(20 * ps + 64, 0xbeef)?;
    bo.scan()?;
    bo.transfer(0)?;
    anyhow::ensure!(g0.read_u64(20 * ps + 64)? == 0xbeef, "SCAN + TRANSFER missed page 20");

    // SET_POLICY mkwrite, then TRANSFER.
    let bo = conn.create_bo(size)?;
    let map = bo.map()?;
    let g0 = gpu(&bo, 0)?;
    warm(&bo, &map, &mut stamp)?;
    map.write_u64(20 * ps + 64, 0xabcd)?;
    bo.set_policy(cohmem_client::BoPolicy::MkWrite)?;
    bo.transfer(0)?;
    anyhow::ensure!(
        g0.read_u64(20 * ps + 64)? == 0xabcd,
        "SET_POLICY + TRANSFER missed page 20"
    );

    // The view unmapped (its removal harvests it), then TRANSFER.
    let bo = conn.create_bo(size)?;
    let map = bo.map()?;
    let g0 = gpu(&bo, 0)?;
    warm(&bo, &map, &mut stamp)?;
    map.write_u64(20 * ps + 64, 0xfeed)?;
    drop(map);
    bo.transfer(0)?;
    anyhow::ensure!(g0.read_u64(20 * ps + 64)? == 0xfeed, "unmap + TRANSFER missed page 20");
    Ok(())
}

/// The same TRANSFER under `auto`'s whole-BO compare of a small BO, which
/// had the flaw before hot ranges did.
#[test]
fn transfer_of_a_compared_small_bo_leaves_overlapping_resources_to_the_next_sync() -> anyhow::Result<()> {
    if !caps().uffd_async.ok {
        return expect_uffd_async_refused(DAEMON);
    }
    let ps = cohmem_sys::page_size() as usize;
    let daemon = spawn_daemon_with(DAEMON, &["--mechanism", "uffd-async"])?;
    let conn = Connection::connect(daemon.socket())?;
    let bo = conn.create_bo((16 * ps) as u64)?;
    let map = bo.map()?;
    for i in 0..4u64 {
        map.write_u64(2 * ps, 100 + i)?;
        bo.sync()?;
    }
    let r1 = bo.add_resource(0, (8 * ps) as u64)?;
    let res = bo.export_resource(r1)?;
    let g1 = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
    map.write_u64(2 * ps, 0xfeed)?;
    bo.transfer(0)?;
    bo.transfer(0)?;
    bo.sync()?;
    anyhow::ensure!(
        g1.read_u64(2 * ps)? == 0xfeed,
        "TRANSFER 0 + SYNC: resource 1 missed page 2"
    );
    Ok(())
}
