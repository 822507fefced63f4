//! Unit tests of the `uffd-async` tracker against real userfaultfds and
//! pagemaps of this process.

use std::os::fd::AsFd;

use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::Memfd;
use cohmem_sys::uffd::{features, UffdFlavor};

use super::*;

/// A WP_ASYNC-registered memfd mapping of this process and its tracker.
/// With `events`, the uffd delivers mapping changes and the tracker
/// proves views with them.
fn tracked(pages: u64, events: bool) -> Option<(Memfd, SharedMapping, UffdAsyncTracker)> {
    let ps = cohmem_sys::page_size();
    let mut wanted = features::WP_ASYNC | features::WP_UNPOPULATED;
    if events {
        wanted |= features::MAP_EVENTS;
    }
    let (uffd, _) = Userfaultfd::open(UffdFlavor::UserModeOnly, wanted, wanted).ok()?;
    let m = Memfd::create_sealed("t", pages * ps).unwrap();
    let map = SharedMapping::map(m.as_fd(), pages * ps, 0, true).unwrap();
    uffd.register_wp(map.addr(), pages * ps).unwrap();
    let pagemap = PagemapFile::open_self().unwrap();
    let t = if events {
        UffdAsyncTracker::with_map_events(uffd, pagemap, Arc::default(), true)
    } else {
        UffdAsyncTracker::new(uffd, pagemap)
    };
    t.attach_view(map.addr()..map.addr() + pages * ps).unwrap();
    Some((m, map, t))
}

/// The harvest finds the written pages, reports a hole punched into the
/// view as `Moved` with its size, and refuses a mapping put back into
/// the hole that is not registered with the userfaultfd (never clean).
#[test]
fn harvest_finds_writes_holes_and_unregistered_remaps() {
    let ps = cohmem_sys::page_size();
    let Some((m, map, t)) = tracked(64, false) else {
        eprintln!("skipping: no WP_ASYNC here");
        return;
    };
    let (base, len) = (map.addr(), 64 * ps);
    map.write_u64((3 * ps) as usize, 1).unwrap();
    map.write_u64((40 * ps) as usize, 1).unwrap();
    let mut out = Vec::new();
    t.peek(base..base + len, &mut out).unwrap();
    assert_eq!(out, vec![base + 3 * ps..base + 4 * ps, base + 40 * ps..base + 41 * ps]);
    out.clear();
    t.harvest(base..base + len, &mut out).unwrap();
    assert_eq!(out.len(), 2);
    out.clear();
    t.harvest(base..base + len, &mut out).unwrap();
    assert!(out.is_empty(), "the harvest re-protected what it found");
    let hole = std::ptr::NonNull::new((base + 10 * ps) as *mut libc::c_void).unwrap();
    // SAFETY: pages 10..14 of our own mapping, which nothing else uses.
    unsafe { nix::sys::mman::munmap(hole, (4 * ps) as usize) }.unwrap();
    match t.harvest(base..base + len, &mut out) {
        Err(TrackError::Moved { missing }) => assert_eq!(missing, 4 * ps),
        other => panic!("a hole went unnoticed: {other:?}"),
    }
    assert!(matches!(
        t.peek(base..base + len, &mut out),
        Err(TrackError::Moved { .. })
    ));
    // SAFETY: maps the memfd back into the hole just made (NOREPLACE:
    // fails rather than replace anything that appeared there).
    let again = unsafe {
        nix::sys::mman::mmap(
            std::num::NonZeroUsize::new(hole.as_ptr() as usize),
            std::num::NonZeroUsize::new((4 * ps) as usize).unwrap(),
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_SHARED | nix::sys::mman::MapFlags::MAP_FIXED_NOREPLACE,
            m.as_fd(),
            (10 * ps) as i64,
        )
    }
    .unwrap();
    assert_eq!(again, hole);
    assert!(
        t.harvest(base..base + len, &mut out).is_err(),
        "an unregistered mapping in the view passed the harvest"
    );
    assert!(t.peek(base..base + len, &mut out).is_err());
}

/// Unmaps `pages` pages at `addr` on another thread; the munmap waits
/// for its message to be read. Returns once the change is under way.
fn unmap_in_background(t: &UffdAsyncTracker, addr: u64, pages: u64) -> std::thread::JoinHandle<()> {
    let len = (pages * cohmem_sys::page_size()) as usize;
    let unmapper = std::thread::spawn(move || {
        let hole = std::ptr::NonNull::new(addr as *mut libc::c_void).unwrap();
        // SAFETY: pages of the test's own mapping, which nothing uses.
        unsafe { nix::sys::mman::munmap(hole, len) }.unwrap();
    });
    let uffd = t.fault_uffd().unwrap();
    while !uffd.mm_changing().unwrap() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    unmapper
}

/// Clean and written views are proven by the events (no walk); a hole
/// punched while its message waits (`mm_changing`) and one whose message
/// was read since (the count moved) both make the next harvest walk and
/// find it. Without the events' check both holes would pass as clean.
#[test]
fn events_prove_views_and_send_changed_ones_to_a_walk() {
    let ps = cohmem_sys::page_size();
    let Some((_m, map, t)) = tracked(64, true) else {
        eprintln!("skipping: no WP_ASYNC with mapping-change events here");
        return;
    };
    let (base, len) = (map.addr(), 64 * ps);
    let mut out = Vec::new();
    t.harvest(base..base + len, &mut out).unwrap();
    assert!(out.is_empty());
    map.write_u64((3 * ps) as usize, 1).unwrap();
    t.harvest(base..base + len, &mut out).unwrap();
    assert_eq!(out, vec![base + 3 * ps..base + 4 * ps]);
    assert_eq!(t.walks(), 0, "the events proved the view");

    // A hole whose message waits: mm_changing.
    let unmapper = unmap_in_background(&t, base + 10 * ps, 4);
    out.clear();
    match t.harvest(base..base + len, &mut out) {
        Err(TrackError::Moved { missing }) => assert_eq!(missing, 4 * ps),
        other => panic!("a hole under way went unnoticed: {other:?}"),
    }
    assert_eq!(t.walks(), 1);
    t.drain_map_events();
    unmapper.join().unwrap();

    // A hole whose message was read before the harvest: the count.
    let unmapper = unmap_in_background(&t, base + 30 * ps, 2);
    t.drain_map_events();
    unmapper.join().unwrap();
    assert!(!t.fault_uffd().unwrap().mm_changing().unwrap());
    match t.harvest(base..base + len, &mut out) {
        // Both holes: the first one's harvest failed, so the view's
        // proof still dates from before it.
        Err(TrackError::Moved { missing }) => assert_eq!(missing, 6 * ps),
        other => panic!("a hole whose message was read went unnoticed: {other:?}"),
    }
}

/// Harvests proven by the events find every written page and leave each
/// write-protected: split ones (few runs, protected run by run), one with
/// more runs than are protected one call each (its span scanned again with
/// protection), and the protecting scan the next harvest then chooses.
#[test]
fn split_and_protecting_harvests_find_and_reprotect_every_write() {
    let ps = cohmem_sys::page_size();
    let Some((_m, map, t)) = tracked(256, true) else {
        eprintln!("skipping: no WP_ASYNC with mapping events here");
        return;
    };
    let (base, len) = (map.addr(), 256 * ps);
    let view = base..base + len;
    let mut out = Vec::new();
    t.harvest(view.clone(), &mut out).unwrap();
    let walks = t.walks();
    let page = |p: u64| base + p * ps..base + (p + 1) * ps;
    let mut rounds: Vec<Vec<u64>> = vec![vec![5, 6, 100], (0..40).map(|i| 3 + i * 6).collect(), vec![7, 200]];
    rounds.push(vec![7, 201]);
    // Round 1 must take the second scan (and makes round 2 a protecting scan).
    assert!(rounds[1].len() > super::super::split_protect::PROTECT_RUNS_MAX);
    for (round, pages) in rounds.iter().enumerate() {
        for &p in pages {
            map.write_u64((p * ps) as usize, round as u64 + 1).unwrap();
        }
        out.clear();
        t.harvest(view.clone(), &mut out).unwrap();
        let mut want: Vec<Range<u64>> = Vec::new();
        for &p in pages {
            match want.last_mut() {
                Some(last) if last.end == page(p).start => last.end = page(p).end,
                _ => want.push(page(p)),
            }
        }
        assert_eq!(out, want, "round {round}: the harvest's runs");
        out.clear();
        t.peek(view.clone(), &mut out).unwrap();
        assert!(out.is_empty(), "round {round}: {out:x?} left writable");
    }
    assert_eq!(t.walks(), walks, "the events proved every harvest");
}

/// Run by run where runs are few and spread over the scan's 2 MiB steps;
/// the protecting scan where several share a step, or there are many.
#[test]
fn split_pays_for_few_runs_spread_over_steps() {
    use super::super::split_protect::split_pays;
    let step = 1u64 << 21;
    let pages = |addrs: &mut dyn Iterator<Item = u64>| addrs.map(|a| a..a + 4096).collect::<Vec<_>>();
    assert!(split_pays(&pages(&mut std::iter::once(step))));
    assert!(split_pays(&pages(&mut (0..16).map(|i| i * step))));
    assert!(split_pays(&pages(&mut (0..5).map(|i| i * 8192))), "5 runs in one step");
    assert!(
        !split_pays(&pages(&mut (0..10).map(|i| i * 8192))),
        "10 runs in one step"
    );
    assert!(!split_pays(&pages(&mut (0..25).map(|i| i * step))), "25 runs");
    assert!(split_pays(&[]));
}

/// The protecting scan a split harvest falls back to keeps the runs the
/// read-only scan found: a written page unmapped in between (which that
/// scan skips without an error) is still reported, so its write is copied.
#[test]
fn a_page_unmapped_between_the_scans_stays_reported() {
    use super::super::split_protect::protect_found;
    let ps = cohmem_sys::page_size();
    let Some((_m, map, t)) = tracked(256, false) else {
        eprintln!("skipping: no WP_ASYNC here");
        return;
    };
    let base = map.addr();
    let written: Vec<u64> = (0..40).map(|i| 3 + i * 6).collect();
    for &p in &written {
        map.write_u64((p * ps) as usize, 7).unwrap();
    }
    let read_only = ScanQuery {
        flags: PM_SCAN_CHECK_WPASYNC,
        ..ScanQuery::PEEK_WRITTEN
    };
    let mut out = Vec::new();
    t.pagemap.scan(base..base + 256 * ps, read_only, &mut out).unwrap();
    assert_eq!(out.len(), 40);
    let gone = base + 21 * ps;
    // SAFETY: page 21 of our own mapping (written above), which nothing
    // else uses; the test never touches it again.
    unsafe { nix::sys::mman::munmap(std::ptr::NonNull::new(gone as *mut libc::c_void).unwrap(), ps as usize) }.unwrap();
    let view = base..base + 256 * ps;
    protect_found(&t.pagemap, std::slice::from_ref(&view), &mut out, 0, |r| {
        t.uffd.write_protect(r.start, r.end - r.start, true)
    })
    .unwrap();
    let want: Vec<Range<u64>> = written.iter().map(|&p| base + p * ps..base + (p + 1) * ps).collect();
    assert_eq!(out, want, "every page the first scan found, the unmapped one included");
    let mut left = Vec::new();
    t.pagemap.scan(base..gone, read_only, &mut left).unwrap();
    t.pagemap
        .scan(gone + ps..base + 256 * ps, read_only, &mut left)
        .unwrap();
    assert!(left.is_empty(), "{left:x?} left writable");
}
