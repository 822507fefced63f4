//! One client connection: framing, fd checks, request dispatch, cleanup.
//!
//! Handles (BOs, views) are local to the connection; closing it releases
//! everything it held after a last harvest of its views. Every request is
//! answered with a reply or a typed error; an undecodable frame gets
//! `BadFrame`, and a connection that keeps sending them is closed. Blocking
//! kernel work (memfd creation, write-protection, scans, copies) runs on
//! tokio's blocking pool so that one client's sync never stalls another's
//! requests.
//!
//! This file holds `serve`, the `Session` of one connection, its
//! receive-and-answer loop and the dispatch table; the request families
//! are handled in the submodules (issue 18: one handler per family):
//!
//! - `datagram`: receive buffers, one datagram with its fds, refusals;
//! - `failure`: typed error replies and the error conversions;
//! - `checks`: the checks a request passes (fds, HELLO, caps, read-only
//!   handles, unread replies, limits and quotas);
//! - `handles`: the connection's BO handles and their release;
//! - `bos`: CREATE_BO, CREATE_IMAGE, IMPORT_BO/IMAGE, DESTROY,
//!   EXPORT_RESOURCE;
//! - `views`: ATTACH_MM, MAP, UNMAP;
//! - `mechanism`: the choice of a write-tracking mechanism, SET_MECHANISM;
//! - `syncs`: SYNC and the tracker operations, SNAPSHOT, SET_POLICY;
//! - `display`: SHOW and the display side of syncs and unmaps;
//! - `admin`: HELLO, STATS, METRICS, WATCH_DAEMON.

mod admin;
mod bos;
mod checks;
mod datagram;
mod display;
mod failure;
mod handles;
mod mechanism;
mod syncs;
mod views;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{peek_request_id, DecodeError, ErrorCode, Reply, Request};
use tokio_seqpacket::ancillary::AncillaryMessageWriter;
use tokio_seqpacket::UnixSeqpacket;

use self::datagram::{recv_datagram, refuse, Datagram};
use self::failure::{fail, Failure, Outcome};
use self::handles::Handle;
use crate::bo::MmSubscription;
use crate::server::{ConnectionInfo, Daemon};

/// One connection's state; the request families add their handlers in
/// the submodules.
struct Session {
    daemon: Arc<Daemon>,
    info: Arc<ConnectionInfo>,
    negotiated: bool,
    /// Capabilities granted in HELLO.
    caps: u64,
    mm: Option<Arc<MmSubscription>>,
    handles: HashMap<u32, Handle>,
    next_handle: u32,
    next_view: u32,
    /// The connection's socket (borrowed: `serve` owns it and outlives
    /// the session), for [`Session::check_unread_replies`].
    socket: std::os::fd::RawFd,
}

/// Serves one connection until the peer closes it or misbehaves.
pub async fn serve(daemon: Arc<Daemon>, sock: UnixSeqpacket) {
    let (pid, uid) = match sock.peer_cred() {
        Ok(c) => (c.pid().unwrap_or(0), c.uid()),
        Err(e) => {
            tracing::warn!(error = %e, "SO_PEERCRED failed; dropping connection");
            return;
        }
    };
    let allowed = &daemon.config.allowed_uids;
    if !allowed.is_empty() && uid != 0 && uid != nix::unistd::geteuid().as_raw() && !allowed.contains(&uid) {
        crate::limited!(
            warn,
            "connection refused",
            u64::from(uid),
            pid,
            uid,
            "connection refused: uid not in --allow-uid"
        );
        let message = format!("uid {uid} is not allowed to use this daemon (--allow-uid {allowed:?})");
        refuse(&sock, ErrorCode::PermissionDenied, message).await;
        return;
    }
    let _slot = match daemon.quotas.connect(uid) {
        Ok(slot) => slot,
        Err(e) => {
            crate::limited!(warn, "connection refused", u64::from(uid), pid, uid, error = %e, "connection refused");
            refuse(&sock, ErrorCode::LimitExceeded, e.to_string()).await;
            return;
        }
    };
    let info = daemon.add_connection(pid, uid);
    crate::limited!(
        info,
        "client connected",
        u64::from(uid),
        conn = info.id,
        pid,
        uid,
        "client connected"
    );
    let mut session = Session {
        daemon: daemon.clone(),
        info: info.clone(),
        negotiated: false,
        caps: 0,
        mm: None,
        handles: HashMap::new(),
        next_handle: 1,
        next_view: 1,
        socket: std::os::fd::AsRawFd::as_raw_fd(&sock),
    };
    let reason = session.run(&sock).await;
    session.close().await;
    daemon.remove_connection(info.id);
    crate::limited!(
        info,
        "client disconnected",
        u64::from(uid),
        conn = info.id,
        pid,
        reason,
        "client disconnected"
    );
}

impl Session {
    /// Receives and answers requests until the peer closes the connection
    /// or misbehaves; returns why it ended (for the log).
    async fn run(&mut self, sock: &UnixSeqpacket) -> &'static str {
        // Room for SCM_MAX_FD (253) fds: the kernel never has to truncate the
        // fd list, so every fd that arrives is owned here and closed on drop.
        let mut anc = vec![0u8; 2048];
        let mut bad_frames = 0u32;
        loop {
            let Datagram {
                buf,
                len,
                truncated,
                fds,
                fds_truncated,
            } = match recv_datagram(sock, &mut anc).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(conn = self.info.id, error = %e, "recv failed");
                    return "receive error";
                }
            };
            if len == 0 && fds.is_empty() && !truncated {
                return "closed by peer";
            }
            self.info.requests.fetch_add(1, Ordering::Relaxed);
            // One byte past MAX_FRAME (the buffer's size) reaches the
            // decoder, which reports it as too long (TooLong), not as
            // whatever the cut frame would look like.
            let frame = &buf[..len.min(buf.len())];
            let id = peek_request_id(frame);
            let (outcome, request) = self.answer_frame(frame, truncated, fds, fds_truncated).await;
            let (reply, reply_fds) = self.reply_for(outcome, &mut bad_frames);
            debug_assert!(request.as_ref().is_none_or(|r| reply.fd_count(r) == reply_fds.len()));
            if let Err(reason) = self.send_reply(sock, id, &reply, &reply_fds).await {
                return reason;
            }
            if bad_frames >= self.daemon.config.max_consecutive_bad_frames {
                return "too many bad frames";
            }
            if matches!(
                reply,
                Reply::Error {
                    code: ErrorCode::UnsupportedVersion,
                    ..
                }
            ) {
                return "no common protocol version";
            }
        }
    }

    /// The outcome of one received frame: a cut frame or fd list, an
    /// undecodable frame, or the dispatched request (its latency observed),
    /// with the request when it decoded.
    async fn answer_frame(
        &mut self,
        frame: &[u8],
        truncated: bool,
        fds: Vec<OwnedFd>,
        fds_truncated: bool,
    ) -> (Outcome, Option<Request>) {
        if truncated {
            (
                Err(fail(ErrorCode::BadFrame, format!("frame exceeds {MAX_FRAME} bytes"))),
                None,
            )
        } else if fds_truncated {
            (Err(fail(ErrorCode::BadFds, "too many file descriptors attached")), None)
        } else {
            match Request::decode(frame) {
                Err(e @ DecodeError::UnknownKind(_)) => (Err(fail(ErrorCode::UnknownRequest, e.to_string())), None),
                Err(e) => (Err(fail(ErrorCode::BadFrame, e.to_string())), None),
                Ok((_, req)) => {
                    let t0 = std::time::Instant::now();
                    let outcome = self.dispatch(&req, fds).await;
                    self.daemon
                        .counters
                        .latency
                        .request
                        .get_or_create(&[("request", req.name())])
                        .observe(t0.elapsed().as_secs_f64());
                    (outcome, Some(req))
                }
            }
        }
    }

    /// The reply (and its fds) for `outcome`; counts errors, and the bad
    /// frames in a row in `bad_frames`.
    fn reply_for(&self, outcome: Outcome, bad_frames: &mut u32) -> (Reply, Vec<OwnedFd>) {
        match outcome {
            Ok(r) => {
                *bad_frames = 0;
                r
            }
            Err(f) => {
                // NeedMmFds is the normal first step of ATTACH_MM, not an error.
                if f.code != ErrorCode::NeedMmFds {
                    self.daemon.counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(
                    f.code,
                    ErrorCode::BadFrame | ErrorCode::NotNegotiated | ErrorCode::UnknownRequest
                ) {
                    *bad_frames += 1;
                }
                tracing::debug!(conn = self.info.id, code = ?f.code, message = %f.message, "request failed");
                (Reply::error(f.code, f.message), Vec::new())
            }
        }
    }

    /// Sends `reply` to request `id` with its fds; on failure, why the
    /// connection ends.
    async fn send_reply(
        &self,
        sock: &UnixSeqpacket,
        id: u32,
        reply: &Reply,
        reply_fds: &[OwnedFd],
    ) -> Result<(), &'static str> {
        let bytes = reply.encode(id);
        let mut anc_out = [0u8; 64];
        let mut writer = AncillaryMessageWriter::new(&mut anc_out);
        if !reply_fds.is_empty() && writer.add_fds(reply_fds.iter().map(|f| f.as_fd())).is_err() {
            return Err("internal: reply fds do not fit");
        }
        if let Err(e) = sock.send_with_ancillary(&bytes, &mut writer).await {
            tracing::debug!(conn = self.info.id, error = %e, "send failed");
            return Err("peer gone before reply");
        }
        Ok(())
    }

    /// Checks `req` (fds, HELLO first, capabilities, read-only handles) and
    /// hands it to its family's handler.
    async fn dispatch(&mut self, req: &Request, fds: Vec<OwnedFd>) -> Outcome {
        self.check_fds(req, fds.len())?;
        self.check_negotiated(req)?;
        self.check_caps(req)?;
        self.check_access(req)?;
        match *req {
            Request::Hello {
                min_version,
                max_version,
                caps,
            } => self.hello(min_version, max_version, caps),
            Request::CreateBo { size, flags } => self.create_bo(size, flags).await,
            Request::CreateImage {
                width,
                height,
                fourcc,
                flags,
            } => self.create_image(width, height, fourcc, flags).await,
            Request::ImportBo => self.import_bo(fds, None).await,
            Request::ImportImage { image } => self.import_bo(fds, Some(image)).await,
            Request::Show { id, flags } => self.show(id, flags).await,
            Request::AttachMm {
                token,
                uffd_features,
                flags,
            } => self.attach_mm(token, uffd_features, flags, fds),
            Request::Map { bo, addr, len, offset } => self.map(bo, addr, len, offset).await,
            Request::Unmap { bo, view } => self.unmap(bo, view).await,
            Request::Sync { bo, flags } => self.sync(bo, flags).await,
            Request::Destroy { bo } => self.destroy(bo).await,
            Request::Stats { flags } => self.stats_request(flags),
            Request::ExportResource { bo, index } => self.export_resource(bo, index),
            Request::AddResource { bo, offset, len } => self.add_resource(bo, offset, len).await,
            Request::ReleaseResource { bo, index } => self.release_resource(bo, index).await,
            Request::Scan { bo } => self.scan(bo).await,
            Request::Transfer { bo, index, flags } => self.transfer(bo, index, flags).await,
            Request::ClearResource { bo, index } => self.clear_resource(bo, index).await,
            Request::ClearAll { bo } => self.clear_all(bo).await,
            Request::DirtyState { bo } => self.dirty_state(bo).await,
            Request::Snapshot { id, flags } => self.snapshot(id, flags).await,
            Request::SetMechanism { mechanism } => self.set_mechanism(mechanism).await,
            Request::Readback { bo, flags } => self.readback(bo, flags).await,
            Request::Damage { bo, offset, len } => self.damage(bo, offset, len).await,
            Request::DamageRanges { bo, flags, ref ranges } => self.damage_ranges(bo, flags, ranges).await,
            Request::SyncMany { flags, ref bos } => self.sync_many(flags, bos).await,
            Request::SetPolicy { id, policy } => self.set_policy(id, policy).await,
            Request::Metrics => self.metrics().await,
            Request::WatchDaemon => admin::watch_daemon(),
        }
    }

    /// Runs `f` on this runtime thread (`block_in_place`) once this user
    /// may start one more blocking section ([`crate::server::BlockingSlots`]):
    /// the wait is asynchronous, so a user flooding blocking requests queues
    /// behind its own bound and holds no more threads than it allows.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Failure> {
        let _slot = self.daemon.blocking.acquire(self.info.uid).await;
        Ok(tokio::task::block_in_place(f))
    }
}
