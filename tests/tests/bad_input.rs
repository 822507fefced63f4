//! Bad input over the real socket: garbage and truncated frames, oversized
//! lengths and sizes, unexpected, missing and wrong fds, foreign handles,
//! and clients killed mid-request. Each gets a clear typed error or a closed
//! connection, while another client keeps syncing and its data stays intact.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cohmem_client::{Connection, ErrorCode};
use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{Reply, Request, ATTACH_WITH_FDS, STATS_CONNECTIONS};
use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::Memfd;
use cohmem_sys::pagemap::PagemapFile;
use cohmem_sys::uffd::{features, UffdFlavor, Userfaultfd};
use cohmem_tests::spawn_daemon;
use cohmem_tests::{bystander, RawClient, RawOutcome, WriterChild};
use cohmem_tools::{verify_gpu_copy, SplitMix64};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

fn writer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cohmem-test-writer"))
}

fn expect_error(outcome: RawOutcome, want: ErrorCode, what: &str) {
    match outcome {
        RawOutcome::Reply(_, Reply::Error { code, message }, fds) => {
            assert_eq!(code, want, "{what}: got {code:?} ({message})");
            assert!(!message.is_empty(), "{what}: error without a message");
            assert!(fds.is_empty(), "{what}: error reply carried fds");
        }
        other => panic!("{what}: expected error {want:?}, got {other:?}"),
    }
}

fn expect_error_or_closed(outcome: RawOutcome, what: &str) {
    match outcome {
        RawOutcome::Reply(_, Reply::Error { code, .. }, _) => {
            assert!(
                matches!(
                    code,
                    ErrorCode::BadFrame | ErrorCode::UnknownRequest | ErrorCode::NotNegotiated
                ),
                "{what}: unexpected code {code:?}"
            );
        }
        RawOutcome::Closed => {}
        other => panic!("{what}: garbage was accepted: {other:?}"),
    }
}

#[test]
fn hostile_frames_and_fds_get_typed_errors_while_others_keep_working() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let socket = daemon.socket().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let good = bystander(&socket, stop.clone());
    let ps = cohmem_sys::page_size();

    // Requests before HELLO.
    let c = RawClient::connect(&socket)?;
    expect_error(
        c.send(&Request::CreateBo { size: 4096, flags: 0 }.encode(5), &[])?,
        ErrorCode::NotNegotiated,
        "CREATE_BO before HELLO",
    );

    // Unsupported version closes the connection after a typed error.
    let c = RawClient::connect(&socket)?;
    let bad_hello = Request::Hello {
        min_version: 90,
        max_version: 99,
        caps: 0,
    };
    expect_error(
        c.send(&bad_hello.encode(1), &[])?,
        ErrorCode::UnsupportedVersion,
        "HELLO v90..99",
    );
    assert!(
        matches!(c.recv()?, RawOutcome::Closed),
        "connection must close after UnsupportedVersion"
    );

    // Garbage: random frames, random lengths.
    let c = RawClient::connect_hello(&socket)?;
    let mut rng = SplitMix64::new(SplitMix64::seed_from_time());
    let mut closed = false;
    for i in 0..200 {
        let mut frame = vec![0u8; rng.below(300) as usize + 1];
        rng.fill(&mut frame);
        match c.send(&frame, &[])? {
            RawOutcome::Closed => {
                closed = true;
                break;
            }
            other => expect_error_or_closed(other, &format!("garbage frame {i}")),
        }
    }
    assert!(
        closed,
        "a connection sending nothing but garbage must eventually be closed"
    );

    let c = RawClient::connect_hello(&socket)?;
    // Unknown kind.
    let mut frame = Request::Stats { flags: 0 }.encode(9);
    frame[..2].copy_from_slice(&0x7777u16.to_le_bytes());
    expect_error(c.send(&frame, &[])?, ErrorCode::UnknownRequest, "unknown kind");
    // Truncated frames: every prefix of a MAP request.
    let map = Request::Map {
        bo: 1,
        addr: 0x1000,
        len: 4096,
        offset: 0,
    }
    .encode(3);
    for cut in 1..map.len() {
        match c.send(&map[..cut], &[])? {
            RawOutcome::Reply(_, Reply::Error { code, .. }, _) => {
                assert_eq!(code, ErrorCode::BadFrame, "MAP cut at {cut}")
            }
            other => panic!("truncated MAP at {cut}: {other:?}"),
        }
        // Keep the bad-frame counter from closing us: a good request resets it.
        let (r, _) = c.call(100, &Request::Stats { flags: 0 }, &[])?;
        assert!(matches!(r, Reply::Stats(_)));
    }
    // Oversized datagram.
    let mut huge = Request::Stats { flags: 0 }.encode(4);
    huge.resize(MAX_FRAME + 100, 0);
    expect_error(c.send(&huge, &[])?, ErrorCode::BadFrame, "oversized frame");
    // Trailing bytes.
    let mut trailing = Request::Destroy { bo: 1 }.encode(6);
    trailing.extend_from_slice(&[0, 0, 0]);
    expect_error(c.send(&trailing, &[])?, ErrorCode::BadFrame, "trailing bytes");
    // Absurd sizes.
    expect_error(
        c.send(
            &Request::CreateBo {
                size: 1 << 40,
                flags: 0,
            }
            .encode(7),
            &[],
        )?,
        ErrorCode::TooLarge,
        "1 TiB BO",
    );
    expect_error(
        c.send(
            &Request::CreateBo {
                size: u64::MAX,
                flags: 0,
            }
            .encode(7),
            &[],
        )?,
        ErrorCode::TooLarge,
        "u64::MAX BO",
    );
    expect_error(
        c.send(&Request::CreateBo { size: 0, flags: 0 }.encode(7), &[])?,
        ErrorCode::InvalidArgument,
        "empty BO",
    );

    // Unexpected fds: a memfd attached to CREATE_BO, and to STATS.
    let stray = Memfd::create_sealed("stray", 4096)?;
    expect_error(
        c.send(&Request::CreateBo { size: 4096, flags: 0 }.encode(8), &[stray.as_fd()])?,
        ErrorCode::BadFds,
        "CREATE_BO with an fd",
    );
    expect_error(
        c.send(&Request::Stats { flags: 0 }.encode(8), &[stray.as_fd(), stray.as_fd()])?,
        ErrorCode::BadFds,
        "STATS with fds",
    );
    // Missing and wrong fds.
    expect_error(
        c.send(&Request::ImportBo.encode(9), &[])?,
        ErrorCode::BadFds,
        "IMPORT_BO without fd",
    );
    // A sealed memfd the daemon does not know is adopted (a BO kept across
    // a daemon restart, tests/tests/daemon_restart.rs); an unsealed one is no BO.
    let unsealed = Memfd::create("unsealed", 4096, 0)?;
    expect_error(
        c.send(&Request::ImportBo.encode(9), &[unsealed.as_fd()])?,
        ErrorCode::BadFds,
        "IMPORT_BO of a memfd that is no BO",
    );
    let devnull = File::open("/dev/null")?;
    expect_error(
        c.send(&Request::ImportBo.encode(9), &[devnull.as_fd()])?,
        ErrorCode::BadFds,
        "IMPORT_BO of /dev/null",
    );
    let attach = Request::AttachMm {
        token: 1,
        uffd_features: u64::MAX,
        flags: ATTACH_WITH_FDS,
    };
    expect_error(
        c.send(&attach.encode(10), &[stray.as_fd(), devnull.as_fd()])?,
        ErrorCode::BadFds,
        "ATTACH_MM with a memfd for the uffd",
    );
    expect_error(
        c.send(&attach.encode(10), &[stray.as_fd()])?,
        ErrorCode::BadFds,
        "ATTACH_MM with one fd",
    );
    let no_fds = Request::AttachMm {
        token: 1,
        uffd_features: 0,
        flags: 0,
    };
    expect_error(
        c.send(&no_fds.encode(11), &[])?,
        ErrorCode::NeedMmFds,
        "ATTACH_MM without fds",
    );
    // MAP before ATTACH_MM, MAP on a handle that does not exist.
    expect_error(c.send(&map, &[])?, ErrorCode::NoMm, "MAP before ATTACH_MM");
    expect_error(
        c.send(
            &Request::SetMechanism {
                mechanism: cohmem_client::Mechanism::UffdSync,
            }
            .encode(14),
            &[],
        )?,
        ErrorCode::NoMm,
        "SET_MECHANISM before ATTACH_MM",
    );
    // An unknown mechanism number is a decode error, answered in kind.
    let mut bad_mechanism = Request::SetMechanism {
        mechanism: cohmem_client::Mechanism::UffdSync,
    }
    .encode(15);
    bad_mechanism[8] = 0x77;
    expect_error(c.send(&bad_mechanism, &[])?, ErrorCode::BadFrame, "SET_MECHANISM 0x77");
    expect_error(
        c.send(&Request::Sync { bo: 1, flags: 0 }.encode(12), &[])?,
        ErrorCode::NoSuchBo,
        "SYNC of a handle never opened",
    );
    // Too many fds (the kernel's maximum per message): all closed, typed error.
    let many: Vec<_> = (0..200).map(|_| stray.as_fd()).collect();
    expect_error(
        c.send(&Request::Stats { flags: 0 }.encode(13), &many)?,
        ErrorCode::BadFds,
        "200 fds",
    );

    // Foreign handles: a BO created on one connection is invisible on another.
    let owner = Connection::connect(&socket)?;
    let owned = owner.create_bo(16 * ps)?;
    let other = RawClient::connect_hello(&socket)?;
    for req in [
        Request::Sync {
            bo: owned.handle(),
            flags: 0,
        },
        Request::Destroy { bo: owned.handle() },
        Request::ExportResource {
            bo: owned.handle(),
            index: 0,
        },
        Request::Unmap {
            bo: owned.handle(),
            view: 1,
        },
    ] {
        expect_error(other.send(&req.encode(20), &[])?, ErrorCode::NoSuchBo, req.name());
    }
    // A real client's bad MAP arguments.
    let (r, _) = other.call(21, &Request::ImportBo, &[owned.memfd()])?;
    let Reply::Bo { bo: h, .. } = r else {
        panic!("import by memfd failed: {r:?}")
    };
    let (r, _) = other.call(22, &Request::ExportResource { bo: h, index: 5 }, &[])?;
    assert!(
        matches!(
            r,
            Reply::Error {
                code: ErrorCode::InvalidArgument,
                ..
            }
        ),
        "{r:?}"
    );
    drop(owned);
    drop(owner);

    // MAP lies: an address range the client never registered with its
    // WP_ASYNC uffd, overlapping views, ranges past the BO, unaligned ranges.
    let raw = RawClient::connect_hello(&socket)?;
    let want = features::WP_ASYNC | features::WP_UNPOPULATED | features::WP_HUGETLBFS_SHMEM;
    let (uffd, enabled) = Userfaultfd::open(UffdFlavor::UserModeOnly, want, features::WP_ASYNC)?;
    let pagemap = PagemapFile::open_self()?;
    let attach = Request::AttachMm {
        token: 0x5eed,
        uffd_features: enabled,
        flags: ATTACH_WITH_FDS,
    };
    // Another process's pagemap (this one may open its child's) is refused:
    // it would let this client scan someone else's memory.
    let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
    let foreign = File::open(format!("/proc/{}/pagemap", child.id()))?;
    let (r, _) = raw.call(29, &attach, &[uffd.as_fd(), foreign.as_fd()])?;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        matches!(&r, Reply::Error { code: ErrorCode::BadFds, message } if message.contains("not of the connecting process")),
        "a foreign pagemap must be refused: {r:?}"
    );
    let (r, _) = raw.call(30, &attach, &[uffd.as_fd(), pagemap.as_fd()])?;
    assert!(matches!(r, Reply::MmAttached { joined: false, .. }), "{r:?}");
    let (r, mut fds) = raw.call(
        31,
        &Request::CreateBo {
            size: 16 * ps,
            flags: 0,
        },
        &[],
    )?;
    let (Reply::Bo { bo: h, .. }, Some(memfd)) = (r, fds.pop()) else {
        panic!("CREATE_BO failed")
    };
    let mapping = SharedMapping::map(memfd.as_fd(), 16 * ps, 0, true)?;
    mapping.dont_fork()?; // MAP refuses a view a fork would inherit
    let map_req = |addr: u64, len: u64, offset: u64| Request::Map {
        bo: h,
        addr,
        len,
        offset,
    };
    let (r, _) = raw.call(32, &map_req(mapping.addr(), 16 * ps, 0), &[])?;
    assert!(
        matches!(&r, Reply::Error { code: ErrorCode::InvalidArgument, message } if message.contains("not registered")),
        "MAP of an unregistered range: {r:?}"
    );
    uffd.register_wp(mapping.addr(), 16 * ps)?;
    let (r, _) = raw.call(33, &map_req(mapping.addr(), 16 * ps, 0), &[])?;
    assert!(matches!(r, Reply::Mapped { .. }), "MAP of a registered range: {r:?}");
    for (what, req) in [
        ("overlapping view", map_req(mapping.addr() + ps, ps, 0)),
        ("range past the BO end", map_req(mapping.addr(), 16 * ps, ps)),
        ("unaligned address", map_req(mapping.addr() + 1, ps, 0)),
        ("zero length", map_req(mapping.addr(), 0, 0)),
        ("overflowing range", map_req(u64::MAX - ps + 1, ps, 0)),
    ] {
        let (r, _) = raw.call(34, &req, &[])?;
        assert!(
            matches!(
                r,
                Reply::Error {
                    code: ErrorCode::InvalidArgument,
                    ..
                }
            ),
            "{what}: {r:?}"
        );
    }

    stop.store(true, Ordering::Relaxed);
    let verified = good.join().map_err(|_| anyhow::anyhow!("bystander panicked"))??;
    assert!(verified > 0, "the bystander never completed a sync");
    eprintln!("bystander verified {verified} syncs during the abuse");
    let mut daemon = daemon;
    assert!(daemon.is_running(), "daemon died");
    Ok(())
}

#[test]
fn clients_killed_mid_request_cost_the_daemon_nothing() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let socket = daemon.socket().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let good = bystander(&socket, stop.clone());
    let ps = cohmem_sys::page_size();
    let observer = Connection::connect(&socket)?;
    let conn = Connection::connect(&socket)?;
    let bo = conn.create_bo(4096 * ps)?;
    let kills = AtomicU64::new(0);

    for i in 0..12 {
        let mut w = WriterChild::spawn(writer_bin(), &socket, bo.memfd(), 0, 0)?;
        // Alternate: killed while syncing in a loop (mid-request), and while
        // writing in a loop.
        w.send_only(if i % 2 == 0 { "syncloop" } else { "writeloop" })?;
        std::thread::sleep(Duration::from_millis(20 + 10 * (i % 3)));
        w.kill()?;
        kills.fetch_add(1, Ordering::Relaxed);
    }
    // Whatever the dead writers wrote reaches the GPU copy.
    bo.sync()?;
    assert!(verify_gpu_copy(&bo)?.is_empty(), "GPU copy differs after writer deaths");

    // The daemon forgets the dead: only our three connections remain.
    let mut remaining = usize::MAX;
    for _ in 0..200 {
        let s = observer.stats(STATS_CONNECTIONS)?;
        remaining = s.connections.len();
        if remaining == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(remaining, 3, "connections of killed clients were not released");

    stop.store(true, Ordering::Relaxed);
    let verified = good.join().map_err(|_| anyhow::anyhow!("bystander panicked"))??;
    assert!(verified > 0);
    eprintln!(
        "{} writers killed; bystander verified {verified} syncs",
        kills.load(Ordering::Relaxed)
    );
    let mut daemon = daemon;
    assert!(daemon.is_running());
    Ok(())
}

#[test]
fn fork_events_on_a_sync_uffd_cost_the_daemon_no_fds() -> anyhow::Result<()> {
    // A client may enable UFFD_FEATURE_EVENT_FORK on the uffd it hands over;
    // every fork then delivers a new uffd fd to whoever reads the messages.
    // The daemon closes those instead of collecting them.
    use cohmem_proto::{Mechanism, ATTACH_MECHANISM_SHIFT, ATTACH_SYNC_ALL_FAULTS, ATTACH_WITH_SYNC_UFFD};
    const EVENT_FORK: u64 = 1 << 1;
    let daemon = spawn_daemon(DAEMON)?;
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let c = RawClient::connect_hello(daemon.socket())?;
    let (uffd, _) = Userfaultfd::open(UffdFlavor::AllFaults, EVENT_FORK, EVENT_FORK)?;
    let flags = ATTACH_WITH_SYNC_UFFD
        | ATTACH_SYNC_ALL_FAULTS
        | (u32::from(Mechanism::UffdSync as u16) << ATTACH_MECHANISM_SHIFT);
    let attach = Request::AttachMm {
        token: 42,
        uffd_features: 0,
        flags,
    };
    let (r, _) = c.call(2, &attach, &[uffd.as_fd()])?;
    assert!(matches!(r, Reply::MmAttached { .. }), "{r:?}");
    // SAFETY: a fresh private anonymous page, registered so that forks
    // report to the uffd.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    uffd.register_wp(p as u64, 4096)?;
    let before = fds(daemon.pid());
    for _ in 0..100 {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = fds(daemon.pid());
    assert!(
        after < before + 10,
        "the daemon went from {before} to {after} fds after 100 forks"
    );
    Ok(())
}

#[test]
fn resources_per_bo_are_limited() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(4 * ps)?; // already has its default resource
    let mut added = 1;
    let err = loop {
        match bo.add_resource(0, ps) {
            Ok(_) => added += 1,
            Err(e) => break e,
        }
        assert!(added <= 64, "no limit on resources");
    };
    assert_eq!(err.code(), Some(ErrorCode::LimitExceeded), "{err}");
    assert!(err.to_string().contains("64"), "the error names the limit: {err}");
    assert_eq!(added, 64);
    Ok(())
}
