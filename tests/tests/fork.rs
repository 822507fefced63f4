//! Issue 14, item 5: a forked child never touches its parent's tracking.
//! The child inherits the parent's Rust values (connection, BO, mapping),
//! whose socket and userfaultfds are shared with the parent; dropping them
//! (any scope ending) must not send UNMAP or DESTROY on the parent's
//! session, nor unregister the parent's ranges through the shared uffd, and
//! using them must fail with a typed error. The parent's writes after the
//! child is gone must all be uploaded, exactly.
//!
//! One test in this binary: `fork` in a process whose other threads could
//! hold locks is only safe while no other test runs.

use std::os::fd::AsFd;

use cohmem_client::{ClientError, Connection, Mechanism};
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::spawn_daemon_for;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// What the child checks, as an exit code: 0 when every inherited object
/// refused to work with [`ClientError::ForkedChild`] and dropping them all
/// returned.
fn child(conn: Connection, bo: cohmem_client::Bo, map: cohmem_client::Mapping<'static>) -> i32 {
    let forked = |r: Result<(), ClientError>| matches!(r, Err(ClientError::ForkedChild { .. }));
    if !forked(bo.sync().map(drop)) {
        return 2;
    }
    if !forked(map.write(0, b"child")) {
        return 3;
    }
    if !forked(conn.stats(0).map(drop)) {
        return 4;
    }
    if !forked(bo.map().map(drop)) {
        return 5;
    }
    drop(map);
    drop(bo);
    drop(conn);
    0
}

fn fork_under(mechanism: Mechanism) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let pages = 16u64;
    let bo = conn.create_bo(pages * ps)?;
    let map = bo.map_detached()?;
    let res = bo.export_resource(0)?;
    let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
    map.write_u64(0, 1)?;
    bo.sync()?;
    // Clones: the parent keeps its own values; the child drops the copies
    // fork gives it of these.
    let (conn2, bo2, map2) = (conn.clone(), bo, map);
    // SAFETY: the child runs only the client library's drops and calls on
    // values of this test (no other test shares this binary), then _exit.
    let (bo, map) = match unsafe { fork() }? {
        ForkResult::Child => {
            let code = child(conn2, bo2, map2);
            // SAFETY: ends the child at once, without the parent's
            // destructors or the test harness.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            let status = waitpid(child, None)?;
            anyhow::ensure!(
                status == WaitStatus::Exited(child, 0),
                "{mechanism}: the child's inherited objects misbehaved: {status:?} (2: sync, 3: write, 4: stats, \
                 5: map did not fail with ForkedChild)"
            );
            (bo2, map2)
        }
    };
    drop(conn2);
    // The parent's tracking is intact: each round's writes, and only
    // those, are uploaded.
    for round in 0..5u64 {
        let written: Vec<u64> = (0..pages).filter(|p| (p + round) % 3 == 0).collect();
        for &p in &written {
            map.write_u64((p * ps) as usize, 100 * round + p + 2)?;
        }
        let done = bo.sync_with_runs()?;
        for &p in &written {
            let got = gpu.read_u64((p * ps) as usize)?;
            anyhow::ensure!(
                got == 100 * round + p + 2,
                "{mechanism}: round {round}: page {p} written after the child's exit is not in the GPU copy ({got})"
            );
        }
        anyhow::ensure!(
            done.pages_list() == written,
            "{mechanism}: round {round}: sync uploaded {:?}, the parent wrote {written:?}",
            done.pages_list()
        );
    }
    anyhow::ensure!(
        conn.reconnects() == 0,
        "the child must not have broken the parent's session"
    );
    eprintln!("{mechanism}: the forked child's drops left the parent's tracking intact; 5 exact rounds after");
    Ok(())
}

#[test]
fn forked_children_dropping_everything_leave_the_parent_tracked() -> anyhow::Result<()> {
    let caps = cohmem_tests::caps();
    let mut ran = 0;
    for (mechanism, ok) in [
        (Mechanism::UffdAsync, caps.uffd_async.ok),
        (Mechanism::UffdSync, caps.uffd_sync.ok),
    ] {
        if ok {
            fork_under(mechanism)?;
            ran += 1;
        }
    }
    anyhow::ensure!(ran > 0, "no tracking mechanism to test");
    Ok(())
}
