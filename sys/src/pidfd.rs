//! Process file descriptors (`pidfd`): knowing for certain that a process
//! has exited.
//!
//! The client library must undo a uffd-sync daemon's write protection when
//! that daemon dies (DESIGN.md §5.6), and only then: unprotecting while the
//! daemon still tracks the mappings loses writes. A closed socket or a failed
//! `recv` is no proof of death (a signal, a refused connection, a daemon
//! that closed one connection), but a pidfd becomes readable exactly when its
//! process has exited. The pidfd comes from the connected socket itself
//! (`SO_PEERPIDFD`, Linux 6.5) where it can, which names the very process
//! that accepted the connection; before 6.5 from `pidfd_open` (5.3) of the
//! `SO_PEERCRED` pid, checked against the socket afterwards (see
//! [`Pidfd::of_peer`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{getsockopt, sockopt};

use crate::error::{retry_eintr, OsContext, Result, SysError};

/// A pidfd of one process.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
}

/// What ended [`Pidfd::wait_exit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The process exited.
    Exited,
    /// [`StopSignal::raise`] was called.
    Stopped,
}

impl Pidfd {
    /// The pidfd of the process at the other end of the connected Unix
    /// socket `sock`. `SO_PEERPIDFD` where the kernel has it; otherwise
    /// `pidfd_open` of the `SO_PEERCRED` pid, accepted only if the socket's
    /// peer is still connected afterwards: had that process died and its pid
    /// been reused in between, its end of the socket would be closed.
    pub fn of_peer(sock: BorrowedFd<'_>) -> Result<Self> {
        match getsockopt(&sock, sockopt::PeerPidfd) {
            Ok(fd) => return Ok(Self { fd }),
            Err(Errno::ENOPROTOOPT | Errno::EINVAL) => {}
            Err(e) => return Err(SysError::os("SO_PEERPIDFD", e)),
        }
        let cred = getsockopt(&sock, sockopt::PeerCredentials).op("SO_PEERCRED")?;
        if cred.pid() <= 0 {
            return Err(SysError::Invalid(
                "the peer's pid is not visible in this pid namespace and the kernel has no SO_PEERPIDFD".into(),
            ));
        }
        let pidfd = Self::open(cred.pid())?;
        // A Unix stream or seqpacket socket whose peer closed reports
        // POLLHUP (the kernel sets it whatever events were asked for).
        let mut fds = [PollFd::new(sock, PollFlags::empty())];
        let ready = retry_eintr(|| poll(&mut fds, PollTimeout::ZERO)).op("poll")?;
        let hung_up = ready > 0 && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP));
        if hung_up {
            return Err(SysError::os("pidfd of the socket's peer", Errno::ESRCH));
        }
        Ok(pidfd)
    }

    /// `pidfd_open(pid, 0)`.
    pub fn open(pid: i32) -> Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or
        // -1; it touches no memory of ours. nix has no wrapper for it.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return Err(SysError::os("pidfd_open", Errno::last()));
        }
        // SAFETY: the kernel just installed this fd for us and nothing else
        // owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        Ok(Self { fd })
    }

    /// True once the process has exited (a zombie counts: it runs no more).
    pub fn exited(&self) -> Result<bool> {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        Ok(retry_eintr(|| poll(&mut fds, PollTimeout::ZERO)).op("poll")? > 0)
    }

    /// Blocks until the process exits or `stop` is raised, whichever comes
    /// first; signals do not end the wait.
    pub fn wait_exit(&self, stop: &StopSignal) -> Result<WaitOutcome> {
        let mut fds = [
            PollFd::new(self.fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.fd.as_fd(), PollFlags::POLLIN),
        ];
        retry_eintr(|| poll(&mut fds, PollTimeout::NONE)).op("poll")?;
        // Stopping wins: whoever raised it takes over (and does the work
        // an exit would have done).
        if fds[1].any().unwrap_or(false) {
            return Ok(WaitOutcome::Stopped);
        }
        Ok(WaitOutcome::Exited)
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Pidfd> for OwnedFd {
    fn from(p: Pidfd) -> Self {
        p.fd
    }
}

impl From<OwnedFd> for Pidfd {
    /// Adopts an fd received as a pidfd (checked by its first use).
    fn from(fd: OwnedFd) -> Self {
        Self { fd }
    }
}

impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Ends a [`Pidfd::wait_exit`] from another thread (an eventfd).
#[derive(Debug)]
pub struct StopSignal {
    fd: EventFd,
}

impl StopSignal {
    /// A signal not raised yet.
    pub fn new() -> Result<Self> {
        Ok(Self {
            fd: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).op("eventfd")?,
        })
    }

    /// Raises it: every wait on it returns, now and later.
    pub fn raise(&self) -> Result<()> {
        self.fd.write(1).op("eventfd write")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seqpacket::SeqpacketSocket;

    #[test]
    fn a_child_that_exits_is_seen_exited_and_a_stop_ends_the_wait() {
        let mut child = std::process::Command::new("sleep").arg("0.2").spawn().unwrap();
        let pidfd = Pidfd::open(child.id() as i32).unwrap();
        assert!(!pidfd.exited().unwrap());
        let stop = StopSignal::new().unwrap();
        assert_eq!(pidfd.wait_exit(&stop).unwrap(), WaitOutcome::Exited);
        assert!(pidfd.exited().unwrap());
        child.wait().unwrap();
        let me = Pidfd::open(std::process::id() as i32).unwrap();
        stop.raise().unwrap();
        assert_eq!(me.wait_exit(&stop).unwrap(), WaitOutcome::Stopped);
    }

    #[test]
    fn the_peer_of_a_socket_pair_is_this_live_process() {
        let (a, _b) = SeqpacketSocket::pair().unwrap();
        let pidfd = Pidfd::of_peer(a.as_fd()).unwrap();
        assert!(!pidfd.exited().unwrap());
    }
}
