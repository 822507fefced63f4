//! Helpers for the workspace integration tests: a private daemon built with
//! the tests, and a raw protocol client for sending hostile frames. Writer
//! child processes live in `cohmem_tools::writer`.

pub use cohmem_tools::writer::{page_pattern, WriterChild};

pub mod image;
pub mod screendump;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{caps, Reply, Request, PROTOCOL_VERSION};
use cohmem_sys::seqpacket::SeqpacketSocket;
use cohmem_tools::DaemonProcess;

/// Starts a private daemon (software GPU, temporary socket) from this
/// package's `cohmem-test-daemon` binary, which cargo rebuilds with the tests
/// (integration tests pass `env!("CARGO_BIN_EXE_cohmem-test-daemon")`).
/// `COHMEMD_BIN` overrides it, e.g. to test an installed cohmemd.
pub fn spawn_daemon(test_daemon: &str) -> anyhow::Result<DaemonProcess> {
    spawn_daemon_with(test_daemon, &[])
}

/// [`spawn_daemon`] forcing one write-tracking mechanism for every client.
pub fn spawn_daemon_for(test_daemon: &str, mechanism: cohmem_client::Mechanism) -> anyhow::Result<DaemonProcess> {
    spawn_daemon_with(test_daemon, &["--mechanism", mechanism.name()])
}

/// Defines one test per write-tracking mechanism available on this host
/// (`NAME::uffd_async`, `NAME::uffd_sync`), each running `BODY(mechanism)`.
#[macro_export]
macro_rules! test_each_mechanism {
    ($name:ident, $body:ident) => {
        mod $name {
            /// Where the kernel has no uffd-async (Linux 6.1), checks instead
            /// that the daemon refuses it and says why.
            #[test]
            fn uffd_async() -> anyhow::Result<()> {
                if !$crate::caps().uffd_async.ok {
                    return $crate::expect_uffd_async_refused(super::DAEMON);
                }
                super::$body(cohmem_client::Mechanism::UffdAsync)
            }
            #[test]
            fn uffd_sync() -> anyhow::Result<()> {
                super::$body(cohmem_client::Mechanism::UffdSync)
            }
            /// Where the kernel has no soft-dirty, checks instead that the
            /// daemon refuses it and says why (never silently).
            #[test]
            fn soft_dirty() -> anyhow::Result<()> {
                if !$crate::soft_dirty_available() {
                    return $crate::expect_soft_dirty_refused(super::DAEMON);
                }
                // clear_refs acts on the whole test process: one at a time.
                let _one = $crate::soft_dirty_serial();
                super::$body(cohmem_client::Mechanism::SoftDirty)
            }
        }
    };
}

/// The kernel's capabilities, probed once per test process. The probe
/// writes `/proc/self/clear_refs` (it proves that soft-dirty works), which
/// clears the soft-dirty bits of the whole process: run while a daemon
/// tracks this process with soft-dirty, it would erase writes that daemon
/// had not read yet (a lost write seen once in the 6.12 guest). Every test
/// asks here, and the soft-dirty tests ask before their daemon tracks
/// anything, so the one probe comes before any soft-dirty tracking.
pub fn caps() -> &'static cohmem_sys::probe::KernelCaps {
    static CAPS: std::sync::OnceLock<cohmem_sys::probe::KernelCaps> = std::sync::OnceLock::new();
    CAPS.get_or_init(cohmem_sys::probe::probe_all)
}

static SOFT_DIRTY_SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Serialises soft-dirty tests of one test process: `clear_refs` clears the
/// bits of the whole process, so two daemons tracking it at once would each
/// destroy the other's state (the client library lets only one daemon per
/// process use soft-dirty).
pub fn soft_dirty_serial() -> std::sync::MutexGuard<'static, ()> {
    SOFT_DIRTY_SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the daemon offers soft-dirty here: the kernel sets soft-dirty
/// bits (a real probe) and can write-protect unpopulated pages (the quiesce).
pub fn soft_dirty_available() -> bool {
    let caps = caps();
    caps.soft_dirty.ok && caps.uffd_features & cohmem_sys::uffd::features::WP_UNPOPULATED != 0
}

/// On a kernel without uffd-async (before Linux 6.7: the VM tier's 6.1
/// guest): a daemon asked for it refuses a client's mapping with a typed
/// error that names the reason.
pub fn expect_uffd_async_refused(test_daemon: &str) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(test_daemon, cohmem_client::Mechanism::UffdAsync)?;
    let conn = cohmem_client::Connection::connect(daemon.socket())?;
    let bo = conn.create_bo(cohmem_sys::page_size())?;
    let mapped = bo.map();
    match mapped {
        Ok(_) => anyhow::bail!("uffd-async was accepted on a kernel without it"),
        Err(e) => {
            anyhow::ensure!(
                e.code() == Some(cohmem_client::ErrorCode::Unsupported) && e.to_string().contains("uffd-async"),
                "unclear refusal: {e}"
            );
            eprintln!("uffd-async unavailable here, refused as expected: {e}");
            Ok(())
        }
    }
}

/// On a kernel without soft-dirty: a daemon asked for it refuses a client's
/// mapping with a typed error that names the reason.
pub fn expect_soft_dirty_refused(test_daemon: &str) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(test_daemon, cohmem_client::Mechanism::SoftDirty)?;
    let conn = cohmem_client::Connection::connect(daemon.socket())?;
    let bo = conn.create_bo(cohmem_sys::page_size())?;
    let mapped = bo.map();
    match mapped {
        Ok(_) => anyhow::bail!("soft-dirty was accepted on a kernel without it"),
        Err(e) => {
            anyhow::ensure!(
                e.code() == Some(cohmem_client::ErrorCode::Unsupported) && e.to_string().contains("soft-dirty"),
                "unclear refusal: {e}"
            );
            eprintln!("soft-dirty unavailable here, refused as expected: {e}");
            Ok(())
        }
    }
}

/// [`spawn_daemon`] with extra daemon arguments.
pub fn spawn_daemon_with(test_daemon: &str, extra: &[&str]) -> anyhow::Result<DaemonProcess> {
    let bin = std::env::var_os("COHMEMD_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| test_daemon.into());
    // Quiet daemons keep test output readable; RUST_LOG still overrides.
    let mut args = vec!["--log", "warn"];
    args.extend_from_slice(extra);
    DaemonProcess::spawn_bin(&bin, &args)
}

/// A well-behaved client that writes, syncs and verifies in a loop until
/// stopped; returns the number of verified syncs.
pub fn bystander(
    socket: &Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        let conn = cohmem_client::Connection::connect(&socket)?;
        let ps = cohmem_sys::page_size();
        let bo = conn.create_bo(256 * ps)?;
        let map = bo.map()?;
        let mut rng = cohmem_tools::SplitMix64::new(7);
        let mut verified = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let count = 1 + rng.below(16) as usize;
            let written = rng.distinct(256, count);
            for &p in &written {
                map.write_u64((p * ps) as usize, rng.next_u64())?;
            }
            let done = bo.sync_with_runs()?;
            anyhow::ensure!(
                done.pages_list() == written,
                "bystander: sync reported {:?}, wrote {written:?}",
                done.pages_list()
            );
            let bad = cohmem_tools::verify_gpu_copy(&bo)?;
            anyhow::ensure!(bad.is_empty(), "bystander: GPU copy differs on {bad:?}");
            verified += 1;
        }
        Ok(verified)
    })
}

/// Card nodes with dumb buffers, with their driver.
pub fn dumb_devices() -> Vec<(std::path::PathBuf, cohmem_sys::drm::DrmInfo)> {
    cohmem_sys::drm::nodes()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("card"))
        })
        .filter_map(|p| {
            let info = cohmem_sys::drm::DrmDevice::open(&p).and_then(|d| d.info()).ok()?;
            info.dumb_buffers.then_some((p, info))
        })
        .collect()
}

/// Runs `check` on every dumb-buffer device; fails if a driver named in
/// `COHMEM_REQUIRE_DRM` was not among them.
pub fn on_every_device(check: impl Fn(&Path, &cohmem_sys::drm::DrmInfo) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let devices = dumb_devices();
    for (path, info) in &devices {
        eprintln!("-- {} ({})", path.display(), info.driver);
        check(path, info)?;
    }
    let required = std::env::var("COHMEM_REQUIRE_DRM").unwrap_or_default();
    for driver in required.split(',').filter(|d| !d.is_empty()) {
        anyhow::ensure!(
            devices.iter().any(|(_, i)| i.driver == driver),
            "COHMEM_REQUIRE_DRM names {driver}, but no dumb-buffer device of it exists: {:?}",
            devices.iter().map(|(p, i)| (p, &i.driver)).collect::<Vec<_>>()
        );
    }
    if devices.is_empty() {
        eprintln!("no DRM device with dumb buffers here: the device checks run in the VM tier (tests/vm/run)");
    }
    Ok(())
}

/// What the daemon did with a raw frame.
#[derive(Debug)]
// A test helper matched by value in many places; its size does not matter.
#[allow(clippy::large_enum_variant)]
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
        let (id, reply) = Reply::decode(&buf[..got.len]).context("daemon sent an undecodable reply")?;
        Ok(RawOutcome::Reply(id, reply, got.fds))
    }

    /// Sends a request and returns its reply.
    pub fn call(&self, id: u32, req: &Request, fds: &[BorrowedFd<'_>]) -> anyhow::Result<(Reply, Vec<OwnedFd>)> {
        match self.send(&req.encode(id), fds)? {
            RawOutcome::Reply(rid, reply, fds) if rid == id => Ok((reply, fds)),
            other => bail!("unexpected answer to {}: {other:?}", req.name()),
        }
    }
}

/// Writer threads in the style of the kernel's pagemap "transact" selftest
/// (spec §8.4): thread `t` keeps incrementing a counter in random pages of
/// its own `pages_per_thread` pages of `map` and publishes each value once
/// its store completed. [`CompletedWriters::check`] asserts that every value
/// completed before a SYNC was sent is in the GPU copy after it returned.
pub struct CompletedWriters {
    completed: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writers: Vec<std::thread::JoinHandle<anyhow::Result<u64>>>,
    /// The mapping written (read again when a check fails).
    map: std::sync::Arc<cohmem_client::Mapping<'static>>,
    /// The random seed (printed in every failure).
    pub seed: u64,
}

impl CompletedWriters {
    /// Starts `threads` writers on `map`.
    pub fn start(map: std::sync::Arc<cohmem_client::Mapping<'static>>, threads: u64, pages_per_thread: u64) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let ps = cohmem_sys::page_size();
        let pages = threads * pages_per_thread;
        let completed: Arc<Vec<AtomicU64>> = Arc::new((0..pages).map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let seed = cohmem_tools::SplitMix64::seed_from_time();
        eprintln!("seed {seed}");
        let writers = (0..threads)
            .map(|t| {
                let (map, completed, stop) = (map.clone(), completed.clone(), stop.clone());
                std::thread::spawn(move || -> anyhow::Result<u64> {
                    let mut rng = cohmem_tools::SplitMix64::new(seed + t);
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let p = t * pages_per_thread + rng.below(pages_per_thread);
                        let v = completed[p as usize].load(Ordering::Relaxed) + 1;
                        map.write_u64((p * ps) as usize, v)?;
                        completed[p as usize].store(v, Ordering::Release);
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        Self {
            completed,
            stop,
            writers,
            map,
            seed,
        }
    }

    /// The values completed so far, per page (take it before sending SYNC).
    pub fn snapshot(&self) -> Vec<u64> {
        self.completed
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Acquire))
            .collect()
    }

    /// Panics if the GPU copy lacks a value of `before` (a lost write).
    pub fn check(&self, before: &[u64], gpu: &cohmem_sys::mapping::SharedMapping) -> anyhow::Result<()> {
        let ps = cohmem_sys::page_size() as usize;
        for (p, &want) in before.iter().enumerate() {
            let got = gpu.read_u64(p * ps)?;
            if got < want {
                // What tells the kinds of loss apart: whether the BO has the
                // value (the write reached the memory the daemon reads) and
                // whether the GPU copy catches up on its own (an upload still
                // in flight) or stays behind.
                let in_bo = self.map.read_u64(p * ps)?;
                std::thread::sleep(std::time::Duration::from_millis(100));
                let later = gpu.read_u64(p * ps)?;
                panic!(
                    "lost write: page {p} completed value {want} before SYNC, GPU copy has {got} after it \
                     (the BO has {in_bo}; the GPU copy 100 ms later {later}) (seed {})",
                    self.seed
                );
            }
        }
        Ok(())
    }

    /// Stops the writers; returns how many writes they made.
    pub fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut writes = 0;
        for w in self.writers {
            writes += w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        }
        Ok(writes)
    }
}

/// The service manager's side of `$NOTIFY_SOCKET`: a datagram socket that
/// receives `READY=1`, `STATUS=…`, `WATCHDOG=1`, `FDSTORE=1` with its fds, ….
pub struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    /// Its path, for `$NOTIFY_SOCKET`.
    pub path: std::path::PathBuf,
}

impl NotifySocket {
    /// Binds `notify.sock` in `dir`.
    pub fn bind(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path)?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Self { sock, path })
    }

    /// How long [`NotifySocket::recv`] waits (20 s from [`NotifySocket::bind`]).
    pub fn set_timeout(&self, timeout: Duration) -> anyhow::Result<()> {
        Ok(self.sock.set_read_timeout(Some(timeout))?)
    }

    /// The next notification and the fds it carried.
    pub fn recv(&self) -> anyhow::Result<(String, Vec<OwnedFd>)> {
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 16]);
        let msg = nix::sys::socket::recvmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&self.sock),
            &mut iov,
            Some(&mut cmsg),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: SCM_RIGHTS just installed this fd in our table;
                    // nothing else owns it.
                    fds.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
                }
            }
        }
        let len = msg.bytes;
        Ok((String::from_utf8_lossy(&buf[..len]).into_owned(), fds))
    }

    /// Waits for a notification containing `what`; returns it.
    pub fn expect(&self, what: &str) -> anyhow::Result<(String, Vec<OwnedFd>)> {
        let t0 = std::time::Instant::now();
        loop {
            let (text, fds) = self.recv()?;
            if text.contains(what) {
                return Ok((text, fds));
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(20), "no {what:?} notification");
        }
    }
}

/// How much slower than this host the machine runs (`COHMEM_TIME_SCALE`,
/// 1 by default; the VM tier's emulated guests set 20): time bounds are
/// multiplied by it and long loops divided.
pub fn time_scale() -> u32 {
    std::env::var("COHMEM_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(1)
}

/// Open fds of process `pid` (0 if it is gone).
pub fn process_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of process `pid` in KiB (`VmRSS`).
pub fn process_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}

/// The `p` quantile (0..=1) of sorted latencies.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len().saturating_sub(1)) as f64 * p).round() as usize]
}
