//! Helpers for the workspace integration tests: a raw protocol client for
//! sending hostile frames, and writer child processes driven over pipes.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{caps, Reply, Request, PROTOCOL_VERSION};
use cohmem_sys::seqpacket::SeqpacketSocket;
use cohmem_tools::{DaemonProcess, SplitMix64};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};

/// Starts a private daemon (software GPU, temporary socket) from this
/// package's `cohmem-test-daemon` binary, which cargo rebuilds with the tests
/// (integration tests pass `env!("CARGO_BIN_EXE_cohmem-test-daemon")`).
/// `COHMEMD_BIN` overrides it, e.g. to test an installed cohmemd.
pub fn spawn_daemon(test_daemon: &str) -> anyhow::Result<DaemonProcess> {
    spawn_daemon_with(test_daemon, &[])
}

/// [`spawn_daemon`] with extra daemon arguments.
pub fn spawn_daemon_with(test_daemon: &str, extra: &[&str]) -> anyhow::Result<DaemonProcess> {
    let bin = std::env::var_os("COHMEMD_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| test_daemon.into());
    DaemonProcess::spawn_bin(&bin, extra)
}

/// The content a writer puts into `page` for `seed` (reproducible on both
/// sides of a pipe).
pub fn page_pattern(seed: u64, page: u64, buf: &mut [u8]) {
    SplitMix64::new(seed ^ page.wrapping_mul(0x9e37_79b9_7f4a_7c15)).fill(buf);
}

/// What the daemon did with a raw frame.
#[derive(Debug)]
pub enum RawOutcome {
    /// A reply (with its request id and fds).
    Reply(u32, Reply, Vec<OwnedFd>),
    /// The connection was closed.
    Closed,
}

/// A protocol client that sends arbitrary bytes and fds.
pub struct RawClient {
    /// The socket.
    pub sock: SeqpacketSocket,
}

impl RawClient {
    /// Connects without HELLO.
    pub fn connect(path: &Path) -> anyhow::Result<Self> {
        let sock = SeqpacketSocket::connect(path)?;
        sock.set_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self { sock })
    }

    /// Connects and negotiates.
    pub fn connect_hello(path: &Path) -> anyhow::Result<Self> {
        let c = Self::connect(path)?;
        let hello = Request::Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            caps: caps::ALL,
        };
        match c.send(&hello.encode(1), &[])? {
            RawOutcome::Reply(1, Reply::Hello { .. }, _) => Ok(c),
            other => bail!("HELLO failed: {other:?}"),
        }
    }

    /// Sends one frame and reads the answer.
    pub fn send(&self, frame: &[u8], fds: &[BorrowedFd<'_>]) -> anyhow::Result<RawOutcome> {
        if let Err(e) = self.sock.send(frame, fds) {
            if SeqpacketSocket::is_disconnect(&e) {
                return Ok(RawOutcome::Closed);
            }
            return Err(e.into());
        }
        self.recv()
    }

    /// Reads one answer.
    pub fn recv(&self) -> anyhow::Result<RawOutcome> {
        let mut buf = vec![0u8; MAX_FRAME];
        let got = match self.sock.recv(&mut buf) {
            Ok(g) => g,
            Err(e) if SeqpacketSocket::is_disconnect(&e) => return Ok(RawOutcome::Closed),
            Err(e) => return Err(e).context("waiting for the daemon's answer"),
        };
        if got.len == 0 && got.fds.is_empty() {
            return Ok(RawOutcome::Closed);
        }
        let (id, reply) =
            Reply::decode(&buf[..got.len]).context("daemon sent an undecodable reply")?;
        Ok(RawOutcome::Reply(id, reply, got.fds))
    }

    /// Sends a request and returns its reply.
    pub fn call(
        &self,
        id: u32,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> anyhow::Result<(Reply, Vec<OwnedFd>)> {
        match self.send(&req.encode(id), fds)? {
            RawOutcome::Reply(rid, reply, fds) if rid == id => Ok((reply, fds)),
            other => bail!("unexpected answer to {}: {other:?}", req.name()),
        }
    }
}

/// A `cohmem-test-writer` child process holding a view of a BO.
pub struct WriterChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WriterChild {
    /// Starts the writer: it connects to `socket`, imports the BO whose
    /// memfd is `memfd` (inherited), maps `[offset, offset+len)` and waits
    /// for commands. `len == 0` maps the whole BO.
    pub fn spawn(
        bin: &Path,
        socket: &Path,
        memfd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
    ) -> anyhow::Result<Self> {
        Self::spawn_as(None, bin, socket, memfd, offset, len)
    }

    /// Like [`WriterChild::spawn`], running as user and group `uid` when
    /// given (needs root).
    pub fn spawn_as(
        uid: Option<u32>,
        bin: &Path,
        socket: &Path,
        memfd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
    ) -> anyhow::Result<Self> {
        // An inheritable duplicate: the child finds the BO at this fd number.
        let dup: OwnedFd = memfd.try_clone_to_owned()?;
        fcntl(dup.as_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
        let mut cmd = Command::new(bin);
        cmd.arg(socket)
            .arg(dup.as_raw_fd().to_string())
            .arg(offset.to_string())
            .arg(len.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        drop(dup);
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut me = Self {
            child,
            stdin,
            stdout,
        };
        let line = me.read_line()?;
        if line != "ready" {
            bail!("writer did not start: {line:?}");
        }
        Ok(me)
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("writer exited: {status}");
        }
        Ok(line.trim_end().to_owned())
    }

    /// Sends one command line and returns the answer line.
    pub fn command(&mut self, cmd: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.read_line()
    }

    /// Writes `page_pattern(seed, p)` into each BO page `p` (through the
    /// child's view) and waits until it is done.
    pub fn write_pages(&mut self, seed: u64, pages: &[u64]) -> anyhow::Result<()> {
        let list: Vec<String> = pages.iter().map(u64::to_string).collect();
        let answer = self.command(&format!("write {seed} {}", list.join(" ")))?;
        if answer != "ok" {
            bail!("writer failed: {answer}");
        }
        Ok(())
    }

    /// Sends a command without waiting for its answer.
    pub fn send_only(&mut self, cmd: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Asks the child to exit and waits.
    pub fn quit(mut self) -> anyhow::Result<()> {
        let _ = self.send_only("quit");
        let status = self.child.wait()?;
        if !status.success() {
            bail!("writer exited with {status}");
        }
        Ok(())
    }
}

impl Drop for WriterChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
