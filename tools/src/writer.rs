//! Writer child processes: real client processes that import a BO by an
//! inherited memfd, map part of it and write or read pages on command (one
//! command per stdin line). Used by the tests, `cohmem-stress` and the
//! vmwgfx trace replayer.
//!
//! Commands: `write SEED PAGE…` (prints `ok`), `read PAGE…` (prints `ok`),
//! `forkwrite PAGE` (a forked child writes the page; prints how it ended),
//! `sync` (prints `synced N`), `syncloop` (syncs until killed), `writeloop`
//! (writes until killed), `unmap` (drops the mapping, keeps the BO; prints
//! `ok`), `quit` (unmaps, prints nothing, exits).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context};
use cohmem_client::Connection;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use crate::SplitMix64;

/// The content a writer puts into `page` for `seed` (reproducible on both
/// sides of a pipe).
pub fn page_pattern(seed: u64, page: u64, buf: &mut [u8]) {
    SplitMix64::new(seed ^ page.wrapping_mul(0x9e37_79b9_7f4a_7c15)).fill(buf);
}

/// The child side: `args` are SOCKET MEMFD_FD OFFSET LEN. Reads commands
/// from stdin until `quit` or end of input.
pub fn child_main(args: &[String]) -> anyhow::Result<()> {
    if args.len() != 4 {
        bail!("writer usage: SOCKET MEMFD_FD OFFSET LEN");
    }
    let fd: i32 = args[1].parse().context("MEMFD_FD")?;
    let offset: u64 = args[2].parse().context("OFFSET")?;
    let len: u64 = args[3].parse().context("LEN")?;
    // SAFETY: the parent made this fd inheritable for us and passed its
    // number; nothing else in this process owns it.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let conn = Connection::connect(&args[0])?;
    let bo = conn.import_bo(memfd)?;
    let len = if len == 0 { bo.size() - offset } else { len };
    let mut mapping = Some(bo.map_range(offset, len)?);
    let ps = cohmem_sys::page_size();
    let mut page = vec![0u8; ps as usize];
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    // The view offset of BO page `p`, if this view maps it.
    let in_view = |p: u64| -> anyhow::Result<usize> {
        (p * ps)
            .checked_sub(offset)
            .filter(|a| a + ps <= len)
            .map(|a| a as usize)
            .with_context(|| format!("page {p} is outside this view"))
    };
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let map = || mapping.as_ref().context("the mapping was dropped (unmap)");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("write") => {
                let seed: u64 = words.next().context("seed")?.parse()?;
                for p in words {
                    let p: u64 = p.parse()?;
                    page_pattern(seed, p, &mut page);
                    map()?.write(in_view(p)?, &page)?;
                }
                writeln!(out, "ok")?;
            }
            Some("read") => {
                for p in words {
                    map()?.read(in_view(p.parse()?)?, &mut page)?;
                }
                writeln!(out, "ok")?;
            }
            Some("forkwrite") => {
                // A forked child writes page P through the inherited address
                // space; prints how the child ended.
                let p: u64 = words.next().context("page")?.parse()?;
                let at = (p * ps).checked_sub(offset).context("page outside this view")?;
                let ptr = map()?.as_ptr();
                out.flush()?;
                // SAFETY: this writer process is single-threaded, so fork is
                // safe; the child only stores one byte and calls _exit.
                match unsafe { nix::unistd::fork() }? {
                    nix::unistd::ForkResult::Child => {
                        // SAFETY: `ptr + at` lies inside the parent's mapping;
                        // if the child did not inherit it, this faults, which
                        // is what the caller checks for.
                        unsafe {
                            ptr.add(at as usize).write_volatile(1);
                            libc::_exit(0)
                        }
                    }
                    nix::unistd::ForkResult::Parent { child } => {
                        let status = nix::sys::wait::waitpid(child, None)?;
                        writeln!(out, "child {status:?}")?;
                    }
                }
            }
            Some("sync") => writeln!(out, "synced {}", bo.sync()?.pages)?,
            Some("syncloop") => loop {
                bo.sync()?;
            },
            Some("writeloop") => {
                let mut v = 0u64;
                loop {
                    v += 1;
                    map()?.write_u64(((v % (len / ps)) * ps) as usize, v)?;
                }
            }
            Some("unmap") => {
                drop(mapping.take());
                writeln!(out, "ok")?;
            }
            Some("quit") | None => break,
            Some(other) => writeln!(out, "unknown command {other}")?,
        }
        out.flush()?;
    }
    drop(mapping);
    Ok(())
}

/// A writer child process holding a view of a BO, driven over its stdin.
pub struct WriterChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WriterChild {
    /// Starts the writer: it connects to `socket`, imports the BO whose
    /// memfd is `memfd` (inherited), maps `[offset, offset+len)` and waits
    /// for commands. `len == 0` maps the whole BO.
    pub fn spawn(bin: &Path, socket: &Path, memfd: BorrowedFd<'_>, offset: u64, len: u64) -> anyhow::Result<Self> {
        Self::spawn_as(None, bin, &[], socket, memfd, offset, len)
    }

    /// Like [`WriterChild::spawn`], running as user and group `uid` when
    /// given (needs root).
    pub fn spawn_as(
        uid: Option<u32>,
        bin: &Path,
        pre_args: &[&str],
        socket: &Path,
        memfd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
    ) -> anyhow::Result<Self> {
        // An inheritable duplicate: the child finds the BO at this fd number.
        let dup: OwnedFd = memfd.try_clone_to_owned()?;
        fcntl(dup.as_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
        let mut cmd = Command::new(bin);
        cmd.args(pre_args)
            .arg(socket)
            .arg(dup.as_raw_fd().to_string())
            .arg(offset.to_string())
            .arg(len.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        drop(dup);
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut me = Self { child, stdin, stdout };
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

    /// Reads pages through the child's view.
    pub fn read_pages(&mut self, pages: &[u64]) -> anyhow::Result<()> {
        let list: Vec<String> = pages.iter().map(u64::to_string).collect();
        let answer = self.command(&format!("read {}", list.join(" ")))?;
        if answer != "ok" {
            bail!("writer failed: {answer}");
        }
        Ok(())
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
