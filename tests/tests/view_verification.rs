//! MAP refuses views that are not what the request claims (issue 15, item
//! 5): the wrong file offset, another BO's memfd, anonymous memory, a range
//! registered with another userfaultfd than the process attached, a range a
//! fork would inherit (no MADV_DONTFORK). Each refusal names what differs;
//! a correct MAP is accepted.

use std::os::fd::AsFd;

use cohmem_client::ErrorCode;
use cohmem_proto::{Reply, Request, ATTACH_WITH_FDS};
use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::pagemap::PagemapFile;
use cohmem_sys::uffd::{features, UffdFlavor, Userfaultfd};
use cohmem_tests::{spawn_daemon, RawClient};

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

fn create_bo(raw: &RawClient, id: u32, size: u64) -> anyhow::Result<(u32, std::os::fd::OwnedFd)> {
    let (r, mut fds) = raw.call(id, &Request::CreateBo { size, flags: 0 }, &[])?;
    match (r, fds.pop()) {
        (Reply::Bo { bo, .. }, Some(fd)) => Ok((bo, fd)),
        (other, _) => anyhow::bail!("CREATE_BO: {other:?}"),
    }
}

fn expect_refused(r: Reply, what: &str, needle: &str) {
    match &r {
        Reply::Error {
            code: ErrorCode::InvalidArgument,
            message,
        } if message.contains(needle) => eprintln!("{what}: refused: {message}"),
        other => panic!("{what}: expected InvalidArgument naming {needle:?}, got {other:?}"),
    }
}

#[test]
fn mismatching_views_are_refused_with_their_reason() -> anyhow::Result<()> {
    let want = features::WP_ASYNC | features::WP_UNPOPULATED | features::WP_HUGETLBFS_SHMEM;
    if Userfaultfd::open(UffdFlavor::UserModeOnly, want, features::WP_ASYNC).is_err() {
        eprintln!("skipping: no uffd-async here");
        return Ok(());
    }
    let daemon = spawn_daemon(DAEMON)?;
    let ps = cohmem_sys::page_size();
    let raw = RawClient::connect_hello(daemon.socket())?;
    let (uffd, enabled) = Userfaultfd::open(UffdFlavor::UserModeOnly, want, features::WP_ASYNC)?;
    let pagemap = PagemapFile::open_self()?;
    let attach = Request::AttachMm {
        token: 0x7e51,
        uffd_features: enabled,
        flags: ATTACH_WITH_FDS,
    };
    let (r, _) = raw.call(1, &attach, &[uffd.as_fd(), pagemap.as_fd()])?;
    assert!(matches!(r, Reply::MmAttached { .. }), "{r:?}");
    let (bo, memfd) = create_bo(&raw, 2, 16 * ps)?;
    let (_other_bo, other_memfd) = create_bo(&raw, 3, 16 * ps)?;
    let map_req = |addr: u64, len: u64, offset: u64| Request::Map { bo, addr, len, offset };
    // A correctly set-up mapping of 4 pages at BO offset 4 pages.
    let prepared = |fd: std::os::fd::BorrowedFd<'_>, off: u64, uffd: &Userfaultfd| -> anyhow::Result<SharedMapping> {
        let m = SharedMapping::map(fd, 4 * ps, off, true)?;
        m.dont_fork()?;
        uffd.register_wp(m.addr(), 4 * ps)?;
        Ok(m)
    };

    // Wrong offset: the mapping is at file offset 4 pages, MAP says 2.
    let m = prepared(memfd.as_fd(), 4 * ps, &uffd)?;
    let (r, _) = raw.call(10, &map_req(m.addr(), 4 * ps, 2 * ps), &[])?;
    expect_refused(r, "wrong offset", "(wrong offset)");
    // Another BO's memfd at the address.
    let o = prepared(other_memfd.as_fd(), 4 * ps, &uffd)?;
    let (r, _) = raw.call(11, &map_req(o.addr(), 4 * ps, 4 * ps), &[])?;
    expect_refused(r, "another BO", "(another mapping)");
    // Anonymous memory.
    let len = std::num::NonZeroUsize::new(4 * ps as usize).ok_or_else(|| anyhow::anyhow!("zero"))?;
    // SAFETY: a fresh private anonymous mapping nothing else refers to; it
    // is never unmapped while the test reads it (never).
    let anon = unsafe {
        let p = nix::sys::mman::mmap_anonymous(
            None,
            len,
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_PRIVATE,
        )?;
        nix::sys::mman::madvise(p, len.get(), nix::sys::mman::MmapAdvise::MADV_DONTFORK)?;
        p.as_ptr() as u64
    };
    uffd.register_wp(anon, 4 * ps)?;
    let (r, _) = raw.call(12, &map_req(anon, 4 * ps, 0), &[])?;
    expect_refused(r, "anonymous memory", "anonymous memory");
    // No MADV_DONTFORK.
    let nf = SharedMapping::map(memfd.as_fd(), 4 * ps, 8 * ps, true)?;
    uffd.register_wp(nf.addr(), 4 * ps)?;
    let (r, _) = raw.call(13, &map_req(nf.addr(), 4 * ps, 8 * ps), &[])?;
    expect_refused(r, "no MADV_DONTFORK", "(no MADV_DONTFORK)");
    // Registered with a second WP_ASYNC uffd of this process, not the one
    // attached.
    let (second, _) = Userfaultfd::open(UffdFlavor::UserModeOnly, want, features::WP_ASYNC)?;
    let w = prepared(memfd.as_fd(), 12 * ps, &second)?;
    let (r, _) = raw.call(14, &map_req(w.addr(), 4 * ps, 12 * ps), &[])?;
    expect_refused(r, "another uffd", "(wrong uffd)");
    // Registered with a synchronous uffd.
    if let Ok(sync) = Userfaultfd::create(UffdFlavor::UserModeOnly) {
        if sync.api(features::WP_HUGETLBFS_SHMEM).is_ok() {
            let s = prepared(memfd.as_fd(), 0, &sync)?;
            let (r, _) = raw.call(15, &map_req(s.addr(), 4 * ps, 0), &[])?;
            expect_refused(r, "a sync uffd", "not registered");
        }
    }
    // The right view is accepted.
    let (r, _) = raw.call(16, &map_req(m.addr(), 4 * ps, 4 * ps), &[])?;
    let Reply::Mapped { view } = r else {
        panic!("a correct MAP: {r:?}")
    };
    let (r, _) = raw.call(17, &Request::Sync { bo, flags: 0 }, &[])?;
    assert!(matches!(r, Reply::SyncDone(_)), "{r:?}");
    let (r, _) = raw.call(18, &Request::Unmap { bo, view }, &[])?;
    assert!(matches!(r, Reply::Ok), "{r:?}");
    Ok(())
}

#[test]
fn a_uffd_sync_view_must_be_registered_with_the_attached_uffd() -> anyhow::Result<()> {
    use cohmem_proto::{Mechanism, ATTACH_MECHANISM_SHIFT, ATTACH_SYNC_ALL_FAULTS, ATTACH_WITH_SYNC_UFFD};
    let shmem = features::WP_HUGETLBFS_SHMEM;
    let (uffd, all_faults) = match Userfaultfd::open(UffdFlavor::AllFaults, shmem, shmem) {
        Ok((u, _)) => (u, ATTACH_SYNC_ALL_FAULTS),
        Err(_) => match Userfaultfd::open(UffdFlavor::UserModeOnly, shmem, shmem) {
            Ok((u, _)) => (u, 0),
            Err(e) => {
                eprintln!("skipping: no uffd-sync on memfds here: {e}");
                return Ok(());
            }
        },
    };
    let daemon = spawn_daemon(DAEMON)?;
    let ps = cohmem_sys::page_size();
    let raw = RawClient::connect_hello(daemon.socket())?;
    let flags = ATTACH_WITH_SYNC_UFFD | all_faults | (u32::from(Mechanism::UffdSync as u16) << ATTACH_MECHANISM_SHIFT);
    let attach = Request::AttachMm {
        token: 0x5c,
        uffd_features: 0,
        flags,
    };
    let (r, _) = raw.call(1, &attach, &[uffd.as_fd()])?;
    assert!(matches!(r, Reply::MmAttached { .. }), "{r:?}");
    let (bo, memfd) = create_bo(&raw, 2, 16 * ps)?;
    let map_req = |addr: u64, offset: u64| Request::Map {
        bo,
        addr,
        len: 4 * ps,
        offset,
    };
    let prepared = |off: u64, uffd: &Userfaultfd| -> anyhow::Result<SharedMapping> {
        let m = SharedMapping::map(memfd.as_fd(), 4 * ps, off, true)?;
        m.dont_fork()?;
        uffd.register_wp(m.addr(), 4 * ps)?;
        Ok(m)
    };
    // A second synchronous uffd of this process.
    let (second, _) = Userfaultfd::open(UffdFlavor::UserModeOnly, shmem, shmem)?;
    let a = prepared(0, &second)?;
    let (r, _) = raw.call(10, &map_req(a.addr(), 0), &[])?;
    expect_refused(r, "a second sync uffd", "(wrong uffd)");
    // The process's WP_ASYNC uffd offered as if it were the sync one.
    let want = features::WP_ASYNC | features::WP_UNPOPULATED | shmem;
    if let Ok((asynchronous, _)) = Userfaultfd::open(UffdFlavor::UserModeOnly, want, features::WP_ASYNC) {
        let b = prepared(4 * ps, &asynchronous)?;
        let (r, _) = raw.call(11, &map_req(b.addr(), 4 * ps), &[])?;
        expect_refused(r, "the async uffd", "(wrong uffd)");
    }
    // Registered with the attached uffd: accepted.
    let c = prepared(8 * ps, &uffd)?;
    let (r, _) = raw.call(12, &map_req(c.addr(), 8 * ps), &[])?;
    let Reply::Mapped { view } = r else {
        panic!("a correct MAP: {r:?}")
    };
    let (r, _) = raw.call(13, &Request::Sync { bo, flags: 0 }, &[])?;
    assert!(matches!(r, Reply::SyncDone(_)), "{r:?}");
    let (r, _) = raw.call(14, &Request::Unmap { bo, view }, &[])?;
    assert!(matches!(r, Reply::Ok), "{r:?}");
    Ok(())
}
