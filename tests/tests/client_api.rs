//! The client library's safe mapping API and handle-based calls (issue
//! 20): typed and bulk copies are bounds-checked with clear errors, image
//! rows reach exactly the image's pixels, a detached mapping can always
//! sync after its `Bo` and `Connection` values are gone, and the per-BO
//! policy and snapshot calls act on the BO they are called on.

use std::os::unix::fs::FileExt;

use cohmem_client::vm_memory::Bytes;
use cohmem_client::{fourcc, BoPolicy, ClientError, Connection};
use cohmem_tests::spawn_daemon;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

#[test]
fn byte_accessors_are_bounds_checked_with_clear_errors() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = conn.page_size();
    let bo = conn.create_bo(4 * ps)?;
    let map = bo.map()?;
    let len = map.len();

    // Typed and bulk copies round-trip.
    let words: Vec<u32> = (0..1000).collect();
    map.write_slice(100, &words)?;
    let mut back = vec![0u32; 1000];
    map.read_slice(100, &mut back)?;
    assert_eq!(back, words);
    map.write_obj(5000, 0x1122_3344_5566_7788u64)?;
    assert_eq!(map.read_obj::<u64>(5000)?, 0x1122_3344_5566_7788);
    let mem = map.as_volatile_slice()?;
    mem.write_obj(0xabcd_u16, 7).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(map.read_obj::<u16>(7)?, 0xabcd);
    assert_eq!(map.volatile_range(ps as usize, 16)?.len(), 16);

    // Past the end: OutOfBounds, nothing written.
    let e = map.write(len - 2, b"abc").unwrap_err();
    assert!(
        matches!(e, ClientError::OutOfBounds { offset, len: 3, mapping_len } if offset == (len - 2) as u64 && mapping_len == len as u64),
        "{e:?}"
    );
    assert!(e.to_string().contains("past the end"), "{e}");
    assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::InvalidInput);
    let mut tail = [0u8; 2];
    map.read(len - 2, &mut tail)?;
    assert_eq!(tail, [0, 0], "a refused write writes nothing");
    for e in [
        map.write_slice(len - 4, &[1u32, 2]).unwrap_err(),
        map.write_obj(usize::MAX, 1u8).unwrap_err(),
        map.fill(len, 1, 0).unwrap_err(),
        map.write_u64(len, 1).unwrap_err(),
        map.damage(len as u64, 1).unwrap_err(),
    ] {
        assert!(matches!(e, ClientError::OutOfBounds { .. }), "{e:?}");
    }
    let e = map.write_u64(4, 1).unwrap_err();
    assert!(
        matches!(&e, ClientError::InvalidArgument(m) if m.contains("8-byte aligned")),
        "{e:?}"
    );

    // An unaligned map_range says what to do instead.
    let e = bo.map_range(100, ps).unwrap_err();
    assert!(
        matches!(&e, ClientError::InvalidArgument(m) if m.contains("page size") && m.contains("map from 0")),
        "{e:?}"
    );
    let e = bo.map_range(ps, 4 * ps).unwrap_err();
    assert!(
        matches!(&e, ClientError::InvalidArgument(m) if m.contains("past the BO")),
        "{e:?}"
    );

    // Rows need an image BO.
    let e = map.row(0).unwrap_err();
    assert!(
        matches!(&e, ClientError::InvalidArgument(m) if m.contains("image BO")),
        "{e:?}"
    );

    // What was written is what the sync uploads.
    let done = map.sync()?;
    assert_eq!(done.pages, 2, "pages 0 and 1 were written: {done:?}");
    assert!(cohmem_tools::verify_gpu_copy(&bo)?.is_empty());
    Ok(())
}

#[test]
fn image_rows_reach_exactly_the_visible_pixels() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let (w, h) = (100u32, 40u32);
    let bo = conn.create_image(w, h, fourcc::XRGB8888)?;
    let info = bo.image().expect("an image BO");
    let map = bo.map()?;
    assert_eq!(map.image(), Some(info));
    assert_eq!(map.rows()?.len(), h as usize);
    for row in map.rows()? {
        assert_eq!(row.as_volatile_slice().len(), (w * 4) as usize);
        row.fill_pixels(0, w as usize, 0x0011_2233u32)?;
    }
    let sprite: Vec<u32> = (0..10).map(|i| 0x00ff_0000 | i).collect();
    for y in 5..15 {
        map.row(y)?.write_pixels(90, &sprite)?;
    }
    // Outside the row, a wrong pixel size, a row past the image: refused.
    let row = map.row(3)?;
    for e in [
        row.write_pixels(91, &sprite).unwrap_err(),
        row.write_pixels(0, &[0u16; 4]).unwrap_err(),
        row.fill_pixels(u32::MAX, 2, 0u32).unwrap_err(),
        map.row(h).unwrap_err(),
    ] {
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
    }
    let mut got = [0u32; 10];
    map.row(7)?.read_pixels(90, &mut got)?;
    assert_eq!(&got[..], &sprite[..]);
    let done = bo.sync()?;
    assert!(done.pages > 0);
    // The BO holds the pixels where the layout says, and the padding is
    // untouched.
    let mut px = [0u8; 4];
    bo.read_at(info.pixel_offset(95, 9), &mut px)?;
    assert_eq!(u32::from_le_bytes(px), sprite[5]);
    bo.read_at(info.pixel_offset(0, 39), &mut px)?;
    assert_eq!(u32::from_le_bytes(px), 0x0011_2233);
    if info.pitch > w * 4 {
        bo.read_at(info.pixel_offset(w, 0), &mut px)?;
        assert_eq!(px, [0; 4], "the pitch's padding is not written");
    }
    assert!(cohmem_tools::verify_gpu_copy(&bo)?.is_empty());
    Ok(())
}

#[test]
fn a_detached_mapping_syncs_after_its_bo_and_connection_are_dropped() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = conn.page_size() as usize;
    let bo = conn.create_bo(8 * ps as u64)?;
    let id = bo.id();
    let map = bo.map_detached()?;
    map.sync()?;
    drop(bo);
    drop(conn);
    map.write(3 * ps, b"still tracked")?;
    map.write(6 * ps + 10, b"and synced")?;
    let done = map.bo().sync_with_runs()?;
    assert_eq!(done.pages_list(), vec![3, 6], "{done:?}");
    assert_eq!(map.bo().id(), id);
    let bo = map.bo();
    assert!(cohmem_tools::verify_gpu_copy(&bo)?.is_empty());
    // Another thread can hold it.
    let map = std::thread::spawn(move || -> Result<_, ClientError> {
        map.write(0, b"from a thread")?;
        Ok(map)
    })
    .join()
    .expect("no panic")?;
    assert_eq!(map.sync()?.pages, 1);
    map.unmap()?;
    Ok(())
}

#[test]
fn handle_based_policy_and_snapshot_act_on_their_bo() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = conn.page_size() as usize;
    let bo = conn.create_bo(4 * ps as u64)?;
    let other = conn.create_bo(4 * ps as u64)?;
    let map = bo.map()?;
    map.write(ps + 1, b"snapshot me")?;
    let (previous, _method) = bo.set_policy(BoPolicy::Full)?;
    assert_eq!(previous, BoPolicy::Auto);
    let (previous, _) = bo.set_policy(BoPolicy::Auto)?;
    assert_eq!(previous, BoPolicy::Full, "the policy set is the BO's");
    let (previous, _) = other.set_policy(BoPolicy::MkWrite)?;
    assert_eq!(previous, BoPolicy::Auto, "the other BO was not touched");

    let (fd, _report) = bo.snapshot()?;
    let mut bytes = vec![0u8; 4 * ps];
    std::fs::File::from(fd).read_exact_at(&mut bytes, 0)?;
    assert_eq!(&bytes[ps + 1..ps + 12], b"snapshot me");
    let (fd, _) = other.snapshot()?;
    std::fs::File::from(fd).read_exact_at(&mut bytes, 0)?;
    assert!(bytes.iter().all(|&b| b == 0), "the other BO's snapshot is its own");
    Ok(())
}

/// Runs `f` to completion on this thread (a minimal executor: the waker
/// unparks the thread).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut f = std::pin::pin!(f);
    let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => return v,
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}

#[test]
fn a_background_sync_is_a_future_and_a_pollable_fd() -> anyhow::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = conn.page_size() as usize;
    let bo = conn.create_bo(8 * ps as u64)?;
    let map = bo.map()?;
    map.sync()?;

    map.write(2 * ps, b"awaited")?;
    let done = block_on(bo.sync_in_background()?)?;
    assert_eq!(done.pages, 1, "{done:?}");

    map.write(5 * ps, b"polled")?;
    let mut pending = bo.sync_in_background()?;
    let mut fds = [PollFd::new(pending.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::from(10_000u16))?;
    assert_eq!(ready, 1, "the fd becomes readable when the sync is done");
    assert!(pending.is_done());
    let done = pending.try_take().expect("done")?;
    assert_eq!(done.pages, 1, "{done:?}");
    assert!(pending.try_take().is_none(), "taken once");

    map.write(7 * ps, b"waited")?;
    assert_eq!(bo.sync_in_background()?.wait()?.pages, 1);
    assert!(cohmem_tools::verify_gpu_copy(&bo)?.is_empty());
    Ok(())
}
