//! Profiling aid for issue 6 (target 3): the in-process synchronous fault
//! floor with 1 and 4 threads, printed several times.
use cohmem_tools::bench::sync_floor::sync_fault_floor;
use cohmem_tools::SplitMix64;

fn main() -> anyhow::Result<()> {
    let mut rng = SplitMix64::new(3);
    for threads in [1, 4, 1, 4] {
        let s = sync_fault_floor(64 << 20, threads, 1024, 4, 1, &mut rng)?;
        println!("{threads} threads: median {} ns p99 {} ns", s.median_ns, s.p99_ns);
    }
    Ok(())
}
