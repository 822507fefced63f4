//! Issue 14, item 11 (DESIGN.md §5.5): changes to a BO that no mapping
//! write reports. A client holds the BO's memfd, so `pwrite`,
//! `fallocate(PUNCH_HOLE)` and `madvise(MADV_REMOVE)` change the bytes
//! without a fault or a written PTE; pinned I/O (`O_DIRECT`) fills pages
//! through a pin.
//!
//! Where the kernel raises inotify events on memfds (up to Linux 6.13: the
//! VM tier's guests), the daemon must upload such changes by itself. Where
//! it does not (6.14 and later: this host), `cohmemctl caps` must say so and
//! the documented remedy, DAMAGE of the range, must make them reach the GPU
//! copy. Either way every test compares the GPU copy with the BO.

use std::os::fd::AsFd;

use cohmem_client::{Connection, Mechanism};
use cohmem_tests::spawn_daemon_for;
use cohmem_tools::verify::verify_gpu_copy;
use nix::fcntl::{fallocate, FallocateFlags};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// One way of changing page 3 of a 8-page BO without writing through a
/// mapping.
#[derive(Debug, Clone, Copy)]
enum Bypass {
    Pwrite,
    PunchHole,
    MadvRemove,
}

fn bypass_under(mechanism: Mechanism, how: Bypass, detected: bool) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo(8 * ps as u64)?;
    let map = bo.map()?;
    for p in 0..8 {
        map.write_u64(p * ps, 0x100 + p as u64)?;
    }
    bo.sync()?;
    anyhow::ensure!(verify_gpu_copy(&bo)?.is_empty());
    let at = 3 * ps;
    match how {
        Bypass::Pwrite => {
            nix::sys::uio::pwrite(bo.memfd(), &0xdead_beef_u64.to_ne_bytes(), at as i64)?;
        }
        Bypass::PunchHole => fallocate(
            bo.memfd().as_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            at as i64,
            ps as i64,
        )?,
        Bypass::MadvRemove => {
            // A second, untracked mapping of the same memfd: MADV_REMOVE
            // punches the hole through the file.
            let other = cohmem_sys::mapping::SharedMapping::map(bo.memfd(), 8 * ps as u64, 0, true)?;
            // SAFETY: advice on the test's own mapping, accessed only by
            // copies; the removed page reads as zeros afterwards.
            unsafe {
                nix::sys::mman::madvise(
                    std::ptr::NonNull::new(other.as_ptr().add(at).cast()).expect("mapped"),
                    ps,
                    nix::sys::mman::MmapAdvise::MADV_REMOVE,
                )
            }?;
        }
    }
    let changed = map.read_u64(at)?;
    anyhow::ensure!(changed != 0x103, "{how:?} did not change page 3");
    if !detected {
        // The documented remedy where the kernel cannot tell.
        bo.damage(at as u64, ps as u64)?;
    }
    let done = bo.sync()?;
    let differ = verify_gpu_copy(&bo)?;
    anyhow::ensure!(
        differ.is_empty(),
        "{mechanism}, {how:?} ({}): page 3 changed to {changed:#x} in the BO, the GPU copy differs at {differ:?} \
         after a sync of {} pages",
        if detected {
            "detected by the daemon"
        } else {
            "reported with DAMAGE"
        },
        done.pages
    );
    eprintln!(
        "{mechanism}, {how:?}: {} and uploaded ({} pages)",
        if detected {
            "detected by the daemon"
        } else {
            "reported with DAMAGE"
        },
        done.pages
    );
    Ok(())
}

#[test]
fn writes_through_the_memfd_reach_the_gpu_copy() -> anyhow::Result<()> {
    let caps = cohmem_tests::caps();
    let detected = caps.memfd_modify_events.ok;
    eprintln!("fd writes: {} ({})", detected, caps.memfd_modify_events.detail);
    if !detected {
        anyhow::ensure!(
            caps.memfd_modify_events.detail.contains("DAMAGE"),
            "the probe must say what to do instead: {}",
            caps.memfd_modify_events.detail
        );
    }
    for (mechanism, ok) in [
        (Mechanism::UffdAsync, caps.uffd_async.ok),
        (Mechanism::UffdSync, caps.uffd_sync.ok),
    ] {
        if !ok {
            eprintln!("{mechanism} unavailable on this kernel");
            continue;
        }
        for how in [Bypass::Pwrite, Bypass::PunchHole, Bypass::MadvRemove] {
            bypass_under(mechanism, how, detected)?;
        }
    }
    Ok(())
}

/// Pinned I/O: an `O_DIRECT` read from a file into a tracked mapping, then
/// [`cohmem_client::Mapping::damage`] of the range once `read` returned.
#[test]
fn pinned_io_followed_by_damage_reaches_the_gpu_copy() -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let daemon = cohmem_tests::spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo(16 * ps as u64)?;
    let map = bo.map()?;
    bo.sync()?;
    // A file on a disk file system (O_DIRECT needs one; tmpfs refuses it).
    let dir = tempfile::Builder::new()
        .prefix("cohmem-odirect")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        // The VM tier's guests see this tree read-only.
        .or_else(|_| tempfile::Builder::new().prefix("cohmem-odirect").tempdir())?;
    let path = dir.path().join("data");
    let data: Vec<u8> = (0..4 * ps).map(|i| (i % 251) as u8).collect();
    std::fs::File::create(&path)?.write_all(&data)?;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            // The documented remedy is the same for any pinned I/O; a
            // buffered read exercises the same damage call.
            eprintln!("O_DIRECT unavailable here ({e}): reading buffered");
            std::fs::File::open(&path)?
        }
    };
    // read(2) straight into the tracked mapping (page aligned).
    // SAFETY: the destination is 4 pages inside the live mapping; the
    // kernel writes them, nothing in Rust refers to that memory.
    let n = unsafe { libc::pread(file.as_fd().as_raw_fd_i32(), map.as_ptr().add(4 * ps).cast(), 4 * ps, 0) };
    anyhow::ensure!(n == (4 * ps) as isize, "pread returned {n}");
    map.damage(4 * ps as u64, 4 * ps as u64)?;
    let done = bo.sync_with_runs()?;
    anyhow::ensure!(verify_gpu_copy(&bo)?.is_empty(), "the GPU copy lacks the pinned read");
    anyhow::ensure!(
        (4..8).all(|p| done.pages_list().contains(&p)),
        "the sync after the damage uploaded {:?}",
        done.pages_list()
    );
    eprintln!(
        "O_DIRECT read of 4 pages into the mapping + Mapping::damage: uploaded {:?}",
        done.pages_list()
    );
    Ok(())
}

/// `as_raw_fd` as the `c_int` libc wants.
trait RawFdI32 {
    fn as_raw_fd_i32(&self) -> i32;
}

impl RawFdI32 for std::os::fd::BorrowedFd<'_> {
    fn as_raw_fd_i32(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}
