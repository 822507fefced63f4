//! Image BOs through the C ABI (DESIGN.md §8): `cohmem_image_create`,
//! `cohmem_bo_image_info`, `cohmem_bo_sync_rects` and the image fields of
//! `cohmem_bo_export_dmabuf`, called exactly as C calls them (the
//! `extern "C"` functions of the library) against this package's test
//! daemon on the embedded software GPU, whose "device pitch" is a row
//! rounded up to 64 bytes (daemon/src/gpu/soft.rs).
//!
//! Damage is tracked by page: a sync reports the rectangles of every pixel
//! whose bytes lie in an uploaded page. The tests therefore compare the
//! rectangles with the pixels of the pages written, and reach "one pixel,
//! one 1x1 rectangle" with an image whose last pixel is alone in its page.

use std::ffi::c_int;
use std::ptr;

mod common;
use common::{last_error, page_size};

use cohmem::*;
use cohmem_client::ErrorCode;
use cohmem_tools::DaemonProcess;

/// A test daemon and one connection to it.
struct Daemon {
    conn: *mut cohmem_connection,
    _daemon: DaemonProcess,
}

impl Daemon {
    fn start() -> Self {
        let daemon = common::soft_daemon(&[]);
        let conn = common::connect(&daemon);
        Self { conn, _daemon: daemon }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: the connection came from cohmem_connect and is freed once.
        unsafe { cohmem_disconnect(self.conn) };
    }
}

/// An image BO, its layout and a tracked mapping of it.
struct Image {
    bo: *mut cohmem_bo,
    map: *mut cohmem_mapping,
    info: cohmem_image_info,
}

impl Image {
    fn create(conn: *const cohmem_connection, width: u32, height: u32, fourcc: u32) -> Self {
        let mut bo = ptr::null_mut();
        // SAFETY: a live connection and a valid out pointer.
        let rc = unsafe { cohmem_image_create(conn, width, height, fourcc, &mut bo) };
        assert_eq!(rc, COHMEM_OK, "cohmem_image_create {width}x{height}: {}", last_error());
        let mut info = cohmem_image_info::default();
        // SAFETY: a live BO and a valid out pointer.
        let rc = unsafe { cohmem_bo_image_info(bo, &mut info) };
        assert_eq!(rc, COHMEM_OK, "cohmem_bo_image_info: {}", last_error());
        let mut map = ptr::null_mut();
        // SAFETY: a live BO and a valid out pointer.
        let rc = unsafe { cohmem_bo_map(bo, &mut map) };
        assert_eq!(rc, COHMEM_OK, "cohmem_bo_map: {}", last_error());
        Self { bo, map, info }
    }

    fn cpp(&self) -> u64 {
        u64::from(cohmem_format_bytes_per_pixel(self.info.fourcc))
    }

    /// Byte offset of pixel (x, y).
    fn offset_of(&self, x: u32, y: u32) -> u64 {
        self.info.offset + u64::from(y) * u64::from(self.info.pitch) + u64::from(x) * self.cpp()
    }

    /// Writes pixel (x, y) through the mapping (all its bytes 0xff).
    fn put_pixel(&self, x: u32, y: u32) {
        assert!(x < self.info.width && y < self.info.height);
        let off = self.offset_of(x, y);
        // SAFETY: a live mapping; the pixel lies inside the BO (its layout
        // says so and the mapping covers the whole BO, checked below).
        unsafe {
            assert!(off + self.cpp() <= cohmem_mapping_len(self.map) as u64);
            ptr::write_bytes(
                cohmem_mapping_ptr(self.map).add(off as usize),
                0xff,
                self.cpp() as usize,
            );
        }
    }

    /// `cohmem_bo_sync_rects` with room for every rectangle.
    fn sync_rects(&self) -> (Vec<cohmem_rect>, bool, cohmem_sync_result) {
        let mut rects = vec![cohmem_rect::default(); COHMEM_MAX_DAMAGE_RECTS];
        let (mut count, mut merged, mut result) = (usize::MAX, -1, cohmem_sync_result::default());
        // SAFETY: a live BO, an array of `rects.len()` rects, valid outs.
        let rc = unsafe {
            cohmem_bo_sync_rects(
                self.bo,
                &mut result,
                rects.as_mut_ptr(),
                rects.len(),
                &mut count,
                &mut merged,
            )
        };
        assert_eq!(rc, COHMEM_OK, "cohmem_bo_sync_rects: {}", last_error());
        assert!(count <= COHMEM_MAX_DAMAGE_RECTS, "count {count}");
        assert!(merged == 0 || merged == 1, "merged {merged}");
        rects.truncate(count);
        (rects, merged == 1, result)
    }

    /// For each pixel (row-major), whether its bytes share a page with one
    /// of `pages`.
    fn pixels_of_pages(&self, pages: &[u64]) -> Vec<bool> {
        let ps = page_size();
        let mut px = Vec::new();
        for y in 0..self.info.height {
            for x in 0..self.info.width {
                let (first, last) = (self.offset_of(x, y) / ps, (self.offset_of(x, y) + self.cpp() - 1) / ps);
                px.push(pages.iter().any(|p| (first..=last).contains(p)));
            }
        }
        px
    }

    /// How many of `rects` cover each pixel (row-major); panics on a rect
    /// that is empty or reaches outside the image.
    fn coverage(&self, rects: &[cohmem_rect]) -> Vec<u32> {
        let (w, h) = (self.info.width, self.info.height);
        let mut cov = vec![0u32; (w * h) as usize];
        for r in rects {
            assert!(
                r.w > 0 && r.h > 0 && r.x + r.w <= w && r.y + r.h <= h,
                "{r:?} in {w}x{h}"
            );
            for y in r.y..r.y + r.h {
                for x in r.x..r.x + r.w {
                    cov[(y * w + x) as usize] += 1;
                }
            }
        }
        cov
    }

    /// Asserts that `rects` cover each pixel of the pages of `written`
    /// (pixels) exactly once and no other pixel.
    fn assert_rects_are_the_pages_of(&self, rects: &[cohmem_rect], written: &[(u32, u32)]) {
        let ps = page_size();
        let pages: Vec<u64> = written.iter().map(|&(x, y)| self.offset_of(x, y) / ps).collect();
        let want = self.pixels_of_pages(&pages);
        let cov = self.coverage(rects);
        assert!(cov.iter().all(|&c| c <= 1), "overlapping rects {rects:?}");
        let got: Vec<bool> = cov.iter().map(|&c| c == 1).collect();
        let differ = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        assert_eq!(
            differ, 0,
            "rects {rects:?} differ from the pixels of pages {pages:?} in {differ} pixels"
        );
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: both came from this library and are freed once.
        unsafe {
            cohmem_unmap(self.map);
            cohmem_bo_free(self.bo);
        }
    }
}

fn export(bo: *const cohmem_bo) -> cohmem_dmabuf {
    let mut buf = cohmem_dmabuf {
        fd: -1,
        size: u64::MAX,
        pitch: u64::MAX,
        image: cohmem_image_info {
            width: u32::MAX,
            height: u32::MAX,
            fourcc: u32::MAX,
            pitch: u32::MAX,
            offset: u64::MAX,
            modifier: u64::MAX,
        },
        offset: u64::MAX,
    };
    // SAFETY: a live BO and a valid out pointer.
    let rc = unsafe { cohmem_bo_export_dmabuf(bo, &mut buf) };
    assert_eq!(rc, COHMEM_OK, "cohmem_bo_export_dmabuf: {}", last_error());
    assert!(buf.fd >= 0);
    buf
}

fn close(fd: c_int) {
    // SAFETY: the caller owns `fd` (an exported resource).
    unsafe { libc::close(fd) };
}

#[test]
fn each_format_gets_the_soft_devices_pitch_and_exports_its_layout() {
    let d = Daemon::start();
    let ps = page_size();
    for (fourcc, cpp, pitch) in [
        (COHMEM_FORMAT_XRGB8888, 4, 4032),
        (COHMEM_FORMAT_ARGB8888, 4, 4032),
        (COHMEM_FORMAT_RGB565, 2, 2048),
    ] {
        assert_eq!(cohmem_format_bytes_per_pixel(fourcc), cpp);
        let img = Image::create(d.conn, 1000, 7, fourcc);
        assert_eq!(
            img.info,
            cohmem_image_info {
                width: 1000,
                height: 7,
                fourcc,
                pitch,
                offset: 0,
                modifier: COHMEM_MODIFIER_LINEAR,
            },
            "1000 pixels of {cpp} bytes, rows rounded up to 64 bytes"
        );
        let end = 6 * u64::from(pitch) + 1000 * u64::from(cpp);
        // SAFETY: live BO and mapping.
        let (size, len) = unsafe { (cohmem_bo_size(img.bo), cohmem_mapping_len(img.map)) };
        assert_eq!(
            size,
            end.div_ceil(ps) * ps,
            "the BO is the image's bytes rounded up to pages"
        );
        assert_eq!(len as u64, size);

        let buf = export(img.bo);
        assert_eq!(buf.image, img.info, "the export describes the image");
        assert_eq!(buf.pitch, ps, "an image BO's pages are contiguous in its buffer");
        assert!(buf.size >= end, "exported {} bytes, the image needs {end}", buf.size);
        close(buf.fd);
    }
    assert_eq!(cohmem_format_bytes_per_pixel(0x3231_564e), 0, "NV12 is unknown");
}

#[test]
fn a_byte_bo_has_no_image_info_no_rects_and_exports_zero_image_fields() {
    let d = Daemon::start();
    let ps = page_size();
    let mut bo = ptr::null_mut();
    // SAFETY: a live connection and a valid out pointer.
    assert_eq!(unsafe { cohmem_bo_create(d.conn, 4 * ps, &mut bo) }, COHMEM_OK);
    let mut info = cohmem_image_info {
        width: 1,
        height: 2,
        fourcc: 3,
        pitch: 4,
        offset: 5,
        modifier: 6,
    };
    // SAFETY: a live BO and a valid out pointer.
    let rc = unsafe { cohmem_bo_image_info(bo, &mut info) };
    assert_eq!(rc, COHMEM_E_INVALID);
    assert!(last_error().contains("not an image BO"), "{}", last_error());
    assert_eq!(info, cohmem_image_info::default(), "*out is zeroed");

    let buf = export(bo);
    assert_eq!(buf.pitch, ps, "a byte BO keeps its page pitch");
    assert_eq!(buf.image, cohmem_image_info::default(), "no image: all 0");
    close(buf.fd);

    let mut map = ptr::null_mut();
    // SAFETY: live objects, valid out pointers, a write inside the BO.
    unsafe {
        assert_eq!(cohmem_bo_map(bo, &mut map), COHMEM_OK);
        *cohmem_mapping_ptr(map).add(ps as usize + 10) = 1;
        let (mut count, mut merged, mut result) = (usize::MAX, -1, cohmem_sync_result::default());
        let mut rects = [cohmem_rect::default(); 4];
        let rc = cohmem_bo_sync_rects(bo, &mut result, rects.as_mut_ptr(), 4, &mut count, &mut merged);
        assert_eq!(rc, COHMEM_OK, "{}", last_error());
        assert_eq!((count, merged, result.pages), (0, 0, 1), "synced, without rects");
        assert_eq!(cohmem_unmap(map), COHMEM_OK);
        cohmem_bo_free(bo);
    }
}

#[test]
fn an_unknown_fourcc_is_refused_as_unsupported_and_named() {
    let d = Daemon::start();
    let nv12 = u32::from_le_bytes(*b"NV12");
    let mut bo = ptr::null_mut();
    // SAFETY: a live connection and a valid out pointer.
    let rc = unsafe { cohmem_image_create(d.conn, 64, 64, nv12, &mut bo) };
    assert_eq!(rc, COHMEM_E_DAEMON, "{}", last_error());
    assert_eq!(cohmem_last_daemon_code(), c_int::from(ErrorCode::Unsupported.to_wire()));
    assert!(
        last_error().contains("NV12"),
        "the message names the format: {}",
        last_error()
    );
    assert!(bo.is_null(), "*out untouched on failure");

    // A zero width is the caller's mistake, not the device's.
    // SAFETY: as above.
    let rc = unsafe { cohmem_image_create(d.conn, 0, 64, COHMEM_FORMAT_XRGB8888, &mut bo) };
    assert_eq!(rc, COHMEM_E_DAEMON);
    assert_eq!(
        cohmem_last_daemon_code(),
        c_int::from(ErrorCode::InvalidArgument.to_wire()),
        "{}",
        last_error()
    );
}

#[test]
fn one_pixel_alone_in_its_page_syncs_as_one_1x1_rect_at_that_pixel() {
    let d = Daemon::start();
    let ps = page_size();
    // One row of ps/4 + 1 pixels: the last pixel's 4 bytes are the only
    // image bytes in the BO's second page.
    let width = (ps / 4 + 1) as u32;
    let img = Image::create(d.conn, width, 1, COHMEM_FORMAT_XRGB8888);
    let x = width - 1;
    assert_eq!(img.offset_of(x, 0), ps, "the layout the test relies on");
    img.put_pixel(x, 0);
    let (rects, merged, result) = img.sync_rects();
    assert_eq!(result.pages, 1);
    assert!(!merged);
    assert_eq!(rects, [cohmem_rect { x, y: 0, w: 1, h: 1 }]);

    // Its GPU copy holds the pixel.
    let buf = export(img.bo);
    let mut px = [0u8; 4];
    // SAFETY: a readable fd and a 4-byte buffer.
    let n = unsafe { libc::pread(buf.fd, px.as_mut_ptr().cast(), 4, ps as libc::off_t) };
    assert_eq!((n, px), (4, [0xff; 4]));
    close(buf.fd);

    // Nothing written since: no rect.
    let (rects, _, result) = img.sync_rects();
    assert_eq!((rects.len(), result.pages), (0, 0), "{rects:?}");
}

#[test]
fn one_pixel_anywhere_syncs_as_the_pixels_of_its_page() {
    let d = Daemon::start();
    // Rows of 4000 bytes in a pitch of 4032: the page of pixel (500, 9)
    // starts inside row 9 and ends inside row 10.
    let img = Image::create(d.conn, 1000, 20, COHMEM_FORMAT_XRGB8888);
    img.put_pixel(500, 9);
    let (rects, merged, result) = img.sync_rects();
    assert_eq!(result.pages, 1);
    assert!(!merged);
    assert!(rects
        .iter()
        .any(|r| { r.x <= 500 && 500 < r.x + r.w && r.y <= 9 && 9 < r.y + r.h }));
    img.assert_rects_are_the_pages_of(&rects, &[(500, 9)]);
    if page_size() == 4096 {
        assert_eq!(
            rects,
            [
                cohmem_rect {
                    x: 144,
                    y: 9,
                    w: 856,
                    h: 1
                },
                cohmem_rect {
                    x: 0,
                    y: 10,
                    w: 160,
                    h: 1
                }
            ]
        );
    }

    // Two pixels far apart, in RGB565.
    let img = Image::create(d.conn, 700, 40, COHMEM_FORMAT_RGB565);
    let written = [(3, 2), (650, 33)];
    for &(x, y) in &written {
        img.put_pixel(x, y);
    }
    let (rects, merged, result) = img.sync_rects();
    assert_eq!(result.pages, 2);
    assert!(!merged);
    img.assert_rects_are_the_pages_of(&rects, &written);
}

/// Writes one pixel into each of three pages far apart.
fn three_separate_pages(img: &Image) {
    for y in [1, 25, 50] {
        img.put_pixel(500, y);
    }
}

#[test]
fn a_capacity_below_the_count_writes_capacity_rects_and_reports_the_count() {
    let d = Daemon::start();
    // The same writes into three identical images: the first syncs with
    // room for every rect (the truth), the others with less.
    let full = Image::create(d.conn, 1000, 60, COHMEM_FORMAT_XRGB8888);
    three_separate_pages(&full);
    let (all, _, _) = full.sync_rects();
    assert!(all.len() >= 3, "three separate pages give at least 3 rects: {all:?}");
    full.assert_rects_are_the_pages_of(&all, &[(500, 1), (500, 25), (500, 50)]);

    let short = Image::create(d.conn, 1000, 60, COHMEM_FORMAT_XRGB8888);
    three_separate_pages(&short);
    let sentinel = cohmem_rect { x: 7, y: 7, w: 7, h: 7 };
    let mut rects = [sentinel; 8];
    let (mut count, mut merged, mut result) = (0usize, -1, cohmem_sync_result::default());
    // SAFETY: a live BO, an array of at least 2 rects, valid outs.
    let rc = unsafe { cohmem_bo_sync_rects(short.bo, &mut result, rects.as_mut_ptr(), 2, &mut count, &mut merged) };
    assert_eq!(rc, COHMEM_OK, "a short array is not an error: {}", last_error());
    assert_eq!(count, all.len(), "*count is what the daemon reported");
    assert_eq!((merged, result.pages), (0, 3));
    assert_eq!(rects[..2], all[..2], "the first 2 rects were written");
    assert!(
        rects[2..].iter().all(|r| *r == sentinel),
        "nothing past capacity: {rects:?}"
    );

    // Capacity 0 with no array: only the count.
    let none = Image::create(d.conn, 1000, 60, COHMEM_FORMAT_XRGB8888);
    three_separate_pages(&none);
    let mut count = 0usize;
    // SAFETY: a live BO, no array (capacity 0), a valid count; NULL result
    // and merged are allowed.
    let rc = unsafe {
        cohmem_bo_sync_rects(
            none.bo,
            ptr::null_mut(),
            ptr::null_mut(),
            0,
            &mut count,
            ptr::null_mut(),
        )
    };
    assert_eq!(rc, COHMEM_OK, "{}", last_error());
    assert_eq!(count, all.len());
}

#[test]
fn more_rects_than_the_cap_are_merged_and_fit_in_max_damage_rects() {
    let d = Daemon::start();
    let ps = page_size();
    // 64 pixels of 4 bytes: each page holds ps/256 whole rows, so a dirty
    // page is one full-width band; every other page of 600 dirty gives 300
    // bands that touch no other, more than the cap of 256.
    let rows_per_page = (ps / 256) as u32;
    let img = Image::create(d.conn, 64, 600 * rows_per_page, COHMEM_FORMAT_XRGB8888);
    assert_eq!(img.info.pitch, 256);
    let written: Vec<(u32, u32)> = (0..300u32).map(|i| (i % 64, 2 * i * rows_per_page)).collect();
    for &(x, y) in &written {
        img.put_pixel(x, y);
    }
    let (rects, merged, result) = img.sync_rects();
    assert_eq!(result.pages, 300);
    assert!(merged, "300 separate bands cannot be 256 rects without merging");
    assert_eq!(
        rects.len(),
        COHMEM_MAX_DAMAGE_RECTS,
        "merged down to the cap, no further"
    );
    let cov = img.coverage(&rects);
    for &(x, y) in &written {
        assert!(cov[(y * 64 + x) as usize] > 0, "pixel ({x}, {y}) is in no rect");
    }
    // Merging 300 bands into 256 joins 44 pairs, each across one clean
    // band: at most 44 clean bands are reported.
    let area: u64 = rects.iter().map(|r| u64::from(r.w) * u64::from(r.h)).sum();
    let band = 64 * u64::from(rows_per_page);
    assert!(area <= (300 + 44) * band, "area {area} for 300 bands of {band}");
}

#[test]
fn null_arguments_are_refused_with_their_name_and_do_not_sync() {
    let d = Daemon::start();
    let img = Image::create(d.conn, 1000, 60, COHMEM_FORMAT_XRGB8888);
    img.put_pixel(500, 30);
    let expect_invalid = |rc: c_int, words: &str| {
        assert_eq!(rc, COHMEM_E_INVALID, "{words}: {}", last_error());
        assert!(
            last_error().contains(words),
            "{:?} does not say {words:?}",
            last_error()
        );
    };
    let mut bo = ptr::null_mut();
    let mut info = cohmem_image_info::default();
    let mut rects = [cohmem_rect::default(); 4];
    let mut count = 0usize;
    // SAFETY: every call gets NULL where the test says and valid pointers
    // elsewhere; the library must refuse before touching anything.
    unsafe {
        expect_invalid(
            cohmem_image_create(ptr::null(), 8, 8, COHMEM_FORMAT_XRGB8888, &mut bo),
            "cohmem_image_create: conn is NULL",
        );
        expect_invalid(
            cohmem_image_create(d.conn, 8, 8, COHMEM_FORMAT_XRGB8888, ptr::null_mut()),
            "cohmem_image_create: out is NULL",
        );
        expect_invalid(
            cohmem_bo_image_info(ptr::null(), &mut info),
            "cohmem_bo_image_info: bo is NULL",
        );
        expect_invalid(
            cohmem_bo_image_info(img.bo, ptr::null_mut()),
            "cohmem_bo_image_info: out is NULL",
        );
        expect_invalid(
            cohmem_bo_sync_rects(
                ptr::null(),
                ptr::null_mut(),
                rects.as_mut_ptr(),
                4,
                &mut count,
                ptr::null_mut(),
            ),
            "cohmem_bo_sync_rects: bo is NULL",
        );
        expect_invalid(
            cohmem_bo_sync_rects(
                img.bo,
                ptr::null_mut(),
                rects.as_mut_ptr(),
                4,
                ptr::null_mut(),
                ptr::null_mut(),
            ),
            "cohmem_bo_sync_rects: count is NULL",
        );
        expect_invalid(
            cohmem_bo_sync_rects(img.bo, ptr::null_mut(), ptr::null_mut(), 4, &mut count, ptr::null_mut()),
            "cohmem_bo_sync_rects: rects is NULL but capacity is 4",
        );
        expect_invalid(
            cohmem_bo_export_dmabuf(img.bo, ptr::null_mut()),
            "cohmem_bo_export_dmabuf: out is NULL",
        );
    }
    assert!(bo.is_null());
    // The refused syncs left the write for this one.
    let (rects, _, result) = img.sync_rects();
    assert_eq!(result.pages, 1, "a refused cohmem_bo_sync_rects must not sync");
    img.assert_rects_are_the_pages_of(&rects, &[(500, 30)]);
}

#[test]
fn one_connection_serves_image_syncs_from_several_threads() {
    let d = Daemon::start();
    struct Shared(*const cohmem_connection);
    // SAFETY: cohmem.h documents connections as usable from several
    // threads at once (the Rust objects are Send + Sync, checked in lib.rs).
    unsafe impl Sync for Shared {}
    let conn = Shared(d.conn);
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let conn = &conn;
            s.spawn(move || {
                let img = Image::create(conn.0, 1000, 60, COHMEM_FORMAT_XRGB8888);
                for round in 0..10u32 {
                    let (x, y) = (100 * t + round, 5 * round + t);
                    img.put_pixel(x, y);
                    let (rects, merged, result) = img.sync_rects();
                    assert_eq!((result.pages, merged), (1, false), "thread {t} round {round}");
                    img.assert_rects_are_the_pages_of(&rects, &[(x, y)]);
                }
            });
        }
    });
}
