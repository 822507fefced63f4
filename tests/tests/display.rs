//! The display output (issue 17): what a client writes into a shown image
//! BO reaches the display device. On this host (no DRM) the refusals are
//! checked; the VM tier shows BOs on bochs-drm and virtio-gpu and compares
//! QEMU's screendump with the BO's pixels (tests/tests/display_scanout.rs).

use cohmem_client::{fourcc, Connection, ErrorCode};
use cohmem_tests::spawn_daemon;

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// A daemon without --display refuses SHOW and says how to get one; a
/// byte BO is refused before that matters; nothing else is disturbed.
#[test]
fn show_without_a_display_output_is_refused_and_says_why() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let bo = conn.create_image(64, 32, fourcc::XRGB8888)?;
    let e = bo.show().expect_err("SHOW without a display output");
    assert_eq!(e.code(), Some(ErrorCode::Unsupported), "{e}");
    assert!(e.to_string().contains("--display"), "{e}");
    // An id no BO has is refused as such.
    let e = conn.show(u64::MAX, false).expect_err("SHOW of no BO");
    assert_eq!(e.code(), Some(ErrorCode::NoSuchBo), "{e}");
    // Syncing goes on.
    let map = bo.map()?;
    map.write(0, &[1, 2, 3, 4])?;
    assert_eq!(bo.sync()?.rects.len(), 1);
    Ok(())
}

/// `--display` on a backend without a KMS device stops the start with a
/// message naming the problem, instead of failing at the first SHOW.
#[test]
fn display_on_the_software_gpu_stops_the_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(DAEMON)
        .args(["--gpu", "soft", "--display", "auto", "--socket"])
        .arg(dir.path().join("s"))
        .output()?;
    assert!(!out.status.success(), "the daemon started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--display") && err.contains("DRM backend"), "{err}");
    Ok(())
}
