//! The socket of one session with the daemon: connecting it, one
//! request/reply exchange on it, and how an exchange failed (before or
//! after the request left).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{caps, Reply, Request, PROTOCOL_VERSION};
use cohmem_sys::seqpacket::SeqpacketSocket;

use crate::error::ClientError;

/// The socket of the current session with the daemon.
pub(crate) struct Link {
    pub sock: SeqpacketSocket,
    /// The daemon process at the other end (SO_PEERCRED at connect).
    pub daemon_pid: i32,
    /// Closed or out of step: the next call reconnects first.
    pub broken: bool,
}

/// The HELLO every session starts with.
pub(crate) fn hello() -> Request {
    Request::Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        caps: caps::ALL,
    }
}

/// A reply with its fds, or why there is none.
pub(crate) type CallResult = Result<(Reply, Vec<OwnedFd>), ClientError>;

/// How one exchange failed.
pub(crate) enum Exchange {
    /// Before the request was sent.
    NotSent(ClientError),
    /// After: the daemon may have acted on it.
    Failed(ClientError),
}

impl Exchange {
    /// The error, whichever side of the send it happened on.
    pub fn into_inner(self) -> ClientError {
        match self {
            Self::NotSent(e) | Self::Failed(e) => e,
        }
    }
}

/// Connects a new link to the daemon at `path`.
pub(crate) fn connect_link(path: &Path) -> Result<Link, ClientError> {
    let sock = SeqpacketSocket::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let daemon_pid = sock.peer_cred().map(|c| c.pid).unwrap_or(0);
    Ok(Link {
        sock,
        daemon_pid,
        broken: false,
    })
}

impl Link {
    /// One request/reply exchange, the request numbered `id`; a transport
    /// failure marks the link broken (a late reply would answer the next
    /// request).
    pub fn exchange(
        &mut self,
        id: u32,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), Exchange> {
        let mut broken = |e: cohmem_sys::SysError| {
            self.broken = true;
            if SeqpacketSocket::is_disconnect(&e) {
                ClientError::Disconnected
            } else {
                e.into()
            }
        };
        if let Err(e) = self.sock.send(&req.encode(id), fds) {
            return Err(Exchange::NotSent(broken(e)));
        }
        let mut buf = vec![0u8; MAX_FRAME];
        let got = self.sock.recv(&mut buf).map_err(|e| Exchange::Failed(broken(e)))?;
        if got.len == 0 && got.fds.is_empty() {
            self.broken = true;
            return Err(Exchange::Failed(ClientError::Disconnected));
        }
        let failed = Exchange::Failed;
        if got.truncated {
            return Err(failed(ClientError::Protocol(
                "reply larger than the frame limit".into(),
            )));
        }
        let (rid, reply) = Reply::decode(&buf[..got.len])
            .map_err(|e| failed(ClientError::Protocol(format!("undecodable reply: {e}"))))?;
        if rid != id {
            self.broken = true;
            return Err(failed(ClientError::Protocol(format!(
                "reply to request {rid}, expected {id}"
            ))));
        }
        if let Reply::Error { code, message } = reply {
            return Err(failed(ClientError::Daemon {
                request: req.name(),
                code,
                message,
            }));
        }
        let want = reply.fd_count(req);
        if got.fds.len() != want {
            return Err(failed(ClientError::Protocol(format!(
                "{} reply carried {} fds, expected {want}",
                req.name(),
                got.fds.len()
            ))));
        }
        Ok((reply, got.fds))
    }
}
