//! Per-BO tracking policies (issue 7, `cohmemctl set-policy BO
//! auto|mkwrite|pagetable|full`): a pinned method is switched to at once and
//! then never switched or paused; `full` uploads the whole BO at every sync;
//! leaving `full` uploads the whole BO once more, then exactly the written
//! pages. Checked by bytes after every sync, and under concurrent writers
//! while the policy keeps changing.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cohmem_client::{BoPolicy, Connection, ErrorCode, Mechanism, Method};
use cohmem_proto::{BO_ROW_PAUSED, STATS_BOS};
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::{spawn_daemon_for, CompletedWriters};
use cohmem_tools::verify_gpu_copy;

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// (method, policy, paused) of BO `id` as STATS reports it.
fn row(conn: &Connection, id: u64) -> anyhow::Result<(u16, u16, bool)> {
    let s = conn.stats(STATS_BOS)?;
    let b = s
        .bos
        .iter()
        .find(|b| b.id == id)
        .ok_or_else(|| anyhow::anyhow!("BO {id} not in STATS"))?;
    Ok((b.method, b.policy, b.flags & BO_ROW_PAUSED != 0))
}

cohmem_tests::test_each_mechanism!(policies_pin_the_method_and_lose_no_write, policies_with);

fn policies_with(mechanism: Mechanism) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let pages = 1024u64; // ≥ 512: vmwgfx starts it in MKWRITE
    let bo = conn.create_bo(pages * ps)?;
    let map = bo.map()?;
    map.write(0, b"first")?;
    bo.sync()?;

    // pagetable: switched to at once; the first sync may upload more than
    // was written (vmwgfx's switch fills the envelope), never less.
    let (previous, method) = conn.set_policy(bo.id(), BoPolicy::PageTable)?;
    assert_eq!((previous, method), (BoPolicy::Auto, Method::PageTable), "{mechanism}");
    assert_eq!(
        row(&conn, bo.id())?,
        (Method::PageTable as u16, BoPolicy::PageTable as u16, false)
    );
    map.write_u64((7 * ps) as usize, 7)?;
    let first = bo.sync_with_runs()?;
    assert!(first.pages_list().contains(&7), "{mechanism}: {first:?}");
    assert!(verify_gpu_copy(&bo)?.is_empty(), "{mechanism}: GPU copy differs");
    // Sparse rounds: exact.
    for round in 0..3u64 {
        map.write_u64(((100 + round) * ps) as usize, round)?;
        assert_eq!(bo.sync_with_runs()?.pages_list(), vec![100 + round], "{mechanism}");
        assert!(verify_gpu_copy(&bo)?.is_empty(), "{mechanism}: GPU copy differs");
    }
    // Quiet syncs in a row never switch it to MKWRITE (vmwgfx's state
    // machine, which `auto` runs for uffd-sync, switches after 3).
    for _ in 0..5 {
        assert_eq!(bo.sync()?.pages, 0, "{mechanism}");
    }
    assert_eq!(
        row(&conn, bo.id())?.0,
        Method::PageTable as u16,
        "{mechanism}: switched"
    );

    // full: every sync uploads the whole BO, written or not; never probes.
    let (previous, _) = conn.set_policy(bo.id(), BoPolicy::Full)?;
    assert_eq!(previous, BoPolicy::PageTable);
    assert!(row(&conn, bo.id())?.2, "{mechanism}: full is not reported paused");
    for round in 0..12u64 {
        if round % 3 == 0 {
            map.write_u64(((200 + round) * ps) as usize, round)?;
        }
        assert_eq!(bo.sync()?.pages, pages, "{mechanism}: full policy, round {round}");
    }
    assert!(verify_gpu_copy(&bo)?.is_empty(), "{mechanism}: GPU copy differs");

    // mkwrite: leaving full uploads the whole BO once (its writes were not
    // tracked), then exactly the written pages; dense rounds, which would
    // switch an `auto` BO to PAGETABLE, leave it in MKWRITE.
    map.write_u64((300 * ps) as usize, 300)?;
    let (previous, method) = conn.set_policy(bo.id(), BoPolicy::MkWrite)?;
    assert_eq!((previous, method), (BoPolicy::Full, Method::MkWrite), "{mechanism}");
    assert!(!row(&conn, bo.id())?.2, "{mechanism}: still paused");
    assert_eq!(bo.sync()?.pages, pages, "{mechanism}: first sync after full");
    map.write_u64((5 * ps) as usize, 5)?;
    assert_eq!(bo.sync_with_runs()?.pages_list(), vec![5], "{mechanism}");
    for round in 0..5u64 {
        for p in (0..pages).step_by(4) {
            map.write_u64((p * ps) as usize, round)?;
        }
        let done = bo.sync()?;
        assert_eq!(done.pages, pages / 4, "{mechanism}: dense round {round}");
        assert!(verify_gpu_copy(&bo)?.is_empty(), "{mechanism}: GPU copy differs");
    }
    assert_eq!(
        row(&conn, bo.id())?,
        (Method::MkWrite as u16, BoPolicy::MkWrite as u16, false),
        "{mechanism}: a pinned MKWRITE switched or paused"
    );

    // auto again: the state machine resumes from MKWRITE.
    let (previous, method) = conn.set_policy(bo.id(), BoPolicy::Auto)?;
    assert_eq!((previous, method), (BoPolicy::MkWrite, Method::MkWrite));
    map.write_u64((9 * ps) as usize, 9)?;
    assert!(bo.sync_with_runs()?.pages_list().contains(&9));
    assert!(verify_gpu_copy(&bo)?.is_empty(), "{mechanism}: GPU copy differs");
    Ok(())
}

#[test]
fn a_policy_set_before_the_bo_has_a_resource_applies_when_it_gets_one() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdAsync)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo_without_resource(16 * ps)?;
    let map = bo.map()?;
    let (previous, method) = conn.set_policy(bo.id(), BoPolicy::Full)?;
    assert_eq!((previous, method), (BoPolicy::Auto, Method::None));
    bo.add_resource(0, 16 * ps)?;
    map.write(3 * ps as usize, b"x")?;
    assert_eq!(bo.sync()?.pages, 16, "full policy on a new tracker");
    assert!(verify_gpu_copy(&bo)?.is_empty());
    Ok(())
}

/// Under `full` a written page stays writable: MKWRITE's re-protect after
/// every transfer would make each write fault again (uffd-sync counts every
/// fault the daemon resolves).
#[test]
fn under_full_a_written_page_faults_once() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdSync)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(1024 * ps)?; // MKWRITE
    let map = bo.map()?;
    for p in 0..8u64 {
        map.write_u64((p * ps) as usize, p)?;
    }
    bo.sync()?;
    let (_, method) = conn.set_policy(bo.id(), BoPolicy::Full)?;
    let faults0 = conn.stats(0)?.daemon.faults;
    for round in 0..5u64 {
        for p in 0..8u64 {
            map.write_u64((p * ps) as usize, round)?;
        }
        assert_eq!(bo.sync()?.pages, 1024);
        assert!(verify_gpu_copy(&bo)?.is_empty());
    }
    // uffd-sync views cannot be unprotected wholesale: each page may fault
    // once, then stays writable.
    let faults = conn.stats(0)?.daemon.faults - faults0;
    assert!(
        faults <= 8,
        "5 rounds of 8 pages under the full policy faulted {faults} times"
    );
    assert_eq!(method, Method::PageTable, "full keeps MKWRITE's re-protects");
    Ok(())
}

#[test]
fn unknown_bos_are_refused() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdAsync)?;
    let conn = Connection::connect(daemon.socket())?;
    let e = conn.set_policy(424242, BoPolicy::Full).expect_err("no such BO");
    assert_eq!(e.code(), Some(ErrorCode::NoSuchBo), "{e}");
    assert!(e.to_string().contains("424242"), "unclear: {e}");
    Ok(())
}

#[test]
fn changing_policies_under_concurrent_writers_loses_no_write() -> anyhow::Result<()> {
    const THREADS: u64 = 4;
    let mut mechanisms = vec![Mechanism::UffdSync];
    if cohmem_tests::caps().uffd_async.ok {
        mechanisms.insert(0, Mechanism::UffdAsync);
    }
    for mechanism in mechanisms {
        let daemon = spawn_daemon_for(DAEMON, mechanism)?;
        let conn = Connection::connect(daemon.socket())?;
        let ps = cohmem_sys::page_size();
        let pages_per_thread = 192u64;
        let bo = conn.create_bo(THREADS * pages_per_thread * ps)?;
        let map = Arc::new(bo.map_detached()?);
        let res = bo.export_resource(0)?;
        let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
        let writers = CompletedWriters::start(map.clone(), THREADS, pages_per_thread);
        // Policies change from another connection, colliding with the syncs.
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let changer = {
            let (path, stop, id, done) = (daemon.socket().to_owned(), stop.clone(), bo.id(), done.clone());
            std::thread::spawn(move || -> anyhow::Result<u32> {
                let conn = Connection::connect(path)?;
                let mut n = 0;
                for &p in BoPolicy::ALL.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    conn.set_policy(id, p)?;
                    n += 1;
                    done.store(n, Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Ok(n)
            })
        };
        // At least 200 syncs, and on until 20 policy changes collided with
        // them (however fast the syncs are).
        let t0 = std::time::Instant::now();
        let mut syncs = 0;
        while syncs < 200 || (done.load(Ordering::Relaxed) < 20 && t0.elapsed() < std::time::Duration::from_secs(30)) {
            let before = writers.snapshot();
            bo.sync()?;
            writers.check(&before, &gpu)?;
            syncs += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let writes = writers.stop()?;
        let changes = changer
            .join()
            .map_err(|_| anyhow::anyhow!("policy changer panicked"))??;
        bo.sync()?;
        assert!(
            verify_gpu_copy(&bo)?.is_empty(),
            "{mechanism}: GPU copy differs at the end"
        );
        eprintln!("{mechanism}: {writes} writes, {changes} policy changes, {syncs} syncs, no write lost");
        assert!(changes >= 20, "{mechanism}: only {changes} policy changes happened");
    }
    Ok(())
}
