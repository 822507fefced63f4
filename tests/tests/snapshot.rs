//! Exact snapshots under quiesce (seed 004): while writers keep writing, a
//! snapshot never shows a state that did not exist at one instant.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cohmem_client::{Connection, Mechanism};
use cohmem_tests::spawn_daemon_for;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

cohmem_tests::test_each_mechanism!(snapshots_are_exact_while_writers_write, snapshots_with);

/// Each writer stores v into page A, then into page B: at any instant A is B
/// or B + 1. A copy torn by a concurrent writer can show A < B; an exact
/// snapshot never does.
fn snapshots_with(mechanism: Mechanism) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let pairs = 4usize;
    let bo = conn.create_bo((2 * pairs * ps) as u64)?;
    let map = Arc::new(bo.map_detached()?);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..pairs)
        .map(|w| {
            let (map, stop) = (map.clone(), stop.clone());
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut v = 0;
                while !stop.load(Ordering::Relaxed) {
                    v += 1;
                    map.write_u64(2 * w * ps, v)?;
                    map.write_u64((2 * w + 1) * ps, v)?;
                    if mechanism == Mechanism::UffdAsync && v % 64 == 0 {
                        // uffd-async writers cannot be held still; leave
                        // gaps in which a copy can be checked exact.
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                Ok(v)
            })
        })
        .collect();
    let mut exact = 0;
    for round in 0..40 {
        let (fd, report) = conn.snapshot(bo.id())?;
        let mut bytes = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut bytes)?;
        assert_eq!(bytes.len(), 2 * pairs * ps);
        let word = |p: usize| u64::from_le_bytes(bytes[p * ps..p * ps + 8].try_into().unwrap_or([0; 8]));
        if report.exact {
            exact += 1;
            for w in 0..pairs {
                let (a, b) = (word(2 * w), word(2 * w + 1));
                assert!(
                    a == b || a == b + 1,
                    "{mechanism}: round {round}: torn exact snapshot: A={a} B={b}"
                );
            }
        }
        match mechanism {
            Mechanism::UffdSync => assert_eq!((report.blocked_views, report.exact), (1, true)),
            _ => assert_eq!(report.unblocked_views, 1),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    eprintln!("{mechanism}: {exact}/40 snapshots exact against {writes} writes");
    assert!(exact > 0, "{mechanism}: no snapshot was exact");
    // Nothing the writers did was lost through the quiesce either.
    bo.sync()?;
    assert!(cohmem_tools::verify_gpu_copy(&bo)?.is_empty());
    Ok(())
}

#[test]
fn snapshot_of_a_bo_this_connection_does_not_hold_is_refused_to_non_root() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdAsync)?;
    let conn = Connection::connect(daemon.socket())?;
    let err = conn.snapshot(999).expect_err("no such BO");
    assert_eq!(err.code(), Some(cohmem_client::ErrorCode::NoSuchBo));
    Ok(())
}
