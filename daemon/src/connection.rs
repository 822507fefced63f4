//! One client connection: framing, fd checks, request dispatch, cleanup.
//!
//! Handles (BOs, views) are local to the connection; closing it releases
//! everything it held after a last harvest of its views. Every request is
//! answered with a reply or a typed error; an undecodable frame gets
//! `BadFrame`, and a connection that keeps sending them is closed. Blocking
//! kernel work (memfd creation, write-protection, scans, copies) runs on
//! tokio's blocking pool so that one client's sync never stalls another's
//! requests.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{
    caps, peek_request_id, BoPolicy, BoRow, ConnectionRow, DaemonStats, DecodeError, ErrorCode, Mechanism, Reply,
    Request, StatsReport, SyncReport, ATTACH_MECHANISM_SHIFT, ATTACH_SYNC_ALL_FAULTS, ATTACH_WITH_CLEAR_REFS,
    ATTACH_WITH_FDS, ATTACH_WITH_MAPS, ATTACH_WITH_SYNC_UFFD, BO_ROW_PAUSED, CREATE_NO_RESOURCE, PROTOCOL_VERSION,
    SHOW_HIDE, STATS_BOS, STATS_CONNECTIONS, SYNC_REPORT_RUNS,
};
use cohmem_sys::memfd::{fd_access, fd_identity, FdAccess, Memfd};
use cohmem_sys::uffd::features;
use tokio_seqpacket::ancillary::{AncillaryMessageWriter, OwnedAncillaryMessage};
use tokio_seqpacket::UnixSeqpacket;

use crate::bo::MmSubscription;
use crate::bo::{AdoptError, Bo, View};
use crate::mm::{MechanismOffer, MmKey};
use crate::quota::BoCharge;
use crate::server::{ConnectionInfo, Daemon};
use crate::switch;
use crate::sync::{SyncEngine, SyncError};
use crate::tracker::TrackError;

/// How long a quiesce may wait for its turn and keep retrying.
const QUIESCE_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// Receive buffers kept for reuse at most.
const POOLED_RECV_BUFFERS: usize = 32;

/// Receive buffers of `MAX_FRAME + 1` bytes shared by every connection: a
/// connection holds one only from the moment a datagram is ready until its
/// request is answered, so an idle connection costs no receive buffer (500
/// idle connections: RssAnon +4.1 KiB each, against +12.5 KiB when each held
/// its own).
static RECV_BUFFERS: std::sync::Mutex<Vec<Box<[u8]>>> = std::sync::Mutex::new(Vec::new());

/// A receive buffer from [`RECV_BUFFERS`], returned to it on drop.
struct RecvBuffer(Option<Box<[u8]>>);

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
struct Datagram {
    buf: RecvBuffer,
    len: usize,
    truncated: bool,
    fds: Vec<OwnedFd>,
    fds_truncated: bool,
}

/// Waits for the next datagram; a receive buffer is taken from the pool
/// only when one is ready.
async fn recv_datagram(sock: &UnixSeqpacket, anc: &mut [u8]) -> std::io::Result<Datagram> {
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

/// A typed error reply.
#[derive(Debug)]
struct Failure {
    code: ErrorCode,
    message: String,
}

fn fail(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

type Outcome = Result<(Reply, Vec<OwnedFd>), Failure>;

fn ok(reply: Reply) -> Outcome {
    Ok((reply, Vec::new()))
}

/// A BO handle open on this connection, with the views mapped through it.
struct Handle {
    bo: Arc<Bo>,
    views: HashMap<u32, Arc<View>>,
    /// Opened from a read-only memfd (IMPORT_BO of an `O_RDONLY` fd): may
    /// read and upload, never change the BO's bytes or the tracking state
    /// other holders depend on (see [`read_only_refusal`]).
    read_only: bool,
}

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
async fn refuse(sock: &UnixSeqpacket, code: ErrorCode, message: String) {
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

impl Session {
    async fn run(&mut self, sock: &UnixSeqpacket) -> &'static str {
        // Room for SCM_MAX_FD (253) fds: the kernel never has to truncate the
        // fd list, so every fd that arrives is owned here and closed on drop.
        let mut anc = vec![0u8; 2048];
        let mut bad_frames = 0u32;
        loop {
            let (buf, len, truncated, fds, fds_truncated) = match recv_datagram(sock, &mut anc).await {
                Ok(d) => (d.buf, d.len, d.truncated, d.fds, d.fds_truncated),
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
            let (outcome, request) = if truncated {
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
            };
            let (reply, reply_fds) = match outcome {
                Ok(r) => {
                    bad_frames = 0;
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
                        bad_frames += 1;
                    }
                    tracing::debug!(conn = self.info.id, code = ?f.code, message = %f.message, "request failed");
                    (Reply::error(f.code, f.message), Vec::new())
                }
            };
            debug_assert!(request.as_ref().is_none_or(|r| reply.fd_count(r) == reply_fds.len()));
            let bytes = reply.encode(id);
            let mut anc_out = [0u8; 64];
            let mut writer = AncillaryMessageWriter::new(&mut anc_out);
            if !reply_fds.is_empty() && writer.add_fds(reply_fds.iter().map(|f| f.as_fd())).is_err() {
                return "internal: reply fds do not fit";
            }
            if let Err(e) = sock.send_with_ancillary(&bytes, &mut writer).await {
                tracing::debug!(conn = self.info.id, error = %e, "send failed");
                return "peer gone before reply";
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

    async fn dispatch(&mut self, req: &Request, fds: Vec<OwnedFd>) -> Outcome {
        let (min_fds, max_fds) = req.fd_count();
        if fds.len() < min_fds || fds.len() > max_fds {
            return Err(fail(
                ErrorCode::BadFds,
                format!(
                    "{} carries {min_fds}..={max_fds} file descriptors, got {}",
                    req.name(),
                    fds.len()
                ),
            ));
        }
        match (self.negotiated, req) {
            (false, Request::Hello { .. }) => {}
            (false, _) => return Err(fail(ErrorCode::NotNegotiated, "HELLO must come first")),
            (true, Request::Hello { .. }) => return Err(fail(ErrorCode::NotNegotiated, "HELLO was already done")),
            (true, _) => {}
        }
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
            // STATS_BOS takes every BO's state lock in turn, which a sync or
            // snapshot may hold for long: off the async workers, or a few
            // STATS callers stall every client (issue 14, suspicion a).
            Request::Stats { flags } if flags & !(STATS_CONNECTIONS | STATS_BOS) != 0 => Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown STATS flags {:#x}", flags & !(STATS_CONNECTIONS | STATS_BOS)),
            )),
            Request::Stats { flags } => ok(Reply::Stats(tokio::task::block_in_place(|| self.stats(flags)))),
            Request::ExportResource { bo, index } => self.export_resource(bo, index),
            Request::AddResource { bo, offset, len } => {
                let end = offset
                    .checked_add(len)
                    .ok_or_else(|| fail(ErrorCode::InvalidArgument, "resource window overflows"))?;
                let daemon = self.daemon.clone();
                self.tracker_op(bo, move |e, b| {
                    e.add_resource(b, daemon.gpu.as_ref(), offset..end)
                        .map(|index| Reply::ResourceAdded { index })
                })
                .await
            }
            Request::ReleaseResource { bo, index } => {
                self.tracker_op(bo, move |e, b| e.release_resource(b, index).map(|()| Reply::Ok))
                    .await
            }
            Request::Scan { bo } => self.tracker_op(bo, |e, b| Ok(Reply::Scanned(e.scan(b)))).await,
            Request::Transfer { bo, index, flags } => {
                if flags & !SYNC_REPORT_RUNS != 0 {
                    return Err(fail(
                        ErrorCode::InvalidArgument,
                        format!("unknown TRANSFER flags {flags:#x}"),
                    ));
                }
                let daemon = self.daemon.clone();
                self.tracker_op(bo, move |e, b| {
                    let report = e.transfer(b, index, flags & SYNC_REPORT_RUNS != 0)?;
                    damage_display(&daemon, b, &report);
                    Ok(Reply::SyncDone(report))
                })
                .await
            }
            Request::ClearResource { bo, index } => {
                self.tracker_op(bo, move |e, b| e.clear_resource(b, index).map(|()| Reply::Ok))
                    .await
            }
            Request::ClearAll { bo } => {
                self.tracker_op(bo, |e, b| {
                    e.clear_all(b);
                    Ok(Reply::Ok)
                })
                .await
            }
            Request::DirtyState { bo } => {
                self.tracker_op(bo, |e, b| Ok(Reply::DirtyState(e.dirty_state(b))))
                    .await
            }
            Request::Snapshot { id, flags } => {
                self.check_unread_replies("SNAPSHOT")?;
                self.snapshot(id, flags).await
            }
            Request::SetMechanism { mechanism } => self.set_mechanism(mechanism).await,
            Request::Readback { bo, flags } => {
                if flags != 0 {
                    return Err(fail(
                        ErrorCode::InvalidArgument,
                        format!("unknown READBACK flags {flags:#x}"),
                    ));
                }
                self.tracker_op(bo, |e, b| {
                    e.readback(b).map(|r| Reply::ReadbackDone {
                        synced_pages: r.synced_pages,
                        bytes: r.bytes,
                        duration_ns: r.duration_ns,
                    })
                })
                .await
            }
            Request::Damage { bo, offset, len } => {
                self.tracker_op(bo, move |e, b| e.damage(b, offset, len).map(|()| Reply::Ok))
                    .await
            }
            Request::SetPolicy { id, policy } => self.set_policy(id, policy).await,
            Request::Metrics => {
                self.check_unread_replies("METRICS")?;
                self.metrics().await
            }
            Request::WatchDaemon => watch_daemon(),
        }
    }

    /// BO `id` (daemon-wide), if this connection may `what` it: root may
    /// reach any BO; others only BOs this connection holds.
    fn bo_by_id(&self, id: u64, what: &str) -> Result<Arc<Bo>, Failure> {
        self.bo_by_id_with(id, what, false)
    }

    /// [`Session::bo_by_id`]; with `write`, a connection that holds the BO
    /// only through read-only handles may not (not even root's: it chose to
    /// act through a read-only import; root without any handle still may).
    fn bo_by_id_with(&self, id: u64, what: &str, write: bool) -> Result<Arc<Bo>, Failure> {
        let held = self.handles.values().any(|h| h.bo.id == id && !(write && h.read_only));
        if write && !held && self.handles.values().any(|h| h.bo.id == id) {
            return Err(fail(
                ErrorCode::PermissionDenied,
                format!("this connection holds BO {id} only through read-only handles: it cannot {what} it"),
            ));
        }
        self.daemon
            .bos
            .all()
            .into_iter()
            .find(|b| b.id == id && (held || self.info.uid == 0))
            .ok_or_else(|| {
                fail(
                    ErrorCode::NoSuchBo,
                    format!("no BO {id} that this connection may {what}"),
                )
            })
    }

    /// SET_POLICY: pins how BO `id` is tracked (same access rule as SNAPSHOT).
    async fn set_policy(&self, id: u64, policy: BoPolicy) -> Outcome {
        let bo = self.bo_by_id_with(id, "set the policy of", true)?;
        let daemon = self.daemon.clone();
        let (previous, method) = self
            .blocking(move || daemon.sync_engine().set_policy(&bo, policy))
            .await?;
        Ok((
            Reply::PolicySet {
                previous,
                method: method as u16,
            },
            vec![],
        ))
    }

    /// SHOW: puts image BO `id` on the display output, or takes it off
    /// ([`SHOW_HIDE`]). Root, or a connection holding the BO, may do this.
    async fn show(&self, id: u64, flags: u32) -> Outcome {
        if flags & !SHOW_HIDE != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown SHOW flags {flags:#x}"),
            ));
        }
        let bo = self.bo_by_id_with(id, "show", true)?;
        let display = self.daemon.display.clone().ok_or_else(|| {
            fail(
                ErrorCode::Unsupported,
                crate::display::DisplayError::NotConfigured.to_string(),
            )
        })?;
        let info = if flags & SHOW_HIDE != 0 {
            let (id, uid) = (bo.id, self.info.uid);
            let shown = self
                .blocking(move || display.hide(id, uid))
                .await?
                .map_err(|e| fail(ErrorCode::PermissionDenied, format!("SHOW: {e}")))?;
            if !shown {
                return Err(fail(ErrorCode::InvalidArgument, format!("BO {id} is not shown")));
            }
            crate::display::hidden_info()
        } else {
            let (d, uid) = (display.clone(), self.info.uid);
            self.blocking(move || d.show(bo, uid)).await?.map_err(|e| {
                let code = match e {
                    crate::display::DisplayError::NotShowable(_) => ErrorCode::InvalidArgument,
                    crate::display::DisplayError::NotMaster(_) | crate::display::DisplayError::Taken(_) => {
                        ErrorCode::PermissionDenied
                    }
                    _ => ErrorCode::Gpu,
                };
                fail(code, format!("SHOW: {e} (connectors: {})", display.connectors()))
            })?
        };
        Ok((
            Reply::Shown {
                connector: info.connector,
                mode_width: info.mode.0,
                mode_height: info.mode.1,
                damage_path: info.damage_path,
            },
            vec![],
        ))
    }

    /// METRICS: the OpenMetrics text in a sealed memfd.
    async fn metrics(&self) -> Outcome {
        let text = tokio::task::block_in_place(|| crate::metrics::render(&self.daemon));
        let memfd = Memfd::from_bytes("cohmem-metrics", text.as_bytes())
            .map_err(|e| fail(ErrorCode::Kernel, format!("writing the metrics memfd: {e}")))?;
        let fd = memfd
            .try_clone_fd()
            .map_err(|e| fail(ErrorCode::Kernel, e.to_string()))?;
        Ok((Reply::Metrics { len: text.len() as u64 }, vec![fd]))
    }

    /// SNAPSHOT: an exact copy of BO `id` under quiesce. Root may snapshot
    /// any BO; others only BOs this connection holds.
    async fn snapshot(&self, id: u64, flags: u32) -> Outcome {
        if flags != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown SNAPSHOT flags {flags:#x}"),
            ));
        }
        let bo = self.bo_by_id(id, "snapshot")?;
        let daemon = self.daemon.clone();
        let only_one = only_quiesce(&daemon).await?;
        let (memfd, report) = self
            .blocking(move || {
                let _only_one = only_one;
                daemon.sync_engine().snapshot(&bo, QUIESCE_BOUND).map_err(sync_failure)
            })
            .await??;
        let fd = memfd
            .try_clone_fd()
            .map_err(|e| fail(ErrorCode::Kernel, e.to_string()))?;
        Ok((Reply::Snapshot(report), vec![fd]))
    }

    /// SET_MECHANISM: switches this process's subscription to `mechanism`
    /// under quiesce ([`crate::switch`]).
    async fn set_mechanism(&self, mechanism: Mechanism) -> Outcome {
        let mm = self
            .mm
            .clone()
            .ok_or_else(|| fail(ErrorCode::NoMm, "SET_MECHANISM before ATTACH_MM"))?;
        if mechanism == Mechanism::None {
            return Err(fail(
                ErrorCode::InvalidArgument,
                "SET_MECHANISM needs a mechanism, not none",
            ));
        }
        let offer = &mm.offer;
        let chosen = self.choose_mechanism(
            mechanism,
            offer.asynchronous.is_some(),
            offer.synchronous.is_some(),
            offer.flags,
            offer.uffd_features,
        )?;
        let tracker = offer.build(chosen, mm.key.pid).map_err(switch_failure)?;
        let exact = tracker.exact();
        let daemon = self.daemon.clone();
        let switched = mm.clone();
        let only_one = only_quiesce(&daemon).await?;
        let report = self
            .blocking(move || {
                let _only_one = only_one;
                switch::switch_mechanism(&daemon.counters, &daemon.faults, &switched, tracker).map_err(switch_failure)
            })
            .await??;
        crate::limited!(
            info,
            "tracking mechanism switched",
            self.info.id,
            conn = self.info.id,
            mm = mm.id,
            from = %report.from,
            to = %chosen,
            views = report.views,
            extra_pages = report.extra_pages,
            "tracking mechanism switched"
        );
        ok(Reply::MechanismSet {
            from: report.from,
            to: chosen,
            exact,
            views: report.views,
            extra_pages: report.extra_pages,
        })
    }

    /// Runs a tracker operation on a BO of this connection on the blocking pool.
    async fn tracker_op(
        &self,
        bo: u32,
        op: impl FnOnce(&SyncEngine<'_>, &Bo) -> Result<Reply, SyncError> + Send + 'static,
    ) -> Outcome {
        let bo_arc = self.handle(bo)?.bo.clone();
        let daemon = self.daemon.clone();
        let reply = self
            .blocking(move || {
                let engine = daemon.sync_engine();
                daemon.bypass.note(&engine, &bo_arc);
                op(&engine, &bo_arc)
            })
            .await?
            .map_err(sync_failure)?;
        ok(reply)
    }

    /// Runs `f` on this runtime thread (`block_in_place`) once this user
    /// may start one more blocking section ([`crate::server::BlockingSlots`]):
    /// the wait is asynchronous, so a user flooding blocking requests queues
    /// behind its own bound and holds no more threads than it allows.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Failure> {
        let _slot = self.daemon.blocking.acquire(self.info.uid).await;
        Ok(tokio::task::block_in_place(f))
    }

    fn hello(&mut self, min: u16, max: u16, wanted: u64) -> Outcome {
        if min > max || !(min..=max).contains(&PROTOCOL_VERSION) {
            return Err(fail(
                ErrorCode::UnsupportedVersion,
                format!("client speaks versions {min}..={max}; daemon speaks {PROTOCOL_VERSION}"),
            ));
        }
        self.negotiated = true;
        self.caps = wanted & self.daemon.caps;
        ok(Reply::Hello {
            version: PROTOCOL_VERSION,
            caps: self.caps,
            max_frame: MAX_FRAME as u32,
            page_size: cohmem_sys::page_size() as u32,
            max_bo_size: self.daemon.config.max_bo_size,
        })
    }

    /// Refuses requests that need a capability this session did not negotiate.
    fn check_caps(&self, req: &Request) -> Result<(), Failure> {
        let needs = match *req {
            Request::ExportResource { .. } => caps::EXPORT_RESOURCE,
            Request::CreateImage { .. } | Request::ImportImage { .. } => caps::IMAGES,
            Request::Sync { flags, .. } | Request::Transfer { flags, .. } if flags & SYNC_REPORT_RUNS != 0 => {
                caps::SYNC_RUNS
            }
            _ => 0,
        };
        if self.caps & needs != needs {
            return Err(fail(
                ErrorCode::Unsupported,
                format!("{} needs capability {needs:#x}, which HELLO did not grant", req.name()),
            ));
        }
        Ok(())
    }

    /// A view id not in use on this connection (ids wrap after 2^32 maps).
    fn fresh_view_id(&mut self) -> u32 {
        loop {
            let id = self.next_view;
            self.next_view = self.next_view.wrapping_add(1).max(1);
            if self.handles.values().all(|h| !h.views.contains_key(&id)) {
                return id;
            }
        }
    }

    fn handle(&self, bo: u32) -> Result<&Handle, Failure> {
        self.handles.get(&bo).ok_or_else(|| {
            fail(
                ErrorCode::NoSuchBo,
                format!("BO handle {bo} is not open on this connection"),
            )
        })
    }

    /// Charges a new BO of `size` bytes to this connection's uid.
    fn charge_bo(&self, size: u64) -> Result<BoCharge, Failure> {
        self.daemon
            .quotas
            .charge_bo(self.info.uid, size)
            .map_err(|e| fail(ErrorCode::LimitExceeded, e.to_string()))
    }

    /// Fails when this connection cannot open another BO handle.
    fn check_handle_room(&self) -> Result<(), Failure> {
        if self.handles.len() >= self.daemon.config.max_bos_per_connection {
            return Err(fail(
                ErrorCode::LimitExceeded,
                format!(
                    "connection already holds {} BO handles (limit max_bos_per_connection = {})",
                    self.handles.len(),
                    self.daemon.config.max_bos_per_connection
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a request whose reply holds memory (a memfd: SNAPSHOT's copy
    /// of the BO, METRICS' text) while earlier replies lie unread: each
    /// unread reply keeps its memfd alive in the socket, so a client that
    /// never reads could make the daemon hold a copy per request. With this
    /// rule a connection holds at most one such reply unread (issue 15,
    /// item 1). A client that reads each reply before its next request
    /// never meets it.
    fn check_unread_replies(&self, request: &str) -> Result<(), Failure> {
        // SAFETY: the socket outlives the session (serve drops it after
        // the session closes), so the fd is open while a request runs.
        let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.socket) };
        let unread = cohmem_sys::seqpacket::unread_output(sock).map_err(|e| fail(ErrorCode::Kernel, e.to_string()))?;
        if unread > 0 {
            return Err(fail(
                ErrorCode::LimitExceeded,
                format!(
                    "{request} refused: {unread} bytes of earlier replies on this connection are unread (a reply \
                     carrying a memfd holds memory until read); read the replies first"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses what a read-only handle may not do.
    fn check_access(&self, req: &Request) -> Result<(), Failure> {
        let Some((bo, what)) = read_only_refusal(req) else {
            return Ok(());
        };
        if self.handles.get(&bo).is_some_and(|h| h.read_only) {
            return Err(fail(
                ErrorCode::PermissionDenied,
                format!(
                    "BO handle {bo} was imported from a read-only fd: it cannot {what} (import a read-write fd of the \
                     BO to do that)"
                ),
            ));
        }
        Ok(())
    }

    fn new_handle(&mut self, bo: Arc<Bo>) -> Result<u32, Failure> {
        self.new_handle_with(bo, false)
    }

    fn new_handle_with(&mut self, bo: Arc<Bo>, read_only: bool) -> Result<u32, Failure> {
        self.check_handle_room()?;
        let h = self.next_handle;
        self.next_handle = self.next_handle.checked_add(1).ok_or_else(|| {
            fail(
                ErrorCode::LimitExceeded,
                "BO handle numbers exhausted on this connection",
            )
        })?;
        self.handles.insert(
            h,
            Handle {
                bo,
                views: HashMap::new(),
                read_only,
            },
        );
        self.info.bos.fetch_add(1, Ordering::Relaxed);
        Ok(h)
    }

    async fn create_bo(&mut self, size: u64, flags: u32) -> Outcome {
        if flags & !CREATE_NO_RESOURCE != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown CREATE_BO flags {flags:#x}"),
            ));
        }
        let max = self.daemon.config.max_bo_size;
        if size == 0 {
            return Err(fail(ErrorCode::InvalidArgument, "BO size must be at least 1 byte"));
        }
        if size > max {
            return Err(fail(
                ErrorCode::TooLarge,
                format!("BO size {size} exceeds the limit max_bo_size = {max}"),
            ));
        }
        let ps = cohmem_sys::page_size();
        let size = size.div_ceil(ps) * ps;
        self.check_handle_room()?;
        let charge = self.charge_bo(size)?;
        let daemon = self.daemon.clone();
        let id = daemon.bos.next_id();
        let default_resource = flags & CREATE_NO_RESOURCE == 0;
        let bo = tokio::task::spawn_blocking(move || Bo::create(id, size, daemon.gpu.as_ref(), default_resource))
            .await
            .map_err(|e| fail(ErrorCode::Internal, format!("BO creation task failed: {e}")))?
            .map_err(|e| fail(ErrorCode::Gpu, format!("creating a {size}-byte BO: {e}")))?;
        self.publish_new_bo(bo, charge)
    }

    /// CREATE_IMAGE: the backend allocates the image first, the BO takes its
    /// layout (DESIGN.md §8). The quota is charged for the BO's real size
    /// (known once the device has chosen its pitch); a refusal frees the
    /// image again.
    async fn create_image(&mut self, width: u32, height: u32, fourcc: u32, flags: u32) -> Outcome {
        if flags != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown CREATE_IMAGE flags {flags:#x}"),
            ));
        }
        let Some(cpp) = cohmem_proto::fourcc::bytes_per_pixel(fourcc) else {
            return Err(fail(
                ErrorCode::Unsupported,
                format!(
                    "format {} is not one cohmem knows (XR24, AR24, RG16)",
                    cohmem_proto::fourcc::name(fourcc)
                ),
            ));
        };
        if width == 0 || height == 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("an image needs at least one pixel; width {width} and height {height} were asked for"),
            ));
        }
        let max = self.daemon.config.max_bo_size;
        let least = (u64::from(width) * u64::from(height)).saturating_mul(u64::from(cpp));
        if least > max {
            return Err(fail(
                ErrorCode::TooLarge,
                format!("a {width}x{height} image needs at least {least} bytes; the limit is max_bo_size = {max}"),
            ));
        }
        self.check_handle_room()?;
        let daemon = self.daemon.clone();
        let id = daemon.bos.next_id();
        let bo =
            tokio::task::spawn_blocking(move || Bo::create_image(id, width, height, fourcc, max, daemon.gpu.as_ref()))
                .await
                .map_err(|e| fail(ErrorCode::Internal, format!("image creation task failed: {e}")))?
                .map_err(|e| match e {
                    crate::gpu::GpuError::TooLarge { .. } => fail(ErrorCode::TooLarge, e.to_string()),
                    crate::gpu::GpuError::ImageRefused { .. } => fail(ErrorCode::Unsupported, e.to_string()),
                    e => fail(ErrorCode::Gpu, format!("creating a {width}x{height} image: {e}")),
                })?;
        let charge = self.charge_bo(bo.size)?;
        self.publish_new_bo(bo, charge)
    }

    /// Makes a new BO known (quota, fd store, BO table, bypass watch) and
    /// opens a handle to it: the reply of CREATE_BO and CREATE_IMAGE.
    fn publish_new_bo(&mut self, bo: Bo, charge: BoCharge) -> Outcome {
        let (id, size) = (bo.id, bo.size);
        bo.hold_charge(charge);
        crate::fdstore::store(&self.daemon, &bo, self.info.uid);
        let memfd = bo
            .memfd()
            .try_clone_fd()
            .map_err(|e| fail(ErrorCode::Kernel, e.to_string()))?;
        let bo = Arc::new(bo);
        self.daemon.bos.insert(&bo);
        self.daemon.bypass.add(&bo);
        let handle = self.new_handle(bo.clone())?;
        tracing::debug!(
            conn = self.info.id,
            bo = id,
            size,
            handle,
            image = bo.image.is_some(),
            "BO created"
        );
        Ok((
            Reply::Bo {
                bo: handle,
                size,
                id: bo.id,
                image: bo.image,
            },
            vec![memfd],
        ))
    }

    /// IMPORT_BO: a handle to the BO whose memfd came with the request. A
    /// sealed memfd this daemon does not know — a client's BO from before a
    /// daemon restart — is adopted as a new BO, charged to this uid, with a
    /// fresh resource and every page dirty.
    ///
    /// IMPORT_IMAGE (`image` given): the BO must have that image layout; an
    /// unknown memfd is adopted as an image BO of that layout if this
    /// daemon's backend lays it out the same way.
    async fn import_bo(&mut self, fds: Vec<OwnedFd>, image: Option<cohmem_proto::ImageInfo>) -> Outcome {
        let fd = fds
            .into_iter()
            .next()
            .ok_or_else(|| fail(ErrorCode::BadFds, "IMPORT_BO needs the BO's memfd"))?;
        let read_only = match fd_access(fd.as_fd()).map_err(|e| fail(ErrorCode::BadFds, e.to_string()))? {
            FdAccess::ReadWrite => false,
            FdAccess::ReadOnly => true,
            FdAccess::Path => {
                return Err(fail(
                    ErrorCode::PermissionDenied,
                    "IMPORT_BO of an O_PATH fd: it gives no access to the BO's bytes; pass a read-write (or \
                     read-only) fd",
                ))
            }
            FdAccess::WriteOnly => {
                return Err(fail(
                    ErrorCode::PermissionDenied,
                    "IMPORT_BO of a write-only fd: pass a read-write (or read-only) fd",
                ))
            }
        };
        let identity = fd_identity(fd.as_fd()).map_err(|e| fail(ErrorCode::BadFds, e.to_string()))?;
        if let Some(bo) = self.daemon.bos.find(identity) {
            if image.is_some() && image != bo.image {
                return Err(fail(
                    ErrorCode::InvalidArgument,
                    format!(
                        "IMPORT_IMAGE: BO {} is {}, not the image described",
                        bo.id,
                        bo.image.map_or("a byte BO".to_string(), |i| format!(
                            "a {}x{} {} image with pitch {} at offset {}",
                            i.width,
                            i.height,
                            cohmem_proto::fourcc::name(i.fourcc),
                            i.pitch,
                            i.offset
                        ))
                    ),
                ));
            }
            let (size, id, image) = (bo.size, bo.id, bo.image);
            let handle = self.new_handle_with(bo, read_only)?;
            return ok(Reply::Bo {
                bo: handle,
                size,
                id,
                image,
            });
        }
        let memfd = Memfd::from_fd(fd).map_err(|e| fail(ErrorCode::BadFds, e.to_string()))?;
        let size = memfd.size();
        let max = self.daemon.config.max_bo_size;
        if size > max {
            return Err(fail(
                ErrorCode::TooLarge,
                format!("the passed memfd has {size} bytes, over the limit max_bo_size = {max}"),
            ));
        }
        self.check_handle_room()?;
        let charge = self.charge_bo(size)?;
        let daemon = self.daemon.clone();
        let id = daemon.bos.next_id();
        let bo = tokio::task::spawn_blocking(move || match image {
            Some(image) => Bo::adopt_image(id, memfd, daemon.gpu.as_ref(), image),
            None => Bo::adopt(id, memfd, daemon.gpu.as_ref(), None),
        })
        .await
        .map_err(|e| fail(ErrorCode::Internal, format!("BO adoption task failed: {e}")))?
        .map_err(|e| match e {
            AdoptError::Gpu(g @ crate::gpu::GpuError::ImageRefused { .. })
            | AdoptError::Gpu(g @ crate::gpu::GpuError::TooLarge { .. }) => {
                fail(ErrorCode::Unsupported, format!("adopting a {size}-byte image BO: {g}"))
            }
            AdoptError::Layout(why) => fail(ErrorCode::Unsupported, format!("IMPORT_IMAGE: {why}")),
            AdoptError::Gpu(g) => fail(ErrorCode::Gpu, format!("adopting a {size}-byte BO: {g}")),
            other => fail(
                ErrorCode::BadFds,
                format!("the passed fd is not the memfd of a live cohmem BO, nor adoptable as one: {other}"),
            ),
        })?;
        bo.hold_charge(charge);
        crate::fdstore::store(&self.daemon, &bo, self.info.uid);
        let bo = Arc::new(bo);
        self.daemon.bos.insert(&bo);
        self.daemon.bypass.add(&bo);
        let handle = self.new_handle_with(bo.clone(), read_only)?;
        crate::limited!(
            info,
            "BO adopted",
            self.info.id,
            conn = self.info.id,
            bo = id,
            size,
            handle,
            "BO adopted from a client's memfd"
        );
        ok(Reply::Bo {
            bo: handle,
            size,
            id,
            image,
        })
    }

    fn attach_mm(&mut self, token: u64, uffd_features: u64, flags: u32, fds: Vec<OwnedFd>) -> Outcome {
        let known = ATTACH_WITH_FDS
            | ATTACH_WITH_SYNC_UFFD
            | ATTACH_SYNC_ALL_FAULTS
            | ATTACH_WITH_CLEAR_REFS
            | ATTACH_WITH_MAPS
            | (0xff << ATTACH_MECHANISM_SHIFT);
        if flags & !known != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown ATTACH_MM flags {flags:#x}"),
            ));
        }
        let key = MmKey {
            pid: self.info.pid,
            token,
        };
        if let Some(mm) = &self.mm {
            if mm.key == key {
                return ok(attached(mm, true));
            }
            return Err(fail(
                ErrorCode::InvalidArgument,
                "this connection is already attached to another subscription",
            ));
        }
        if let Some(existing) = self.daemon.mms.get(key) {
            let reply = attached(&existing, true);
            self.mm = Some(existing);
            return ok(reply);
        }
        let requested = (flags >> ATTACH_MECHANISM_SHIFT) & 0xff;
        let requested = Mechanism::from_wire(requested as u16).map_err(|_| {
            fail(
                ErrorCode::InvalidArgument,
                format!("unknown mechanism {requested} requested"),
            )
        })?;
        let wanted = match requested {
            Mechanism::None => self.daemon.config.mechanism,
            m => Some(m),
        };
        let needs_no_fds = matches!(wanted, Some(Mechanism::Full | Mechanism::Explicit));
        if flags & (ATTACH_WITH_FDS | ATTACH_WITH_SYNC_UFFD) == 0 && !needs_no_fds {
            return Err(fail(
                ErrorCode::NeedMmFds,
                "no subscription for this process yet: send ATTACH_MM with its userfaultfd(s) and pagemap fd",
            ));
        }
        let mut fds = fds.into_iter();
        let mut offer = MechanismOffer {
            flags,
            uffd_features,
            ..MechanismOffer::default()
        };
        if flags & ATTACH_WITH_FDS != 0 {
            offer.asynchronous = fds.next().zip(fds.next());
        }
        if flags & ATTACH_WITH_SYNC_UFFD != 0 {
            offer.synchronous = fds.next();
        }
        if flags & ATTACH_WITH_CLEAR_REFS != 0 {
            offer.soft_dirty = fds.next().zip(fds.next());
        }
        if flags & ATTACH_WITH_MAPS != 0 {
            offer.maps = fds.next();
        }
        let choice = self.choose_mechanism(
            requested,
            offer.asynchronous.is_some(),
            offer.synchronous.is_some(),
            flags,
            uffd_features,
        )?;
        let tracker = offer.build(choice, self.info.pid).map_err(switch_failure)?;
        let (mm, joined) = self
            .daemon
            .mms
            .get_or_insert(key, self.info.uid, tracker, offer, |mm| self.daemon.faults.register(mm))
            .map_err(|e| fail(ErrorCode::Kernel, format!("registering with the fault service: {e}")))?;
        crate::limited!(
            info,
            "client process attached",
            self.info.id,
            conn = self.info.id,
            mm = mm.id,
            pid = key.pid,
            mechanism = %mm.tracker().mechanism(),
            joined,
            "client process attached"
        );
        let reply = attached(&mm, joined);
        self.mm = Some(mm);
        ok(reply)
    }

    /// Picks the mechanism for a new client process: the client's request,
    /// else the daemon's `--mechanism`, else uffd-async where it works, else
    /// uffd-sync. uffd-sync is refused when the client's uffd would break its
    /// own syscalls (user-mode only: `read(2)` into a protected page would
    /// fail with EFAULT).
    fn choose_mechanism(
        &self,
        requested: Mechanism,
        has_async: bool,
        has_sync: bool,
        flags: u32,
        uffd_features: u64,
    ) -> Result<Mechanism, Failure> {
        let kernel = &self.daemon.kernel;
        let async_ok = || -> Result<(), String> {
            if !has_async {
                return Err("the client sent no WP_ASYNC userfaultfd and pagemap fd".into());
            }
            if !kernel.uffd_async.ok {
                return Err(format!(
                    "uffd-async is not available on this kernel: {}",
                    kernel.uffd_async.detail
                ));
            }
            if uffd_features & features::WP_ASYNC == 0 {
                return Err("the client's userfaultfd lacks UFFD_FEATURE_WP_ASYNC".into());
            }
            Ok(())
        };
        let sync_ok = || -> Result<(), String> {
            if !has_sync {
                return Err("the client sent no synchronous userfaultfd".into());
            }
            if !kernel.uffd_sync.ok {
                return Err(format!(
                    "uffd-sync is not available on this kernel: {}",
                    kernel.uffd_sync.detail
                ));
            }
            if flags & ATTACH_SYNC_ALL_FAULTS == 0 {
                return Err(
                    "the client's synchronous userfaultfd is UFFD_USER_MODE_ONLY: read(2) or recv(2) into \
                            a write-protected page would fail with EFAULT; uffd-sync needs a userfaultfd that \
                            handles kernel faults (CAP_SYS_PTRACE, access to /dev/userfaultfd, or \
                            vm.unprivileged_userfaultfd=1)"
                        .into(),
                );
            }
            Ok(())
        };
        let wanted = match requested {
            Mechanism::None => self.daemon.config.mechanism,
            m => Some(m),
        };
        let unsupported = |m: Mechanism, why: String| fail(ErrorCode::Unsupported, format!("{m} refused: {why}"));
        match wanted {
            Some(Mechanism::UffdAsync) => async_ok()
                .map(|()| Mechanism::UffdAsync)
                .map_err(|w| unsupported(Mechanism::UffdAsync, w)),
            Some(Mechanism::UffdSync) => sync_ok()
                .map(|()| Mechanism::UffdSync)
                .map_err(|w| unsupported(Mechanism::UffdSync, w)),
            Some(m @ (Mechanism::Full | Mechanism::Explicit)) => Ok(m),
            Some(Mechanism::SoftDirty) => {
                let ok = || -> Result<(), String> {
                    if !kernel.soft_dirty.ok {
                        return Err(format!("this kernel does not offer it: {}", kernel.soft_dirty.detail));
                    }
                    // Exact only with the client's writers quiesced around
                    // every read-and-clear (the kernel part of the rule, with
                    // what was measured on 6.1, is in the probe).
                    let quiesce = kernel.soft_dirty_quiesce();
                    if !quiesce.ok {
                        return Err(format!("writers cannot be quiesced here: {}", quiesce.detail));
                    }
                    // Exact only with writers quiesced, which needs a
                    // synchronous uffd that handles kernel faults too.
                    sync_ok()?;
                    if flags & ATTACH_WITH_CLEAR_REFS == 0 {
                        return Err("the client sent no pagemap and clear_refs fds".into());
                    }
                    Ok(())
                };
                ok().map(|()| Mechanism::SoftDirty)
                    .map_err(|w| unsupported(Mechanism::SoftDirty, w))
            }
            Some(Mechanism::None) => Err(unsupported(Mechanism::None, "no mechanism named".into())),
            None => match (async_ok(), sync_ok()) {
                (Ok(()), _) => Ok(Mechanism::UffdAsync),
                (Err(_), Ok(())) => Ok(Mechanism::UffdSync),
                (Err(a), Err(s)) => Err(fail(
                    ErrorCode::Unsupported,
                    format!("no write-tracking mechanism for this client: uffd-async: {a}; uffd-sync: {s}"),
                )),
            },
        }
    }

    async fn map(&mut self, bo: u32, addr: u64, len: u64, offset: u64) -> Outcome {
        let mm = self
            .mm
            .clone()
            .ok_or_else(|| fail(ErrorCode::NoMm, "MAP before ATTACH_MM"))?;
        let bo_arc = self.handle(bo)?.bo.clone();
        let ps = bo_arc.page_size;
        if addr % ps != 0 || len % ps != 0 || offset % ps != 0 || len == 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("MAP addr {addr:#x}, len {len} and offset {offset} must be non-zero page multiples"),
            ));
        }
        if offset.checked_add(len).is_none_or(|end| end > bo_arc.size) {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("MAP range {offset}+{len} exceeds the BO's {} bytes", bo_arc.size),
            ));
        }
        if addr.checked_add(len).is_none() {
            return Err(fail(ErrorCode::InvalidArgument, "MAP address range overflows"));
        }
        let total_views: usize = self.handles.values().map(|h| h.views.len()).sum();
        if total_views >= self.daemon.config.max_views_per_connection {
            return Err(fail(
                ErrorCode::LimitExceeded,
                format!(
                    "connection already holds {total_views} views (limit max_views_per_connection = {})",
                    self.daemon.config.max_views_per_connection
                ),
            ));
        }
        let view_id = self.fresh_view_id();
        let view = Arc::new(View::new(
            view_id,
            Arc::downgrade(&bo_arc),
            mm.clone(),
            addr,
            len,
            offset,
            ps,
        ));
        // On the blocking pool, as one step with respect to mechanism
        // switches (the view is attached to the mechanism that is current
        // while it is added): an exclusive sync may hold the structural lock
        // for a whole upload.
        let (adder, added, attach_mm) = (bo_arc.clone(), view.clone(), mm.clone());
        self.blocking(move || {
            let _attaching = attach_mm.attaching();
            if let Err(other) = attach_mm.insert_view(added.range(), &added) {
                return Err(fail(
                    ErrorCode::InvalidArgument,
                    format!(
                        "MAP {addr:#x}+{len} overlaps the view at {:#x}..{:#x}",
                        other.start, other.end
                    ),
                ));
            }
            let result = verify_view(&attach_mm, &adder, bo, added.range(), offset).and_then(|()| {
                match attach_mm.tracker().attach_view(added.range()) {
                    Ok(()) => Ok(()),
                    Err(TrackError::BadView(m)) => Err(fail(ErrorCode::InvalidArgument, m)),
                    Err(TrackError::Gone) => Err(fail(ErrorCode::Kernel, "client process has exited")),
                    Err(TrackError::Sys(e)) => Err(fail(ErrorCode::Kernel, e.to_string())),
                    Err(e @ TrackError::Moved { .. }) => Err(fail(ErrorCode::InvalidArgument, e.to_string())),
                }
                .and_then(|()| verify_registration(&attach_mm, added.range()))
            });
            if let Err(f) = result {
                attach_mm.remove_view(addr);
                return Err(f);
            }
            // With the state lock held: every tracker operation sees a
            // stable view list while it holds that lock.
            adder.structural_change(|| {
                let _state = adder.state();
                adder.add_view(added);
            });
            Ok(())
        })
        .await??;
        if let Some(h) = self.handles.get_mut(&bo) {
            h.views.insert(view_id, view);
        }
        self.info.views.fetch_add(1, Ordering::Relaxed);
        ok(Reply::Mapped { view: view_id })
    }

    async fn unmap(&mut self, bo: u32, view: u32) -> Outcome {
        let handle = self.handles.get_mut(&bo).ok_or_else(|| {
            fail(
                ErrorCode::NoSuchBo,
                format!("BO handle {bo} is not open on this connection"),
            )
        })?;
        let v = handle.views.remove(&view).ok_or_else(|| {
            fail(
                ErrorCode::NoSuchView,
                format!("view {view} is not mapped on BO handle {bo}"),
            )
        })?;
        let bo_arc = handle.bo.clone();
        self.info.views.fetch_sub(1, Ordering::Relaxed);
        let daemon = self.daemon.clone();
        self.blocking(move || {
            daemon.sync_engine().remove_view(&bo_arc, &v);
            finish_shown(&daemon, &bo_arc);
        })
        .await?;
        ok(Reply::Ok)
    }

    async fn sync(&mut self, bo: u32, flags: u32) -> Outcome {
        if flags & !SYNC_REPORT_RUNS != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown SYNC flags {flags:#x}"),
            ));
        }
        let bo_arc = self.handle(bo)?.bo.clone();
        let daemon = self.daemon.clone();
        let report = self
            .blocking(move || {
                let engine = daemon.sync_engine();
                daemon.bypass.note(&engine, &bo_arc);
                let report = engine.sync(&bo_arc, flags & SYNC_REPORT_RUNS != 0)?;
                damage_display(&daemon, &bo_arc, &report);
                Ok::<_, SyncError>(report)
            })
            .await?
            .map_err(|e| fail(ErrorCode::Gpu, format!("upload failed (pages kept dirty): {e}")))?;
        ok(Reply::SyncDone(report))
    }

    async fn destroy(&mut self, bo: u32) -> Outcome {
        let handle = self.handles.remove(&bo).ok_or_else(|| {
            fail(
                ErrorCode::NoSuchBo,
                format!("BO handle {bo} is not open on this connection"),
            )
        })?;
        self.info.bos.fetch_sub(1, Ordering::Relaxed);
        self.info.views.fetch_sub(handle.views.len() as u32, Ordering::Relaxed);
        let daemon = self.daemon.clone();
        self.blocking(move || release(&daemon, handle)).await?;
        ok(Reply::Ok)
    }

    fn export_resource(&self, bo: u32, index: u32) -> Outcome {
        let bo = &self.handle(bo)?.bo;
        let res = bo.state().resources.get(index as usize).and_then(Option::clone);
        let res = res.ok_or_else(|| fail(ErrorCode::InvalidArgument, format!("the BO has no resource {index}")))?;
        let fd = res
            .gpu
            .export_fd()
            .map_err(|e| fail(ErrorCode::Gpu, format!("exporting the resource: {e}")))?;
        Ok((
            Reply::Resource {
                size: res.gpu.size(),
                offset: res.window.start,
                pitch: u32::try_from(res.gpu.pitch()).unwrap_or(u32::MAX),
                image: res.image(),
            },
            vec![fd],
        ))
    }

    fn stats(&self, flags: u32) -> StatsReport {
        let d = &self.daemon;
        let c = &d.counters;
        let all_conns = d.connections();
        let all_bos = d.bos.all();
        // Root sees everything; other users see their own connections and
        // the BOs their connections hold.
        let privileged = self.info.uid == 0;
        let mut connections = Vec::new();
        if flags & STATS_CONNECTIONS != 0 {
            connections = all_conns
                .iter()
                .filter(|ci| privileged || ci.uid == self.info.uid)
                .map(|ci| ConnectionRow {
                    id: ci.id,
                    pid: ci.pid as u32,
                    uid: ci.uid,
                    bos: ci.bos.load(Ordering::Relaxed),
                    views: ci.views.load(Ordering::Relaxed),
                    requests: ci.requests.load(Ordering::Relaxed),
                })
                .collect();
        }
        let mut bos = Vec::new();
        if flags & STATS_BOS != 0 {
            let own: Vec<u64> = self.handles.values().map(|h| h.bo.id).collect();
            bos = all_bos
                .iter()
                .filter(|b| privileged || own.contains(&b.id))
                .map(|b| {
                    let (dirty_pages, method, policy, flags) = {
                        let st = b.state();
                        let (dirty, method, paused) = st.tracker.as_ref().map_or((0, 0, false), |t| {
                            (t.dirty.dirty_pages(), t.method as u16, t.paused.is_some())
                        });
                        let flags = if paused { BO_ROW_PAUSED } else { 0 };
                        (dirty, method, st.policy as u16, flags)
                    };
                    BoRow {
                        id: b.id,
                        size: b.size,
                        views: b.view_count() as u32,
                        dirty_pages,
                        syncs: b.counters.syncs.load(Ordering::Relaxed),
                        pages_uploaded: b.counters.pages_uploaded.load(Ordering::Relaxed),
                        bytes_uploaded: b.counters.bytes_uploaded.load(Ordering::Relaxed),
                        method,
                        sync_retries: b.counters.sync_retries.load(Ordering::Relaxed),
                        sync_exclusive: b.counters.sync_exclusive.load(Ordering::Relaxed),
                        policy,
                        flags,
                    }
                })
                .collect();
        }
        StatsReport {
            daemon: DaemonStats {
                uptime_ms: d.uptime_ms(),
                connections: all_conns.len() as u32,
                mm_subscriptions: d.mms.live() as u32,
                bos: all_bos.len() as u32,
                views: all_bos.iter().map(|b| b.view_count() as u32).sum(),
                syncs: c.syncs.load(Ordering::Relaxed),
                pages_uploaded: c.pages_uploaded.load(Ordering::Relaxed),
                bytes_uploaded: c.bytes_uploaded.load(Ordering::Relaxed),
                upload_failures: c.upload_failures.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                method_switches: c.method_switches.load(Ordering::Relaxed),
                extra_pages: c.extra_pages.load(Ordering::Relaxed),
                sync_retries: c.sync_retries.load(Ordering::Relaxed),
                sync_exclusive: c.sync_exclusive.load(Ordering::Relaxed),
                faults: d.faults.faults.load(Ordering::Relaxed),
                backend: format!("{} [{}]", d.gpu.name(), d.gpu_reason),
            },
            connections,
            bos,
            truncated: false,
        }
    }

    /// Releases every handle (each view harvested one last time).
    async fn close(&mut self) {
        let handles: Vec<Handle> = self.handles.drain().map(|(_, h)| h).collect();
        self.mm = None;
        if handles.is_empty() {
            return;
        }
        let daemon = self.daemon.clone();
        if let Err(f) = self
            .blocking(move || handles.into_iter().for_each(|h| release(&daemon, h)))
            .await
        {
            crate::limited!(warn, "cleanup failed", self.info.id, conn = self.info.id, message = %f.message, "cleanup failed");
        }
    }
}

/// WATCH_DAEMON: a pidfd of this process, so that a client knows for
/// certain when the daemon has exited (its library undoes uffd-sync
/// protection then, and only then).
fn watch_daemon() -> Outcome {
    let pidfd = cohmem_sys::pidfd::Pidfd::open(std::process::id() as i32)
        .map_err(|e| fail(ErrorCode::Kernel, format!("a pidfd of the daemon: {e}")))?;
    Ok((Reply::DaemonProcess, vec![pidfd.into()]))
}

/// For requests a read-only handle may not make: the handle, and what the
/// request would do. Reading (DIRTY_STATE, EXPORT_RESOURCE, SNAPSHOT) and
/// uploading (SYNC, SCAN: they record and upload what was written, never
/// drop it) stay allowed; everything that changes the BO's bytes or drops
/// or invents tracking state other holders depend on is refused.
fn read_only_refusal(req: &Request) -> Option<(u32, &'static str)> {
    Some(match *req {
        Request::Map { bo, .. } => (
            bo,
            "be mapped for tracking (map it PROT_READ without MAP: a read-only mapping writes nothing)",
        ),
        Request::AddResource { bo, .. } => (bo, "add a resource"),
        Request::ReleaseResource { bo, .. } => (bo, "release a resource"),
        Request::Transfer { bo, .. } => (bo, "transfer dirty pages without a scan"),
        Request::ClearResource { bo, .. } => (bo, "clear a resource's dirty pages"),
        Request::ClearAll { bo } => (bo, "clear the BO's dirty pages"),
        Request::Damage { bo, .. } => (bo, "report damage"),
        Request::Readback { bo, .. } => (bo, "read the GPU copy back into the BO"),
        _ => return None,
    })
}

fn attached(mm: &MmSubscription, joined: bool) -> Reply {
    Reply::MmAttached {
        mechanism: mm.tracker().mechanism(),
        exact: mm.tracker().exact(),
        joined,
        mm_id: mm.id,
    }
}

fn release(daemon: &Daemon, handle: Handle) {
    let engine = daemon.sync_engine();
    for view in handle.views.values() {
        engine.remove_view(&handle.bo, view);
    }
    finish_shown(daemon, &handle.bo);
}

/// Sends a sync's rectangles to the display output if `bo` is shown.
fn damage_display(daemon: &Daemon, bo: &Bo, report: &SyncReport) {
    if let (Some(display), Some(damage)) = (&daemon.display, &report.damage) {
        display.damaged(bo, &damage.rects);
    }
}

/// An unmap or a close of the BO on screen: everything written through
/// the view that goes is synced and committed now, whatever the pacing
/// interval, so no frame written before a close is lost.
fn finish_shown(daemon: &Daemon, bo: &Bo) {
    let Some(display) = &daemon.display else {
        return;
    };
    if !display.is_shown(bo.id) {
        return;
    }
    match daemon.sync_engine().sync(bo, false) {
        Ok(report) => damage_display(daemon, bo, &report),
        Err(e) => {
            crate::limited!(warn, "final display sync failed", bo.id, bo = bo.id, error = %e, "final sync of the shown BO failed")
        }
    }
    display.flush(bo.id);
}

fn sync_failure(e: SyncError) -> Failure {
    match e {
        SyncError::NoSuchResource(_) | SyncError::BadWindow(_) => fail(ErrorCode::InvalidArgument, e.to_string()),
        SyncError::TooManyResources(_) => fail(ErrorCode::LimitExceeded, e.to_string()),
        SyncError::Gpu(e) => fail(ErrorCode::Gpu, format!("upload failed (pages kept dirty): {e}")),
    }
}

/// Takes the daemon's quiesce lock (seed 004: one quiesce at a time, and
/// never waiting forever). Waits asynchronously: a request queued behind
/// another client's quiesce holds no thread, so the runtime goes on serving
/// everyone else (issue 14, item 10).
async fn only_quiesce(daemon: &Daemon) -> Result<tokio::sync::OwnedMutexGuard<()>, Failure> {
    tokio::time::timeout(QUIESCE_BOUND, daemon.quiesce.clone().lock_owned())
        .await
        .map_err(|_| {
            fail(
                ErrorCode::LimitExceeded,
                format!("another quiesce is running; gave up after {QUIESCE_BOUND:?}"),
            )
        })
}

fn switch_failure(e: switch::SwitchError) -> Failure {
    match e {
        switch::SwitchError::BadFds(m) => fail(ErrorCode::BadFds, m),
        switch::SwitchError::Missing(m) => fail(ErrorCode::Unsupported, m),
        switch::SwitchError::Dup(e) => fail(ErrorCode::Kernel, format!("duplicating an offered fd: {e}")),
        e @ switch::SwitchError::FaultService(_) => fail(ErrorCode::Kernel, e.to_string()),
    }
}

/// MAP's proof that the view maps what the client announced
/// ([`crate::viewcheck::check_mapping`]): the BO's memfd at the announced
/// offset, shared, with `MADV_DONTFORK`.
fn verify_view(
    mm: &MmSubscription,
    bo: &Bo,
    handle: u32,
    range: std::ops::Range<u64>,
    offset: u64,
) -> Result<(), Failure> {
    let identity = bo
        .memfd()
        .identity()
        .map_err(|e| fail(ErrorCode::Kernel, format!("fstat of the BO's memfd: {e}")))?;
    crate::viewcheck::check_mapping(mm.key.pid, mm.offer.maps.as_ref(), range, handle, identity, offset)
        .map(|_| ())
        .map_err(|m| fail(ErrorCode::InvalidArgument, m.0))
}

/// After the mechanism attached the view (which refuses a range registered
/// with no uffd, and so must come first: registering here would hide
/// that), proves that the range is registered with the userfaultfd of the
/// process's mechanism, not another one
/// ([`crate::viewcheck::check_registration`]).
fn verify_registration(mm: &MmSubscription, range: std::ops::Range<u64>) -> Result<(), Failure> {
    let tracker = mm.tracker();
    match tracker.registration_uffd() {
        Some(uffd) => crate::viewcheck::check_registration(uffd, tracker.mechanism().name(), range)
            .map_err(|m| fail(ErrorCode::InvalidArgument, m.0)),
        None => Ok(()),
    }
}
