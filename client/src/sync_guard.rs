//! The guard that keeps a uffd-sync client from hanging when its daemon
//! dies ([`SyncGuard`], DESIGN.md §5.6): a watcher thread waits for the
//! daemon's exit (its pidfd, else a lifeline connection) and then
//! unprotects every mapping of the process ([`MappedRanges`]). The same
//! guard on a WP_ASYNC uffd with mapping-change messages unregisters the
//! mappings and reads the messages still waiting instead.

use std::ops::Range;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{Reply, Request, PROTOCOL_VERSION};
use cohmem_sys::pidfd::{Pidfd, StopSignal, WaitOutcome};
use cohmem_sys::seqpacket::SeqpacketSocket;
use cohmem_sys::signals::spawn_with_signals_blocked;
use cohmem_sys::uffd::Userfaultfd;

use crate::error::ClientError;

/// The address ranges of this process's mappings for one daemon.
pub(crate) type MappedRanges = Arc<Mutex<Vec<Range<u64>>>>;

pub(crate) fn lock_ranges(ranges: &MappedRanges) -> MutexGuard<'_, Vec<Range<u64>>> {
    ranges.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a [`SyncGuard`] learns that its daemon died.
enum DaemonWatch {
    /// The daemon's pidfd (WATCH_DAEMON): readable exactly when the daemon
    /// process has exited, so nothing else (a signal, a refused or dropped
    /// connection, a daemon closing one session) is taken for death.
    Process { pidfd: Pidfd, stop: StopSignal },
    /// Where the daemon cannot give a pidfd: an idle connection whose
    /// end-of-file is taken as death. Accepted by a HELLO first, so a
    /// daemon that refuses it (connection quota) fails the caller loudly.
    Lifeline(SeqpacketSocket),
}

/// Keeps a uffd-sync client from hanging when its daemon dies (DESIGN.md
/// §5.6): a watcher thread, started before any mapping is handed to the
/// synchronous uffd, waits for the daemon's exit; then it unprotects every
/// mapping of the process through the synchronous uffd (ranges not
/// registered with it are skipped by the kernel), which wakes every thread
/// waiting in a write-protect fault. The mappings then carry on untracked
/// until a reconnect re-announces them as damaged.
///
/// The watcher starts with every signal blocked, and nothing but the
/// daemon's exit (or [`SyncGuard::retire`]) ends its wait.
pub(crate) struct SyncGuard {
    ranges: MappedRanges,
    gone: AtomicBool,
    closing: AtomicBool,
    watch: DaemonWatch,
    /// The daemon process (its `SO_PEERCRED` pid; for the lifeline only).
    daemon_pid: i32,
    uffd: Userfaultfd,
    /// `uffd` is the WP_ASYNC one with mapping-change messages: on the
    /// daemon's death the guard unregisters every mapping from it and reads
    /// the messages still waiting, instead of unprotecting.
    map_events: bool,
    /// The process that started the guard (a forked child must not stop
    /// its parent's watcher through the shared fds).
    owner: u32,
    watcher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SyncGuard {
    /// Starts watching the daemon: through `pidfd` (from WATCH_DAEMON) when
    /// there is one, else through a lifeline connection to `daemon`.
    pub fn start(
        daemon: &Path,
        pidfd: Option<OwnedFd>,
        uffd: &Userfaultfd,
        ranges: MappedRanges,
        map_events: bool,
    ) -> Result<Arc<Self>, ClientError> {
        let (watch, daemon_pid) = match pidfd {
            Some(fd) => (
                DaemonWatch::Process {
                    pidfd: Pidfd::from(fd),
                    stop: StopSignal::new()?,
                },
                0,
            ),
            None => {
                let lifeline = lifeline(daemon)?;
                let pid = lifeline.peer_cred().map(|c| c.pid).unwrap_or(0);
                (DaemonWatch::Lifeline(lifeline), pid)
            }
        };
        let guard = Arc::new(Self {
            ranges,
            gone: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            watch,
            daemon_pid,
            uffd: Userfaultfd::from_fd(uffd.try_clone_fd()?)?,
            map_events,
            owner: std::process::id(),
            watcher: Mutex::new(None),
        });
        let watcher = guard.clone();
        let handle = spawn_with_signals_blocked("cohmem-lifeline", move || watcher.watch())
            .map_err(|e| ClientError::Protocol(format!("cannot start the lifeline thread: {e}")))?;
        *guard.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(guard)
    }

    /// Ends the watcher's wait without taking it for the daemon's death.
    pub fn stop_watching(&self) {
        if std::process::id() != self.owner {
            // The fds are shared with the parent: touching them would end
            // the parent's watch.
            return;
        }
        self.closing.store(true, Ordering::Release);
        let _ = match &self.watch {
            DaemonWatch::Process { stop, .. } => stop.raise(),
            DaemonWatch::Lifeline(sock) => sock.shutdown(),
        };
    }

    /// Retires the guard because the process moves to another daemon:
    /// stops the watcher (waiting for an unprotect it may be doing), then
    /// unprotects every mapping itself, so no protection of the old daemon
    /// outlives it, and no late unprotect undoes the new daemon's.
    pub fn retire(&self) {
        self.stop_watching();
        let handle = self.watcher.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.gone.store(true, Ordering::Release);
        self.unprotect_all();
    }

    fn unprotect_all(&self) {
        let ranges = lock_ranges(&self.ranges).clone();
        if self.map_events {
            // No change of these ranges raises a message any more, and the
            // ones raised already are read: no munmap waits for a daemon
            // that is gone. A reconnect registers the mappings again.
            for r in &ranges {
                let _ = self.uffd.unregister(r.start, r.end - r.start);
            }
            let mut changes = Vec::new();
            self.uffd.read_until_quiet(Duration::from_secs(5), |u| {
                changes.clear();
                let _ = u.read_events(&mut changes);
            });
            return;
        }
        for r in ranges {
            // Unprotect and wake: nobody will resolve these faults any more.
            let _ = self.uffd.write_protect(r.start, r.end - r.start, false);
        }
    }

    /// Blocks until the daemon has exited (or the guard is retired).
    fn watch(&self) {
        match &self.watch {
            DaemonWatch::Process { pidfd, stop } => {
                if !matches!(pidfd.wait_exit(stop), Ok(WaitOutcome::Exited)) {
                    return;
                }
            }
            DaemonWatch::Lifeline(sock) => {
                let mut buf = [0u8; 64];
                // The daemon never sends on it; recv restarts after signals.
                while matches!(sock.recv(&mut buf), Ok(r) if r.len > 0 || !r.fds.is_empty()) {}
            }
        }
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        self.gone.store(true, Ordering::Release);
        self.unprotect_all();
    }

    /// True for a lifeline guard whose daemon is not `daemon_pid` (the
    /// process that answers on the daemon's socket now).
    pub fn watches_another_than(&self, daemon_pid: i32) -> bool {
        matches!(self.watch, DaemonWatch::Lifeline(_)) && self.daemon_pid != daemon_pid
    }

    /// True once the daemon is known to be gone.
    pub fn daemon_gone(&self) -> bool {
        if self.gone.load(Ordering::Acquire) {
            return true;
        }
        match &self.watch {
            DaemonWatch::Process { pidfd, .. } => pidfd.exited().unwrap_or(false),
            DaemonWatch::Lifeline(_) => false,
        }
    }

    /// Waits up to `bound` for the daemon to be known gone.
    pub fn gone_within(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            if self.daemon_gone() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A lifeline connection to the daemon at `path`, accepted (HELLO answered):
/// a daemon that refuses it fails the caller with the daemon's reason
/// instead of being taken for dead a second later.
fn lifeline(path: &Path) -> Result<SeqpacketSocket, ClientError> {
    let sock = SeqpacketSocket::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let hello = Request::Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        caps: 0,
    };
    sock.send(&hello.encode(0), &[])?;
    let mut buf = vec![0u8; MAX_FRAME];
    let got = sock.recv(&mut buf)?;
    match Reply::decode(&buf[..got.len.min(buf.len())]) {
        Ok((_, Reply::Hello { .. })) => Ok(sock),
        Ok((_, Reply::Error { code, message })) => Err(ClientError::Daemon {
            request: "HELLO (lifeline connection)",
            code,
            message,
        }),
        Ok((_, other)) => Err(ClientError::Protocol(format!(
            "unexpected reply to the lifeline's HELLO: {other:?}"
        ))),
        Err(_) if got.len == 0 => Err(ClientError::Disconnected),
        Err(e) => Err(ClientError::Protocol(format!(
            "undecodable reply to the lifeline's HELLO: {e}"
        ))),
    }
}
