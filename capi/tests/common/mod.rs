//! Shared by the C API tests: the tools they need, and building the C
//! example with the flags pkg-config gives for a `cohmem.pc`.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The calling thread's last libcohmem error message.
pub fn last_error() -> String {
    // SAFETY: cohmem_last_error returns a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(cohmem::cohmem_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// The test daemon on the software GPU, with `extra` arguments.
pub fn soft_daemon(extra: &[&str]) -> cohmem_tools::DaemonProcess {
    let mut args = vec!["--log", "warn", "--gpu", "soft"];
    args.extend_from_slice(extra);
    cohmem_tools::DaemonProcess::spawn_bin(env!("CARGO_BIN_EXE_cohmem-capi-test-daemon").as_ref(), &args)
        .expect("starting the test daemon")
}

/// A C connection to `daemon` (freed by the caller with `cohmem_disconnect`).
pub fn connect(daemon: &cohmem_tools::DaemonProcess) -> *mut cohmem::cohmem_connection {
    let path = std::ffi::CString::new(daemon.socket().to_str().expect("a UTF-8 socket path")).expect("no NUL");
    let mut conn = std::ptr::null_mut();
    // SAFETY: a NUL-terminated path and a valid out pointer.
    let rc = unsafe { cohmem::cohmem_connect(path.as_ptr(), &mut conn) };
    assert_eq!(rc, cohmem::COHMEM_OK, "cohmem_connect: {}", last_error());
    conn
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// True when `tool --version` runs.
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `pkg-config --cflags --libs cohmem` with `env` set (PKG_CONFIG_PATH…).
pub fn pkg_config_flags(env: &[(&str, &Path)]) -> anyhow::Result<String> {
    let mut cmd = Command::new("pkg-config");
    cmd.args(["--cflags", "--libs", "cohmem"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "pkg-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The C example, `capi/examples/cohmem_example.c`.
pub fn example_source() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cohmem_example.c")
}

/// Compiles the C example into `exe` with `flags` (warnings are errors).
pub fn compile_example(exe: &Path, flags: &str) -> anyhow::Result<()> {
    let source = example_source();
    let cc = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(exe)
        .arg(source)
        .args(flags.split_whitespace())
        .output()?;
    anyhow::ensure!(
        cc.status.success(),
        "cc {flags}: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    Ok(())
}
