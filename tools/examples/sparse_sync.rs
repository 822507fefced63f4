//! Profiling aid for issue 6 (targets 1 and 4): one BO through a private
//! daemon, `ROUNDS` rounds of writing `PAGES` scattered pages and syncing;
//! prints the median sync round trip and daemon time, and the daemon's pid
//! so that `perf record -p PID` can watch it.
//! `cargo run --release -p cohmem-tools --example sparse_sync -- MECH MiB PAGES ROUNDS [daemon args…]`
use std::time::Duration;

use cohmem_tools::bench::pattern::{pick_pages, Layout};
use cohmem_tools::bench::sync::{write_threads, Session};
use cohmem_tools::SplitMix64;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let mech = a.first().map_or("auto", String::as_str);
    let mib: u64 = a.get(1).map_or(Ok(1024), |s| s.parse())?;
    let k: u64 = a.get(2).map_or(Ok(262), |s| s.parse())?;
    let rounds: usize = a.get(3).map_or(Ok(200), |s| s.parse())?;
    let extra: Vec<&str> = a.iter().skip(4).map(String::as_str).collect();
    let session = Session::start_with(mech, &extra)?;
    let (bo, map) = session.populated_bo(mib << 20)?;
    eprintln!("daemon pid {}", session.daemon.pid());
    let n = bo.size() / cohmem_sys::page_size();
    let mut rng = SplitMix64::new(7);
    let (mut wall, mut daemon, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut method = String::new();
    for rep in 0..rounds {
        let mut w = Duration::ZERO;
        if k > 0 {
            let pages = pick_pages(&mut rng, n, k, Layout::Scattered);
            w = write_threads(&map, &pages, 1)?;
        }
        let t = std::time::Instant::now();
        let r = bo.sync()?;
        wall.push(t.elapsed());
        total.push(w + t.elapsed());
        daemon.push(r.duration);
        method = format!("{}:{}", r.mechanism.name(), r.method.name());
        if std::env::var_os("SPARSE_SYNC_TRACE").is_some() {
            eprintln!("sync {rep}: {method}, {} pages, {:?}", r.pages, r.duration);
        }
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "{mech} {mib} MiB {k} pages ({method}): sync median {:?}, daemon median {:?}, write + sync median {:?} mean {:?}",
        med(&mut wall),
        med(&mut daemon),
        med(&mut total.clone()),
        total.iter().sum::<Duration>() / total.len() as u32
    );
    Ok(())
}
