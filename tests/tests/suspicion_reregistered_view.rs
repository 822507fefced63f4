//! Suspicions from a code review (issue 14) turned into tests: each either
//! shows the code sound or failed before its fix.

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use cohmem_client::{Connection, Mechanism};
use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::uffd::Userfaultfd;
use cohmem_tests::spawn_daemon_for;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// Replaces `len` bytes at `addr` (a view of `memfd` at offset 0) with a
/// fresh mapping of the same memfd at the same address, behind the library.
fn remap_behind_library(addr: usize, len: usize, memfd: std::os::fd::BorrowedFd<'_>) -> anyhow::Result<()> {
    let base = NonNull::new(addr as *mut libc::c_void).ok_or_else(|| anyhow::anyhow!("null view"))?;
    // SAFETY: the range is the test's own view, which no other thread uses;
    // it is mapped again at once.
    unsafe { munmap(base, len) }?;
    // SAFETY: maps the BO's memfd where the view was; MAP_FIXED_NOREPLACE
    // fails instead of replacing a mapping that appeared in the hole.
    let again = unsafe {
        mmap(
            Some(NonZeroUsize::new(addr).ok_or_else(|| anyhow::anyhow!("null view"))?),
            NonZeroUsize::new(len).ok_or_else(|| anyhow::anyhow!("empty view"))?,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED | MapFlags::MAP_FIXED_NOREPLACE,
            memfd,
            0,
        )
    }?;
    anyhow::ensure!(again.as_ptr() as usize == addr, "the view came back elsewhere");
    Ok(())
}

/// The synchronous userfaultfd of this process that `[addr, addr+len)` is
/// registered with (the client library's): registering the range again
/// succeeds only with the uffd that holds it (another fails with EBUSY).
fn synchronous_uffd(addr: u64, len: u64) -> anyhow::Result<Userfaultfd> {
    const WP_ASYNC: u64 = 1 << 15;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:[userfaultfd]" {
            continue;
        }
        let fd: i32 = entry.file_name().to_string_lossy().parse()?;
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        // "API:\t<api>:<features>:<ioctls>"
        let features = info
            .lines()
            .find_map(|l| l.strip_prefix("API:"))
            .and_then(|api| api.trim().split(':').nth(1))
            .and_then(|f| u64::from_str_radix(f, 16).ok())
            .ok_or_else(|| anyhow::anyhow!("no features in {info:?}"))?;
        if features & WP_ASYNC == 0 {
            found.push(fd);
        }
    }
    for fd in found {
        // SAFETY: `fd` is open in this process (listed just now, and the
        // client library keeps its uffds open); the duplicate is ours.
        let dup = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        let uffd = Userfaultfd::from_fd(dup)?;
        if uffd.register_wp(addr, len).is_ok() {
            return Ok(uffd);
        }
    }
    anyhow::bail!("no synchronous uffd of this process holds the view")
}

/// (c) and (d): a uffd-sync view remapped behind the library (so the
/// MKWRITE re-protect of its known-writable page fails) and then registered
/// again with the process's synchronous uffd (so later checks pass): its
/// pages are writable without the daemon knowing. A write completed before
/// SYNC must still be in the GPU copy after it.
#[test]
fn sync_view_reregistered_behind_the_library_loses_no_write() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::UffdSync)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let pages = 16u64;
    let len = pages * ps;
    let bo = conn.create_bo(len)?;
    let map = bo.map()?;
    assert_eq!(conn.mechanism()?, Mechanism::UffdSync);
    let res = bo.export_resource(0)?;
    let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
    let addr = map.as_ptr() as usize;
    let memfd = bo.memfd().try_clone_to_owned()?;
    let uffd = synchronous_uffd(addr as u64, len)?;
    let store = |page: u64, v: u64| {
        // SAFETY: the view is mapped (only this thread remaps it, and maps
        // it again before returning); the store is aligned and inside it.
        unsafe { std::ptr::write_volatile((addr + (page * ps) as usize) as *mut u64, v) }
    };
    let check = |what: &str, want: &[(u64, u64)]| -> anyhow::Result<()> {
        for &(p, v) in want {
            let got = gpu.read_u64((p * ps) as usize)?;
            anyhow::ensure!(
                got == v,
                "{what}: page {p} has {got} in the GPU copy, {v} was written before SYNC"
            );
        }
        Ok(())
    };
    // MKWRITE: page 0 faults and is known writable.
    store(0, 1);
    bo.sync()?;
    check("first sync", &[(0, 1)])?;
    store(0, 2);
    // Behind the library: the view is replaced (unregistered), written, and
    // a SYNC runs while it is unregistered (the re-protect of page 0 fails).
    remap_behind_library(addr, len as usize, memfd.as_fd())?;
    store(1, 3);
    bo.sync()?;
    check("sync of the unregistered view", &[(0, 2), (1, 3)])?;
    // Then registered again with the same synchronous uffd: nothing the
    // daemon can see tells it apart from the view it protected.
    uffd.register_wp(addr as u64, len)?;
    for round in 0..3u64 {
        let want: Vec<(u64, u64)> = (0..pages).map(|p| (p, 100 * (round + 1) + p)).collect();
        for &(p, v) in &want {
            store(p, v);
        }
        bo.sync()?;
        check(&format!("round {round} after re-registration"), &want)?;
    }
    // Writes fault (are tracked) again from now on.
    store(7, 999);
    bo.sync()?;
    check("after recovery", &[(7, 999)])?;
    Ok(())
}
