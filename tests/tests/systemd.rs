//! Issue 7 "a proper Linux service": the units in `systemd/` pass systemd's
//! own `systemd-analyze verify`, and socket activation works for real:
//! `systemd-socket-activate --seqpacket` holds the listening socket and
//! starts the daemon on the first connection, passing the socket as
//! `$LISTEN_FDS`; this test owns the `$NOTIFY_SOCKET` and checks `READY=1`,
//! `STATUS=`, `WATCHDOG=1` and `STOPPING=1`, and a client's writes arrive.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cohmem_client::Connection;
use cohmem_tests::NotifySocket;
use cohmem_tools::verify_gpu_copy;

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills the process group's leader on drop (a daemon left running would
/// hold the test's output open).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn units_pass_systemd_analyze_verify() -> anyhow::Result<()> {
    if !have("systemd-analyze") {
        // .ci/run installs systemd; a developer machine without it skips.
        eprintln!("skipping: systemd-analyze is not installed (apt-get install systemd)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    // The service names @BINDIR@/cohmemd: install puts the real path there.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin)?;
    std::os::unix::fs::symlink(DAEMON, bin.join("cohmemd"))?;
    for unit in ["cohmemd.service", "cohmemd.socket"] {
        let text = std::fs::read_to_string(units_dir().join(unit))?;
        std::fs::write(
            dir.path().join(unit),
            text.replace("@BINDIR@", &bin.display().to_string()),
        )?;
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("cohmemd.service"))
        .arg(dir.path().join("cohmemd.socket"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("systemd-analyze verify: {}\n{stderr}", out.status);
    // verify prints problems on stderr; some come with exit status 0.
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cohmemd") || l.to_lowercase().contains("unknown"))
        .collect();
    anyhow::ensure!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    Ok(())
}

#[test]
fn socket_activation_starts_the_daemon_on_first_connect() -> anyhow::Result<()> {
    if !have("systemd-socket-activate") {
        eprintln!("skipping: systemd-socket-activate is not installed (apt-get install systemd)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("cohmem.sock");
    let notify = NotifySocket::bind(dir.path())?;
    let mut activator = Killed(
        Command::new("systemd-socket-activate")
            .arg("--seqpacket")
            .arg("--listen")
            .arg(&socket)
            .arg(format!("--setenv=NOTIFY_SOCKET={}", notify.path.display()))
            .arg("--setenv=WATCHDOG_USEC=200000")
            .args(["--", DAEMON, "--gpu", "soft", "--log", "warn"])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let t0 = Instant::now();
    while !socket.exists() {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "the socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Nothing runs yet: systemd-socket-activate only listens.
    notify.set_timeout(Duration::from_millis(300))?;
    anyhow::ensure!(notify.recv().is_err(), "a notification arrived before anyone connected");
    notify.set_timeout(Duration::from_secs(20))?;

    // The first connection starts the daemon, which takes over the socket.
    let conn = Connection::connect(&socket)?;
    let (ready, _) = notify.expect("READY=1")?;
    eprintln!("notified: {ready:?}");
    anyhow::ensure!(
        ready.contains(&format!("STATUS=listening on {}", socket.display())),
        "READY without the socket in STATUS: {ready:?}"
    );
    let bo = conn.create_bo(16 * 4096)?;
    let map = bo.map()?;
    map.fill(0, map.len(), 0x5a)?;
    map.write_u64(3 * 4096, 0xfeed)?;
    bo.sync()?;
    anyhow::ensure!(verify_gpu_copy(&bo)?.is_empty(), "the GPU copy differs from the BO");

    // WATCHDOG_USEC=200000: petted every 100 ms.
    let t1 = Instant::now();
    notify.expect("WATCHDOG=1")?;
    notify.expect("WATCHDOG=1")?;
    let petted = t1.elapsed();
    anyhow::ensure!(
        petted < Duration::from_secs(2),
        "watchdog petted too slowly: {petted:?}"
    );

    // SIGTERM reaches the daemon (systemd-socket-activate execs it).
    drop(map);
    drop((bo, conn));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(activator.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    notify.expect("STOPPING=1")?;
    let status = activator.0.wait()?;
    anyhow::ensure!(status.success(), "the daemon exited with {status}");
    // The socket file belongs to whoever created it: an activated daemon
    // leaves it in place.
    anyhow::ensure!(socket.exists(), "the activated daemon removed the socket file");
    Ok(())
}
