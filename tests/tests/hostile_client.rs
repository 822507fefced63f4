//! Issue 5, item 6 (fuzzing): hostile clients over the real socket, and the
//! fuzzer's inputs replayed against the decoder.
//!
//! * [`hostile_clients_leave_a_well_behaved_client_and_the_daemon_intact`]:
//!   several connections to a real daemon send random frames (random bytes,
//!   truncated valid frames, valid headers with garbage bodies, datagrams
//!   over `MAX_FRAME`), attach random fds (memfds of the wrong size,
//!   `/dev/null`, pipes, sockets, up to `SCM_MAX_FD` of them), send valid
//!   requests with random handles and arguments before and after HELLO, and
//!   close abruptly (with replies unread, after `shutdown(SHUT_WR)`, with an
//!   empty datagram). Every answer is checked against the reference decoder
//!   and the documented order of checks. Meanwhile a well-behaved client
//!   writes, syncs and compares the GPU copy with its BO; every one of its
//!   syncs must succeed and the copy must be byte-identical. At the end the
//!   daemon is alive and its fd count is back where it started.
//! * [`fuzz_corpus_and_regressions_decode_without_panic`]: every file under
//!   `fuzz/corpus/decode` and `fuzz/regressions` goes through the same checks
//!   as the cargo-fuzz target `fuzz/fuzz_targets/decode.rs`, so a crash the
//!   fuzzer once found stays fixed without needing cargo-fuzz.
//!
//! The random choices come from a seed printed at the start;
//! `COHMEM_HOSTILE_SEED=N` replays a run.

use anyhow::Context;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cohmem_client::Connection;
use cohmem_proto::limits::{MAX_FDS, MAX_FRAME};
use cohmem_proto::{
    kind, peek_request_id, BoPolicy, DecodeError, ErrorCode, Mechanism, Reply, Request, ATTACH_WITH_FDS,
    PROTOCOL_VERSION,
};
use cohmem_sys::memfd::Memfd;
use cohmem_sys::pagemap::PagemapFile;
use cohmem_sys::seqpacket::{SeqpacketSocket, SCM_MAX_FD};
use cohmem_sys::uffd::{features, UffdFlavor, Userfaultfd};
use cohmem_tests::{process_fds as fds_of, process_rss_kib, spawn_daemon, time_scale, RawClient, RawOutcome};
use cohmem_tools::{verify_gpu_copy, SplitMix64};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// Hostile connections running at once.
const HOSTILE_THREADS: u64 = 6;
/// How long the hostile connections keep going.
const HOSTILE_TIME: Duration = Duration::from_secs(6);
/// Pages of the well-behaved client's BO.
const GOOD_PAGES: u64 = 128;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// What the hostile connections saw, summed over all of them.
#[derive(Debug, Default)]
struct Tally {
    connections: u64,
    frames: u64,
    fds_sent: u64,
    replies: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
    closed_by_daemon: u64,
    unread_closes: u64,
    half_closes: u64,
    /// Issue 15's attacks: read-only and O_PATH imports refused their
    /// changes, unread SNAPSHOT floods, connection bursts.
    read_only_refusals: u64,
    snapshot_floods: u64,
    burst_connections: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.connections += other.connections;
        self.frames += other.frames;
        self.fds_sent += other.fds_sent;
        for (k, v) in other.replies {
            *self.replies.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.closed_by_daemon += other.closed_by_daemon;
        self.unread_closes += other.unread_closes;
        self.half_closes += other.half_closes;
        self.read_only_refusals += other.read_only_refusals;
        self.snapshot_floods += other.snapshot_floods;
        self.burst_connections += other.burst_connections;
    }
}

/// Fds a hostile connection attaches: none of them is what any request wants,
/// except the WP_ASYNC uffd and pagemap pair of a real ATTACH_MM.
struct FdPool {
    junk: Vec<OwnedFd>,
    /// A real WP_ASYNC uffd with its enabled features, where the kernel has one.
    uffd: Option<(Userfaultfd, u64)>,
    pagemap: PagemapFile,
}

impl FdPool {
    fn new(socket: &Path) -> anyhow::Result<Self> {
        let ps = cohmem_sys::page_size();
        let (pipe_r, pipe_w) = nix::unistd::pipe()?;
        let (sock_a, sock_b) = SeqpacketSocket::pair()?;
        let to_daemon = SeqpacketSocket::connect(socket)?;
        let efd = nix::sys::eventfd::EventFd::new()?;
        let junk: Vec<OwnedFd> = vec![
            // Sealed like a BO, but no BO of the daemon's.
            Memfd::create_sealed("hostile-sealed", ps)?.try_clone_fd()?,
            // Unsealed, and of a size that is no page multiple.
            Memfd::create("hostile-odd", 12345, 0)?.try_clone_fd()?,
            File::open("/dev/null")?.into(),
            File::open("/")?.into(),
            File::open("/proc/self/pagemap")?.into(),
            pipe_r,
            pipe_w,
            sock_a.as_fd().try_clone_to_owned()?,
            sock_b.as_fd().try_clone_to_owned()?,
            // A connection to the daemon itself, handed back to it.
            to_daemon.as_fd().try_clone_to_owned()?,
            efd.as_fd().try_clone_to_owned()?,
        ];
        let want = features::WP_ASYNC | features::WP_UNPOPULATED | features::WP_HUGETLBFS_SHMEM;
        let uffd = Userfaultfd::open(UffdFlavor::UserModeOnly, want, features::WP_ASYNC).ok();
        Ok(Self {
            junk,
            uffd,
            pagemap: PagemapFile::open_self()?,
        })
    }

    /// `n` random junk fds (repeats allowed: each arrives as its own fd).
    fn pick(&self, rng: &mut SplitMix64, n: usize) -> Vec<BorrowedFd<'_>> {
        (0..n)
            .map(|_| self.junk[rng.below(self.junk.len() as u64) as usize].as_fd())
            .collect()
    }
}

/// What the daemon must do with one frame, from the reference decoder and
/// the order of checks in `proto/README.md` (§2, §3, §6).
#[derive(Debug)]
enum Expect {
    /// ERROR with exactly this code.
    Error(ErrorCode),
    /// ERROR with one of these codes (two rules apply; their order is not
    /// part of the protocol).
    OneOf(&'static [ErrorCode]),
    /// A decodable request with the right fds at the right time: its own
    /// reply, or an error about its arguments.
    Handled(Request),
    /// An empty datagram without fds reads as a closed connection.
    Close,
}

fn expect_for(frame: &[u8], fds: usize, negotiated: bool) -> Expect {
    if frame.len() > MAX_FRAME {
        return Expect::Error(ErrorCode::BadFrame);
    }
    if frame.is_empty() && fds == 0 {
        return Expect::Close;
    }
    match Request::decode(frame) {
        Err(DecodeError::UnknownKind(_)) => Expect::Error(ErrorCode::UnknownRequest),
        Err(_) => Expect::Error(ErrorCode::BadFrame),
        Ok((_, req)) => {
            let (lo, hi) = req.fd_count();
            let bad_fds = fds < lo || fds > hi;
            let bad_session = negotiated == matches!(req, Request::Hello { .. });
            match (bad_fds, bad_session) {
                (true, true) => Expect::OneOf(&[ErrorCode::BadFds, ErrorCode::NotNegotiated]),
                (true, false) => Expect::Error(ErrorCode::BadFds),
                (false, true) => Expect::Error(ErrorCode::NotNegotiated),
                (false, false) => Expect::Handled(req),
            }
        }
    }
}

/// Whether `reply` is the success reply of `req`.
fn answers(req: &Request, reply: &Reply) -> bool {
    matches!(
        (req, reply),
        (Request::Hello { .. }, Reply::Hello { .. })
            | (
                Request::CreateBo { .. }
                    | Request::CreateImage { .. }
                    | Request::ImportBo
                    | Request::ImportImage { .. },
                Reply::Bo { .. }
            )
            | (Request::Show { .. }, Reply::Shown { .. })
            | (Request::SyncMany { .. }, Reply::SyncManyDone(_))
            | (Request::AttachMm { .. }, Reply::MmAttached { .. })
            | (Request::Map { .. }, Reply::Mapped { .. })
            | (
                Request::Sync { .. } | Request::Transfer { .. } | Request::DamageRanges { .. },
                Reply::SyncDone(_)
            )
            | (Request::Stats { .. }, Reply::Stats(_))
            | (Request::ExportResource { .. }, Reply::Resource { .. })
            | (Request::AddResource { .. }, Reply::ResourceAdded { .. })
            | (Request::Scan { .. }, Reply::Scanned(_))
            | (Request::DirtyState { .. }, Reply::DirtyState(_))
            | (Request::Snapshot { .. }, Reply::Snapshot(_))
            | (Request::SetMechanism { .. }, Reply::MechanismSet { .. })
            | (Request::Readback { .. }, Reply::ReadbackDone { .. })
            | (Request::SetPolicy { .. }, Reply::PolicySet { .. })
            | (Request::Metrics, Reply::Metrics { .. })
            | (Request::WatchDaemon, Reply::DaemonProcess)
            | (
                Request::Unmap { .. }
                    | Request::Destroy { .. }
                    | Request::ReleaseResource { .. }
                    | Request::ClearResource { .. }
                    | Request::ClearAll { .. }
                    | Request::Damage { .. }
                    | Request::DamageRanges { .. },
                Reply::Ok
            )
    )
}

/// The error codes that count towards the daemon's consecutive bad frames.
fn counts_as_bad_frame(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadFrame | ErrorCode::NotNegotiated | ErrorCode::UnknownRequest
    )
}

/// One hostile connection's state.
struct Session<'a> {
    rng: &'a mut SplitMix64,
    pool: &'a FdPool,
    tally: &'a mut Tally,
    client: RawClient,
    negotiated: bool,
    /// BO handles opened on this connection.
    handles: Vec<u32>,
    /// Memfds of BOs created on this connection (for valid IMPORT_BOs).
    memfds: Vec<OwnedFd>,
    /// Consecutive answers that count as bad frames.
    bad_streak: u32,
    next_id: u32,
    seed: u64,
}

impl Session<'_> {
    fn id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn handle(&mut self) -> u32 {
        if !self.handles.is_empty() && self.rng.below(4) != 0 {
            self.handles[self.rng.below(self.handles.len() as u64) as usize]
        } else {
            self.rng.below(8) as u32
        }
    }

    fn size(&mut self) -> u64 {
        let ps = cohmem_sys::page_size();
        match self.rng.below(8) {
            0 => 0,
            1 => 1 + self.rng.below(ps),
            2 => 1 << 40,
            3 => u64::MAX - self.rng.below(ps),
            _ => ps * (1 + self.rng.below(32)),
        }
    }

    fn offset(&mut self) -> u64 {
        let ps = cohmem_sys::page_size();
        match self.rng.below(6) {
            0 => self.rng.next_u64(),
            1 => self.rng.below(64 * ps),
            _ => ps * self.rng.below(40),
        }
    }

    /// A request of a random kind with random arguments.
    fn random_request(&mut self) -> Request {
        let bo = self.handle();
        match self.rng.below(27) {
            0 => Request::Hello {
                min_version: self.rng.below(3) as u16,
                max_version: self.rng.below(3) as u16,
                caps: self.rng.next_u64(),
            },
            1 => Request::CreateBo {
                size: self.size(),
                flags: self.rng.below(3) as u32,
            },
            2 => Request::ImportBo,
            3 => Request::AttachMm {
                token: self.rng.next_u64(),
                uffd_features: self.pool.uffd.as_ref().map_or(0, |u| u.1),
                flags: [0, ATTACH_WITH_FDS, self.rng.next_u64() as u32][self.rng.below(3) as usize],
            },
            4 => Request::Map {
                bo,
                addr: self.offset(),
                len: self.size(),
                offset: self.offset(),
            },
            5 => Request::Unmap {
                bo,
                view: self.rng.below(4) as u32,
            },
            6 => Request::Sync {
                bo,
                flags: self.rng.below(3) as u32,
            },
            7 => Request::Destroy { bo },
            8 => Request::Stats {
                flags: self.rng.below(4) as u32,
            },
            9 => Request::ExportResource {
                bo,
                index: self.rng.below(3) as u32,
            },
            10 => Request::AddResource {
                bo,
                offset: self.offset(),
                len: self.size(),
            },
            11 => Request::ReleaseResource {
                bo,
                index: self.rng.below(3) as u32,
            },
            12 => Request::Scan { bo },
            13 => Request::Transfer {
                bo,
                index: self.rng.below(3) as u32,
                flags: self.rng.below(3) as u32,
            },
            14 => Request::ClearResource {
                bo,
                index: self.rng.below(3) as u32,
            },
            15 => Request::ClearAll { bo },
            16 => Request::DirtyState { bo },
            17 => Request::Damage {
                bo,
                offset: self.offset(),
                len: self.size(),
            },
            // Daemon-wide ids: this may well be the well-behaved client's BO
            // (as root, the test may snapshot any BO).
            18 => Request::Snapshot {
                id: self.rng.below(24),
                flags: self.rng.below(2) as u32,
            },
            19 => Request::SetMechanism {
                mechanism: Mechanism::from_wire(1 + self.rng.below(5) as u16).unwrap_or(Mechanism::Full),
            },
            20 => Request::Readback {
                bo,
                flags: self.rng.below(2) as u32,
            },
            // Ids past the BOs the test creates: the well-behaved client's
            // BO keeps its policy (and its exact page lists).
            21 => Request::SetPolicy {
                id: 1000 + self.rng.below(24),
                policy: BoPolicy::ALL[self.rng.below(4) as usize],
            },
            // Sizes from 1x1 up to past every limit, known and unknown formats.
            22 => Request::CreateImage {
                width: [1, 640, 1 + self.rng.below(5000) as u32, u32::MAX][self.rng.below(4) as usize],
                height: [1, 480, 1 + self.rng.below(5000) as u32, u32::MAX][self.rng.below(4) as usize],
                fourcc: [
                    cohmem_proto::fourcc::XRGB8888,
                    cohmem_proto::fourcc::RGB565,
                    self.rng.next_u64() as u32,
                ][self.rng.below(3) as usize],
                flags: self.rng.below(2) as u32,
            },
            23 => Request::Show {
                id: self.rng.below(24),
                flags: self.rng.below(3) as u32,
            },
            24 => Request::DamageRanges {
                bo,
                flags: self.rng.below(4) as u32,
                ranges: (0..self.rng.below(50))
                    .map(|_| cohmem_proto::ByteRange {
                        offset: self.offset(),
                        len: self.size(),
                    })
                    .collect(),
            },
            25 => Request::SyncMany {
                flags: self.rng.below(2) as u32,
                bos: (0..self.rng.below(20)).map(|_| self.handle()).collect(),
            },
            _ => Request::Metrics,
        }
    }

    /// The fds to attach to `req`: mostly the right number of the right kind
    /// when one exists, otherwise random junk.
    fn fds_for(&mut self, req: &Request) -> Vec<BorrowedFd<'_>> {
        let right = self.rng.below(3) != 0;
        match req {
            Request::ImportBo if right && !self.memfds.is_empty() => {
                vec![self.memfds[self.rng.below(self.memfds.len() as u64) as usize].as_fd()]
            }
            Request::AttachMm { flags, .. } if right && *flags == ATTACH_WITH_FDS => match &self.pool.uffd {
                Some((uffd, _)) => vec![uffd.as_fd(), self.pool.pagemap.as_fd()],
                None => self.pool.pick(self.rng, 2),
            },
            _ if right => {
                let n = req.fd_count().0;
                self.pool.pick(self.rng, n)
            }
            _ => self.random_fds(),
        }
    }

    fn random_fds(&mut self) -> Vec<BorrowedFd<'_>> {
        let n = match self.rng.below(10) {
            0..=5 => 0,
            6..=8 => 1 + self.rng.below(MAX_FDS as u64) as usize,
            _ => 1 + self.rng.below(SCM_MAX_FD as u64) as usize,
        };
        self.pool.pick(self.rng, n)
    }

    /// A random frame: bytes, a cut or garbage-bodied request, an oversize
    /// datagram, or a whole valid request.
    fn random_frame(&mut self) -> Vec<u8> {
        let id = self.id();
        match self.rng.below(10) {
            // Random bytes, sometimes none at all.
            0 => {
                let mut f = vec![0u8; self.rng.below(80) as usize];
                self.rng.fill(&mut f);
                f
            }
            // A valid request cut short.
            1 => {
                let f = self.random_request().encode(id);
                let cut = self.rng.below(f.len() as u64) as usize;
                f[..cut].to_vec()
            }
            // A valid header (known request kind) with a garbage body.
            2 | 3 => {
                let mut f = Vec::new();
                f.extend_from_slice(&(1 + self.rng.below(u64::from(kind::CREATE_IMAGE)) as u16).to_le_bytes());
                f.extend_from_slice(&0u16.to_le_bytes());
                f.extend_from_slice(&id.to_le_bytes());
                let mut body = vec![0u8; self.rng.below(40) as usize];
                self.rng.fill(&mut body);
                f.extend_from_slice(&body);
                f
            }
            // Over MAX_FRAME, starting with a valid request.
            4 => {
                let mut f = self.random_request().encode(id);
                let len = MAX_FRAME + 1 + self.rng.below(MAX_FRAME as u64) as usize;
                f.resize(len, 0xa5);
                f
            }
            // A valid request with one byte flipped.
            5 => {
                let mut f = self.random_request().encode(id);
                let i = self.rng.below(f.len() as u64) as usize;
                f[i] ^= 1 << self.rng.below(8);
                f
            }
            // A valid request with random arguments.
            _ => self.random_request().encode(id),
        }
    }

    fn send(&mut self, frame: &[u8], fds: &[BorrowedFd<'_>]) -> anyhow::Result<bool> {
        self.tally.frames += 1;
        self.tally.fds_sent += fds.len() as u64;
        match self.client.sock.send(frame, fds) {
            Ok(()) => Ok(true),
            Err(e) if SeqpacketSocket::is_disconnect(&e) => Ok(false),
            Err(e) => Err(anyhow::anyhow!("sending a {} byte frame: {e}", frame.len())),
        }
    }

    /// Sends one frame, reads the answer and checks it. Returns false when
    /// the connection is over (closed by the daemon, as it had to be).
    fn exchange(&mut self) -> anyhow::Result<bool> {
        let frame = self.random_frame();
        let req = Request::decode(&frame).ok().map(|(_, r)| r);
        let fds: Vec<OwnedFd> = match &req {
            Some(r) => self.fds_for(r),
            None => self.random_fds(),
        }
        .into_iter()
        .map(|f| f.try_clone_to_owned())
        .collect::<Result<_, _>>()?;
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let expect = expect_for(&frame, fds.len(), self.negotiated);
        let what = format!(
            "frame of {} bytes ({:?}) with {} fds, expecting {expect:?} (seed {})",
            frame.len(),
            &frame[..frame.len().min(12)],
            fds.len(),
            self.seed
        );
        let sent = self.send(&frame, &borrowed)?;
        drop(borrowed);
        drop(fds);
        let outcome = if sent {
            self.client.recv().with_context(|| format!("no answer to the {what}"))?
        } else {
            RawOutcome::Closed
        };
        let (id, reply, reply_fds) = match (outcome, &expect) {
            (RawOutcome::Closed, Expect::Close) => {
                self.tally.closed_by_daemon += 1;
                return Ok(false);
            }
            (RawOutcome::Closed, _) => panic!("the daemon closed the connection after a {what}"),
            (RawOutcome::Reply(..), Expect::Close) => panic!("an empty datagram got an answer: {what}"),
            (RawOutcome::Reply(id, reply, fds), _) => (id, reply, fds),
        };
        assert_eq!(id, peek_request_id(&frame), "reply id to a {what}");
        match &reply {
            Reply::Error { code, message } => {
                *self.tally.errors.entry(format!("{code:?}")).or_default() += 1;
                assert!(reply_fds.is_empty(), "an error reply carried fds: {what}");
                assert!(!message.is_empty(), "{code:?} without a message: {what}");
                match &expect {
                    Expect::Error(want) => assert_eq!(code, want, "{message}: {what}"),
                    Expect::OneOf(want) => assert!(want.contains(code), "{code:?} ({message}): {what}"),
                    Expect::Handled(_) => assert!(
                        !matches!(
                            code,
                            ErrorCode::BadFrame
                                | ErrorCode::UnknownRequest
                                | ErrorCode::NotNegotiated
                                | ErrorCode::Internal
                                | ErrorCode::Other(_)
                        ),
                        "{code:?} ({message}) for a {what}"
                    ),
                    Expect::Close => unreachable!(),
                }
                if counts_as_bad_frame(*code) {
                    self.bad_streak += 1;
                }
            }
            ok => {
                *self.tally.replies.entry(reply_name(ok)).or_default() += 1;
                let Expect::Handled(req) = &expect else {
                    panic!("{ok:?} accepted a {what}");
                };
                assert!(answers(req, ok), "{ok:?} does not answer a {what}");
                assert_eq!(reply_fds.len(), ok.fd_count(req), "fds with {ok:?} for a {what}");
                self.bad_streak = 0;
                self.note_success(req, ok, reply_fds);
            }
        }
        let limit = cohmem_daemon::DaemonConfig::default().max_consecutive_bad_frames;
        let unsupported = matches!(
            reply,
            Reply::Error {
                code: ErrorCode::UnsupportedVersion,
                ..
            }
        );
        if self.bad_streak >= limit || unsupported {
            let next = self
                .client
                .recv()
                .with_context(|| format!("no close after {} bad frames (seed {})", self.bad_streak, self.seed))?;
            assert!(
                matches!(next, RawOutcome::Closed),
                "the daemon must close the connection after {} bad frames in a row or UnsupportedVersion, got {next:?} (seed {})",
                self.bad_streak,
                self.seed
            );
            self.tally.closed_by_daemon += 1;
            return Ok(false);
        }
        Ok(true)
    }

    fn note_success(&mut self, req: &Request, reply: &Reply, mut fds: Vec<OwnedFd>) {
        match (req, reply) {
            (Request::Hello { .. }, _) => self.negotiated = true,
            (Request::CreateBo { .. }, Reply::Bo { bo, .. }) => {
                self.handles.push(*bo);
                if self.memfds.len() < 4 {
                    self.memfds.extend(fds.pop());
                }
            }
            (Request::ImportBo, Reply::Bo { bo, .. }) => self.handles.push(*bo),
            (Request::Destroy { bo }, _) => self.handles.retain(|h| h != bo),
            _ => {}
        }
    }

    /// Sends up to `n` frames without reading any answer.
    fn blast(&mut self, n: u64) -> anyhow::Result<()> {
        for _ in 0..n {
            let mut frame = self.random_frame();
            // Keep these small: the daemon's replies wait in our queue.
            frame.truncate(256);
            let fds: Vec<OwnedFd> = self
                .random_fds()
                .into_iter()
                .map(|f| f.try_clone_to_owned())
                .collect::<Result<_, _>>()?;
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            if !self.send(&frame, &borrowed)? {
                break;
            }
        }
        Ok(())
    }
}

/// One hostile connection from connect to an abrupt (or not) end.
fn hostile_connection(
    socket: &Path,
    rng: &mut SplitMix64,
    pool: &FdPool,
    tally: &mut Tally,
    seed: u64,
) -> anyhow::Result<()> {
    let client = RawClient::connect(socket)?;
    client.sock.set_timeout(Some(Duration::from_secs(10) * time_scale()))?;
    tally.connections += 1;
    let mut s = Session {
        rng,
        pool,
        tally,
        client,
        negotiated: false,
        handles: Vec::new(),
        memfds: Vec::new(),
        bad_streak: 0,
        next_id: 0,
        seed,
    };
    // Half the connections negotiate first; the others may never do.
    if s.rng.below(2) == 0 {
        let hello = Request::Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            caps: cohmem_proto::caps::ALL,
        };
        let id = s.id();
        s.tally.frames += 1;
        let (reply, _) = s.client.call(id, &hello, &[])?;
        assert!(matches!(reply, Reply::Hello { .. }), "HELLO: {reply:?}");
        s.negotiated = true;
    }
    let steps = s.rng.below(60);
    for _ in 0..steps {
        if !s.exchange()? {
            return Ok(());
        }
    }
    if !campaign(&mut s, socket)? {
        return Ok(());
    }
    match s.rng.below(4) {
        // Close with requests in flight and their replies unread.
        0 => {
            let n = 1 + s.rng.below(8);
            s.blast(n)?;
            s.tally.unread_closes += 1;
        }
        // Shut the write half: the daemon answers what it got, then closes.
        1 => {
            let n = s.rng.below(4);
            s.blast(n)?;
            nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&s.client.sock.as_fd()),
                nix::sys::socket::Shutdown::Write,
            )?;
            s.tally.half_closes += 1;
            let mut closed = false;
            for _ in 0..=n {
                let got = s.client.recv().with_context(|| {
                    format!("no answer or close on a half-closed connection after {n} frames (seed {seed})")
                })?;
                if matches!(got, RawOutcome::Closed) {
                    closed = true;
                    break;
                }
            }
            assert!(closed, "the daemon kept a half-closed connection open (seed {seed})");
            s.tally.closed_by_daemon += 1;
        }
        // Just drop it (whatever is open on it goes with it).
        _ => {}
    }
    Ok(())
}

/// Issue 15's attacks, at random, each checked: a read-only (`O_RDONLY`)
/// import of a BO this connection made may not change it, an `O_PATH` one
/// is refused; SNAPSHOTs sent without reading a reply; a burst of
/// connections dropped at once. False when the connection is closed.
fn campaign(s: &mut Session<'_>, socket: &Path) -> anyhow::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    match s.rng.below(5) {
        0 if s.negotiated && !s.memfds.is_empty() => {
            let memfd = &s.memfds[s.rng.below(s.memfds.len() as u64) as usize];
            let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(memfd));
            let opath: OwnedFd = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(&path)?
                .into();
            let ro: OwnedFd = std::fs::File::open(&path)?.into();
            let id = s.id();
            match s.client.call(id, &Request::ImportBo, &[opath.as_fd()])? {
                (
                    Reply::Error {
                        code: ErrorCode::PermissionDenied,
                        ..
                    },
                    _,
                ) => {}
                other => panic!("IMPORT_BO of an O_PATH fd: {other:?} (seed {})", s.seed),
            }
            let id = s.id();
            let handle = match s.client.call(id, &Request::ImportBo, &[ro.as_fd()])? {
                (Reply::Bo { bo, .. }, _) => bo,
                other => panic!("IMPORT_BO of an O_RDONLY fd: {other:?} (seed {})", s.seed),
            };
            let ps = cohmem_sys::page_size();
            for req in [
                Request::ClearAll { bo: handle },
                Request::Damage {
                    bo: handle,
                    offset: 0,
                    len: ps,
                },
                Request::DamageRanges {
                    bo: handle,
                    flags: cohmem_proto::DAMAGE_THEN_SYNC,
                    ranges: vec![cohmem_proto::ByteRange { offset: 0, len: ps }],
                },
                Request::Transfer {
                    bo: handle,
                    index: 0,
                    flags: 0,
                },
                Request::Map {
                    bo: handle,
                    addr: 0x7f00_0000_0000,
                    len: ps,
                    offset: 0,
                },
            ] {
                let id = s.id();
                match s.client.call(id, &req, &[])? {
                    (
                        Reply::Error {
                            code: ErrorCode::PermissionDenied,
                            ..
                        },
                        _,
                    ) => s.tally.read_only_refusals += 1,
                    other => panic!("{} with a read-only handle: {other:?} (seed {})", req.name(), s.seed),
                }
            }
            s.tally.frames += 6;
            Ok(true)
        }
        1 if s.negotiated => {
            // Root may snapshot any BO by id, the well-behaved client's
            // too; the replies are never read (the connection ends).
            for _ in 0..1 + s.rng.below(8) {
                let id = s.id();
                let frame = Request::Snapshot {
                    id: 1 + s.rng.below(4),
                    flags: 0,
                }
                .encode(id);
                if s.client.sock.send(&frame, &[]).is_err() {
                    return Ok(false);
                }
                s.tally.frames += 1;
            }
            s.tally.snapshot_floods += 1;
            Ok(false)
        }
        2 => {
            let burst: Vec<_> = (0..64).filter_map(|_| SeqpacketSocket::connect(socket).ok()).collect();
            s.tally.burst_connections += burst.len() as u64;
            Ok(true)
        }
        _ => Ok(true),
    }
}

fn hostile_thread(socket: PathBuf, seed: u64, deadline: Instant) -> anyhow::Result<Tally> {
    let mut rng = SplitMix64::new(seed);
    let mut tally = Tally::default();
    let pool = FdPool::new(&socket)?;
    while Instant::now() < deadline {
        hostile_connection(&socket, &mut rng, &pool, &mut tally, seed)?;
    }
    Ok(tally)
}

#[test]
fn hostile_clients_leave_a_well_behaved_client_and_the_daemon_intact() -> anyhow::Result<()> {
    let seed = std::env::var("COHMEM_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(SplitMix64::seed_from_time);
    eprintln!("hostile client seed {seed} (COHMEM_HOSTILE_SEED={seed} replays it)");
    let mut daemon = spawn_daemon(DAEMON)?;
    let socket = daemon.socket().to_owned();
    let ps = cohmem_sys::page_size();

    // The well-behaved client, settled in before the abuse starts.
    let conn = Connection::connect(&socket)?;
    let bo = conn.create_bo(GOOD_PAGES * ps)?;
    let map = bo.map()?;
    let mut rng = SplitMix64::new(seed ^ 0x600d);
    let good_round = |rng: &mut SplitMix64| -> anyhow::Result<()> {
        let count = 1 + rng.below(16) as usize;
        let written = rng.distinct(GOOD_PAGES, count);
        for &p in &written {
            let mut page = vec![0u8; ps as usize];
            rng.fill(&mut page);
            map.write((p * ps) as usize, &page)?;
        }
        let done = bo.sync_with_runs()?;
        let uploaded = done.pages_list();
        let missed: Vec<_> = written.iter().filter(|p| !uploaded.contains(p)).collect();
        assert!(missed.is_empty(), "sync missed written pages {missed:?} (seed {seed})");
        let bad = verify_gpu_copy(&bo)?;
        assert!(bad.is_empty(), "GPU copy differs from the BO on {bad:?} (seed {seed})");
        Ok(())
    };
    good_round(&mut rng)?;
    // The client library's short-lived first connection may still be open
    // on the daemon's side (it closes when the daemon sees the hang-up):
    // count the fds once only the well-behaved connection is left.
    let t0 = Instant::now();
    while conn.stats(0)?.daemon.connections != 1 {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(5) * time_scale(),
            "the well-behaved client's connections never settled to 1"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let fds_before = fds_of(daemon.pid());
    let rss_before = process_rss_kib(daemon.pid())?;

    let deadline = Instant::now() + HOSTILE_TIME;
    let hostile: Vec<_> = (0..HOSTILE_THREADS)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || hostile_thread(socket, seed.wrapping_add(t + 1), deadline))
        })
        .collect();
    let mut good_syncs = 1;
    while hostile.iter().any(|h| !h.is_finished()) {
        good_round(&mut rng)?;
        good_syncs += 1;
    }
    let mut tally = Tally::default();
    for h in hostile {
        tally.merge(h.join().map_err(|_| anyhow::anyhow!("a hostile thread panicked"))??);
    }

    // Every hostile connection is gone: the daemon is back to its own fds
    // and the one well-behaved connection.
    let settle = Instant::now() + Duration::from_secs(5) * time_scale();
    let (mut fds_after, mut connections) = (usize::MAX, u32::MAX);
    while Instant::now() < settle {
        fds_after = fds_of(daemon.pid());
        connections = conn.stats(0)?.daemon.connections;
        if fds_after == fds_before && connections == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(connections, 1, "hostile connections still open (seed {seed})");
    assert_eq!(
        fds_after, fds_before,
        "the daemon had {fds_before} fds before the hostile clients and {fds_after} after (seed {seed})"
    );
    good_round(&mut rng)?;
    good_syncs += 1;
    let rss_after = process_rss_kib(daemon.pid())?;
    assert!(
        rss_after < rss_before + 32 * 1024,
        "the daemon grew from {rss_before} to {rss_after} KiB (seed {seed})"
    );
    assert!(daemon.is_running(), "the daemon died (seed {seed})");
    assert!(tally.frames > 0 && tally.connections >= HOSTILE_THREADS);
    eprintln!(
        "hostile clients: {} connections, {} frames, {} fds sent, replies {:?}, errors {:?}, \
         {} closed by the daemon, {} closed with replies unread, {} half-closed; \
         {} read-only refusals, {} unread SNAPSHOT floods, {} burst connections; \
         well-behaved client: {good_syncs} syncs verified; daemon fds {fds_before} -> {fds_after}, RSS \
         {rss_before} -> {rss_after} KiB",
        tally.connections,
        tally.frames,
        tally.fds_sent,
        tally.replies,
        tally.errors,
        tally.closed_by_daemon,
        tally.unread_closes,
        tally.half_closes,
        tally.read_only_refusals,
        tally.snapshot_floods,
        tally.burst_connections
    );
    Ok(())
}

/// The checks of `fuzz/fuzz_targets/decode.rs`, for one input.
fn check_decoder(data: &[u8]) {
    if let Ok((id, req)) = Request::decode(data) {
        assert_eq!(id, peek_request_id(data));
        let (min_fds, max_fds) = req.fd_count();
        assert!(min_fds <= max_fds && max_fds <= MAX_FDS);
        let again = req.encode(id);
        assert_eq!(again, data, "{req:?} re-encodes to other bytes");
        assert_eq!(Request::decode(&again), Ok((id, req)));
    }
    if let Ok((id, reply)) = Reply::decode(data) {
        assert_eq!(id, peek_request_id(data));
        let again = reply.encode(id);
        assert!(again.len() <= MAX_FRAME);
        assert_eq!(again.len(), data.len(), "{reply:?} re-encodes to another length");
        let decoded = Reply::decode(&again);
        assert_eq!(decoded, Ok((id, reply.clone())), "reply round trip");
        assert_eq!(reply.encode(id), again);
    }
}

fn files_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if dir.is_dir() {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_file() && p.extension().is_none_or(|x| x != "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn fuzz_corpus_and_regressions_decode_without_panic() -> anyhow::Result<()> {
    let corpus = files_in(&fuzz_dir().join("corpus/decode"))?;
    let regressions = files_in(&fuzz_dir().join("regressions"))?;
    let seeds: Vec<_> = corpus
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-")))
        .collect();
    assert!(
        seeds.len() >= seed_frames().len(),
        "fuzz/corpus/decode holds {} seed files, {} expected",
        seeds.len(),
        seed_frames().len()
    );
    for p in corpus.iter().chain(&regressions) {
        let data = std::fs::read(p)?;
        if std::panic::catch_unwind(|| check_decoder(&data)).is_err() {
            panic!("{}: the decoder checks failed (see the panic above)", p.display());
        }
    }
    // The seeds are real frames: a seed that stopped decoding (the format
    // changed) must be regenerated, or the fuzzer starts from noise.
    for p in seeds {
        let data = std::fs::read(p)?;
        assert!(
            Request::decode(&data).is_ok() || Reply::decode(&data).is_ok(),
            "{} no longer decodes; regenerate the seeds (see fuzz/README.md)",
            p.display()
        );
    }
    eprintln!(
        "decoded {} corpus files and {} regression inputs",
        corpus.len(),
        regressions.len()
    );
    Ok(())
}

/// The wire name of a reply's kind.
fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Hello { .. } => "R_HELLO",
        Reply::Bo { .. } => "R_BO",
        Reply::MmAttached { .. } => "R_MM_ATTACHED",
        Reply::Mapped { .. } => "R_MAPPED",
        Reply::Ok => "R_OK",
        Reply::SyncDone(_) => "R_SYNC_DONE",
        Reply::Stats(_) => "R_STATS",
        Reply::Resource { .. } => "R_RESOURCE",
        Reply::ResourceAdded { .. } => "R_RESOURCE_ADDED",
        Reply::Scanned(_) => "R_SCANNED",
        Reply::DirtyState(_) => "R_DIRTY_STATE",
        Reply::Snapshot(_) => "R_SNAPSHOT",
        Reply::MechanismSet { .. } => "R_MECHANISM_SET",
        Reply::ReadbackDone { .. } => "R_READBACK_DONE",
        Reply::PolicySet { .. } => "R_POLICY_SET",
        Reply::Metrics { .. } => "R_METRICS",
        Reply::DaemonProcess => "R_DAEMON_PROCESS",
        Reply::Shown { .. } => "R_SHOWN",
        Reply::SyncManyDone(_) => "R_SYNC_MANY_DONE",
        Reply::Error { .. } => "R_ERROR",
    }
}

/// The seed corpus: one real frame of every request kind and of most reply
/// kinds.
fn seed_frames() -> Vec<(&'static str, Vec<u8>)> {
    use cohmem_proto::{
        BoRow, ConnectionRow, DaemonStats, DirtyStateReport, Run, ScanReport, SnapshotReport, StatsReport, SyncReport,
        ATTACH_WITH_SYNC_UFFD, STATS_BOS, STATS_CONNECTIONS, SYNC_REPORT_RUNS,
    };
    let runs = vec![
        Run {
            first_page: 0,
            pages: 2,
        },
        Run {
            first_page: 7,
            pages: 1,
        },
    ];
    let requests = [
        Request::Hello {
            min_version: 1,
            max_version: 1,
            caps: cohmem_proto::caps::ALL,
        },
        Request::CreateBo {
            size: 1 << 20,
            flags: 0,
        },
        Request::CreateImage {
            width: 1920,
            height: 1080,
            fourcc: cohmem_proto::fourcc::XRGB8888,
            flags: 0,
        },
        Request::ImportBo,
        Request::AttachMm {
            token: 0x5eed,
            uffd_features: 0x1c0,
            flags: ATTACH_WITH_FDS | ATTACH_WITH_SYNC_UFFD,
        },
        Request::Map {
            bo: 1,
            addr: 0x7f00_0000_0000,
            len: 1 << 20,
            offset: 0,
        },
        Request::Unmap { bo: 1, view: 1 },
        Request::Sync {
            bo: 1,
            flags: SYNC_REPORT_RUNS,
        },
        Request::Destroy { bo: 1 },
        Request::Stats {
            flags: STATS_CONNECTIONS | STATS_BOS,
        },
        Request::ExportResource { bo: 1, index: 0 },
        Request::AddResource {
            bo: 1,
            offset: 4096,
            len: 8192,
        },
        Request::ReleaseResource { bo: 1, index: 1 },
        Request::Scan { bo: 1 },
        Request::Transfer {
            bo: 1,
            index: 0,
            flags: SYNC_REPORT_RUNS,
        },
        Request::ClearResource { bo: 1, index: 0 },
        Request::ClearAll { bo: 1 },
        Request::DirtyState { bo: 1 },
        Request::Damage {
            bo: 1,
            offset: 0,
            len: 4096,
        },
        Request::DamageRanges {
            bo: 1,
            flags: cohmem_proto::DAMAGE_THEN_SYNC | SYNC_REPORT_RUNS,
            ranges: vec![
                cohmem_proto::ByteRange { offset: 0, len: 64 },
                cohmem_proto::ByteRange {
                    offset: 8192,
                    len: 4096,
                },
            ],
        },
        Request::SyncMany {
            flags: 0,
            bos: vec![1, 2, 3],
        },
        Request::Snapshot { id: 1, flags: 0 },
        Request::SetMechanism {
            mechanism: Mechanism::UffdSync,
        },
        Request::Readback { bo: 1, flags: 0 },
        Request::SetPolicy {
            id: 1,
            policy: cohmem_proto::BoPolicy::Full,
        },
        Request::Metrics,
        Request::WatchDaemon,
    ];
    let replies = [
        Reply::Hello {
            version: 1,
            caps: 0x1f,
            max_frame: MAX_FRAME as u32,
            page_size: 4096,
            max_bo_size: 4 << 30,
        },
        Reply::Bo {
            bo: 1,
            size: 1 << 20,
            id: 3,
            image: None,
        },
        Reply::MmAttached {
            mechanism: Mechanism::UffdAsync,
            exact: true,
            joined: false,
            mm_id: 2,
        },
        Reply::Mapped { view: 1 },
        Reply::Ok,
        Reply::SyncDone(SyncReport {
            pages: 3,
            bytes: 3 * 4096,
            run_count: 2,
            mechanism: 1,
            method: 1,
            runs_truncated: false,
            duration_ns: 12345,
            views_scanned: 1,
            runs: runs.clone(),
            damage: None,
        }),
        Reply::Stats(StatsReport {
            daemon: DaemonStats {
                uptime_ms: 1000,
                connections: 1,
                bos: 1,
                backend: "soft (no DRM device)".into(),
                ..Default::default()
            },
            connections: vec![ConnectionRow {
                id: 1,
                pid: 42,
                uid: 1000,
                bos: 1,
                views: 1,
                requests: 9,
            }],
            bos: vec![BoRow {
                id: 3,
                size: 1 << 20,
                views: 1,
                method: 2,
                ..Default::default()
            }],
            truncated: false,
        }),
        Reply::Resource {
            size: 1 << 20,
            offset: 0,
            pitch: 4096,
            image: None,
        },
        Reply::ResourceAdded { index: 1 },
        Reply::Scanned(ScanReport {
            method: 1,
            switched_to: 2,
            change_count: 0,
            num_marked: 5,
        }),
        Reply::DirtyState(DirtyStateReport {
            method: 1,
            change_count: 1,
            users: 1,
            pages: 256,
            start: 0,
            end: 8,
            dirty_pages: 3,
            truncated: false,
            runs,
        }),
        Reply::Snapshot(SnapshotReport {
            size: 1 << 20,
            exact: true,
            attempts: 1,
            blocked_views: 1,
            unblocked_views: 0,
            image: None,
        }),
        Reply::MechanismSet {
            from: Mechanism::UffdAsync,
            to: Mechanism::UffdSync,
            exact: true,
            views: 1,
            extra_pages: 256,
        },
        Reply::ReadbackDone {
            synced_pages: 1,
            bytes: 1 << 20,
            duration_ns: 999,
        },
        Reply::PolicySet {
            previous: cohmem_proto::BoPolicy::Auto,
            method: 1,
        },
        Reply::Metrics { len: 4096 },
        Reply::DaemonProcess,
        Reply::SyncManyDone(vec![
            cohmem_proto::BoSyncOutcome {
                bo: 1,
                status: 0,
                mechanism: 1,
                pages: 2,
                bytes: 8192,
                duration_ns: 40_000,
            },
            cohmem_proto::BoSyncOutcome {
                bo: 9,
                status: ErrorCode::NoSuchBo.to_wire(),
                ..Default::default()
            },
        ]),
        Reply::error(ErrorCode::NoSuchBo, "BO handle 9 is not open on this connection"),
    ];
    let mut out: Vec<(&'static str, Vec<u8>)> = requests.iter().map(|r| (r.name(), r.encode(7))).collect();
    for r in &replies {
        let name = reply_name(r);
        out.push((name, r.encode(7)));
    }
    out
}

/// Writes the seed corpus into `fuzz/corpus/decode` (`seed-<KIND>` files).
/// Run after a change of the wire format:
/// `cargo test -p cohmem-tests --test hostile_client -- --ignored write_fuzz_seed_corpus`.
#[test]
#[ignore = "writes fuzz/corpus/decode; run by hand after a wire-format change"]
fn write_fuzz_seed_corpus() -> anyhow::Result<()> {
    let dir = fuzz_dir().join("corpus/decode");
    std::fs::create_dir_all(&dir)?;
    for (name, frame) in seed_frames() {
        std::fs::write(dir.join(format!("seed-{}", name.to_ascii_lowercase())), frame)?;
    }
    Ok(())
}
