//! SYNC racing structural changes (UNMAP on another connection): a write
//! completed before SYNC was sent is in the GPU copy when SYNC returns,
//! whichever of the two the daemon runs first.

use std::os::fd::AsFd;
use std::time::Duration;

use cohmem_client::Connection;
use cohmem_client::Mechanism;
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::spawn_daemon_for;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

cohmem_tests::test_each_mechanism!(
    sync_racing_unmap_of_the_written_view_loses_nothing,
    sync_racing_unmap_of_the_written_view_loses_nothing_with
);

fn sync_racing_unmap_of_the_written_view_loses_nothing_with(mechanism: Mechanism) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let ps = cohmem_sys::page_size();
    for round in 0..5u64 {
        let (c0, c1, c2) = (
            Connection::connect(daemon.socket())?,
            Connection::connect(daemon.socket())?,
            Connection::connect(daemon.socket())?,
        );
        let bo0 = c0.create_bo(128 << 20)?;
        let big = bo0.map()?;
        let bo1 = c1.import_bo(bo0.memfd().try_clone_to_owned()?)?;
        let bo2 = c2.import_bo(bo0.memfd().try_clone_to_owned()?)?;
        let view = bo1.map_range(0, ps)?;
        let res = bo2.export_resource(0)?;
        let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
        // A slow sync (the whole 128 MiB dirty) holds the BO while S1 and the
        // UNMAP queue up behind it.
        big.fill(ps as usize, big.len() - ps as usize, round as u8 + 1)?;
        let marker = 0xdead_0000 + round;
        std::thread::scope(|s| -> anyhow::Result<()> {
            let slow = s.spawn(|| bo0.sync());
            std::thread::sleep(Duration::from_millis(10));
            view.write_u64(0, marker)?; // completed before S1 is sent
            let s1 = s.spawn(|| bo2.sync());
            std::thread::sleep(Duration::from_millis(5));
            let unmap = s.spawn(move || view.unmap());
            slow.join().map_err(|_| anyhow::anyhow!("panic"))??;
            s1.join().map_err(|_| anyhow::anyhow!("panic"))??;
            assert_eq!(
                gpu.read_u64(0)?,
                marker,
                "round {round}: a write completed before SYNC was sent is missing when it returned"
            );
            unmap.join().map_err(|_| anyhow::anyhow!("panic"))??;
            Ok(())
        })?;
    }
    Ok(())
}
