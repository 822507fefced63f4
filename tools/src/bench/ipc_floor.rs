//! The IPC floor (issue 19, item 2): what one request/reply over a
//! `SOCK_SEQPACKET` socket between two processes costs on this machine, with
//! the blocking pattern of a SYNC (the client sends a SYNC-sized frame and
//! blocks in `recv` until a SYNC_DONE-sized reply comes back; the other
//! process blocks in `recv` between requests). No daemon, no tracking, no
//! copy: whatever a SYNC round trip costs beyond this and the in-process
//! harvest-and-copy floor is cohmem's own overhead.
//!
//! The echo side is this binary again (`cohmem-bench ipc-echo`), with its
//! end of a socket pair as standard input.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use cohmem_proto::{Reply, Request, SyncReport};
use cohmem_sys::seqpacket::SeqpacketSocket;
use serde::Serialize;

use super::stats::Summary;

/// The measured floor.
#[derive(Debug, Clone, Serialize)]
pub struct IpcFloor {
    /// Bytes of the request frame (a SYNC).
    pub request_bytes: usize,
    /// Bytes of the reply frame (a SYNC_DONE without runs).
    pub reply_bytes: usize,
    /// Round trips.
    pub round_trip: Summary,
}

/// Measures `reps` round trips after `warmup` unmeasured ones.
pub fn measure(warmup: usize, reps: usize) -> anyhow::Result<IpcFloor> {
    let request = Request::Sync { bo: 1, flags: 0 }.encode(1);
    let reply = Reply::SyncDone(SyncReport::default()).encode(1);
    let (mine, theirs) = SeqpacketSocket::pair().context("socketpair for the IPC floor")?;
    let exe = std::env::current_exe().context("finding cohmem-bench itself")?;
    let theirs: OwnedFd = theirs.as_fd().try_clone_to_owned()?;
    let mut child = Command::new(exe)
        .args(["ipc-echo", "--reply-bytes", &reply.len().to_string()])
        .stdin(Stdio::from(theirs))
        .spawn()
        .context("starting the IPC echo process")?;
    let mut buf = vec![0u8; cohmem_proto::limits::MAX_FRAME];
    let mut times = Vec::with_capacity(reps);
    for i in 0..warmup + reps {
        let t = Instant::now();
        mine.send(&request, &[])?;
        let got = mine.recv(&mut buf)?;
        let d = t.elapsed();
        anyhow::ensure!(
            got.len == reply.len(),
            "echo replied {} bytes, not {}",
            got.len,
            reply.len()
        );
        if i >= warmup {
            times.push(d);
        }
    }
    drop(mine);
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "the IPC echo process ended with {status}");
    Ok(IpcFloor {
        request_bytes: request.len(),
        reply_bytes: reply.len(),
        round_trip: Summary::of(&times),
    })
}

/// The echo process: answers every datagram on standard input (a seqpacket
/// socket) with `reply_bytes` bytes, until the other end closes.
pub fn echo_main(reply_bytes: usize) -> anyhow::Result<()> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let sock = SeqpacketSocket::from_fd(fd);
    let reply = vec![0u8; reply_bytes];
    let mut buf = vec![0u8; cohmem_proto::limits::MAX_FRAME];
    loop {
        let got = sock.recv(&mut buf)?;
        if got.len == 0 {
            return Ok(());
        }
        sock.send(&reply, &[])?;
    }
}
