//! The daemon `cohmem-stress --spawn-daemon` runs: a [`DaemonProcess`]
//! whose output goes to `daemon.log` next to its socket, and which
//! `--chaos` SIGKILLs and starts again on the same socket path (the clients
//! reconnect to that path).

use std::path::Path;

use crate::daemon::DaemonProcess;

/// A restartable daemon on a fixed socket path in its own temporary
/// directory (removed on drop unless [`RestartableDaemon::keep_dir`]).
pub struct RestartableDaemon {
    inner: DaemonProcess,
    restarts: u64,
}

impl RestartableDaemon {
    /// Starts `bin --socket DIR/cohmem.sock --gpu soft ARGS…` (no `--gpu
    /// soft` when `args` names a backend) and waits until it accepts
    /// connections.
    pub fn start(bin: &Path, args: &[String]) -> anyhow::Result<Self> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(Self {
            inner: DaemonProcess::spawn_logged(bin, &args, "daemon.log")?,
            restarts: 0,
        })
    }

    /// SIGKILLs the daemon and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.inner.kill9()
    }

    /// Starts a new daemon on the same socket path (killing the running
    /// one first, if any).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.inner.kill9()?;
        self.restarts += 1;
        let restarted = self.inner.restart();
        if restarted.is_err() {
            self.inner.keep_dir();
        }
        restarted
    }

    /// True while the current daemon runs.
    pub fn is_running(&mut self) -> bool {
        self.inner.is_running()
    }

    /// The socket path (the same across restarts).
    pub fn socket(&self) -> &Path {
        self.inner.socket()
    }

    /// The daemons' log file.
    pub fn log(&self) -> &Path {
        self.inner.log().unwrap_or(Path::new("daemon.log"))
    }

    /// The current daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        Some(self.inner.pid())
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Keeps the directory (with the log) after drop, for a failed run.
    pub fn keep_dir(&mut self) {
        self.inner.keep_dir();
    }
}
