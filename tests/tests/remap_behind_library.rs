//! A client that unmaps and remaps a view behind the library (the new
//! mapping of the same memfd, at the same address, is not registered with
//! the userfaultfd) never gets the view proven clean: every write completed
//! before a SYNC is in the GPU copy when it returns. The coverage proof must
//! agree with the harvest: a view that was a hole when its pages were
//! scanned and is mapped again when coverage is checked is not clean.

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohmem_client::{Connection, Mechanism};
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::spawn_daemon_with;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

const PAGES: u64 = 16;
/// How long the syncs race the remapping writer.
const RACE: Duration = Duration::from_secs(4);

#[test]
fn a_view_remapped_behind_the_library_is_never_proven_clean() -> anyhow::Result<()> {
    // The view is 64 KiB: with the automatic shadow compare off, the
    // tracker's own proof is what is tested.
    let daemon = spawn_daemon_with(
        DAEMON,
        &[
            "--mechanism",
            Mechanism::UffdAsync.name(),
            "--auto-shadow-max-bytes",
            "0",
        ],
    )?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let len = PAGES * ps;
    let bo = conn.create_bo(len)?;
    let map = bo.map()?;
    let res = bo.export_resource(0)?;
    let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
    let addr = map.as_ptr() as usize;
    let memfd = bo.memfd().try_clone_to_owned()?;
    let completed: Arc<Vec<AtomicU64>> = Arc::new((0..PAGES).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    // The writer: store into one page, then replace the whole view behind
    // the library with munmap + mmap of the same memfd at the same address
    // (MAP_FIXED_NOREPLACE: never over a mapping someone else placed in
    // the hole). The new mapping is not registered with the userfaultfd.
    let writer = {
        let (completed, stop) = (completed.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let base = NonNull::new(addr as *mut libc::c_void).ok_or_else(|| anyhow::anyhow!("null view"))?;
            let size = NonZeroUsize::new(len as usize).ok_or_else(|| anyhow::anyhow!("empty view"))?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = n % PAGES;
                let v = completed[p as usize].load(Ordering::Relaxed) + 1;
                // SAFETY: the view is mapped (this thread alone unmaps and
                // remaps it, and it is mapped again below before the next
                // store); the store is aligned and inside it.
                unsafe { std::ptr::write_volatile((addr + (p * ps) as usize) as *mut u64, v) };
                completed[p as usize].store(v, Ordering::Release);
                // SAFETY: the range is the library's view, which nobody
                // else reads or writes while this thread runs (the test
                // only syncs); it is mapped again at once.
                unsafe { munmap(base, len as usize) }?;
                // SAFETY: maps the BO's memfd where the view was; with
                // MAP_FIXED_NOREPLACE it fails instead of replacing a
                // mapping that appeared in the hole.
                let again = unsafe {
                    mmap(
                        Some(NonZeroUsize::new(addr).ok_or_else(|| anyhow::anyhow!("null view"))?),
                        size,
                        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                        MapFlags::MAP_SHARED | MapFlags::MAP_FIXED_NOREPLACE,
                        memfd.as_fd(),
                        0,
                    )
                }?;
                anyhow::ensure!(again.as_ptr() as usize == addr, "the view came back elsewhere");
                n += 1;
            }
            Ok(n)
        })
    };
    let t0 = Instant::now();
    let (mut syncs, mut lost, mut lossy_syncs) = (0u64, Vec::new(), 0u64);
    while t0.elapsed() < RACE && !writer.is_finished() {
        let before: Vec<u64> = completed.iter().map(|c| c.load(Ordering::Acquire)).collect();
        bo.sync()?;
        syncs += 1;
        let lost_before = lost.len();
        for (p, &want) in before.iter().enumerate() {
            let got = gpu.read_u64(p * ps as usize)?;
            if got < want {
                lost.push((syncs, p, want, got));
            }
        }
        lossy_syncs += u64::from(lost.len() > lost_before);
    }
    stop.store(true, Ordering::Relaxed);
    let remaps = writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    eprintln!(
        "{syncs} syncs against {remaps} writes each followed by an unmap and remap behind the library: \
         {lossy_syncs} syncs missed {} writes completed before they were sent",
        lost.len()
    );
    assert!(remaps > 0 && syncs > 0, "nothing raced");
    assert!(
        lost.is_empty(),
        "{lossy_syncs} of {syncs} syncs lost a completed write; first (sync, page, completed, in GPU copy): {:?}",
        &lost[..lost.len().min(10)]
    );
    drop(map);
    Ok(())
}
