//! Profiling aid for issue 6: the cost of each `PAGEMAP_SCAN` query shape
//! over a clean, populated, write-protected range, in this process.
//! `cargo run --release -p cohmem-tools --example scan_variants [MiB]`
use std::os::fd::AsFd;
use std::time::Instant;

use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::Memfd;
use cohmem_sys::pagemap::{PagemapFile, ScanQuery, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC};
use cohmem_sys::uffd::{features, UffdFlavor, Userfaultfd};

fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let size = mib << 20;
    let fd = Memfd::create_sealed("scan-variants", size)?;
    let map = SharedMapping::map(fd.as_fd(), size, 0, true)?;
    let (uffd, _) = Userfaultfd::open(
        UffdFlavor::UserModeOnly,
        features::WP_ASYNC | features::WP_UNPOPULATED | features::WP_HUGETLBFS_SHMEM,
        features::WP_ASYNC | features::WP_HUGETLBFS_SHMEM,
    )?;
    uffd.register_wp(map.addr(), size)?;
    map.fill(0, size as usize, 1)?;
    uffd.write_protect(map.addr(), size, true)?;
    let pm = PagemapFile::open_self()?;
    let r = map.addr()..map.addr() + size;
    let variants = [
        ("HARVEST_WRITTEN (fast path)", ScanQuery::HARVEST_WRITTEN),
        ("HARVEST_ALL (category 0, WP)", ScanQuery::HARVEST_ALL),
        (
            "peek all (category 0, CHECK)",
            ScanQuery {
                flags: PM_SCAN_CHECK_WPASYNC,
                category_mask: 0,
                return_mask: PAGE_IS_WRITTEN,
            },
        ),
        (
            "coverage (category 0, return 0)",
            ScanQuery {
                flags: 0,
                category_mask: 0,
                return_mask: 0,
            },
        ),
        ("PEEK_WRITTEN", ScanQuery::PEEK_WRITTEN),
    ];
    for (name, q) in variants {
        let mut best = u128::MAX;
        let mut out = Vec::new();
        for _ in 0..20 {
            out.clear();
            let t = Instant::now();
            pm.scan_each(r.clone(), q, |a, _| out.push(a))?;
            best = best.min(t.elapsed().as_nanos());
        }
        println!("{name:34} best {:>9.1} µs  regions {}", best as f64 / 1e3, out.len());
    }
    let t = Instant::now();
    uffd.write_protect(map.addr(), size, true)?;
    println!(
        "{:34} {:>9.1} µs",
        "UFFDIO_WRITEPROTECT all",
        t.elapsed().as_nanos() as f64 / 1e3
    );
    Ok(())
}
