//! The `shadow` policy (issue 19): no tracking; each SYNC compares the BO
//! with the copy the GPU last received and uploads exactly the pages whose
//! bytes differ. Checked by bytes (the GPU copy against the BO) after every
//! sync; pages rewritten with their old bytes are not uploaded; a page that
//! flips back to the shadow's bytes while syncs run (the ABA case a naive
//! compare-then-copy from the BO would lose) is never lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cohmem_client::{BoPolicy, Connection, Mechanism, Method};
use cohmem_tests::spawn_daemon_for;
use cohmem_tools::verify_gpu_copy;

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

cohmem_tests::test_each_mechanism!(shadow_uploads_exactly_the_changed_pages, shadow_with);

fn shadow_with(mechanism: Mechanism) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let pages = 256u64;
    let bo = conn.create_bo(pages * ps)?;
    let map = bo.map()?;
    map.write(0, b"before")?;
    bo.sync()?;
    let (previous, method) = conn.set_policy(bo.id(), BoPolicy::Shadow)?;
    assert_eq!((previous, method), (BoPolicy::Auto, Method::PageTable), "{mechanism}");
    // Entering the policy uploads the whole BO once, through the shadow.
    assert_eq!(bo.sync()?.pages, pages, "{mechanism}: first sync under shadow");
    assert!(verify_gpu_copy(&bo)?.is_empty(), "{mechanism}: GPU copy differs");
    // Nothing written: nothing uploaded.
    assert_eq!(bo.sync()?.pages, 0, "{mechanism}: quiet sync");
    for round in 1..=6u64 {
        let written: Vec<u64> = (0..pages).filter(|p| (p * 7 + round * 13) % 29 == 0).collect();
        for &p in &written {
            map.write_u64((p * ps + 8 * round) as usize, round * 1000 + p)?;
        }
        // A page rewritten with the bytes it already has is not a change.
        let mut same = [0u8; 16];
        map.read(200 * ps as usize, &mut same)?;
        map.write(200 * ps as usize, &same)?;
        let mut want = written.clone();
        want.retain(|&p| p != 200);
        let done = bo.sync_with_runs()?;
        let mut got = done.pages_list();
        got.sort_unstable();
        assert_eq!(got, want, "{mechanism}: round {round}");
        assert!(
            verify_gpu_copy(&bo)?.is_empty(),
            "{mechanism}: GPU copy differs, round {round}"
        );
    }
    // Leaving the policy uploads the whole BO once more, then tracks again.
    let (previous, _) = conn.set_policy(bo.id(), BoPolicy::Auto)?;
    assert_eq!(previous, BoPolicy::Shadow);
    assert_eq!(bo.sync()?.pages, pages, "{mechanism}: first sync after shadow");
    map.write_u64((9 * ps) as usize, 9)?;
    assert_eq!(bo.sync_with_runs()?.pages_list(), vec![9], "{mechanism}");
    assert!(verify_gpu_copy(&bo)?.is_empty(), "{mechanism}: GPU copy differs");
    Ok(())
}

/// A writer flips words between two values while the main thread syncs;
/// now and then it stops after a flip back and a sync must leave the GPU
/// copy equal to the BO. Uploading from the BO after comparing (instead of
/// through the shadow) loses the flip back: the GPU keeps the newer value
/// while the shadow holds the old one, which the BO then holds again.
#[test]
fn pages_flipping_back_to_the_shadow_bytes_are_never_lost() -> anyhow::Result<()> {
    let mechanism = if cohmem_tests::caps().uffd_async.ok {
        Mechanism::UffdAsync
    } else {
        Mechanism::UffdSync
    };
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let pages = 64u64;
    let bo = conn.create_bo(pages * ps)?;
    let map = Arc::new(bo.map_detached()?);
    conn.set_policy(bo.id(), BoPolicy::Shadow)?;
    bo.sync()?;
    let pause = Arc::new(AtomicBool::new(false));
    let paused_at = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (map, pause, paused_at, stop) = (map.clone(), pause.clone(), paused_at.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut flips = 0u64;
            while !stop.load(Ordering::Acquire) {
                if pause.load(Ordering::Acquire) {
                    paused_at.store(flips + 1, Ordering::Release);
                    std::thread::yield_now();
                    continue;
                }
                paused_at.store(0, Ordering::Release);
                flips += 1;
                let value = if flips % 2 == 0 { 0xAAAA } else { 0x5555 };
                for p in 0..pages {
                    map.write_u64((p * ps + 64) as usize, value)?;
                }
            }
            Ok(flips)
        })
    };
    let mut checks = 0;
    let t0 = std::time::Instant::now();
    for i in 0..400u64 {
        bo.sync()?;
        if i % 20 == 19 {
            pause.store(true, Ordering::Release);
            while paused_at.load(Ordering::Acquire) == 0 {
                std::thread::yield_now();
            }
            bo.sync()?;
            let bad = verify_gpu_copy(&bo)?;
            assert!(bad.is_empty(), "after {i} syncs: pages {bad:?} differ on the GPU");
            checks += 1;
            pause.store(false, Ordering::Release);
        }
    }
    stop.store(true, Ordering::Release);
    let flips = writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    bo.sync()?;
    assert!(verify_gpu_copy(&bo)?.is_empty(), "GPU copy differs at the end");
    eprintln!(
        "{mechanism}: {flips} flips of {pages} pages, 400 syncs, {checks} quiesced checks in {:?}, none lost",
        t0.elapsed()
    );
    assert!(flips > 40, "the writer flipped only {flips} times");
    Ok(())
}

/// (policy, paused) of BO `id` as STATS reports it.
fn policy_row(conn: &Connection, id: u64) -> anyhow::Result<(u16, bool)> {
    let s = conn.stats(cohmem_proto::STATS_BOS)?;
    let b = s
        .bos
        .iter()
        .find(|b| b.id == id)
        .ok_or_else(|| anyhow::anyhow!("BO {id} not in STATS"))?;
    Ok((b.policy, b.flags & cohmem_proto::BO_ROW_PAUSED != 0))
}

/// A daemon whose clients use uffd-async, where `auto` compares small BOs,
/// and a connection to it. Where the kernel has no uffd-async (Linux 6.1)
/// checks instead that a small BO is tracked, not compared, and gives
/// `None`.
fn async_daemon() -> anyhow::Result<Option<(cohmem_tools::DaemonProcess, Connection)>> {
    if cohmem_tests::caps().uffd_async.ok {
        let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdAsync)?;
        let conn = Connection::connect(daemon.socket())?;
        return Ok(Some((daemon, conn)));
    }
    let daemon = cohmem_tests::spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let bo = conn.create_bo(16 * cohmem_sys::page_size())?;
    let map = bo.map()?;
    map.write_u64(0, 1)?;
    bo.sync()?;
    let (policy, paused) = policy_row(&conn, bo.id())?;
    assert!(
        !paused,
        "without uffd-async a small BO must stay tracked (policy {policy})"
    );
    eprintln!("no uffd-async on this kernel: auto keeps tracking small BOs (checked)");
    Ok(None)
}

/// `auto` compares a small BO (≤ `--auto-shadow-max-bytes`, 64 KiB by
/// default) whose clients use uffd-async instead of tracking it: after its
/// first sync the views are unprotected (STATS shows it paused, policy
/// still auto), syncs upload exactly the pages whose bytes changed, and a
/// larger BO, or any BO with the option 0, is tracked as before.
#[test]
fn auto_compares_small_bos_instead_of_tracking_them() -> anyhow::Result<()> {
    if async_daemon()?.is_none() {
        return Ok(());
    }
    let ps = cohmem_sys::page_size();
    for (option, size, compared) in [
        (None, 16 * ps, true),
        (None, 32 * ps, false),
        (Some("0"), 16 * ps, false),
        (Some("131072"), 32 * ps, true),
    ] {
        let extra: Vec<&str> = option.map_or(vec![], |o| vec!["--auto-shadow-max-bytes", o]);
        let daemon = cohmem_tests::spawn_daemon_with(DAEMON, &extra)?;
        let conn = Connection::connect(daemon.socket())?;
        let bo = conn.create_bo(size)?;
        let map = bo.map()?;
        map.write_u64((3 * ps) as usize, 3)?;
        assert_eq!(bo.sync_with_runs()?.pages_list(), vec![3]);
        let what = format!("{} KiB BO, --auto-shadow-max-bytes {option:?}", size >> 10);
        assert_eq!(
            policy_row(&conn, bo.id())?,
            (BoPolicy::Auto as u16, compared),
            "{what}: (policy, paused)"
        );
        for round in 1..=5u64 {
            map.write_u64((5 * ps) as usize, round)?;
            map.write_u64(((round + 6) * ps) as usize, round)?;
            // Same bytes again: a change only for tracking.
            map.write_u64((3 * ps) as usize, 3)?;
            let mut got = bo.sync_with_runs()?.pages_list();
            got.sort_unstable();
            let mut want = vec![5, round + 6];
            if !compared {
                want.insert(0, 3);
            }
            assert_eq!(got, want, "{what}: round {round}");
            assert!(verify_gpu_copy(&bo)?.is_empty(), "{what}: GPU copy differs");
        }
    }
    Ok(())
}

/// The switch from tracking to comparing happens inside a sync while
/// writers go on: every value completed before each SYNC must be in the
/// GPU copy after it, on fresh small BOs (each switches once, under load).
#[test]
fn switching_a_small_bo_to_compare_under_concurrent_writers_loses_no_write() -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let Some((_daemon, conn)) = async_daemon()? else {
        return Ok(());
    };
    let ps = cohmem_sys::page_size();
    let (threads, per_thread) = (4u64, 4u64);
    let mut total_writes = 0;
    for n in 0..20 {
        let bo = conn.create_bo(threads * per_thread * ps)?;
        let map = Arc::new(bo.map_detached()?);
        let res = bo.export_resource(0)?;
        let gpu = cohmem_sys::mapping::SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
        let writers = cohmem_tests::CompletedWriters::start(map.clone(), threads, per_thread);
        for _ in 0..30 {
            let before = writers.snapshot();
            bo.sync()?;
            writers.check(&before, &gpu)?;
        }
        total_writes += writers.stop()?;
        bo.sync()?;
        assert!(verify_gpu_copy(&bo)?.is_empty(), "BO {n}: GPU copy differs at the end");
        assert!(policy_row(&conn, bo.id())?.1, "BO {n} was not switched to compare");
    }
    eprintln!("20 small BOs switched under 4 writers each, {total_writes} writes, 600 syncs checked, none lost");
    Ok(())
}

/// The switch's window, aimed at: a writer stores into each page of a
/// fresh small BO exactly once, spread over the first sync (the one that
/// switches), so a store that lands between the switch's harvest and its
/// copy into the shadow is never rewritten and hidden by a later one. The
/// GPU copy must equal the BO after the next sync, every round.
#[test]
fn a_write_during_the_switch_to_compare_is_not_lost() -> anyhow::Result<()> {
    let Some((_daemon, conn)) = async_daemon()? else {
        return Ok(());
    };
    let ps = cohmem_sys::page_size();
    let pages = 16u64;
    for round in 1..=150u64 {
        let bo = conn.create_bo(pages * ps)?;
        let map = Arc::new(bo.map_detached()?);
        let go = Arc::new(AtomicBool::new(false));
        let writer = {
            let (map, go) = (map.clone(), go.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                while !go.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                // Stores spread over a few tens of µs, around the sync.
                let spread = (round % 7 + 1) * 400;
                for p in 0..pages {
                    map.write_u64((p * ps + 8 * (p % 8)) as usize, round << 8 | p)?;
                    for _ in 0..spread {
                        std::hint::spin_loop();
                    }
                }
                Ok(())
            })
        };
        go.store(true, Ordering::Release);
        bo.sync()?;
        writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        bo.sync()?;
        let bad = verify_gpu_copy(&bo)?;
        assert!(bad.is_empty(), "round {round}: pages {bad:?} differ on the GPU");
    }
    Ok(())
}

/// Whether resource `index` (a byte resource at BO bytes `window`) holds
/// exactly the BO's bytes there.
fn resource_matches(bo: &cohmem_client::Bo, index: u32, window: std::ops::Range<u64>) -> anyhow::Result<bool> {
    use std::os::fd::AsFd;
    let res = bo.export_resource(index)?;
    let len = (window.end - window.start) as usize;
    let gpu = cohmem_sys::mapping::SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
    let (mut want, mut got) = (vec![0u8; len], vec![0u8; len]);
    bo.read_at(window.start, &mut want)?;
    gpu.read_at(0, &mut got)?;
    Ok(want == got)
}

/// Under the `shadow` policy, a second resource over part of the BO and a
/// writer flipping values back and forth: both resources equal the BO after
/// every quiesced sync (the shadow is refreshed once for all resources, so
/// they can never receive different bytes of one page).
#[test]
fn overlapping_resources_under_shadow_get_the_same_bytes() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdSync)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let pages = 32u64;
    let bo = conn.create_bo(pages * ps)?;
    let second = bo.add_resource(8 * ps, 16 * ps)?;
    let map = Arc::new(bo.map_detached()?);
    conn.set_policy(bo.id(), BoPolicy::Shadow)?;
    bo.sync()?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (map, stop) = (map.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                for p in 8..24 {
                    map.write_u64((p * ps) as usize, if n % 2 == 0 { 7 } else { 9 })?;
                }
            }
            Ok(n)
        })
    };
    for _ in 0..200 {
        bo.sync()?;
    }
    stop.store(true, Ordering::Release);
    let flips = writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    bo.sync()?;
    assert!(
        resource_matches(&bo, 0, 0..pages * ps)?,
        "resource 0 differs after {flips} flips"
    );
    assert!(
        resource_matches(&bo, second, 8 * ps..24 * ps)?,
        "resource {second} differs after {flips} flips"
    );
    Ok(())
}

/// A resource added while a small BO is compared receives the BO's bytes,
/// not the shadow's; a page then put back to the shadow's bytes must still
/// reach it.
#[test]
fn a_resource_added_while_comparing_gets_the_bytes_put_back() -> anyhow::Result<()> {
    let Some((_daemon, conn)) = async_daemon()? else {
        return Ok(());
    };
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(16 * ps)?;
    let map = bo.map()?;
    map.write_u64((2 * ps) as usize, 0xA)?;
    bo.sync()?;
    assert!(policy_row(&conn, bo.id())?.1, "the small BO is not compared");
    map.write_u64((2 * ps) as usize, 0xB)?;
    let added = bo.add_resource(0, 4 * ps)?;
    map.write_u64((2 * ps) as usize, 0xA)?;
    bo.sync()?;
    assert!(resource_matches(&bo, added, 0..4 * ps)?, "the added resource kept 0xB");
    assert!(verify_gpu_copy(&bo)?.is_empty(), "resource 0 differs");
    Ok(())
}

/// CLEAR_ALL drops dirty bits, which a compare cannot honour: a compared BO
/// goes back to tracking first (`auto`), or makes its shadow again with the
/// whole BO marked (the `shadow` policy). Either way a page written after
/// the clear reaches the GPU, even when it gets the shadow's old bytes.
#[test]
fn clearing_a_compared_bo_loses_no_later_write() -> anyhow::Result<()> {
    for pinned in [false, true] {
        let Some((_daemon, conn)) = async_daemon()? else {
            return Ok(());
        };
        let ps = cohmem_sys::page_size();
        let bo = conn.create_bo(16 * ps)?;
        let map = bo.map()?;
        if pinned {
            conn.set_policy(bo.id(), BoPolicy::Shadow)?;
        }
        map.write_u64((4 * ps) as usize, 0xD)?;
        bo.sync()?;
        assert!(policy_row(&conn, bo.id())?.1, "pinned {pinned}: not compared");
        // Written, then cleared: vmwgfx drops it (the GPU is told it has it).
        map.write_u64((4 * ps) as usize, 0xE)?;
        bo.clear_all()?;
        // Then the page gets the bytes the shadow holds: a write all the same.
        map.write_u64((4 * ps) as usize, 0xD)?;
        let done = bo.sync_with_runs()?;
        assert!(
            done.pages_list().contains(&4),
            "pinned {pinned}: page 4 not uploaded: {done:?}"
        );
        assert!(verify_gpu_copy(&bo)?.is_empty(), "pinned {pinned}: GPU copy differs");
        // And the BO goes on syncing exactly.
        map.write_u64((6 * ps) as usize, 6)?;
        let mut got = bo.sync_with_runs()?.pages_list();
        got.sort_unstable();
        assert!(got.contains(&6), "pinned {pinned}: {got:?}");
        assert!(verify_gpu_copy(&bo)?.is_empty(), "pinned {pinned}: GPU copy differs");
    }
    Ok(())
}

/// A shadow the operator asks for is charged to the BO's uid: over the
/// byte quota there is none, and the BO is uploaded whole at each sync (as
/// under `full`), never compared against nothing; within it, compared.
#[test]
fn shadow_copies_count_against_the_uids_byte_quota() -> anyhow::Result<()> {
    let ps = cohmem_sys::page_size();
    let size = 256 * ps;
    for (quota, compared) in [(size + size / 2, false), (2 * size, true)] {
        let q = quota.to_string();
        let daemon = cohmem_tests::spawn_daemon_with(DAEMON, &["--max-bytes-per-user", &q])?;
        let conn = Connection::connect(daemon.socket())?;
        let bo = conn.create_bo(size)?;
        let map = bo.map()?;
        conn.set_policy(bo.id(), BoPolicy::Shadow)?;
        bo.sync()?;
        for round in 1..=3u64 {
            map.write_u64((round * ps) as usize, round)?;
            let done = bo.sync()?;
            let want = if compared { 1 } else { 256 };
            assert_eq!(done.pages, want, "quota {quota}: round {round}");
            assert!(verify_gpu_copy(&bo)?.is_empty(), "quota {quota}: GPU copy differs");
        }
        // Another BO may still take what the quota has left when there
        // is no shadow; none is left when there is.
        let other = conn.create_bo(size / 2);
        assert_eq!(other.is_ok(), !compared, "quota {quota}: {other:?}");
    }
    Ok(())
}
