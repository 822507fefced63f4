//! The DRM backend on real kernel drivers (bochs-drm, vgem, …), run in the
//! VM tier (tests/vm/run); on a machine without DRM these tests check that
//! naming a device that is not there is a clear start-up error, and say
//! that the device tests ran nowhere. `COHMEM_REQUIRE_DRM=bochs-drm,vgem`
//! (set by the VM guest) makes a missing driver a failure.
//!
//! Every check compares bytes: the BO against what an independent reader
//! sees of the dumb buffer, both through the exported dma-buf and through a
//! second DRM client that imports it by PRIME and maps it.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use cohmem_client::{Connection, ErrorCode};
use cohmem_sys::drm::DrmDevice;
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::{on_every_device, spawn_daemon_with};
use cohmem_tools::{compare_pages, verify_gpu_copy, SplitMix64};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

#[test]
fn naming_a_missing_drm_device_is_a_clear_start_up_error() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let out = Command::new(DAEMON)
        .args(["--gpu", "drm:/dev/dri/no-such-card", "--socket"])
        .arg(dir.join("s.sock"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cohmemd started with a missing DRM device");
    assert!(
        stderr.contains("/dev/dri/no-such-card"),
        "the error does not name the device: {stderr}"
    );
    Ok(())
}

/// A private daemon with `--gpu BACKEND:node`, and a connection to it.
fn daemon_on(backend: &str, node: &Path) -> anyhow::Result<(cohmem_tools::DaemonProcess, Connection)> {
    let gpu_arg = format!("{backend}:{}", node.display());
    let daemon = spawn_daemon_with(DAEMON, &["--gpu", &gpu_arg])?;
    let conn = Connection::connect(daemon.socket())?;
    Ok((daemon, conn))
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cohmem-drm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[test]
fn synced_pages_reach_the_dumb_buffer_as_an_independent_reader_sees_it() -> anyhow::Result<()> {
    on_every_device(|path, info| {
        let (_daemon, conn) = daemon_on("drm", path)?;
        let backend = conn.stats(0)?.daemon.backend;
        assert!(backend.contains(&info.driver), "daemon backend {backend:?}");
        let ps = cohmem_sys::page_size();
        let pages = 256u64;
        let bo = conn.create_bo(pages * ps)?;
        let map = bo.map()?;
        if !info.prime_export {
            // No dma-buf to hand out (bochs-drm before 6.6): export says so,
            // and the dumb buffer is read back through the daemon's own
            // mapping of it instead.
            let e = bo
                .export_resource(0)
                .err()
                .ok_or_else(|| anyhow::anyhow!("export succeeded on a driver without PRIME export"))?;
            assert!(e.to_string().contains("cannot export"), "unclear export error: {e}");
            eprintln!("   no PRIME export ({e}); checking through READBACK");
            random_rounds(&bo, &map, 20, 24, |round, seed| unchanged_by_readback(&bo, round, seed))?;
            eprintln!("   20 rounds: synced pages identical in the dumb buffer (read back)");
            return Ok(());
        }
        let res = bo.export_resource(0)?;
        eprintln!("   resource: {} bytes, pitch {}", res.size, res.pitch);
        // The second DRM client: its own open of the node, importing the
        // dma-buf by PRIME and mapping it through the dumb-buffer path.
        let reader_dev = DrmDevice::open(path)?;
        let imported = reader_dev.import_prime(res.fd.as_fd())?;
        let reader = imported.map((pages - 1) * res.pitch + ps)?;

        random_rounds(&bo, &map, 20, 24, |round, seed| {
            dmabuf_equals_bo(&bo, round, seed)?;
            let through_prime = compare_pages(&bo, 0, pages, |p, out| {
                Ok(reader.read_at((p * res.pitch) as usize, out)?)
            })?;
            assert!(
                through_prime.is_empty(),
                "round {round} (seed {seed}): PRIME-imported buffer differs: {through_prime:?}"
            );
            Ok(())
        })?;
        eprintln!("   20 rounds: synced pages identical through the dma-buf and a PRIME import");
        Ok(())
    })
}

#[test]
fn a_resource_larger_than_the_device_can_hold_is_a_clear_error() -> anyhow::Result<()> {
    on_every_device(|path, _info| {
        let (_daemon, conn) = daemon_on("drm", path)?;
        // 4 GiB: past what the DRM core lets any dumb buffer be.
        let e = conn
            .create_bo(4 << 30)
            .err()
            .ok_or_else(|| anyhow::anyhow!("a 4 GiB dumb buffer was created"))?;
        assert_eq!(e.code(), Some(ErrorCode::Gpu), "{e}");
        assert!(e.to_string().contains("does not fit"), "unclear error: {e}");
        eprintln!("   4 GiB refused: {e}");
        // The daemon goes on serving.
        let bo = conn.create_bo(16 * cohmem_sys::page_size())?;
        bo.map()?.write(0, b"still here")?;
        assert_eq!(bo.sync()?.pages, 1);
        unchanged_by_readback(&bo, 0, 0)?;
        Ok(())
    })
}

#[test]
fn readback_brings_gpu_bytes_back_after_syncing_cpu_writes() -> anyhow::Result<()> {
    on_every_device(|path, info| {
        let (_daemon, conn) = daemon_on("drm", path)?;
        let ps = cohmem_sys::page_size();
        let pages = 32u64;
        let bo = conn.create_bo(pages * ps)?;
        let map = bo.map()?;
        if !info.prime_export {
            // Nobody but the daemon can write the device memory here: check
            // that readback syncs first and changes nothing else.
            map.write((3 * ps) as usize, b"cpu write before readback")?;
            let before = bo_bytes(&bo)?;
            let r = bo.readback()?;
            assert_eq!((r.synced_pages, r.bytes), (1, pages * ps), "{r:?}");
            assert!(
                bo_bytes(&bo)? == before,
                "readback changed bytes the GPU had from the BO"
            );
            eprintln!("   no PRIME export: readback synced the CPU write first and changed nothing");
            return Ok(());
        }
        let res = bo.export_resource(0)?;
        // "The GPU" writes page 9 (through the dma-buf, behind the daemon).
        let gpu = SharedMapping::map(res.fd.as_fd(), (pages - 1) * res.pitch + ps, 0, true)?;
        gpu.fill((9 * res.pitch) as usize, ps as usize, 0x5a)?;
        // The CPU wrote page 3 and did not sync: readback must not lose it.
        map.write((3 * ps) as usize, b"cpu write before readback")?;
        let r = bo.readback()?;
        assert_eq!(r.synced_pages, 1, "{r:?}");
        assert_eq!(r.bytes, pages * ps);
        let mut b = vec![0u8; ps as usize];
        map.read((9 * ps) as usize, &mut b)?;
        assert!(b.iter().all(|&x| x == 0x5a), "GPU bytes did not come back");
        map.read((3 * ps) as usize, &mut b[..25])?;
        assert_eq!(&b[..25], b"cpu write before readback");
        assert!(verify_gpu_copy(&bo)?.is_empty(), "BO and GPU differ after readback");
        // Nothing is dirty after a readback: the next sync uploads nothing.
        assert_eq!(bo.sync()?.pages, 0);
        Ok(())
    })
}

/// GBM on every DRM node: where Mesa can allocate a linear buffer there, the
/// same round trip as with dumb buffers (exact uploads, the dma-buf shows the
/// BO's bytes, readback); where it cannot, the exact error Mesa gave, which
/// must name GBM. Without the `gbm` feature the daemon refuses `--gpu gbm:`
/// and says how to build it.
#[test]
fn gbm_buffers_hold_the_synced_pages_or_say_why_not() -> anyhow::Result<()> {
    use cohmem_daemon::gpu::{open_backend, GpuChoice};
    let nodes = cohmem_sys::drm::nodes();
    if nodes.is_empty() {
        let e = open_backend(&GpuChoice::Gbm("/dev/dri/renderD128".into()))
            .err()
            .ok_or_else(|| anyhow::anyhow!("GBM opened on a machine without DRM"))?;
        eprintln!("no DRM node here; GBM refused: {e}");
        assert!(
            e.to_string().contains("gbm") || e.to_string().contains("GBM") || e.to_string().contains("renderD128"),
            "unclear GBM refusal: {e}"
        );
        return Ok(());
    }
    let mut worked = Vec::new();
    for node in &nodes {
        let choice = GpuChoice::Gbm(node.clone());
        match open_backend(&choice) {
            Err(e) => {
                let msg = e.to_string();
                eprintln!("-- GBM on {}: refused: {msg}", node.display());
                assert!(
                    msg.contains("gbm") || msg.contains("GBM"),
                    "refusal does not say it is GBM's: {msg}"
                );
            }
            Ok((backend, _)) => {
                eprintln!("-- GBM on {}: {}", node.display(), backend.name());
                drop(backend);
                gbm_round_trip(node)?;
                worked.push(node.display().to_string());
            }
        }
    }
    eprintln!("GBM worked on: {worked:?}");
    Ok(())
}

fn gbm_round_trip(node: &Path) -> anyhow::Result<()> {
    let (_daemon, conn) = daemon_on("gbm", node)?;
    let ps = cohmem_sys::page_size();
    let pages = 128u64;
    let bo = conn.create_bo(pages * ps)?;
    let map = bo.map()?;
    random_rounds(&bo, &map, 10, 16, |round, seed| dmabuf_equals_bo(&bo, round, seed))?;
    map.write((5 * ps) as usize, b"before readback")?;
    let r = bo.readback()?;
    assert_eq!(r.synced_pages, 1);
    assert!(verify_gpu_copy(&bo)?.is_empty());
    eprintln!("   10 rounds and a readback: GBM buffer identical to the BO");
    Ok(())
}

/// Every byte of the BO (read with pread on its memfd).
fn bo_bytes(bo: &cohmem_client::Bo) -> anyhow::Result<Vec<u8>> {
    let mut all = vec![0u8; bo.size() as usize];
    bo.read_at(0, &mut all)?;
    Ok(all)
}

/// The exported dma-buf holds exactly the BO's bytes.
fn dmabuf_equals_bo(bo: &cohmem_client::Bo, round: u32, seed: u64) -> anyhow::Result<()> {
    let diff = verify_gpu_copy(bo)?;
    assert!(
        diff.is_empty(),
        "round {round} (seed {seed}): dma-buf differs: {diff:?}"
    );
    Ok(())
}

/// Where nothing outside the daemon can read the device memory: a READBACK
/// (which copies the device buffer into the BO) leaves the BO unchanged, so
/// the device held exactly the BO's bytes; and it had nothing left to sync.
fn unchanged_by_readback(bo: &cohmem_client::Bo, round: u32, seed: u64) -> anyhow::Result<()> {
    let before = bo_bytes(bo)?;
    let r = bo.readback()?;
    assert_eq!(
        r.synced_pages, 0,
        "round {round} (seed {seed}): readback found pages to sync"
    );
    assert!(
        bo_bytes(bo)? == before,
        "round {round} (seed {seed}): the device buffer differed from the BO"
    );
    Ok(())
}

/// `rounds` rounds of: write 1..=`max_pages` random pages with random bytes,
/// sync, check that exactly those pages were uploaded, then run
/// `verify(round, seed)` (which compares what the device holds).
fn random_rounds(
    bo: &cohmem_client::Bo,
    map: &cohmem_client::Mapping,
    rounds: u32,
    max_pages: u64,
    verify: impl Fn(u32, u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let ps = cohmem_sys::page_size();
    let pages = map.len() as u64 / ps;
    let seed = SplitMix64::seed_from_time();
    let mut rng = SplitMix64::new(seed);
    let mut buf = vec![0u8; ps as usize];
    for round in 0..rounds {
        let count = 1 + rng.below(max_pages) as usize;
        let written = rng.distinct(pages, count);
        for &p in &written {
            rng.fill(&mut buf);
            map.write((p * ps) as usize, &buf)?;
        }
        let done = bo.sync_with_runs()?;
        assert_eq!(
            done.pages_list(),
            written,
            "round {round} (seed {seed}): uploaded pages"
        );
        verify(round, seed)?;
    }
    Ok(())
}
