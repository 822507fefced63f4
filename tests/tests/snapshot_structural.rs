//! SNAPSHOT is exact or says it is not, while views of the BO are mapped and
//! unmapped during the copy (structural changes that the quiesce of the
//! views present at its start does not hold still).

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cohmem_client::{Connection, Mechanism};
use cohmem_tests::spawn_daemon_for;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

const PAGES: usize = 256;
const ROUNDS: usize = 200;
/// Generations the writer stores through each view before unmapping it.
const GENERATIONS_PER_VIEW: u64 = 2000;

cohmem_tests::test_each_mechanism!(
    a_snapshot_torn_by_views_mapped_during_the_copy_is_not_reported_exact,
    torn_by_maps_with
);

/// A writer maps a fresh view of the BO, stores generations g, g + 1, …
/// into page A (the first) and then page B (the last) through it, unmaps
/// it, and maps the next: at any instant A is B or B + 1. The copy reads A
/// before B, so a copy torn by writes through a view the quiesce did not
/// hold (mapped after it began, or unmapped before its check) shows A < B.
/// Every snapshot reported exact must show A = B or A = B + 1.
fn torn_by_maps_with(mechanism: Mechanism) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo((PAGES * ps) as u64)?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (socket, stop, memfd) = (
            daemon.socket().to_owned(),
            stop.clone(),
            bo.memfd().try_clone_to_owned()?,
        );
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let conn = Connection::connect(&socket)?;
            let mine = conn.import_bo(memfd)?;
            let mut g = 0u64;
            let mut views = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let view = mine.map()?;
                for _ in 0..GENERATIONS_PER_VIEW {
                    g += 1;
                    view.write_u64(0, g)?;
                    view.write_u64((PAGES - 1) * ps, g)?;
                }
                view.unmap()?;
                views += 1;
            }
            Ok(views)
        })
    };
    let (mut exact, mut torn_exact, mut torn_inexact) = (0, Vec::new(), 0);
    for round in 0..ROUNDS {
        let (fd, report) = conn.snapshot(bo.id())?;
        let copy = std::fs::File::from(fd);
        anyhow::ensure!(
            copy.metadata()?.len() == (PAGES * ps) as u64,
            "snapshot of the wrong size"
        );
        let word = |p: usize| -> anyhow::Result<u64> {
            let mut w = [0u8; 8];
            copy.read_exact_at(&mut w, (p * ps) as u64)?;
            Ok(u64::from_le_bytes(w))
        };
        let (a, b) = (word(0)?, word(PAGES - 1)?);
        let consistent = a == b || a == b + 1;
        match (report.exact, consistent) {
            (true, true) => exact += 1,
            (true, false) => torn_exact.push((round, a, b)),
            (false, false) => torn_inexact += 1,
            (false, true) => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    let cycles = writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    eprintln!(
        "{mechanism}: {ROUNDS} snapshots against {cycles} views mapped, written and unmapped: {exact} exact and consistent, \
         {} torn but reported exact, {torn_inexact} torn and reported inexact",
        torn_exact.len()
    );
    assert!(
        torn_exact.is_empty(),
        "{mechanism}: {} of {ROUNDS} snapshots were torn (A < B) yet reported exact: (round, A, B) {torn_exact:?}",
        torn_exact.len()
    );
    assert!(exact > 0, "{mechanism}: no snapshot was exact");
    // Nothing the writer did was lost either.
    bo.sync()?;
    assert!(cohmem_tools::verify_gpu_copy(&bo)?.is_empty());
    Ok(())
}
