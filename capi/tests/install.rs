//! Issue 7 "install": `make install` into a staging directory puts the
//! binaries, libcohmem.so (as libcohmem.so.VERSION with the SONAME and
//! development links, stripped), cohmem.h, a relocatable cohmem.pc, the
//! units (with the real binary path in ExecStart) and the example
//! configuration where the Makefile says; the installed cohmem.pc then
//! builds the C example. (`tests/package/run` builds, installs and runs
//! the Debian package.)

use std::path::Path;
use std::process::Command;

mod common;

#[test]
fn make_install_stages_every_file_and_the_installed_pc_works() -> anyhow::Result<()> {
    for tool in ["make", "cc", "pkg-config"] {
        if !common::have(tool) {
            eprintln!("skipping: {tool} is not installed");
            return Ok(());
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/install-… → target/<profile>: the binaries and
    // libcohmem.so this test run built.
    let build_dir = exe
        .ancestors()
        .nth(2)
        .ok_or_else(|| anyhow::anyhow!("no build dir above {}", exe.display()))?
        .to_path_buf();
    let stage = std::env::temp_dir().join(format!("cohmem-stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    // What `cargo build --release` leaves in target/release, from this
    // run's artifacts: the daemon (this package's test daemon is cohmemd's
    // main) and libcohmem.so (cargo test leaves the cdylib in deps/). The
    // other binaries go through the same install loop (BINS).
    let artifacts = stage.join("build");
    std::fs::create_dir_all(&artifacts)?;
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cohmem-capi-test-daemon"), artifacts.join("cohmemd"))?;
    // The newer of the two: a `cargo build` earlier may have left an older
    // library beside the one this test run built.
    let lib = [build_dir.join("libcohmem.so"), build_dir.join("deps/libcohmem.so")]
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| anyhow::anyhow!("libcohmem.so was not built in {}", build_dir.display()))?;
    std::os::unix::fs::symlink(lib, artifacts.join("libcohmem.so"))?;
    let build_dir = artifacts;
    let root_dir = stage.join("root");
    let out = Command::new("make")
        .arg("-C")
        .arg(&root)
        .arg("install")
        .arg("PREFIX=/usr")
        .arg("BINS=cohmemd")
        .arg(format!("DESTDIR={}", root_dir.display()))
        .arg(format!("BUILD_DIR={}", build_dir.display()))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "make install: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let version = env!("CARGO_PKG_VERSION");
    let real = format!("usr/lib/libcohmem.so.{version}");
    for f in [
        "usr/bin/cohmemd",
        real.as_str(),
        "usr/lib/libcohmem.so",
        "usr/lib/libcohmem.so.0",
        "usr/include/cohmem.h",
        "usr/lib/pkgconfig/cohmem.pc",
        "usr/lib/systemd/system/cohmemd.service",
        "usr/lib/systemd/system/cohmemd.socket",
        "etc/cohmem/cohmemd.toml",
    ] {
        anyhow::ensure!(root_dir.join(f).is_file(), "make install did not install {f}");
    }
    let unit = std::fs::read_to_string(root_dir.join("usr/lib/systemd/system/cohmemd.service"))?;
    anyhow::ensure!(
        unit.contains("ExecStart=/usr/bin/cohmemd "),
        "ExecStart does not name the installed binary:\n{unit}"
    );
    for (link, target) in [("libcohmem.so", "libcohmem.so.0"), ("libcohmem.so.0", &real[8..])] {
        let to = std::fs::read_link(root_dir.join("usr/lib").join(link))?;
        anyhow::ensure!(to == Path::new(target), "{link} points to {}", to.display());
    }
    let pc = std::fs::read_to_string(root_dir.join("usr/lib/pkgconfig/cohmem.pc"))?;
    anyhow::ensure!(
        pc.contains("prefix=${pcfiledir}/../..\n") && pc.contains("libdir=${prefix}/lib\n") && !pc.contains('@'),
        "{pc}"
    );

    // The staged .pc finds its prefix from its own place (no sysroot
    // needed) and compiles the example.
    let pkgconfig = root_dir.join("usr/lib/pkgconfig");
    let flags = common::pkg_config_flags(&[("PKG_CONFIG_PATH", &pkgconfig)])?;
    let include = flags
        .split_whitespace()
        .find_map(|f| f.strip_prefix("-I"))
        .ok_or_else(|| anyhow::anyhow!("no -I in {flags}"))?;
    anyhow::ensure!(
        Path::new(include).canonicalize()? == root_dir.join("usr/include").canonicalize()?,
        "the staged cohmem.pc does not point into the stage: {flags}"
    );
    common::compile_example(&stage.join("cohmem_example"), &flags)?;
    eprintln!(
        "staged install in {} builds the C example with: {}",
        stage.display(),
        flags
    );
    std::fs::remove_dir_all(&stage)?;
    Ok(())
}
