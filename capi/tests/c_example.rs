//! Issue 7 "C API": the C example (`client/examples/c/cohmem_example.c`) is
//! compiled with the flags `pkg-config --cflags --libs cohmem` gives for a
//! `cohmem.pc` rendered from `capi/cohmem.pc.in` (as `make install` renders
//! it), linked against the libcohmem.so cargo built, and run against a real
//! daemon: it checks that a sync uploads exactly the two pages it wrote and
//! that the exported GPU resource holds the bytes written.

use std::path::{Path, PathBuf};
use std::process::Command;

use cohmem_tools::DaemonProcess;

mod common;

/// The directory cargo put libcohmem.so in (target/<profile>).
fn lib_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        if dir.join("libcohmem.so").is_file() {
            return Ok(dir.to_path_buf());
        }
    }
    anyhow::bail!("libcohmem.so not found near {}", exe.display())
}

#[test]
fn the_c_example_builds_with_pkg_config_and_syncs_exact_bytes() -> anyhow::Result<()> {
    for tool in ["cc", "pkg-config"] {
        if !common::have(tool) {
            // .ci/run installs both; a developer machine without them skips.
            eprintln!("skipping: {tool} is not installed");
            return Ok(());
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile_dir()?;
    let libdir = lib_dir()?;
    let pc = std::fs::read_to_string(root.join("cohmem.pc.in"))?
        .replace("@PREFIX@", &dir.display().to_string())
        .replace("@LIBDIR@", &libdir.display().to_string())
        .replace("@INCLUDEDIR@", &root.join("include").display().to_string())
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    std::fs::write(dir.join("cohmem.pc"), pc)?;
    let flags = common::pkg_config_flags(&[("PKG_CONFIG_PATH", &dir)])?;
    eprintln!("pkg-config --cflags --libs cohmem: {flags}");
    let exe = dir.join("cohmem_example");
    common::compile_example(&exe, &flags)?;

    let daemon = DaemonProcess::spawn_bin(
        env!("CARGO_BIN_EXE_cohmem-capi-test-daemon").as_ref(),
        &["--log", "warn"],
    )?;
    let run = Command::new(&exe)
        .arg(daemon.socket())
        .env("LD_LIBRARY_PATH", &libdir)
        .output()?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&run.stderr));
    anyhow::ensure!(run.status.success(), "the C example failed: {}", run.status);
    anyhow::ensure!(stdout.contains("synced 2 pages"), "{stdout}");
    anyhow::ensure!(stdout.contains("damaged and synced 1 page(s)"), "{stdout}");
    anyhow::ensure!(stdout.contains("GPU copy equals the BO"), "{stdout}");
    anyhow::ensure!(stdout.trim_end().ends_with("ok"), "{stdout}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cohmem-capi-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
