//! The C calls issue 20 added for parity with the Rust client, called as C
//! calls them against this package's test daemon on the software GPU:
//! what the connection negotiated, importing a BO by its memfd, reading its
//! bytes, per-resource calls (add, transfer, clear, export, release),
//! syncs that list their runs, rectangle damage, metrics, a BO's counters,
//! the display (refused without one, with its name), a pending sync dropped
//! unwaited, and the names of codes and enum values.

use std::ffi::{c_char, c_int, CStr};
use std::ptr;

mod common;
use common::{last_error, page_size};

use cohmem::*;
use cohmem_tools::DaemonProcess;

/// A test daemon, one connection to it, and a mapped 16-page BO.
struct Fixture {
    conn: *mut cohmem_connection,
    bo: *mut cohmem_bo,
    map: *mut cohmem_mapping,
    _daemon: DaemonProcess,
}

impl Fixture {
    fn start() -> Self {
        let daemon = common::soft_daemon(&[]);
        let conn = common::connect(&daemon);
        let (mut bo, mut map) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: a live connection and BO, valid out pointers.
        unsafe {
            assert_eq!(
                cohmem_bo_create(conn, 16 * page_size(), &mut bo),
                COHMEM_OK,
                "{}",
                last_error()
            );
            assert_eq!(cohmem_bo_map(bo, &mut map), COHMEM_OK, "{}", last_error());
        }
        Self {
            conn,
            bo,
            map,
            _daemon: daemon,
        }
    }

    /// Writes `byte` at `offset` of the mapping.
    fn store(&self, offset: u64, byte: u8) {
        // SAFETY: a live mapping; the offset is checked against its length.
        unsafe {
            assert!(offset < cohmem_mapping_len(self.map) as u64);
            cohmem_mapping_ptr(self.map).add(offset as usize).write_volatile(byte);
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SAFETY: each object came from its constructor and is freed once.
        unsafe {
            cohmem_unmap(self.map);
            cohmem_bo_free(self.bo);
            cohmem_disconnect(self.conn);
        }
    }
}

fn text(p: *const c_char) -> String {
    // SAFETY: libcohmem returns NUL-terminated static strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[test]
fn the_connection_says_what_it_negotiated() {
    let f = Fixture::start();
    // SAFETY: a live connection, and NULL.
    unsafe {
        assert_eq!(cohmem_connection_page_size(f.conn), page_size());
        assert!(cohmem_connection_max_bo_size(f.conn) >= 16 * page_size());
        assert_eq!(cohmem_connection_reconnects(f.conn), 0);
        let _ = cohmem_connection_caps(f.conn);
        assert_eq!(cohmem_connection_page_size(ptr::null()), 0);
        assert_eq!(cohmem_connection_max_bo_size(ptr::null()), 0);
    }
}

#[test]
fn a_bo_imported_by_its_memfd_shares_the_bytes_and_read_reads_them() {
    let f = Fixture::start();
    let ps = page_size();
    f.store(3 * ps + 7, 0x5a);
    let mut imported = ptr::null_mut();
    let mut byte = [0u8; 1];
    // SAFETY: live objects, the BO's own memfd, valid buffers.
    unsafe {
        assert!(cohmem_bo_handle(f.bo) > 0);
        assert!(cohmem_bo_id(f.bo) > 0);
        let fd = cohmem_bo_memfd(f.bo);
        assert!(fd >= 0);
        assert_eq!(
            cohmem_bo_import(f.conn, fd, &mut imported),
            COHMEM_OK,
            "{}",
            last_error()
        );
        assert_eq!(cohmem_bo_id(imported), cohmem_bo_id(f.bo), "the same BO");
        assert_eq!(cohmem_bo_size(imported), 16 * ps);
        assert_eq!(
            cohmem_bo_read(imported, 3 * ps + 7, byte.as_mut_ptr().cast(), 1),
            COHMEM_OK,
            "{}",
            last_error()
        );
        assert_eq!(byte[0], 0x5a);
        // Past the end: refused, with the sizes named.
        let rc = cohmem_bo_read(imported, 16 * ps - 1, byte.as_mut_ptr().cast(), 2);
        assert_eq!(rc, COHMEM_E_INVALID);
        assert!(last_error().contains("past the end"), "{}", last_error());
        // The caller's fd stays open: the library imported a duplicate.
        assert!(libc::fcntl(fd, libc::F_GETFD) >= 0);
        assert_eq!(cohmem_bo_import(f.conn, -1, &mut imported), COHMEM_E_INVALID);
        cohmem_bo_free(imported);
    }
}

#[test]
fn runs_resources_transfer_and_clear_work_as_vmwgfx_calls_them() {
    let f = Fixture::start();
    let ps = page_size();
    // SAFETY: live objects and valid out pointers.
    unsafe {
        assert_eq!(cohmem_bo_sync(f.bo, ptr::null_mut()), COHMEM_OK);
        // A sync that lists its runs: pages 2 and 5-6.
        for page in [2, 5, 6] {
            f.store(page * ps, 1);
        }
        let mut runs = [cohmem_run::default(); 8];
        let (mut count, mut result) = (0usize, cohmem_sync_result::default());
        let rc = cohmem_bo_sync_runs(f.bo, &mut result, runs.as_mut_ptr(), runs.len(), &mut count);
        assert_eq!(rc, COHMEM_OK, "{}", last_error());
        assert_eq!(
            &runs[..count],
            &[
                cohmem_run {
                    first_page: 2,
                    pages: 1
                },
                cohmem_run {
                    first_page: 5,
                    pages: 2
                }
            ]
        );
        assert_eq!((result.pages, result.run_count), (3, 2));
        assert_eq!(result.mechanism, cohmem_mechanism::COHMEM_MECHANISM_UFFD_ASYNC);

        // A second resource over pages 8-11, exported with its window.
        let mut index = u32::MAX;
        assert_eq!(
            cohmem_bo_add_resource(f.bo, 8 * ps, 4 * ps, &mut index),
            COHMEM_OK,
            "{}",
            last_error()
        );
        assert_eq!(index, 1);
        let mut buf: cohmem_dmabuf = std::mem::zeroed();
        assert_eq!(
            cohmem_bo_export_resource(f.bo, index, &mut buf),
            COHMEM_OK,
            "{}",
            last_error()
        );
        assert_eq!((buf.offset, buf.size), (8 * ps, 4 * ps));
        libc::close(buf.fd);
        // Its window starts dirty (vmwgfx's dirty_add): the first transfer
        // fills it.
        assert_eq!(
            cohmem_bo_transfer(f.bo, index, &mut result),
            COHMEM_OK,
            "{}",
            last_error()
        );
        assert_eq!(result.pages, 4, "the new window");

        // Scanned, transferred to resource 1 only, then the rest cleared.
        f.store(9 * ps, 2);
        f.store(0, 2);
        assert_eq!(cohmem_bo_scan(f.bo, ptr::null_mut()), COHMEM_OK, "{}", last_error());
        let mut state: cohmem_dirty_state = std::mem::zeroed();
        let mut n = 0usize;
        assert_eq!(
            cohmem_bo_dirty_state(f.bo, &mut state, ptr::null_mut(), 0, &mut n),
            COHMEM_OK
        );
        assert_eq!((state.dirty_pages, state.users, n), (2, 2, 2));
        assert_eq!(
            cohmem_bo_transfer(f.bo, index, &mut result),
            COHMEM_OK,
            "{}",
            last_error()
        );
        assert_eq!(result.pages, 1, "page 9 lies in resource 1's window");
        assert_eq!(cohmem_bo_clear_resource(f.bo, 0), COHMEM_OK, "{}", last_error());
        assert_eq!(cohmem_bo_clear_all(f.bo), COHMEM_OK, "{}", last_error());
        assert_eq!(
            cohmem_bo_dirty_state(f.bo, &mut state, ptr::null_mut(), 0, &mut n),
            COHMEM_OK
        );
        assert_eq!(state.dirty_pages, 0);
        assert_eq!(cohmem_bo_release_resource(f.bo, index), COHMEM_OK, "{}", last_error());
        let rc = cohmem_bo_release_resource(f.bo, index);
        assert_eq!(rc, COHMEM_E_DAEMON, "released twice");
        assert_ne!(cohmem_last_daemon_code(), 0);
    }
}

#[test]
fn rect_damage_metrics_and_counters() {
    let f = Fixture::start();
    let ps = page_size();
    // SAFETY: live objects and valid buffers.
    unsafe {
        // Rectangles need an image BO: a byte BO refuses them by name.
        let r = cohmem_rect { x: 0, y: 0, w: 1, h: 1 };
        assert_eq!(cohmem_bo_damage_rects(f.bo, &r, 1), COHMEM_E_INVALID);
        let mut img = ptr::null_mut();
        assert_eq!(
            cohmem_image_create(f.conn, 64, 64, COHMEM_FORMAT_XRGB8888, &mut img),
            COHMEM_OK
        );
        assert_eq!(cohmem_bo_damage_rects(img, &r, 1), COHMEM_OK, "{}", last_error());
        let outside = cohmem_rect {
            x: 60,
            y: 0,
            w: 8,
            h: 1,
        };
        assert_eq!(cohmem_bo_damage_rects(img, &outside, 1), COHMEM_E_INVALID);
        cohmem_bo_free(img);

        // Metrics, snprintf-style: the length first, then the text.
        let mut len = 0usize;
        assert_eq!(
            cohmem_metrics(f.conn, ptr::null_mut(), 0, &mut len),
            COHMEM_OK,
            "{}",
            last_error()
        );
        assert!(len > 100, "{len}");
        let mut text = vec![0 as c_char; len + 1];
        assert_eq!(
            cohmem_metrics(f.conn, text.as_mut_ptr(), text.len(), &mut len),
            COHMEM_OK
        );
        assert!(text_of(&text).contains("cohmem"), "{}", text_of(&text));
        let mut short = [0x7f as c_char; 8];
        assert_eq!(
            cohmem_metrics(f.conn, short.as_mut_ptr(), short.len(), ptr::null_mut()),
            COHMEM_OK
        );
        assert_eq!(short[7], 0, "cut and NUL-terminated");

        // The BO's counters.
        f.store(ps, 1);
        assert_eq!(cohmem_bo_sync(f.bo, ptr::null_mut()), COHMEM_OK);
        let mut stats: cohmem_bo_stats = std::mem::zeroed();
        assert_eq!(cohmem_bo_stats_get(f.bo, &mut stats), COHMEM_OK, "{}", last_error());
        assert_eq!((stats.size, stats.views, stats.syncs), (16 * ps, 1, 1));
        assert_eq!(stats.policy, cohmem_policy::COHMEM_POLICY_AUTO);
        let mut daemon = cohmem_stats::default();
        assert_eq!(cohmem_stats_get(f.conn, &mut daemon), COHMEM_OK);
        assert_eq!((daemon.bos, daemon.views), (1, 1));
    }
}

fn text_of(buf: &[c_char]) -> String {
    text(buf.as_ptr())
}

#[test]
fn no_display_is_a_named_refusal_and_a_dropped_pending_sync_still_completes() {
    let f = Fixture::start();
    // SAFETY: live objects and valid out pointers.
    unsafe {
        let mut img = ptr::null_mut();
        assert_eq!(
            cohmem_image_create(f.conn, 64, 64, COHMEM_FORMAT_XRGB8888, &mut img),
            COHMEM_OK
        );
        let mut shown: cohmem_shown = std::mem::zeroed();
        assert_eq!(cohmem_bo_show(img, &mut shown), COHMEM_E_DAEMON);
        let code = cohmem_last_daemon_code();
        assert_eq!(
            code,
            cohmem_daemon_error::COHMEM_DAEMON_E_UNSUPPORTED as c_int,
            "{}",
            last_error()
        );
        assert_eq!(text(cohmem_daemon_error_name(code)), "Unsupported");
        cohmem_bo_free(img);

        f.store(0, 9);
        let mut pending = ptr::null_mut();
        assert_eq!(cohmem_bo_sync_start(f.bo, &mut pending), COHMEM_OK, "{}", last_error());
        assert!(cohmem_pending_sync_fd(pending) >= 0);
        cohmem_pending_sync_free(pending);
        // The dropped sync still runs; with this one, which takes its turn
        // before or after it, page 0 is on the GPU when this returns.
        assert_eq!(cohmem_bo_sync(f.bo, ptr::null_mut()), COHMEM_OK);
        let mut buf: cohmem_dmabuf = std::mem::zeroed();
        assert_eq!(cohmem_bo_export_dmabuf(f.bo, &mut buf), COHMEM_OK, "{}", last_error());
        let mut byte = [0u8; 1];
        assert_eq!(libc::pread(buf.fd, byte.as_mut_ptr().cast(), 1, 0), 1);
        libc::close(buf.fd);
        assert_eq!(byte[0], 9, "the GPU copy has the store");
        assert_eq!(
            cohmem_pending_sync_wait(ptr::null_mut(), ptr::null_mut()),
            COHMEM_E_INVALID
        );
        assert_eq!(cohmem_pending_sync_fd(ptr::null()), -1);
    }
}

#[test]
fn every_code_and_enum_value_has_a_name() {
    for (code, name) in [
        (COHMEM_OK, "success"),
        (COHMEM_E_INVALID, "invalid argument"),
        (COHMEM_E_DAEMON, "cohmemd refused the request"),
        (COHMEM_E_OTHER, "other error"),
        (42, "unknown error code"),
    ] {
        assert_eq!(text(cohmem_strerror(code)), name);
    }
    assert_eq!(text(cohmem_daemon_error_name(9)), "TooLarge");
    assert_eq!(text(cohmem_daemon_error_name(0)), "none");
    assert_eq!(text(cohmem_daemon_error_name(999)), "unknown");
    assert_eq!(text(cohmem_mechanism_name(5)), "explicit");
    assert_eq!(text(cohmem_mechanism_name(-1)), "unknown");
    assert_eq!(text(cohmem_policy_name(4)), "shadow");
    assert_eq!(text(cohmem_method_name(2)), "mkwrite");
}

#[test]
fn an_enum_value_c_made_up_is_refused_not_undefined() {
    let f = Fixture::start();
    // SAFETY: live objects; the values are what a C caller could pass.
    unsafe {
        assert_eq!(
            cohmem_bo_set_policy(f.bo, 77, ptr::null_mut(), ptr::null_mut()),
            COHMEM_E_INVALID
        );
        assert!(last_error().contains("77"), "{}", last_error());
        assert_eq!(cohmem_set_mechanism(f.conn, -3, ptr::null_mut()), COHMEM_E_INVALID);
        assert_eq!(
            cohmem_set_mechanism(f.conn, 0, ptr::null_mut()),
            COHMEM_E_INVALID,
            "none is no mechanism to set"
        );
        let mut m = cohmem_mechanism::COHMEM_MECHANISM_NONE;
        assert_eq!(cohmem_get_mechanism(f.conn, &mut m), COHMEM_OK);
        assert_eq!(m, cohmem_mechanism::COHMEM_MECHANISM_UFFD_ASYNC, "unchanged");
    }
}
