//! DESIGN.md §5.5, issue 5 "restart without data loss": the daemon is
//! killed with SIGKILL and started again on the same socket; the client's
//! connection reconnects on its next call, re-attaches, re-imports its BO by
//! its own memfd (the new daemon adopts it with every page dirty) and
//! re-announces its mappings. The first sync after the restart uploads the
//! whole BO, so every write made before, during and after the outage is in
//! the new GPU copy; tracking is exact again from then on.

use cohmem_client::{ClientError, Connection, Mechanism};
use cohmem_tests::spawn_daemon_for;
use cohmem_tools::verify::verify_gpu_copy;

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

fn survives_a_restart(mechanism: Mechanism) -> anyhow::Result<()> {
    const PAGES: usize = 64;
    let mut daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo((PAGES * ps) as u64)?;
    let map = bo.map()?;
    let other = bo.map_range(8 * ps as u64, 8 * ps as u64)?;
    for p in 0..PAGES {
        map.write_u64(p * ps, 0x1000 + p as u64)?;
    }
    assert_eq!(bo.sync()?.pages, PAGES as u64);
    assert_eq!(verify_gpu_copy(&bo)?, vec![], "before the restart");
    let old_id = bo.id();

    daemon.kill9()?;
    // Written while no daemon runs: never blocks, tracked by nobody.
    for p in (0..PAGES).step_by(3) {
        map.write_u64(p * ps + 8, 0x2000 + p as u64)?;
    }
    other.write_u64(ps, 0x2222)?;
    // A call while the daemon is down fails and says so.
    match bo.sync() {
        Err(ClientError::Connect { .. } | ClientError::Disconnected) => {}
        other => panic!("sync with the daemon down: {other:?}"),
    }
    daemon.restart()?;
    // Written after the restart but before the client noticed it.
    for p in (1..PAGES).step_by(5) {
        map.write_u64(p * ps + 16, 0x3000 + p as u64)?;
    }

    let first = bo.sync()?;
    assert_eq!(conn.reconnects(), 1, "one reconnect");
    assert_eq!(
        first.pages, PAGES as u64,
        "the first sync after a restart uploads the whole BO"
    );
    assert_eq!(verify_gpu_copy(&bo)?, vec![], "after the restart");
    assert!(bo.id() >= 1 && old_id >= 1);

    // Tracking is exact again, through both re-announced mappings and a new one.
    map.write_u64(5 * ps, 0x4005)?;
    other.write_u64(2 * ps, 0x4010)?; // BO page 10
    let third = bo.map_range(40 * ps as u64, ps as u64)?;
    third.write_u64(0, 0x4040)?;
    let after = bo.sync_with_runs()?;
    assert_eq!(after.pages_list(), vec![5, 10, 40], "exact after the restart");
    assert_eq!(verify_gpu_copy(&bo)?, vec![]);
    drop((third, other, map));
    Ok(())
}

#[test]
fn uffd_async_survives_a_daemon_restart() -> anyhow::Result<()> {
    if !cohmem_tests::caps().uffd_async.ok {
        eprintln!("uffd-async unavailable on this kernel");
        return Ok(());
    }
    survives_a_restart(Mechanism::UffdAsync)
}

#[test]
fn uffd_sync_survives_a_daemon_restart() -> anyhow::Result<()> {
    survives_a_restart(Mechanism::UffdSync)
}

#[test]
fn full_survives_a_daemon_restart() -> anyhow::Result<()> {
    survives_a_restart_untracked(Mechanism::Full)
}

/// Without tracking every sync uploads everything; a restart changes nothing
/// but the session.
fn survives_a_restart_untracked(mechanism: Mechanism) -> anyhow::Result<()> {
    let mut daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo(16 * ps as u64)?;
    let map = bo.map()?;
    map.write_u64(0, 1)?;
    bo.sync()?;
    daemon.kill9()?;
    map.write_u64(3 * ps, 3)?;
    daemon.restart()?;
    assert_eq!(bo.sync()?.pages, 16);
    assert_eq!(verify_gpu_copy(&bo)?, vec![]);
    Ok(())
}

/// A sync in flight when the daemon dies fails with `Disconnected` (its
/// outcome is unknown); the next one reconnects and uploads everything.
#[test]
fn many_restarts_lose_nothing() -> anyhow::Result<()> {
    let mut daemon = spawn_daemon_for(DAEMON, Mechanism::UffdSync)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo(32 * ps as u64)?;
    let map = bo.map()?;
    for round in 0..5u64 {
        for p in 0..32 {
            map.write_u64(p * ps, round << 32 | p as u64)?;
        }
        bo.sync()?;
        assert_eq!(verify_gpu_copy(&bo)?, vec![], "round {round}");
        daemon.kill9()?;
        daemon.restart()?;
    }
    bo.sync()?;
    assert_eq!(verify_gpu_copy(&bo)?, vec![]);
    assert_eq!(conn.reconnects(), 5);
    Ok(())
}

/// The daemon side on its own: a sealed memfd it does not know is adopted
/// with every page dirty; an unsealed or odd-sized one is refused, saying why.
#[test]
fn the_daemon_adopts_only_sealed_page_sized_memfds() -> anyhow::Result<()> {
    use cohmem_proto::{ErrorCode, Reply, Request};
    use cohmem_sys::memfd::Memfd;
    use std::os::fd::AsFd;

    let daemon = cohmem_tests::spawn_daemon(DAEMON)?;
    let raw = cohmem_tests::RawClient::connect_hello(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let sealed = Memfd::create_sealed("kept-across-restart", 12 * ps)?;
    let (r, _) = raw.call(2, &Request::ImportBo, &[sealed.as_fd()])?;
    let Reply::Bo { bo, size, .. } = r else {
        panic!("adoption failed: {r:?}")
    };
    assert_eq!(size, 12 * ps);
    match raw.call(3, &Request::Sync { bo, flags: 0 }, &[])?.0 {
        Reply::SyncDone(s) => assert_eq!(s.pages, 12, "an adopted BO starts wholly dirty"),
        other => panic!("sync: {other:?}"),
    }
    for (name, memfd) in [
        ("unsealed", Memfd::create("unsealed", 4 * ps, 0)?),
        ("odd-sized", Memfd::create("odd", ps + 1, cohmem_sys::memfd::BO_SEALS)?),
    ] {
        match raw.call(4, &Request::ImportBo, &[memfd.as_fd()])?.0 {
            Reply::Error { code, message } => {
                assert_eq!(code, ErrorCode::BadFds, "{name}: {message}");
                assert!(message.contains("adoptable"), "{name}: {message}");
            }
            other => panic!("{name} memfd adopted: {other:?}"),
        }
    }
    Ok(())
}

/// The writer child processes cargo builds with these tests.
const WRITER: &str = env!("CARGO_BIN_EXE_cohmem-test-writer");

/// Issue 14, item 7: two processes share a BO across a restart, and
/// whichever reconnects first, the other's writes made on its dead session
/// (by a mapping it then dropped, so that nothing re-announces it) reach the
/// new GPU copy. The first to reconnect syncs, which uploads and clears the
/// BO's adopted all-dirty state; the other's re-import must report its
/// damage again.
fn shared_bo_restart(mechanism: Mechanism, this_process_first: bool) -> anyhow::Result<()> {
    use cohmem_tools::writer::{page_pattern, WriterChild};
    let mut daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo(16 * ps as u64)?;
    let mut other = WriterChild::spawn(std::path::Path::new(WRITER), daemon.socket(), bo.memfd(), 0, 0)?;
    let map = bo.map()?;
    map.write_u64(0, 1)?;
    other.write_pages(7, &[1])?;
    bo.sync()?;
    assert_eq!(verify_gpu_copy(&bo)?, vec![], "before the restart");
    daemon.kill9()?;
    daemon.restart()?;
    let order = if this_process_first {
        "this process first"
    } else {
        "the other process first"
    };
    if this_process_first {
        bo.sync()?;
        // The other process, on its dead session, writes page 5 and drops
        // its mapping; its next call reconnects and re-imports.
        other.write_pages(11, &[5])?;
        assert_eq!(other.command("unmap")?, "ok");
        assert!(other.command("sync")?.starts_with("synced"));
        let mut want = vec![0u8; ps];
        page_pattern(11, 5, &mut want);
        let mut got = vec![0u8; ps];
        bo.read_at(5 * ps as u64, &mut got)?;
        assert_eq!(
            got, want,
            "{mechanism}, {order}: the other process's write is not in the BO"
        );
    } else {
        assert!(other.command("sync")?.starts_with("synced"));
        // This process, on its dead session, writes page 3 and drops its
        // mapping; its next call reconnects and re-imports.
        map.write_u64(3 * ps, 0xa3)?;
        drop(map);
        bo.sync()?;
    }
    assert_eq!(
        verify_gpu_copy(&bo)?,
        vec![],
        "{mechanism}, {order}: a write made on a dead session is missing from the new GPU copy"
    );
    other.quit()?;
    eprintln!("{mechanism}, {order}: the write made on the dead session reached the new GPU copy");
    Ok(())
}

#[test]
fn a_shared_bo_survives_a_restart_whoever_reconnects_first() -> anyhow::Result<()> {
    let caps = cohmem_tests::caps();
    for (mechanism, ok) in [
        (Mechanism::UffdAsync, caps.uffd_async.ok),
        (Mechanism::UffdSync, caps.uffd_sync.ok),
    ] {
        if !ok {
            eprintln!("{mechanism} unavailable on this kernel");
            continue;
        }
        shared_bo_restart(mechanism, true)?;
        shared_bo_restart(mechanism, false)?;
    }
    Ok(())
}

/// An image BO is re-imported as the same image (IMPORT_IMAGE): the new
/// daemon's resource has the layout the BO was created with, the first
/// sync reports the whole image (nobody tracked the outage), and rects are
/// exact again afterwards.
#[test]
fn an_image_bo_survives_a_restart_as_the_same_image() -> anyhow::Result<()> {
    use cohmem_client::{fourcc, Rect};
    let mut daemon = spawn_daemon_for(DAEMON, Mechanism::UffdSync)?;
    let conn = Connection::connect(daemon.socket())?;
    let bo = conn.create_image(1000, 40, fourcc::XRGB8888)?;
    let image = bo.image().expect("an image BO");
    let map = bo.map()?;
    let px = |x: u32, y: u32| image.pixel_offset(x, y) as usize;
    map.write(px(10, 2), &[0x11; 4])?;
    bo.sync()?;
    daemon.kill9()?;
    map.write(px(500, 20), &[0x22; 4])?;
    daemon.restart()?;
    let first = bo.sync()?;
    assert_eq!(conn.reconnects(), 1, "one reconnect");
    assert_eq!(
        first.pages,
        bo.size() / cohmem_sys::page_size(),
        "the whole BO after a restart"
    );
    assert_eq!(
        first.rects,
        vec![Rect {
            x: 0,
            y: 0,
            w: image.width,
            h: image.height
        }],
        "the whole image is damaged after a restart"
    );
    let export = bo.export_resource(0)?;
    assert_eq!(
        export.image,
        Some(image),
        "the new daemon's resource has the BO's layout"
    );
    assert_eq!(verify_gpu_copy(&bo)?, vec![], "after the restart");

    // Exact again: one pixel alone on its row's page gives that row's pixels of the page.
    map.write(px(999, 39), &[0x33; 4])?;
    let after = bo.sync()?;
    assert!(!after.rects.is_empty() && !after.rects_merged);
    assert!(
        after.rects.iter().all(|r| r.y >= 38) && after.rects.iter().any(|r| r.contains(999, 39)),
        "only the last page's pixels: {:?}",
        after.rects
    );
    assert_eq!(verify_gpu_copy(&bo)?, vec![]);
    Ok(())
}

/// IMPORT_IMAGE refuses what does not match: a known BO described with
/// another layout (or a byte BO described as an image), and an unknown
/// memfd whose layout this daemon's backend would not give the image; the
/// refusals name what differs. A matching import opens the same BO.
#[test]
fn import_image_refuses_a_layout_that_does_not_match() -> anyhow::Result<()> {
    use cohmem_client::{fourcc, ErrorCode};
    use cohmem_proto::{Reply, Request};
    use cohmem_tests::RawClient;
    use std::os::fd::AsFd;
    let daemon = cohmem_tests::spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let image_bo = conn.create_image(1000, 10, fourcc::XRGB8888)?;
    let image = image_bo.image().expect("an image BO");
    let byte_bo = conn.create_bo(1 << 16)?;
    let raw = RawClient::connect_hello(daemon.socket())?;
    let import = |id, image, fd: std::os::fd::BorrowedFd<'_>| raw.call(id, &Request::ImportImage { image }, &[fd]);
    let refused = |r: Reply, code: ErrorCode, needle: &str| match r {
        Reply::Error { code: c, message } if c == code && message.contains(needle) => eprintln!("refused: {message}"),
        other => panic!("expected {code:?} naming {needle:?}, got {other:?}"),
    };
    let (r, _) = import(2, image, image_bo.memfd())?;
    assert!(
        matches!(r, Reply::Bo { id, image: Some(i), .. } if id == image_bo.id() && i == image),
        "{r:?}"
    );
    let wrong_pitch = cohmem_client::ImageInfo { pitch: 4000, ..image };
    refused(
        import(3, wrong_pitch, image_bo.memfd())?.0,
        ErrorCode::InvalidArgument,
        "pitch 4032",
    );
    refused(
        import(4, image, byte_bo.memfd())?.0,
        ErrorCode::InvalidArgument,
        "a byte BO",
    );
    // A memfd this daemon does not know, described with a pitch the soft
    // backend would not choose.
    let foreign = cohmem_sys::memfd::Memfd::create_sealed("foreign", 40960)?;
    let odd = cohmem_client::ImageInfo { pitch: 4096, ..image };
    refused(import(5, odd, foreign.as_fd())?.0, ErrorCode::Unsupported, "pitch 4032");
    // Described as the soft backend lays it out, it is adopted as that image.
    let (r, _) = import(6, image, foreign.as_fd())?;
    assert!(matches!(r, Reply::Bo { image: Some(i), .. } if i == image), "{r:?}");
    Ok(())
}
