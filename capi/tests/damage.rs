//! Batched damage through the C ABI: `cohmem_bo_damage_ranges`,
//! `cohmem_bo_sync_damaged` and `cohmem_bo_sync_damaged_rects`, called as C
//! calls them, against this package's test daemon under the `explicit`
//! mechanism (only reported damage is uploaded), on the software GPU.

use std::ptr;

mod common;
use common::{last_error, page_size};

use cohmem::*;

/// Writes `len` bytes of `byte` at `offset` of a live mapping.
fn fill(map: *mut cohmem_mapping, offset: u64, len: u64, byte: u8) {
    // SAFETY: a live mapping; the range is checked against its length.
    unsafe {
        assert!(offset + len <= cohmem_mapping_len(map) as u64);
        ptr::write_bytes(cohmem_mapping_ptr(map).add(offset as usize), byte, len as usize);
    }
}

#[test]
fn c_reports_ranges_and_rectangles_and_syncs_in_one_call() {
    let daemon = common::soft_daemon(&["--mechanism", "explicit"]);
    let conn = common::connect(&daemon);
    let ps = page_size();
    let (mut bo, mut map) = (ptr::null_mut(), ptr::null_mut());
    // SAFETY: a live connection and BO, valid out pointers.
    unsafe {
        assert_eq!(cohmem_bo_create(conn, 32 * ps, &mut bo), COHMEM_OK, "{}", last_error());
        assert_eq!(cohmem_bo_map(bo, &mut map), COHMEM_OK, "{}", last_error());
    }

    // Three pages written, two reported in one call with the sync.
    fill(map, 2 * ps + 10, 20, 1);
    fill(map, 5 * ps - 4, 8, 1); // crosses into page 5
    fill(map, 20 * ps, 1, 1);
    let ranges = [
        cohmem_range {
            offset: 2 * ps + 10,
            len: 20,
        },
        cohmem_range {
            offset: 5 * ps - 4,
            len: 8,
        },
    ];
    let mut result = cohmem_sync_result::default();
    // SAFETY: a live BO, an array of 2 ranges, a valid out pointer.
    let rc = unsafe { cohmem_bo_sync_damaged(bo, ranges.as_ptr(), ranges.len(), &mut result) };
    assert_eq!(rc, COHMEM_OK, "{}", last_error());
    assert_eq!(
        (result.pages, result.mechanism),
        (3, cohmem_mechanism::COHMEM_MECHANISM_EXPLICIT),
        "pages 2, 4 and 5 (explicit)"
    );

    // Damage without the sync, then a plain sync uploads it.
    let late = [cohmem_range {
        offset: 20 * ps,
        len: 1,
    }];
    // SAFETY: a live BO and an array of 1 range.
    assert_eq!(unsafe { cohmem_bo_damage_ranges(bo, late.as_ptr(), 1) }, COHMEM_OK);
    // SAFETY: a live BO and a valid out pointer.
    assert_eq!(unsafe { cohmem_bo_sync(bo, &mut result) }, COHMEM_OK);
    assert_eq!(result.pages, 1);

    // A range past the BO: COHMEM_E_INVALID, nothing reported.
    let bad = [
        cohmem_range { offset: 0, len: 1 },
        cohmem_range {
            offset: 31 * ps,
            len: 2 * ps,
        },
    ];
    // SAFETY: a live BO, an array of 2 ranges, a valid out pointer.
    let rc = unsafe { cohmem_bo_sync_damaged(bo, bad.as_ptr(), bad.len(), &mut result) };
    assert_eq!(rc, COHMEM_E_INVALID, "{}", last_error());
    assert!(last_error().contains("outside the BO"), "{}", last_error());
    // SAFETY: NULL with a non-zero count is refused before any use.
    assert_eq!(unsafe { cohmem_bo_damage_ranges(bo, ptr::null(), 3) }, COHMEM_E_INVALID);
    // SAFETY: a live BO and a valid out pointer.
    assert_eq!(unsafe { cohmem_bo_sync(bo, &mut result) }, COHMEM_OK);
    assert_eq!(result.pages, 0, "the refused list recorded nothing");

    // An image BO's damage by rectangles.
    let mut image = ptr::null_mut();
    let mut info = cohmem_image_info::default();
    let mut imap = ptr::null_mut();
    // SAFETY: a live connection and BO, valid out pointers.
    unsafe {
        let rc = cohmem_image_create(conn, 300, 100, COHMEM_FORMAT_XRGB8888, &mut image);
        assert_eq!(rc, COHMEM_OK, "{}", last_error());
        assert_eq!(cohmem_bo_image_info(image, &mut info), COHMEM_OK);
        assert_eq!(cohmem_bo_map(image, &mut imap), COHMEM_OK);
    }
    let rect = cohmem_rect {
        x: 10,
        y: 40,
        w: 5,
        h: 3,
    };
    for y in rect.y..rect.y + rect.h {
        fill(
            imap,
            info.offset + u64::from(y) * u64::from(info.pitch) + 4 * u64::from(rect.x),
            20,
            0x7f,
        );
    }
    let pages: std::collections::BTreeSet<u64> = (rect.y..rect.y + rect.h)
        .flat_map(|y| {
            let start = info.offset + u64::from(y) * u64::from(info.pitch) + 40;
            start / ps..(start + 20).div_ceil(ps)
        })
        .collect();
    // SAFETY: a live image BO, an array of 1 rect, a valid out pointer.
    let rc = unsafe { cohmem_bo_sync_damaged_rects(image, &rect, 1, &mut result) };
    assert_eq!(rc, COHMEM_OK, "{}", last_error());
    assert_eq!(result.pages, pages.len() as u64, "the rows' pages");
    let outside = cohmem_rect {
        x: 299,
        y: 0,
        w: 2,
        h: 1,
    };
    // SAFETY: as above.
    let rc = unsafe { cohmem_bo_sync_damaged_rects(image, &outside, 1, &mut result) };
    assert_eq!(rc, COHMEM_E_INVALID);
    assert!(last_error().contains("outside the 300x100 image"), "{}", last_error());

    // SAFETY: each object is freed once, mappings before their BOs.
    unsafe {
        assert_eq!(cohmem_unmap(imap), COHMEM_OK);
        cohmem_bo_free(image);
        assert_eq!(cohmem_unmap(map), COHMEM_OK);
        cohmem_bo_free(bo);
        cohmem_disconnect(conn);
    }
}

#[test]
fn c_syncs_a_frames_bos_in_one_call() {
    let daemon = common::soft_daemon(&[]);
    let (conn, other) = (common::connect(&daemon), common::connect(&daemon));
    let ps = page_size();
    let mut bos = Vec::new();
    let mut maps = Vec::new();
    for i in 0..5u64 {
        let (mut bo, mut map) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: a live connection and BO, valid out pointers.
        unsafe {
            assert_eq!(cohmem_bo_create(conn, 8 * ps, &mut bo), COHMEM_OK, "{}", last_error());
            assert_eq!(cohmem_bo_map(bo, &mut map), COHMEM_OK, "{}", last_error());
        }
        // BO i gets i pages written.
        for p in 0..i {
            fill(map, p * ps, 8, 0x40 + i as u8);
        }
        bos.push(bo.cast_const());
        maps.push(map);
    }
    let mut results = vec![cohmem_sync_result::default(); bos.len()];
    let mut codes = vec![-1; bos.len()];
    // SAFETY: a live connection, `bos.len()` live BOs, outs of that length.
    let rc = unsafe { cohmem_sync_many(conn, bos.as_ptr(), bos.len(), results.as_mut_ptr(), codes.as_mut_ptr()) };
    assert_eq!(rc, COHMEM_OK, "{}", last_error());
    assert_eq!(codes, vec![0; 5]);
    assert_eq!(results.iter().map(|r| r.pages).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);

    // A BO of another connection: refused whole, nothing synced.
    let mut foreign = ptr::null_mut();
    // SAFETY: a live connection and a valid out pointer.
    assert_eq!(unsafe { cohmem_bo_create(other, 4 * ps, &mut foreign) }, COHMEM_OK);
    fill(maps[1], 5 * ps, 8, 1);
    let mixed = [bos[1], foreign.cast_const()];
    // SAFETY: live BOs; NULL outs are allowed.
    let rc = unsafe { cohmem_sync_many(conn, mixed.as_ptr(), 2, ptr::null_mut(), ptr::null_mut()) };
    assert_eq!(rc, COHMEM_E_INVALID);
    assert!(last_error().contains("another connection"), "{}", last_error());
    let mut one = cohmem_sync_result::default();
    // SAFETY: a live BO and a valid out pointer.
    assert_eq!(unsafe { cohmem_bo_sync(bos[1], &mut one) }, COHMEM_OK);
    assert_eq!(one.pages, 1, "the refused list synced nothing");

    // SAFETY: each object is freed once, mappings before their BOs.
    unsafe {
        cohmem_bo_free(foreign);
        for (map, bo) in maps.into_iter().zip(bos) {
            assert_eq!(cohmem_unmap(map), COHMEM_OK);
            cohmem_bo_free(bo.cast_mut());
        }
        cohmem_disconnect(other);
        cohmem_disconnect(conn);
    }
}
