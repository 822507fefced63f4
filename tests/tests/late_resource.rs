//! A resource added to a BO late (ADD_RESOURCE after pages were written)
//! receives the BO's whole window, as vmwgfx's bind uploads the whole
//! content; and writes harvested while a BO has no tracker (no resource yet,
//! or the last one released) are never thrown away. READBACK afterwards
//! leaves the client's data as it was.

use std::os::fd::AsFd;

use cohmem_client::{Bo, Connection, Mechanism};
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::{page_pattern, spawn_daemon_for};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

const PAGES: u64 = 16;

/// Writes `page_pattern(seed, p)` into every page of `map` (BO pages
/// `first..first + pages`).
fn write_pattern(map: &cohmem_client::Mapping, seed: u64, pages: u64) -> anyhow::Result<()> {
    let ps = cohmem_sys::page_size() as usize;
    let mut buf = vec![0u8; ps];
    for p in 0..pages {
        page_pattern(seed, map.bo_offset() / ps as u64 + p, &mut buf);
        map.write(p as usize * ps, &buf)?;
    }
    Ok(())
}

/// Pages of resource `index` whose bytes differ from the BO's.
fn resource_mismatches(bo: &Bo, index: u32) -> anyhow::Result<Vec<u64>> {
    let res = bo.export_resource(index)?;
    let ps = cohmem_sys::page_size();
    let pages = res.size / ps;
    let gpu = SharedMapping::map(res.fd.as_fd(), pages.saturating_sub(1) * res.pitch + ps, 0, false)?;
    let bad = cohmem_tools::verify::compare_pages(bo, res.offset, pages, |page, buf| {
        Ok(gpu.read_at((page * res.pitch) as usize, buf)?)
    })?;
    Ok(bad.into_iter().map(|m| m.page).collect())
}

/// Pages of the BO that no longer hold `page_pattern(seed, p)`.
fn bo_mismatches(bo: &Bo, seed: u64) -> anyhow::Result<Vec<u64>> {
    let ps = cohmem_sys::page_size() as usize;
    let (mut want, mut got) = (vec![0u8; ps], vec![0u8; ps]);
    let mut bad = Vec::new();
    for p in 0..bo.size() / ps as u64 {
        page_pattern(seed, p, &mut want);
        bo.read_at(p * ps as u64, &mut got)?;
        if want != got {
            bad.push(p);
        }
    }
    Ok(bad)
}

cohmem_tests::test_each_mechanism!(
    a_resource_added_after_writes_receives_them_and_readback_keeps_them,
    late_resource_with
);

fn late_resource_with(mechanism: Mechanism) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    // Every step runs; what went wrong is listed at the end.
    let mut problems: Vec<String> = Vec::new();
    let mut check = |bad: Vec<u64>, what: &str| {
        if !bad.is_empty() {
            problems.push(format!("{what} pages {bad:?}"));
        }
    };

    // 1. No resource yet: the pages are written, then harvested by a
    //    SNAPSHOT (a quiesce) while the BO has no tracker.
    let bo = conn.create_bo_without_resource(PAGES * ps)?;
    let map = bo.map()?;
    write_pattern(&map, 1, PAGES)?;
    conn.snapshot(bo.id())?;
    let index = bo.add_resource(0, PAGES * ps)?;
    bo.sync()?;
    check(
        resource_mismatches(&bo, index)?,
        "a resource added after the writes (harvested by SNAPSHOT without a tracker) lacks",
    );
    bo.readback()?;
    check(bo_mismatches(&bo, 1)?, "READBACK destroyed the client's");
    drop(map);

    // 2. No resource yet: the view that wrote is unmapped (its harvest is
    //    the UNMAP's) before the first resource is added.
    let bo = conn.create_bo_without_resource(PAGES * ps)?;
    let map = bo.map()?;
    write_pattern(&map, 2, PAGES)?;
    map.unmap()?;
    let index = bo.add_resource(0, PAGES * ps)?;
    bo.sync()?;
    check(
        resource_mismatches(&bo, index)?,
        "a resource added after an UNMAP without a tracker lacks",
    );
    bo.readback()?;
    check(bo_mismatches(&bo, 2)?, "READBACK destroyed the client's");

    // 3. A second resource on a BO whose pages were written and synced to
    //    the first one: the new resource starts with the window's content.
    let bo = conn.create_bo(PAGES * ps)?;
    let map = bo.map()?;
    write_pattern(&map, 3, PAGES)?;
    bo.sync()?;
    let half = bo.add_resource(PAGES / 2 * ps, PAGES / 2 * ps)?;
    bo.sync()?;
    check(
        resource_mismatches(&bo, half)?,
        "a second resource added after a sync lacks window",
    );
    bo.readback()?;
    check(bo_mismatches(&bo, 3)?, "READBACK destroyed the client's");

    // 3b. Later writes reach both overlapping resources, and READBACK
    //     (which copies every resource back) keeps them.
    write_pattern(&map, 5, PAGES)?;
    bo.sync()?;
    check(
        resource_mismatches(&bo, 0)?,
        "after a later write, the whole-BO resource lacks",
    );
    check(
        resource_mismatches(&bo, half)?,
        "after a later write, the resource overlapping the whole-BO one lacks window",
    );
    bo.readback()?;
    check(
        bo_mismatches(&bo, 5)?,
        "READBACK of overlapping resources destroyed the client's",
    );

    // 4. The last resource is released (the tracker goes), the pages are
    //    written again and the view unmapped, then a resource is added.
    bo.release_resource(0)?;
    bo.release_resource(half)?;
    write_pattern(&map, 4, PAGES)?;
    map.unmap()?;
    let index = bo.add_resource(0, PAGES * ps)?;
    bo.sync()?;
    check(
        resource_mismatches(&bo, index)?,
        "a resource added after the last one was released lacks",
    );
    bo.readback()?;
    check(bo_mismatches(&bo, 4)?, "READBACK destroyed the client's");
    assert!(problems.is_empty(), "{mechanism}: {problems:#?}");
    Ok(())
}
