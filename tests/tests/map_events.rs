//! Mapping-change events (issue 19: uffd-async proves a view with the
//! kernel's fast scan and the messages of munmap, mremap and madvise on its
//! userfaultfd instead of walking every page). A change of a registered
//! range waits until its message is read, so: a view unmapped behind the
//! library is never proven clean by them, and a daemon that is stopped or
//! gone never leaves such a munmap waiting for good (DESIGN.md §5.6).

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohmem_client::{Connection, Mechanism};
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::{caps, expect_uffd_async_refused, spawn_daemon_for, time_scale};
use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// Maps fresh anonymous memory at `addr`, behind the library: over the
/// view (`replace`: an mmap over a registered range raises an UNMAP
/// message), or into the hole it left (NOREPLACE: fails rather than replace
/// a mapping another thread placed there).
fn map_anonymous_at(addr: usize, len: usize, replace: bool) -> anyhow::Result<()> {
    let at = NonZeroUsize::new(addr).ok_or_else(|| anyhow::anyhow!("null view"))?;
    let size = NonZeroUsize::new(len).ok_or_else(|| anyhow::anyhow!("empty view"))?;
    let fixed = if replace {
        MapFlags::MAP_FIXED
    } else {
        MapFlags::MAP_FIXED_NOREPLACE
    };
    // SAFETY: the range is (or was) a view of this test's own BO, which
    // nothing reads or writes meanwhile; the address stays mapped, so the
    // library's later munmap of it is harmless.
    let got = unsafe {
        mmap_anonymous(
            Some(at),
            size,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE | fixed,
        )
    }?;
    anyhow::ensure!(got.as_ptr() as usize == addr, "mapped elsewhere");
    Ok(())
}

/// Whether this kernel has what the tests need; `Some` ends the test there
/// (without uffd-async: the daemon must refuse it and say why).
fn unavailable() -> Option<anyhow::Result<()>> {
    if !caps().uffd_async.ok || !caps().uffd_sync.ok {
        return Some(expect_uffd_async_refused(DAEMON));
    }
    if !caps().map_events.ok {
        return Some(Err(anyhow::anyhow!(
            "mapping-change events: {}",
            caps().map_events.detail
        )));
    }
    None
}

#[test]
fn a_view_unmapped_after_a_write_is_uploaded_by_the_next_sync() -> anyhow::Result<()> {
    if let Some(end) = unavailable() {
        return end;
    }
    let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdAsync)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    // Over --auto-shadow-max-bytes (64 KiB): tracked, not compared.
    let bo = conn.create_bo((64 * ps) as u64)?;
    let res = bo.export_resource(0)?;
    let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
    for round in 1..=10u64 {
        let map = bo.map()?;
        // Proven clean by the events (nothing changed since the last sync).
        bo.sync()?;
        let page = (round as usize * 5) % 64;
        map.write_u64(page * ps, round)?;
        // The page's written state goes with the mapping: a hole (odd
        // rounds) or an unregistered mapping in its place (even rounds).
        let (addr, len) = (map.as_ptr() as usize, 64 * ps);
        let hole = round % 2 == 1;
        if hole {
            let base = std::ptr::NonNull::new(addr as *mut libc::c_void).ok_or_else(|| anyhow::anyhow!("null view"))?;
            // SAFETY: the view of this test's own BO, which nothing else
            // uses; it is mapped again (or forgotten) below.
            unsafe { nix::sys::mman::munmap(base, len) }?;
        } else {
            map_anonymous_at(addr, len, true)?;
        }
        bo.sync()?;
        let got = gpu.read_u64(page * ps)?;
        let how = if hole { "unmapped" } else { "replaced" };
        assert_eq!(
            got, round,
            "round {round}: a write made before the view was {how} is not in the GPU copy"
        );
        if hole && map_anonymous_at(addr, len, false).is_err() {
            // Another thread's mapping took the hole: the library must not
            // unmap it.
            std::mem::forget(map);
            continue;
        }
        drop(map);
    }
    Ok(())
}

#[test]
fn a_munmap_behind_the_library_never_waits_for_a_dead_daemon() -> anyhow::Result<()> {
    if let Some(end) = unavailable() {
        return end;
    }
    let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdAsync)?;
    let pid = Pid::from_raw(daemon.pid() as i32);
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo((4 * ps) as u64)?;
    let map = bo.map()?;
    map.write_u64(0, 1)?;
    bo.sync()?;
    let (addr, len) = (map.as_ptr() as usize, 4 * ps);
    // Stopped, the daemon reads no message: the replacement must wait.
    kill(pid, Signal::SIGSTOP)?;
    std::thread::sleep(Duration::from_millis(100));
    let done = Arc::new(AtomicBool::new(false));
    let replacer = {
        let done = done.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            map_anonymous_at(addr, len, true)?;
            done.store(true, Ordering::Release);
            Ok(())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !done.load(Ordering::Acquire),
        "the mmap over a registered view did not wait for its message (no events?)"
    );
    let t0 = Instant::now();
    kill(pid, Signal::SIGKILL)?;
    let bound = Duration::from_secs(2) * time_scale();
    while !done.load(Ordering::Acquire) && t0.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(1));
    }
    let waited = t0.elapsed();
    eprintln!("the mmap over the view returned {waited:?} after SIGKILL of the daemon");
    assert!(
        done.load(Ordering::Acquire),
        "the mmap still waits {waited:?} after the daemon died"
    );
    replacer.join().map_err(|_| anyhow::anyhow!("replacer panicked"))??;
    drop(map);
    Ok(())
}

#[test]
fn changes_of_a_view_never_wait_across_mechanism_switches() -> anyhow::Result<()> {
    if let Some(end) = unavailable() {
        return end;
    }
    let daemon = cohmem_tests::spawn_daemon_with(
        DAEMON,
        &[
            "--mechanism",
            Mechanism::UffdAsync.name(),
            "--auto-shadow-max-bytes",
            "0",
        ],
    )?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo((64 * ps) as u64)?;
    let res = bo.export_resource(0)?;
    let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
    let map = bo.map()?;
    let bound = Duration::from_secs(2) * time_scale();
    for (round, mechanism) in [
        Mechanism::UffdSync,
        Mechanism::UffdAsync,
        Mechanism::UffdSync,
        Mechanism::UffdAsync,
    ]
    .into_iter()
    .enumerate()
    {
        conn.set_mechanism(mechanism)?;
        // A switch marks the views written whole: upload that first, so the
        // check below is about what the mechanism itself finds.
        bo.sync()?;
        let value = round as u64 + 1;
        let page = 7 * (round + 1);
        map.write_u64(page * ps, value)?;
        // madvise(MADV_DONTNEED) of a registered range raises a REMOVE
        // message and waits until it is read; a shared mapping keeps its
        // bytes.
        let (addr, len) = (map.as_ptr() as usize + page * ps, ps);
        let t0 = Instant::now();
        let advised = std::thread::spawn(move || -> anyhow::Result<()> {
            let at = std::ptr::NonNull::new(addr as *mut libc::c_void).ok_or_else(|| anyhow::anyhow!("null"))?;
            // SAFETY: one page of this test's own view; DONTNEED on a
            // shared mapping drops page table entries, not bytes.
            unsafe { nix::sys::mman::madvise(at, len, nix::sys::mman::MmapAdvise::MADV_DONTNEED) }?;
            Ok(())
        });
        while !advised.is_finished() && t0.elapsed() < bound {
            std::thread::sleep(Duration::from_millis(1));
        }
        anyhow::ensure!(
            advised.is_finished(),
            "round {round} ({mechanism}): madvise still waits {:?} later",
            t0.elapsed()
        );
        advised
            .join()
            .map_err(|_| anyhow::anyhow!("madvise thread panicked"))??;
        bo.sync()?;
        assert_eq!(
            gpu.read_u64(page * ps)?,
            value,
            "round {round} ({mechanism}): the write before the madvise is not in the GPU copy"
        );
    }
    drop(map);
    Ok(())
}
