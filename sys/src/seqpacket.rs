//! Blocking `SOCK_SEQPACKET` Unix sockets with `SCM_RIGHTS` fd passing.
//!
//! One datagram is one protocol message; its fds arrive with it. The receive
//! buffer for control data always has room for `SCM_MAX_FD` (253) fds, the
//! most one message can carry, so the kernel never truncates the fd list and
//! every fd that arrives is owned (and closed) by the receiver, whatever the
//! peer sent.
//!
//! Every call is restarted when a signal interrupts it (`EINTR`): the
//! application that links the client library may install handlers without
//! `SA_RESTART` (an interval timer, say), and an interrupted call says
//! nothing about the peer. An interrupted `recvmsg` has received nothing and
//! an interrupted `sendmsg` on a datagram socket has sent nothing, so
//! restarting them keeps requests and replies in step.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    connect, getsockopt, recvmsg, sendmsg, setsockopt, socket, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeVal;

use crate::error::{retry_eintr, OsContext, Result, SysError};

/// Most fds the kernel delivers with one message (`SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// A received datagram.
#[derive(Debug)]
pub struct Received {
    /// Bytes of payload written into the caller's buffer.
    pub len: usize,
    /// The fds that came with it, owned.
    pub fds: Vec<OwnedFd>,
    /// The datagram was longer than the buffer (`MSG_TRUNC`).
    pub truncated: bool,
}

/// Peer credentials from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id at connect time.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// A connected `SOCK_SEQPACKET` Unix socket (blocking, close-on-exec).
#[derive(Debug)]
pub struct SeqpacketSocket {
    fd: OwnedFd,
}

impl SeqpacketSocket {
    /// Connects to the listening socket at `path`.
    pub fn connect(path: &Path) -> Result<Self> {
        let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).op("socket")?;
        let addr = UnixAddr::new(path).op("socket path")?;
        match retry_eintr(|| connect(fd.as_raw_fd(), &addr)) {
            Ok(()) => {}
            // The interrupted attempt completed after all.
            Err(Errno::EISCONN) => {}
            Err(e) => return Err(SysError::os("connect", e)),
        }
        Ok(Self { fd })
    }

    /// A connected pair (for tests and in-process peers).
    pub fn pair() -> Result<(Self, Self)> {
        let (a, b) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).op("socketpair")?;
        Ok((Self { fd: a }, Self { fd: b }))
    }

    /// Adopts an fd that is a connected SEQPACKET socket.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Sends one datagram with `fds` attached.
    pub fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs = if raw.is_empty() {
            vec![]
        } else {
            vec![ControlMessage::ScmRights(&raw)]
        };
        let iov = [IoSlice::new(data)];
        let n = retry_eintr(|| sendmsg::<UnixAddr>(self.fd.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None))
            .op("sendmsg")?;
        if n != data.len() {
            return Err(SysError::Invalid(format!("short datagram send: {n} of {}", data.len())));
        }
        Ok(())
    }

    /// Receives one datagram into `buf`. `len == 0` with no fds means the
    /// peer closed the connection.
    pub fn recv(&self, buf: &mut [u8]) -> Result<Received> {
        let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = loop {
            match recvmsg::<UnixAddr>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                other => break other.op("recvmsg")?,
            }
        };
        let mut fds = Vec::new();
        // With room for SCM_MAX_FD fds, MSG_CTRUNC cannot happen for
        // SCM_RIGHTS; if it ever does, cmsgs() refuses and we report it.
        for c in msg.cmsgs().op("recvmsg control data")? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel installed this fd in our table for
                    // this message; nothing else refers to it yet.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Ok(Received {
            len: msg.bytes,
            fds,
            truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
        })
    }

    /// Sets both the receive and send timeouts (`None` blocks forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        let tv = match timeout {
            Some(d) => TimeVal::new(d.as_secs() as i64, d.subsec_micros() as i64),
            None => TimeVal::new(0, 0),
        };
        setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv).op("SO_RCVTIMEO")?;
        setsockopt(&self.fd, sockopt::SendTimeout, &tv).op("SO_SNDTIMEO")?;
        Ok(())
    }

    /// Credentials of the peer (`SO_PEERCRED`).
    pub fn peer_cred(&self) -> Result<PeerCred> {
        let c = getsockopt(&self.fd, sockopt::PeerCredentials).op("SO_PEERCRED")?;
        Ok(PeerCred {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
        })
    }

    /// Shuts both directions down: a blocked `recv` on any copy of this
    /// socket returns end-of-file.
    pub fn shutdown(&self) -> Result<()> {
        nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both).op("shutdown")
    }

    /// Closes this end for sending and waits, up to `bound`, until the peer
    /// closes too, discarding whatever it still sends: a server that
    /// releases a session before closing its socket has released it when
    /// this returns (or the bound passed). Never fails: a socket that is
    /// already dead has nothing to wait for.
    pub fn close_and_wait(&self, bound: Duration) {
        let _ = nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        let deadline = std::time::Instant::now() + bound;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let mut fds = [nix::poll::PollFd::new(self.fd.as_fd(), nix::poll::PollFlags::POLLIN)];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX).max(1);
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
                Ok(0) => return,
                Err(Errno::EINTR) => continue,
                Err(_) => return,
                Ok(_) => {}
            }
            match self.recv(&mut buf) {
                Ok(r) if r.len > 0 || !r.fds.is_empty() => continue,
                _ => return,
            }
        }
    }

    /// True when the error means the peer is gone.
    pub fn is_disconnect(e: &SysError) -> bool {
        matches!(
            e.errno(),
            Some(Errno::EPIPE) | Some(Errno::ECONNRESET) | Some(Errno::ENOTCONN)
        )
    }
}

impl AsFd for SeqpacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Bytes this end sent that the peer has not read yet (`SIOCOUTQ`): the
/// replies a client left unread, and through them what their fds hold.
pub fn unread_output(fd: BorrowedFd<'_>) -> Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer, which
    // points at a live local of that type.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued as *mut libc::c_int) };
    if r < 0 {
        return Err(SysError::os("ioctl(SIOCOUTQ)", Errno::last()));
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// Puts `fd` in non-blocking mode (`O_NONBLOCK`): a socket a service
/// manager passes is blocking, and an async runtime's accept on a blocking
/// socket would block its worker thread.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL).op("fcntl(F_GETFL)")?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .op("fcntl(F_SETFL)")?;
    Ok(())
}

/// If `fd` is a listening `AF_UNIX` `SOCK_SEQPACKET` socket (what a
/// service manager passes for `ListenSequentialPacket=`), the path it is
/// bound to; `None` for anything else.
pub fn listening_seqpacket_path(fd: BorrowedFd<'_>) -> Option<std::path::PathBuf> {
    let raw = fd.as_raw_fd();
    let ty = getsockopt(&fd, sockopt::SockType).ok()?;
    let listening = getsockopt(&fd, sockopt::AcceptConn).ok()?;
    if ty != SockType::SeqPacket || !listening {
        return None;
    }
    let addr: UnixAddr = nix::sys::socket::getsockname(raw).ok()?;
    addr.path().map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfd::Memfd;

    #[test]
    fn fds_travel_with_their_datagram() {
        let (a, b) = SeqpacketSocket::pair().unwrap();
        let m = Memfd::create_sealed("t", 4096).unwrap();
        a.send(b"one", &[m.as_fd()]).unwrap();
        a.send(b"two", &[]).unwrap();
        let mut buf = [0u8; 16];
        let r = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..r.len], b"one");
        assert_eq!(r.fds.len(), 1);
        assert!(!r.truncated);
        let r = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..r.len], b"two");
        assert!(r.fds.is_empty());
    }

    #[test]
    fn oversized_datagram_is_reported_truncated() {
        let (a, b) = SeqpacketSocket::pair().unwrap();
        a.send(&[7u8; 100], &[]).unwrap();
        let mut buf = [0u8; 10];
        let r = b.recv(&mut buf).unwrap();
        assert!(r.truncated);
    }
}
