//! A private cohmemd on a temporary socket, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cohmem_sys::seqpacket::SeqpacketSocket;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running daemon child process.
pub struct DaemonProcess {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    /// The command line, for [`DaemonProcess::restart`].
    command: Vec<std::ffi::OsString>,
    /// Where the daemon's output goes (`None`: our stderr).
    log: Option<PathBuf>,
    /// Keep the directory (and the log) on drop.
    keep: bool,
}

/// Finds the `cohmemd` binary: `$COHMEMD_BIN`, else next to the running
/// executable or one directory up (cargo puts test binaries in `deps/`).
pub fn find_cohmemd() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("COHMEMD_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("cohmemd");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cohmemd not found next to {} (build the workspace first: cargo build --workspace, or set COHMEMD_BIN)",
        exe.display()
    )
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl DaemonProcess {
    /// Starts `cohmemd --socket <tmp>` plus `extra` arguments (with `--gpu soft`
    /// unless `extra` names a backend) and
    /// waits until it accepts connections. Its log goes to our stderr.
    pub fn spawn(extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_bin(&find_cohmemd()?, extra)
    }

    /// Like [`DaemonProcess::spawn`] with an explicit daemon binary.
    pub fn spawn_bin(bin: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_inner(bin, extra, None)
    }

    /// Like [`DaemonProcess::spawn_bin`], with the daemon's output appended
    /// to the file `log_name` in the daemon's temporary directory (kept on
    /// drop after [`DaemonProcess::keep_dir`]).
    pub fn spawn_logged(bin: &Path, extra: &[&str], log_name: &str) -> anyhow::Result<Self> {
        Self::spawn_inner(bin, extra, Some(log_name))
    }

    fn spawn_inner(bin: &Path, extra: &[&str], log_name: Option<&str>) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "cohmem-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("cohmem.sock");
        // The software GPU unless the caller names a backend.
        let gpu: &[&str] = if extra.contains(&"--gpu") {
            &[]
        } else {
            &["--gpu", "soft"]
        };
        let mut command: Vec<std::ffi::OsString> = vec![bin.into(), "--socket".into(), socket.clone().into()];
        command.extend(gpu.iter().chain(extra).map(Into::into));
        let log = log_name.map(|n| dir.join(n));
        let child = start(&command, log.as_deref())?;
        let mut me = Self {
            child,
            dir,
            socket,
            command,
            log,
            keep: false,
        };
        me.wait_ready(Duration::from_secs(60))?;
        Ok(me)
    }

    /// Kills the daemon with SIGKILL (no clean-up at all: what a crash
    /// does) and reaps it.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            self.child.kill().context("SIGKILL of the daemon")?;
        }
        self.child.wait().context("reaping the daemon")?;
        Ok(())
    }

    /// Starts the same daemon again on the same socket (after it died or
    /// was killed) and waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("the daemon (pid {}) is still running", self.pid());
        }
        self.child = start(&self.command, self.log.as_deref())?;
        self.wait_ready(Duration::from_secs(60))
    }

    /// The file the daemon's output goes to, if any.
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Keeps the daemon's directory (with its log) after drop.
    pub fn keep_dir(&mut self) {
        self.keep = true;
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("cohmemd exited during start-up: {status}");
            }
            if SeqpacketSocket::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cohmemd did not listen on {} within {timeout:?}", self.socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it with SIGTERM (SIGKILL after 5 s) and returns whether it
    /// exited cleanly.
    pub fn stop(&mut self) -> anyhow::Result<bool> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.child.wait()?;
        Ok(false)
    }
}

fn start(command: &[std::ffi::OsString], log: Option<&Path>) -> anyhow::Result<Child> {
    let (bin, args) = command.split_first().context("empty daemon command")?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null());
    if let Some(log) = log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdout(file.try_clone().context("duplicating the log fd")?)
            .stderr(file);
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.to_string_lossy()))
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.stop();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
