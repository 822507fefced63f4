//! Batched damage (issue 19, item 1): a cooperative client reports many
//! written ranges in one DAMAGE_RANGES request and syncs in the same round
//! trip (`Bo::sync_damaged`), or gives an image BO's damage as rectangles
//! (`Bo::sync_damaged_rects`). Under the `explicit` mechanism exactly the
//! reported bytes' pages are uploaded; checked against the GPU copy byte
//! for byte.

// One-range lists are what these calls take (`&[Range<u64>]`), not a
// mistaken range-to-Vec.
#![allow(clippy::single_range_in_vec_init)]

use std::collections::BTreeSet;
use std::ops::Range;

use cohmem_client::{fourcc, ClientError, Connection, ErrorCode, Mechanism, Rect};
use cohmem_tests::image::{bo_image_bytes, image_difference, GpuImage};
use cohmem_tests::spawn_daemon_for;
use cohmem_tools::{verify_gpu_copy, SplitMix64};

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

fn pages_of(ranges: &[Range<u64>], ps: u64) -> BTreeSet<u64> {
    ranges.iter().flat_map(|r| r.start / ps..r.end.div_ceil(ps)).collect()
}

#[test]
fn one_round_trip_uploads_exactly_the_reported_ranges() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::Explicit)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let pages = 512;
    let bo = conn.create_bo(pages * ps)?;
    let map = bo.map()?;
    let mut rng = SplitMix64::new(0xba7c);
    for round in 0..20u64 {
        // Ranges of 1 byte to 3 pages at random offsets, some overlapping,
        // some crossing page boundaries; the last round has more than one
        // request's worth (4000), so the library splits it.
        let count = if round == 19 { 5000 } else { 1 + rng.below(300) };
        let ranges: Vec<Range<u64>> = (0..count)
            .map(|_| {
                let start = rng.below(pages * ps - 1);
                let len = 1 + rng.below((3 * ps).min(pages * ps - start));
                start..(start + len).min(pages * ps)
            })
            .collect();
        for r in &ranges {
            map.fill(r.start as usize, (r.end - r.start) as usize, round as u8 + 1)?;
        }
        let done = bo.sync_damaged(&ranges)?;
        let want = pages_of(&ranges, ps);
        assert_eq!(done.mechanism, Mechanism::Explicit);
        assert_eq!(done.pages, want.len() as u64, "round {round}: {count} ranges");
        let differing = verify_gpu_copy(&bo)?;
        assert!(differing.is_empty(), "round {round}: {differing:?}");
    }
    // A write not reported is not uploaded (explicit), so the GPU copy
    // shows exactly that page: the ranges, not a whole-BO copy, were used.
    map.fill((7 * ps) as usize, 16, 0xee)?;
    map.fill((9 * ps) as usize, 16, 0xee)?;
    let done = bo.sync_damaged(&[9 * ps..9 * ps + 16])?;
    assert_eq!(done.pages, 1);
    let differing: Vec<u64> = verify_gpu_copy(&bo)?.iter().map(|m| m.page).collect();
    assert_eq!(differing, vec![7]);
    // Without the sync: recorded now, uploaded by the next sync.
    bo.damage_ranges(&[7 * ps..7 * ps + 1])?;
    assert_eq!(bo.sync()?.pages, 1);
    assert!(verify_gpu_copy(&bo)?.is_empty());
    Ok(())
}

#[test]
fn a_bad_range_reports_nothing() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::Explicit)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(16 * ps)?;
    for bad in [vec![0..8, 15 * ps..17 * ps], vec![ps..2 * ps, 3 * ps..3 * ps]] {
        let e = bo.sync_damaged(&bad).expect_err("a range past the BO or empty");
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("outside the BO"), "{e}");
    }
    assert_eq!(
        bo.sync()?.pages,
        0,
        "the good ranges of a refused list were not recorded"
    );
    let e = bo
        .damage_rects(&[Rect { x: 0, y: 0, w: 1, h: 1 }])
        .expect_err("a byte BO");
    assert!(e.to_string().contains("image BO"), "{e}");
    Ok(())
}

#[test]
fn the_daemon_refuses_a_lying_range_list_whole() -> anyhow::Result<()> {
    // Past the library's checks: a raw DAMAGE_RANGES whose second range
    // ends past the BO records nothing, and the connection goes on.
    use cohmem_proto::{ByteRange, Reply, Request, DAMAGE_THEN_SYNC};
    let daemon = spawn_daemon_for(DAEMON, Mechanism::Explicit)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(16 * ps)?;
    let raw = cohmem_tests::RawClient::connect_hello(daemon.socket())?;
    let (reply, _) = raw.call(2, &Request::ImportBo, &[bo.memfd()])?;
    let Reply::Bo { bo: handle, .. } = reply else {
        anyhow::bail!("IMPORT_BO: {reply:?}");
    };
    let lying = Request::DamageRanges {
        bo: handle,
        flags: DAMAGE_THEN_SYNC,
        ranges: vec![
            ByteRange { offset: 0, len: 8 },
            ByteRange {
                offset: u64::MAX - 4,
                len: 8,
            },
        ],
    };
    let (reply, _) = raw.call(3, &lying, &[])?;
    assert!(
        matches!(reply, Reply::Error { code: ErrorCode::InvalidArgument, ref message } if message.contains("not inside")),
        "{reply:?}"
    );
    let (reply, _) = raw.call(4, &Request::Sync { bo: handle, flags: 0 }, &[])?;
    let Reply::SyncDone(s) = reply else {
        anyhow::bail!("SYNC: {reply:?}");
    };
    assert_eq!(s.pages, 0, "nothing of the refused list was recorded");
    Ok(())
}

#[test]
fn rectangles_of_an_image_bo_upload_their_rows() -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, Mechanism::Explicit)?;
    let conn = Connection::connect(daemon.socket())?;
    // 200 pixels of 4 bytes: rows do not fill pages evenly.
    let bo = conn.create_image(200, 120, fourcc::XRGB8888)?;
    let info = bo.image().ok_or_else(|| anyhow::anyhow!("no image description"))?;
    let map = bo.map()?;
    let gpu = GpuImage::map(&bo.export_resource(0)?)?;
    let mut rng = SplitMix64::new(0x5ec7);
    for frame in 0..30u32 {
        let rects: Vec<Rect> = (0..1 + rng.below(6))
            .map(|_| {
                let (x, y) = (rng.below(200) as u32, rng.below(120) as u32);
                let (w, h) = (
                    1 + rng.below(u64::from(200 - x)) as u32,
                    1 + rng.below(u64::from(120 - y)) as u32,
                );
                Rect { x, y, w, h }
            })
            .chain((frame % 5 == 0).then_some(Rect {
                x: 0,
                y: frame,
                w: 200,
                h: 3,
            }))
            .collect();
        for r in &rects {
            for y in r.y..r.y + r.h {
                let px = (0xff00_0000 | (frame * 0x010203)).to_le_bytes().repeat(r.w as usize);
                map.write(info.pixel_offset(r.x, y) as usize, &px)?;
            }
        }
        let done = bo.sync_damaged_rects(&rects)?;
        for r in &rects {
            for (x, y) in [(r.x, r.y), (r.x + r.w - 1, r.y + r.h - 1)] {
                assert!(
                    done.rects.iter().any(|d| d.contains(x, y)),
                    "frame {frame}: pixel ({x}, {y}) of {r:?} in no reported rect {:?}",
                    done.rects
                );
            }
        }
        if let Some(d) = image_difference(&info, &bo_image_bytes(&bo, &info)?, &gpu.bytes()?) {
            panic!("frame {frame}: GPU copy differs: {d}");
        }
    }
    let e = bo
        .sync_damaged_rects(&[Rect {
            x: 199,
            y: 0,
            w: 2,
            h: 1,
        }])
        .expect_err("a rectangle past the image");
    assert!(e.to_string().contains("outside the 200x120 image"), "{e}");
    Ok(())
}

#[test]
fn under_tracking_the_damage_is_redundant_and_harmless() -> anyhow::Result<()> {
    let daemon = cohmem_tests::spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(64 * ps)?;
    let map = bo.map()?;
    map.fill((5 * ps) as usize, 8, 1)?;
    map.fill((40 * ps) as usize, 8, 1)?;
    // Only page 5 is reported; tracking finds page 40 as well.
    let done = bo.sync_damaged(&[5 * ps..5 * ps + 8])?;
    assert_eq!(done.pages, 2);
    assert!(verify_gpu_copy(&bo)?.is_empty());
    Ok(())
}
