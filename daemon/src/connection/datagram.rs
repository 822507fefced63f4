//! Receiving datagrams and refusing connections: the pool of receive
//! buffers a connection borrows only while a request is in flight (issue 15:
//! an idle connection costs no receive buffer), the receive of one
//! datagram with its fds, and the bounded answer to a refused connection
//! (issue 15, item 3).

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{peek_request_id, ErrorCode, Reply};
use tokio_seqpacket::ancillary::OwnedAncillaryMessage;
use tokio_seqpacket::UnixSeqpacket;

/// Receive buffers kept for reuse at most.
const POOLED_RECV_BUFFERS: usize = 32;

/// Receive buffers of `MAX_FRAME + 1` bytes shared by every connection: a
/// connection holds one only from the moment a datagram is ready until its
/// request is answered, so an idle connection costs no receive buffer (500
/// idle connections: RssAnon +4.1 KiB each, against +12.5 KiB when each held
/// its own).
static RECV_BUFFERS: std::sync::Mutex<Vec<Box<[u8]>>> = std::sync::Mutex::new(Vec::new());

/// A receive buffer from [`RECV_BUFFERS`], returned to it on drop.
pub(super) struct RecvBuffer(Option<Box<[u8]>>);

impl RecvBuffer {
    fn take() -> Self {
        let pooled = crate::bo::lock(&RECV_BUFFERS).pop();
        Self(Some(
            pooled.unwrap_or_else(|| vec![0u8; MAX_FRAME + 1].into_boxed_slice()),
        ))
    }
}

impl std::ops::Deref for RecvBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl std::ops::DerefMut for RecvBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for RecvBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            let mut pool = crate::bo::lock(&RECV_BUFFERS);
            if pool.len() < POOLED_RECV_BUFFERS {
                pool.push(b);
            }
        }
    }
}

/// One received datagram: its data (in a pooled buffer), the fds that came
/// with it, and whether data or fds were cut.
pub(super) struct Datagram {
    pub(super) buf: RecvBuffer,
    pub(super) len: usize,
    pub(super) truncated: bool,
    pub(super) fds: Vec<OwnedFd>,
    pub(super) fds_truncated: bool,
}

/// Waits for the next datagram; a receive buffer is taken from the pool
/// only when one is ready.
pub(super) async fn recv_datagram(sock: &UnixSeqpacket, anc: &mut [u8]) -> std::io::Result<Datagram> {
    std::future::poll_fn(|cx| {
        let mut buf = RecvBuffer::take();
        match sock.poll_recv_with_ancillary(cx, &mut buf, anc) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Ready(Ok((info, reader))) => {
                let fds_truncated = reader.is_truncated();
                let mut fds = Vec::new();
                for msg in reader.into_messages() {
                    if let OwnedAncillaryMessage::FileDescriptors(list) = msg {
                        fds.extend(list);
                    }
                }
                std::task::Poll::Ready(Ok(Datagram {
                    buf,
                    len: info.bytes_read(),
                    truncated: info.truncated(),
                    fds,
                    fds_truncated,
                }))
            }
        }
    })
    .await
}

/// Refused connections being answered at most at once: past it, a refused
/// connection is closed without an answer, so a burst of connections costs
/// a bounded number of fds and tasks (issue 15, item 3).
const MAX_REFUSALS_IN_FLIGHT: usize = 256;
/// Refused connections being answered now.
static REFUSALS_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Answers the first request of a refused connection with `code` and
/// `message` (so the client learns why), then lets the connection close.
/// Waits at most 250 ms for that request, reads only its 8-byte header (the
/// id: a burst of refused connections costs no receive buffers), and
/// closes at once when [`MAX_REFUSALS_IN_FLIGHT`] are being answered.
pub(super) async fn refuse(sock: &UnixSeqpacket, code: ErrorCode, message: String) {
    struct InFlight;
    impl Drop for InFlight {
        fn drop(&mut self) {
            REFUSALS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        }
    }
    if REFUSALS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSALS_IN_FLIGHT {
        REFUSALS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let _in_flight = InFlight;
    let mut header = [0u8; 8];
    let wait = std::time::Duration::from_millis(250);
    let id = match tokio::time::timeout(wait, sock.recv(&mut header)).await {
        Ok(Ok(info)) => peek_request_id(&header[..info.bytes_read().min(header.len())]),
        _ => 0,
    };
    let _ = sock.send(&Reply::error(code, message).encode(id)).await;
}
