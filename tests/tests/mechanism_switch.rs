//! Switching a live process between mechanisms (seed 004: "switch
//! mechanisms without losing writes"): the process's mappings stay mapped
//! and written while the daemon moves them from one userfaultfd to another.
//! Checked by bytes: after every sync, every write completed before it is in
//! the GPU copy; after a switch the next sync uploads the moved views whole
//! (what the switch could not prove clean), and from then on exactly the
//! written pages.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cohmem_client::{Connection, ErrorCode, Mechanism};
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::{soft_dirty_available, soft_dirty_serial, spawn_daemon_for, CompletedWriters};
use cohmem_tools::verify_gpu_copy;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// The tracking mechanisms this kernel has, in the order the tests cycle
/// through them.
fn tracking_mechanisms() -> Vec<Mechanism> {
    let caps = cohmem_tests::caps();
    let mut m = Vec::new();
    if caps.uffd_async.ok {
        m.push(Mechanism::UffdAsync);
    }
    if caps.uffd_sync.ok {
        m.push(Mechanism::UffdSync);
    }
    if soft_dirty_available() {
        m.push(Mechanism::SoftDirty);
    }
    m
}

#[test]
fn after_a_switch_the_views_are_uploaded_whole_once_then_exactly() -> anyhow::Result<()> {
    let _one = soft_dirty_serial();
    let mut targets = tracking_mechanisms();
    let first = targets[0];
    targets.push(Mechanism::Full);
    targets.push(first);
    let daemon = spawn_daemon_for(DAEMON, first)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let pages = 64u64;
    let bo = conn.create_bo(pages * ps)?;
    // Two views of the same BO: [0, 40) and [32, 64) (overlapping pages).
    let low = bo.map_range(0, 40 * ps)?;
    let high = bo.map_range(32 * ps, 32 * ps)?;
    assert_eq!(conn.mechanism()?, first);
    low.write(5 * ps as usize, b"before")?;
    bo.sync()?;

    let mut from = first;
    for (round, &to) in targets.iter().skip(1).enumerate() {
        let round = round as u64;
        // A write just before the switch, under the old mechanism.
        low.write_u64((7 * ps) as usize, 1000 + round)?;
        let switch = conn.set_mechanism(to)?;
        assert_eq!((switch.from, switch.to, switch.views), (from, to, 2), "{switch:?}");
        assert_eq!(conn.mechanism()?, to);
        // The views cover the whole BO; page 7 may already be in the bitmap
        // (recorded at its fault), every other page is extra.
        assert!((pages - 1..=pages).contains(&switch.extra_pages), "{switch:?}");
        let whole = bo.sync_with_runs()?;
        assert_eq!(whole.pages, pages, "first sync after switching to {to}: {whole:?}");
        assert_eq!(whole.mechanism, to);
        assert!(
            verify_gpu_copy(&bo)?.is_empty(),
            "GPU copy differs after switching to {to}"
        );

        // From now on the new mechanism reports exactly what is written
        // (full: everything, by definition).
        low.write_u64((3 * ps) as usize, round)?;
        high.write_u64(((35 - 32) * ps) as usize, round)?; // BO page 35
        high.write_u64(((60 - 32) * ps) as usize, round)?; // BO page 60
        let exact = bo.sync_with_runs()?;
        let want: Vec<u64> = if to == Mechanism::Full {
            (0..pages).collect()
        } else {
            vec![3, 35, 60]
        };
        assert_eq!(exact.pages_list(), want, "second sync under {to}");
        assert!(verify_gpu_copy(&bo)?.is_empty(), "GPU copy differs under {to}");

        // A mapping made after the switch is registered with the new
        // mechanism's uffd and tracked too.
        let late = bo.map_range(10 * ps, ps)?;
        late.write(0, b"late")?;
        let got = bo.sync_with_runs()?;
        let want: Vec<u64> = if to == Mechanism::Full {
            (0..pages).collect()
        } else {
            vec![10]
        };
        assert_eq!(got.pages_list(), want, "new mapping under {to}");
        late.unmap()?;
        from = to;
    }
    assert!(verify_gpu_copy(&bo)?.is_empty());
    low.unmap()?;
    high.unmap()?;
    let stats = conn.stats(0)?;
    assert!(
        stats.daemon.extra_pages >= pages - 1,
        "extra pages not counted: {stats:?}"
    );
    Ok(())
}

#[test]
fn switching_back_and_forth_under_concurrent_writers_loses_no_write() -> anyhow::Result<()> {
    const THREADS: u64 = 4;
    let _one = soft_dirty_serial();
    let daemon = spawn_daemon_for(DAEMON, tracking_mechanisms()[0])?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let pages_per_thread = 64u64;
    let pages = THREADS * pages_per_thread;
    let bo = conn.create_bo(pages * ps)?;
    let map = Arc::new(bo.map_detached()?);
    let res = bo.export_resource(0)?;
    let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;

    let writers = CompletedWriters::start(map.clone(), THREADS, pages_per_thread);
    // Switches come from another connection of the same process, so they
    // collide with the syncs below instead of taking turns with them.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let switcher = {
        let (path, stop, done) = (daemon.socket().to_owned(), stop.clone(), done.clone());
        std::thread::spawn(move || -> anyhow::Result<u32> {
            let conn = Connection::connect(path)?;
            let mut cycle = tracking_mechanisms();
            cycle.push(Mechanism::Full);
            let mut n = 0;
            for &to in cycle.iter().cycle().skip(1) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let s = conn.set_mechanism(to)?;
                anyhow::ensure!(s.to == to && s.views == 1, "unexpected switch {s:?}");
                n += 1;
                done.store(n, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
            Ok(n)
        })
    };

    // At least 300 syncs, and on until 10 switches collided with them (a
    // fast machine syncs 300 times in a few switch intervals).
    let t0 = std::time::Instant::now();
    let mut syncs = 0;
    while syncs < 300 || (done.load(Ordering::Relaxed) < 10 && t0.elapsed() < std::time::Duration::from_secs(30)) {
        let before = writers.snapshot();
        bo.sync()?;
        writers.check(&before, &gpu)?;
        syncs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writers.stop()?;
    let switches = switcher.join().map_err(|_| anyhow::anyhow!("switcher panicked"))??;
    bo.sync()?;
    assert!(verify_gpu_copy(&bo)?.is_empty(), "GPU copy differs at the end");
    eprintln!("{writes} writes, {switches} mechanism switches, {syncs} syncs, no write lost");
    assert!(switches >= 10, "only {switches} switches happened");
    Ok(())
}

#[test]
fn refused_switches_say_why_and_change_nothing() -> anyhow::Result<()> {
    let _one = soft_dirty_serial();
    let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdSync)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(8 * ps)?;
    let map = bo.map()?;
    assert_eq!(conn.mechanism()?, Mechanism::UffdSync);

    let none = conn.set_mechanism(Mechanism::None).expect_err("switching to none");
    assert_eq!(none.code(), Some(ErrorCode::InvalidArgument), "{none}");
    if !soft_dirty_available() {
        let e = conn
            .set_mechanism(Mechanism::SoftDirty)
            .expect_err("soft-dirty on a kernel without it");
        assert_eq!(e.code(), Some(ErrorCode::Unsupported), "{e}");
        assert!(e.to_string().contains("soft-dirty refused"), "unclear refusal: {e}");
    }
    assert_eq!(conn.mechanism()?, Mechanism::UffdSync);
    // Still tracked exactly by uffd-sync.
    map.write(2 * ps as usize, b"x")?;
    assert_eq!(bo.sync_with_runs()?.pages_list(), vec![2]);
    assert!(verify_gpu_copy(&bo)?.is_empty());
    Ok(())
}
