//! End to end over the real socket: a spawned cohmemd, client processes that
//! are real spawned binaries, real userfaultfd WP_ASYNC and PAGEMAP_SCAN.
//! Exactness is checked by comparing page sets, correctness by comparing
//! bytes: the software GPU copy against the BO, and the BO against what the
//! writers were told to write.

use std::collections::BTreeSet;
use std::path::Path;

use cohmem_client::{Connection, Mechanism};
use cohmem_proto::{STATS_BOS, STATS_CONNECTIONS};
use cohmem_tests::{page_pattern, WriterChild};
use cohmem_tests::{spawn_daemon, spawn_daemon_for, spawn_daemon_with};
use cohmem_tools::{verify_gpu_copy, SplitMix64};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

fn writer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cohmem-test-writer"))
}

fn check_bo_matches(bo: &cohmem_client::Bo, model: &[Vec<u8>]) -> anyhow::Result<()> {
    let ps = cohmem_sys::page_size() as usize;
    let mut buf = vec![0u8; ps];
    for (p, want) in model.iter().enumerate() {
        bo.read_at((p * ps) as u64, &mut buf)?;
        assert!(buf == *want, "BO page {p} does not hold what was written");
    }
    Ok(())
}

cohmem_tests::test_each_mechanism!(
    two_writer_processes_get_exact_dirty_sets_and_an_identical_gpu_copy,
    two_writer_processes_get_exact_dirty_sets_and_an_identical_gpu_copy_with
);

fn two_writer_processes_get_exact_dirty_sets_and_an_identical_gpu_copy_with(
    mechanism: Mechanism,
) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let pages = 512u64;
    let half = pages / 2;
    let bo = conn.create_bo(pages * ps)?;
    // Process A maps the whole BO, process B only its second half (a view at
    // a non-zero BO offset); this process maps it too.
    let mut a = WriterChild::spawn(writer_bin(), daemon.socket(), bo.memfd(), 0, 0)?;
    let mut b = WriterChild::spawn(writer_bin(), daemon.socket(), bo.memfd(), half * ps, half * ps)?;
    let mine = bo.map()?;

    let seed = SplitMix64::seed_from_time();
    eprintln!("seed {seed}");
    let mut rng = SplitMix64::new(seed);
    let mut model = vec![vec![0u8; ps as usize]; pages as usize];

    let first = bo.sync_with_runs()?;
    assert_eq!(
        first.pages, 0,
        "nothing written yet, but sync uploaded {:?}",
        first.runs
    );

    for round in 0..30u64 {
        // Disjoint page sets per round; across rounds pages are rewritten.
        let count = 1 + rng.below(40) as usize;
        let all = rng.distinct(pages, count);
        let (mut pa, mut pb, mut pm) = (vec![], vec![], vec![]);
        for p in all {
            match (rng.below(3), p >= half) {
                (0, true) => pb.push(p),
                (1, _) => pm.push(p),
                _ => pa.push(p),
            }
        }
        let (sa, sb, sm) = (rng.next_u64(), rng.next_u64(), rng.next_u64());
        a.write_pages(sa, &pa)?;
        b.write_pages(sb, &pb)?;
        let mut buf = vec![0u8; ps as usize];
        for &p in &pm {
            page_pattern(sm, p, &mut buf);
            mine.write((p * ps) as usize, &buf)?;
        }
        for (seed, list) in [(sa, &pa), (sb, &pb), (sm, &pm)] {
            for &p in list {
                page_pattern(seed, p, &mut model[p as usize]);
            }
        }

        let done = bo.sync_with_runs()?;
        let written: BTreeSet<u64> = pa.iter().chain(&pb).chain(&pm).copied().collect();
        let reported: Vec<u64> = done.pages_list();
        assert!(!done.runs_truncated);
        assert_eq!(done.mechanism, mechanism);
        assert_eq!(done.views_scanned, 3);
        assert_eq!(
            reported,
            written.iter().copied().collect::<Vec<_>>(),
            "round {round} (seed {seed}): reported pages differ from written pages"
        );
        assert_eq!(done.pages, written.len() as u64);
        assert_eq!(done.bytes, written.len() as u64 * ps);
        let mismatches = verify_gpu_copy(&bo)?;
        assert!(mismatches.is_empty(), "round {round}: GPU copy differs: {mismatches:?}");
        check_bo_matches(&bo, &model)?;
    }

    let idle = bo.sync_with_runs()?;
    assert_eq!(idle.pages, 0, "a sync without writes uploaded {:?}", idle.runs);
    a.quit()?;
    b.quit()?;
    Ok(())
}

#[test]
fn connections_of_one_process_share_one_subscription_and_release_everything() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let observer = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    {
        let c1 = Connection::connect(daemon.socket())?;
        let c2 = Connection::connect(daemon.socket())?;
        let bo1 = c1.create_bo(64 * ps)?;
        let bo2 = c2.create_bo(32 * ps)?;
        let m1 = bo1.map()?;
        let m2 = bo2.map()?;
        let s = observer.stats(STATS_CONNECTIONS | STATS_BOS)?;
        assert_eq!(
            s.daemon.mm_subscriptions, 1,
            "two connections of one process must share one subscription"
        );
        assert_eq!(s.daemon.bos, 2);
        assert_eq!(s.daemon.views, 2);
        m1.write_u64(5 * ps as usize, 1)?;
        m2.write_u64(7 * ps as usize, 2)?;
        m2.write_u64(8 * ps as usize, 3)?;
        assert_eq!(bo1.sync_with_runs()?.pages_list(), vec![5]);
        assert_eq!(bo2.sync_with_runs()?.pages_list(), vec![7, 8]);
        assert!(verify_gpu_copy(&bo1)?.is_empty());
        assert!(verify_gpu_copy(&bo2)?.is_empty());
    }
    // Everything above was dropped: mappings, BOs, connections. The daemon
    // notices closed sockets asynchronously; wait (bounded) for it.
    let mut s = observer.stats(STATS_CONNECTIONS | STATS_BOS)?;
    for _ in 0..200 {
        if s.daemon.connections == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        s = observer.stats(STATS_CONNECTIONS | STATS_BOS)?;
    }
    assert_eq!(s.daemon.connections, 1, "only the observer remains");
    assert_eq!(s.daemon.bos, 0);
    assert_eq!(s.daemon.views, 0);
    assert_eq!(s.daemon.mm_subscriptions, 0);
    Ok(())
}

cohmem_tests::test_each_mechanism!(
    unmap_and_process_death_lose_nothing,
    unmap_and_process_death_lose_nothing_with
);

fn unmap_and_process_death_lose_nothing_with(mechanism: Mechanism) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(128 * ps)?;

    // A view unmapped after a write: the final harvest at UNMAP keeps it exact.
    let m = bo.map_range(16 * ps, 16 * ps)?;
    m.write_u64(3 * ps as usize, 42)?; // BO page 19
    m.unmap()?;
    assert_eq!(bo.sync_with_runs()?.pages_list(), vec![19]);
    assert!(verify_gpu_copy(&bo)?.is_empty());

    // A writer killed before anyone synced: its page tables are gone, so the
    // daemon cannot know which pages it wrote and uploads its whole view.
    let mut w = WriterChild::spawn(writer_bin(), daemon.socket(), bo.memfd(), 64 * ps, 32 * ps)?;
    w.write_pages(7, &[70, 90])?;
    w.kill()?;
    // The daemon notices the closed connection asynchronously; sync until the
    // dead view's pages are reported (bounded).
    let mut uploaded = BTreeSet::new();
    for _ in 0..200 {
        uploaded.extend(bo.sync_with_runs()?.pages_list());
        if uploaded.contains(&70) && uploaded.contains(&90) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        uploaded.contains(&70) && uploaded.contains(&90),
        "killed writer's pages lost: {uploaded:?}"
    );
    assert!(
        uploaded.iter().all(|p| (64..96).contains(p)),
        "only the dead view may be marked: {uploaded:?}"
    );
    assert!(verify_gpu_copy(&bo)?.is_empty());
    Ok(())
}

#[test]
fn an_unprivileged_writer_process_is_tracked_exactly() -> anyhow::Result<()> {
    // The client creates its uffd with UFFD_USER_MODE_ONLY, which needs no
    // privilege even with vm.unprivileged_userfaultfd = 0. Run a writer as
    // "nobody" against a daemon whose socket it may open.
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("not root: cannot drop to another uid; this test checks nothing here");
        return Ok(());
    }
    let daemon = spawn_daemon_with(DAEMON, &["--socket-mode", "666"])?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(64 * ps)?;
    let mut w = WriterChild::spawn_as(Some(65534), writer_bin(), &[], daemon.socket(), bo.memfd(), 0, 0)?;
    let s = conn.stats(STATS_CONNECTIONS)?;
    assert!(
        s.connections.iter().any(|c| c.uid == 65534),
        "the writer must connect as uid 65534: {:?}",
        s.connections
    );
    w.write_pages(3, &[1, 2, 40])?;
    assert_eq!(bo.sync_with_runs()?.pages_list(), vec![1, 2, 40]);
    assert!(verify_gpu_copy(&bo)?.is_empty());
    w.quit()
}

#[test]
fn a_forked_child_does_not_inherit_a_tracked_mapping() -> anyhow::Result<()> {
    // Tracking is per address space: a child's writes could not be seen, so
    // the client library keeps its mappings out of children (MADV_DONTFORK)
    // and such a write faults instead of being silently lost.
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(16 * ps)?;
    let mut w = WriterChild::spawn(writer_bin(), daemon.socket(), bo.memfd(), 0, 0)?;
    let answer = w.command("forkwrite 4")?;
    assert!(
        answer.contains("SIGSEGV"),
        "the child must fault, not write untracked: {answer}"
    );
    let mut b = [0u8; 1];
    bo.read_at(4 * ps, &mut b)?;
    assert_eq!(b[0], 0, "nothing may have been written");
    assert_eq!(bo.sync()?.pages, 0);
    w.quit()
}

#[test]
fn uffd_sync_is_refused_where_it_would_break_the_clients_syscalls() -> anyhow::Result<()> {
    // An unprivileged process can only create a user-mode-only uffd; with
    // uffd-sync that would make read(2) into its own BO fail with EFAULT, so
    // the daemon refuses and says why instead.
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("not root: cannot drop to another uid; this test checks nothing here");
        return Ok(());
    }
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::process::CommandExt;
    let daemon = spawn_daemon_with(DAEMON, &["--mechanism", "uffd-sync", "--socket-mode", "666"])?;
    let conn = Connection::connect(daemon.socket())?;
    let bo = conn.create_bo(16 * cohmem_sys::page_size())?;
    let inheritable = bo.memfd().try_clone_to_owned()?;
    nix::fcntl::fcntl(
        inheritable.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )?;
    let out = std::process::Command::new(writer_bin())
        .arg(daemon.socket())
        .arg(inheritable.as_raw_fd().to_string())
        .args(["0", "0"])
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the unprivileged writer must not get uffd-sync");
    assert!(
        stderr.contains("Unsupported") && stderr.contains("EFAULT"),
        "the refusal must say why: {stderr}"
    );
    Ok(())
}

#[test]
fn one_process_with_two_daemons_keeps_their_faults_apart() -> anyhow::Result<()> {
    // A synchronous uffd's fault messages go to whoever reads them, so the
    // client library keeps one tracking per daemon: each daemon sees exactly
    // the writes to its own BOs.
    let ps = cohmem_sys::page_size();
    let (da, db) = (
        spawn_daemon_for(DAEMON, Mechanism::UffdSync)?,
        spawn_daemon_for(DAEMON, Mechanism::UffdSync)?,
    );
    let (ca, cb) = (Connection::connect(da.socket())?, Connection::connect(db.socket())?);
    let (boa, bob) = (ca.create_bo(32 * ps)?, cb.create_bo(32 * ps)?);
    let (ma, mb) = (boa.map()?, bob.map()?);
    for round in 0..20u64 {
        let (pa, pb) = (round % 32, (round * 7 + 3) % 32);
        ma.write_u64((pa * ps) as usize, round + 1)?;
        mb.write_u64((pb * ps) as usize, round + 1)?;
        assert_eq!(boa.sync_with_runs()?.pages_list(), vec![pa], "round {round}, daemon A");
        assert_eq!(bob.sync_with_runs()?.pages_list(), vec![pb], "round {round}, daemon B");
    }
    assert!(verify_gpu_copy(&boa)?.is_empty() && verify_gpu_copy(&bob)?.is_empty());
    Ok(())
}

cohmem_tests::test_each_mechanism!(
    views_moved_or_replaced_behind_the_daemons_back_are_never_clean,
    moved_with
);

/// A client that mremaps a view elsewhere (registration and write-protection
/// do not follow it) or maps something else over it keeps writing where the
/// daemon cannot see: the view is then treated as written whole at every
/// sync (spec §8.6, behaviour 23), so nothing written is lost.
fn moved_with(mechanism: Mechanism) -> anyhow::Result<()> {
    // Tracking's proof is what is checked: the small BO is not left to
    // `auto`'s shadow compare (which would find exactly page 5).
    let daemon = cohmem_tests::spawn_daemon_with(
        DAEMON,
        &["--mechanism", mechanism.name(), "--auto-shadow-max-bytes", "0"],
    )?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo(16 * ps as u64)?;
    let view = bo.map_range(0, 8 * ps as u64)?;
    view.write_u64(2 * ps, 1)?;
    assert_eq!(bo.sync_with_runs()?.pages_list(), vec![2]);

    // Move the view: the daemon's range is now empty.
    // SAFETY: reserves 8 fresh pages and moves our own 8-page mapping onto
    // them; the old range is left unmapped and the Mapping value never
    // touches it again except to munmap it, which is harmless when empty.
    let moved = unsafe {
        let target = libc::mmap(
            std::ptr::null_mut(),
            8 * ps,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(target, libc::MAP_FAILED);
        libc::mremap(
            view.as_ptr().cast(),
            8 * ps,
            8 * ps,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            target,
        )
    };
    assert_ne!(moved, libc::MAP_FAILED, "mremap: {}", std::io::Error::last_os_error());
    // Keep the old range from being reused by other tests' mappings in this
    // process while we look (a reused range is the one case the daemon
    // cannot tell apart; see the README).
    // SAFETY: maps an inaccessible placeholder exactly over the range the
    // view just left, which nothing owns now.
    let placeholder = unsafe {
        libc::mmap(
            view.as_ptr().cast(),
            8 * ps,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(
        placeholder,
        view.as_ptr().cast(),
        "placeholder: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: page 5 of the moved mapping, which we own.
    unsafe { moved.cast::<u8>().add(5 * ps).cast::<u64>().write_volatile(0xabcd) };
    let done = bo.sync_with_runs()?;
    assert_eq!(
        done.pages_list(),
        (0..8).collect::<Vec<u64>>(),
        "{mechanism}: the moved view must be dirty whole"
    );
    assert!(
        verify_gpu_copy(&bo)?.is_empty(),
        "{mechanism}: the write at the new address is lost"
    );
    // And again at the next sync: it can never be proven clean.
    // SAFETY: as above.
    unsafe { moved.cast::<u8>().add(6 * ps).cast::<u64>().write_volatile(0xef) };
    assert_eq!(bo.sync_with_runs()?.pages.min(8), 8);
    assert!(verify_gpu_copy(&bo)?.is_empty());
    // SAFETY: unmapping the moved copy, which nothing else refers to.
    unsafe { libc::munmap(moved, 8 * ps) };
    // Its UNMAP cannot prove it clean either: one more whole upload.
    drop(view);
    assert_eq!(bo.sync_with_runs()?.pages_list(), (0..8).collect::<Vec<u64>>());

    // Replace a view: map other memory over it with MAP_FIXED.
    let view = bo.map_range(8 * ps as u64, 8 * ps as u64)?;
    // SAFETY: MAP_FIXED over our own mapping's range, replacing it.
    let over = unsafe {
        libc::mmap(
            view.as_ptr().cast(),
            8 * ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_ne!(over, libc::MAP_FAILED);
    let done = bo.sync_with_runs()?;
    assert_eq!(
        done.pages_list(),
        (8..16).collect::<Vec<u64>>(),
        "{mechanism}: a replaced view must be dirty whole"
    );
    Ok(())
}

#[test]
fn full_mechanism_uploads_the_whole_bo_at_every_sync() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::Full)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(64 * ps)?;
    let map = bo.map_range(0, 8 * ps)?; // a view of only part of the BO
    map.write_u64(3 * ps as usize, 7)?;
    let done = bo.sync_with_runs()?;
    assert_eq!(done.mechanism, Mechanism::Full);
    assert_eq!(done.pages_list(), (0..64).collect::<Vec<u64>>());
    assert!(verify_gpu_copy(&bo)?.is_empty());
    assert_eq!(bo.sync()?.pages, 64, "no tracking: every sync copies everything");
    Ok(())
}

#[test]
fn explicit_mechanism_uploads_exactly_the_reported_damage() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::Explicit)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(64 * ps)?;
    let map = bo.map()?;
    map.write_u64(3 * ps as usize, 1)?;
    map.write_u64(7 * ps as usize, 1)?;
    bo.damage(3 * ps, 8)?;
    let done = bo.sync_with_runs()?;
    assert_eq!(done.mechanism, Mechanism::Explicit);
    assert_eq!(done.pages_list(), vec![3], "only the reported damage is uploaded");
    assert_eq!(
        verify_gpu_copy(&bo)?.iter().map(|m| m.page).collect::<Vec<_>>(),
        vec![7]
    );
    bo.damage(7 * ps, ps)?;
    assert_eq!(bo.sync_with_runs()?.pages_list(), vec![7]);
    assert!(verify_gpu_copy(&bo)?.is_empty());
    let err = bo.damage(60 * ps, 8 * ps).expect_err("damage past the BO");
    assert_eq!(err.code(), Some(cohmem_client::ErrorCode::InvalidArgument));
    Ok(())
}

/// READBACK on the software backend: the CPU writes not yet synced reach the
/// GPU first, and afterwards the BO equals the GPU copy. (The device side of
/// readback, GPU bytes written behind the daemon coming back, is checked on
/// real DRM devices in tests/tests/drm.rs.)
#[test]
fn readback_syncs_first_and_leaves_bo_and_gpu_equal() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(16 * ps)?;
    let map = bo.map()?;
    map.write((2 * ps) as usize, b"two")?;
    map.write((11 * ps) as usize, b"eleven")?;
    let r = bo.readback()?;
    assert_eq!((r.synced_pages, r.bytes), (2, 16 * ps), "{r:?}");
    let mut b = [0u8; 6];
    map.read((11 * ps) as usize, &mut b)?;
    assert_eq!(&b, b"eleven");
    assert!(verify_gpu_copy(&bo)?.is_empty());
    assert_eq!(bo.sync()?.pages, 0, "a readback leaves nothing dirty");
    Ok(())
}
