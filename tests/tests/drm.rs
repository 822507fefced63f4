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

use cohmem_client::{fourcc, Connection, ErrorCode, MODIFIER_LINEAR};
use cohmem_sys::drm::DrmDevice;
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::image::{image_difference, random_frames, GpuImage};
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

/// Image BOs on the DRM backend (issue 16): the device allocates the image
/// and the BO takes its layout, so the pitch is the driver's own (the same
/// a dumb buffer of that size gets from a second open of the node); after
/// every sync of random drawing, every image row of the dumb buffer (read
/// through the exported dma-buf and through a PRIME import by a second DRM
/// client) equals the BO, and the rects cover the changed pixels and are
/// exactly what the uploaded pages imply.
#[test]
fn image_bos_take_the_drivers_pitch_and_reach_the_dumb_buffer_row_for_row() -> anyhow::Result<()> {
    on_every_device(|path, info| {
        let (_daemon, conn) = daemon_on("drm", path)?;
        let (width, height) = (1000, 300);
        let bo = conn.create_image(width, height, fourcc::XRGB8888)?;
        let image = bo.image().ok_or_else(|| anyhow::anyhow!("image BO without a layout"))?;
        // The driver's pitch for this size, asked independently.
        let own = DrmDevice::open(path)?;
        let driver_pitch = own.create_dumb(width, height, 32)?.pitch();
        eprintln!(
            "   {width}x{height} XR24: pitch {} (the driver's for a dumb buffer: {driver_pitch}), BO {} bytes",
            image.pitch,
            bo.size()
        );
        assert_eq!(image.pitch, driver_pitch, "the image's pitch is not the driver's");
        assert_eq!(
            (image.width, image.height, image.fourcc, image.offset, image.modifier),
            (width, height, fourcc::XRGB8888, 0, MODIFIER_LINEAR)
        );
        let ps = cohmem_sys::page_size();
        assert_eq!(bo.size(), image.end().div_ceil(ps) * ps);
        let map = bo.map()?;
        let seed = SplitMix64::seed_from_time();
        if !info.prime_export {
            let e = bo
                .export_resource(0)
                .err()
                .ok_or_else(|| anyhow::anyhow!("export succeeded on a driver without PRIME export"))?;
            assert!(e.to_string().contains("cannot export"), "unclear export error: {e}");
            eprintln!("   no PRIME export ({e}); checking through READBACK");
            random_frames(&bo, &map, 12, seed, |round, _| unchanged_by_readback(&bo, round, seed))?;
            eprintln!("   12 frames: rects exact, image identical in the dumb buffer (read back)");
            return Ok(());
        }
        let res = bo.export_resource(0)?;
        assert_eq!(res.image, Some(image), "the export describes another image");
        let through_dmabuf = GpuImage::map(&res)?;
        let reader_dev = DrmDevice::open(path)?;
        let imported = reader_dev.import_prime(res.fd.as_fd())?;
        let through_prime = imported.map(image.end())?;
        random_frames(&bo, &map, 12, seed, |round, bo_bytes| {
            if let Some(d) = image_difference(&image, bo_bytes, &through_dmabuf.bytes()?) {
                anyhow::bail!("round {round} (seed {seed}): the dma-buf differs: {d}");
            }
            let mut prime = vec![0u8; image.end() as usize];
            through_prime.read_at(0, &mut prime)?;
            if let Some(d) = image_difference(&image, bo_bytes, &prime) {
                anyhow::bail!("round {round} (seed {seed}): the PRIME import differs: {d}");
            }
            Ok(())
        })?;
        eprintln!("   12 frames: rects exact, every row identical through the dma-buf and a PRIME import");
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

    // An image BO: GBM states the pitch, the BO takes it, and every row of
    // the buffer (read through its dma-buf) equals the BO after each sync.
    let image_bo = conn.create_image(1000, 300, fourcc::XRGB8888)?;
    let image = image_bo
        .image()
        .ok_or_else(|| anyhow::anyhow!("image BO without a layout"))?;
    eprintln!(
        "   1000x300 XR24 through GBM: pitch {}, offset {}",
        image.pitch, image.offset
    );
    assert!(image.pitch >= 4000, "pitch {} below a row's pixels", image.pitch);
    assert_eq!(image.modifier, MODIFIER_LINEAR);
    let res = image_bo.export_resource(0)?;
    assert_eq!(res.image, Some(image), "the export describes another image");
    let gpu = GpuImage::map(&res)?;
    let map = image_bo.map()?;
    let seed = SplitMix64::seed_from_time();
    random_frames(&image_bo, &map, 10, seed, |round, bo_bytes| {
        match image_difference(&image, bo_bytes, &gpu.bytes()?) {
            Some(d) => anyhow::bail!("round {round} (seed {seed}): the GBM image differs: {d}"),
            None => Ok(()),
        }
    })?;
    eprintln!("   10 frames: rects exact, GBM image identical to the BO row for row");
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
