//! Property tests of the wire format: decoding never panics, well-formed
//! messages round-trip, mutated and truncated frames are rejected, encoded
//! frames respect `limits::MAX_FRAME`, and counts over the limits are
//! `DecodeError::OverLimit`. A few fixed tests pin the byte layout documented
//! in `proto/README.md`.

use cohmem_proto::limits::*;
use cohmem_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------- helpers

/// Largest prefix of `s` that is at most `max` bytes and ends on a char boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Cheap deterministic filler so that long byte vectors cost nothing to generate.
fn fill(len: usize, mut seed: u64) -> Vec<u8> {
    seed |= 1;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn le_u16(f: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(f[at..at + 2].try_into().unwrap())
}
fn le_u32(f: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(f[at..at + 4].try_into().unwrap())
}
fn le_u64(f: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(f[at..at + 8].try_into().unwrap())
}

const REQUEST_KINDS: [u16; 29] = [
    kind::HELLO,
    kind::CREATE_BO,
    kind::IMPORT_BO,
    kind::ATTACH_MM,
    kind::MAP,
    kind::UNMAP,
    kind::SYNC,
    kind::DESTROY,
    kind::STATS,
    kind::EXPORT_RESOURCE,
    kind::ADD_RESOURCE,
    kind::RELEASE_RESOURCE,
    kind::SCAN,
    kind::TRANSFER,
    kind::CLEAR_RESOURCE,
    kind::CLEAR_ALL,
    kind::DIRTY_STATE,
    kind::DAMAGE,
    kind::SNAPSHOT,
    kind::SET_MECHANISM,
    kind::READBACK,
    kind::SET_POLICY,
    kind::METRICS,
    kind::WATCH_DAEMON,
    kind::CREATE_IMAGE,
    kind::IMPORT_IMAGE,
    kind::SHOW,
    kind::DAMAGE_RANGES,
    kind::SYNC_MANY,
];

const REPLY_KINDS: [u16; 20] = [
    kind::R_HELLO,
    kind::R_BO,
    kind::R_MM_ATTACHED,
    kind::R_MAPPED,
    kind::R_OK,
    kind::R_SYNC_DONE,
    kind::R_STATS,
    kind::R_RESOURCE,
    kind::R_RESOURCE_ADDED,
    kind::R_SCANNED,
    kind::R_DIRTY_STATE,
    kind::R_SNAPSHOT,
    kind::R_MECHANISM_SET,
    kind::R_READBACK_DONE,
    kind::R_POLICY_SET,
    kind::R_METRICS,
    kind::R_DAEMON_PROCESS,
    kind::R_SHOWN,
    kind::R_SYNC_MANY_DONE,
    kind::R_ERROR,
];

// ------------------------------------------------------------- strategies

/// A list length that is mostly small, sometimes anything up to `max`,
/// and sometimes exactly `max`.
fn len_up_to(max: usize) -> BoxedStrategy<usize> {
    prop_oneof![
        8 => 0..=8usize,
        1 => 0..=max,
        1 => Just(max),
    ]
    .boxed()
}

/// Arbitrary unicode, cut to at most `max` bytes.
fn unicode_up_to(max: usize) -> BoxedStrategy<String> {
    prop_oneof![
        4 => vec(any::<char>(), 0..=16),
        1 => vec(any::<char>(), 0..=max),
        1 => vec(any::<char>(), max..=max),
    ]
    .prop_map(move |cs| cut(cs.into_iter().collect(), max))
    .boxed()
}

fn arb_mechanism() -> impl Strategy<Value = Mechanism> {
    prop_oneof![
        Just(Mechanism::None),
        Just(Mechanism::UffdAsync),
        Just(Mechanism::UffdSync),
        Just(Mechanism::SoftDirty),
        Just(Mechanism::Full),
        Just(Mechanism::Explicit),
    ]
}

fn arb_run() -> impl Strategy<Value = Run> {
    (any::<u32>(), any::<u32>()).prop_map(|(first_page, pages)| Run { first_page, pages })
}

/// A [`Method`] wire value: mostly a valid one, sometimes anything (the
/// replies carry it as a plain u16 that the decoder does not check).
fn arb_method_wire() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => 0..=2u16,
        1 => any::<u16>(),
    ]
}

/// A fourcc: mostly one the protocol knows, sometimes anything (the decoder
/// does not check it; the daemon does).
fn arb_fourcc() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => prop::sample::select(vec![fourcc::XRGB8888, fourcc::ARGB8888, fourcc::RGB565]),
        1 => any::<u32>(),
    ]
}

fn arb_image_info() -> impl Strategy<Value = ImageInfo> {
    (
        (any::<u32>(), any::<u32>(), arb_fourcc(), any::<u32>()),
        (any::<u64>(), prop_oneof![3 => Just(MODIFIER_LINEAR), 1 => any::<u64>()]),
    )
        .prop_map(|((width, height, fourcc, pitch), (offset, modifier))| ImageInfo {
            width,
            height,
            fourcc,
            pitch,
            offset,
            modifier,
        })
}

/// An optional image description: `None` (a byte BO) as often as `Some`.
fn arb_opt_image() -> impl Strategy<Value = Option<ImageInfo>> {
    prop::option::of(arb_image_info())
}

fn arb_rect() -> impl Strategy<Value = Rect> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(x, y, w, h)| Rect { x, y, w, h })
}

/// Damage with 0..=`max_rects` rectangles (mostly few, sometimes exactly
/// `max_rects`), merged or not.
fn arb_damage(max_rects: usize) -> impl Strategy<Value = ImageDamage> {
    (
        len_up_to(max_rects).prop_flat_map(|n| vec(arb_rect(), n..=n)),
        any::<bool>(),
    )
        .prop_map(|(rects, merged)| ImageDamage { rects, merged })
}

fn arb_sync_report_with(max_runs: usize, max_rects: usize) -> impl Strategy<Value = SyncReport> {
    (
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u16>()),
        (arb_method_wire(), any::<bool>(), any::<u64>(), any::<u32>()),
        len_up_to(max_runs).prop_flat_map(|n| vec(arb_run(), n..=n)),
        prop::option::of(arb_damage(max_rects)),
    )
        .prop_map(
            |(
                (pages, bytes, run_count, mechanism),
                (method, runs_truncated, duration_ns, views_scanned),
                runs,
                damage,
            )| {
                SyncReport {
                    pages,
                    bytes,
                    run_count,
                    mechanism,
                    method,
                    runs_truncated,
                    duration_ns,
                    views_scanned,
                    runs,
                    damage,
                }
            },
        )
}

fn arb_scan_report() -> impl Strategy<Value = ScanReport> {
    (arb_method_wire(), arb_method_wire(), any::<u32>(), any::<u64>()).prop_map(
        |(method, switched_to, change_count, num_marked)| ScanReport {
            method,
            switched_to,
            change_count,
            num_marked,
        },
    )
}

fn arb_dirty_state_report(max_runs: usize) -> impl Strategy<Value = DirtyStateReport> {
    (
        (arb_method_wire(), any::<u32>(), any::<u32>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()),
        len_up_to(max_runs).prop_flat_map(|n| vec(arb_run(), n..=n)),
    )
        .prop_map(
            |((method, change_count, users, pages), (start, end, dirty_pages, truncated), runs)| DirtyStateReport {
                method,
                change_count,
                users,
                pages,
                start,
                end,
                dirty_pages,
                truncated,
                runs,
            },
        )
}

fn arb_connection_row() -> impl Strategy<Value = ConnectionRow> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(id, pid, uid, bos, views, requests)| ConnectionRow {
            id,
            pid,
            uid,
            bos,
            views,
            requests,
        })
}

fn arb_policy() -> impl Strategy<Value = BoPolicy> {
    prop::sample::select(BoPolicy::ALL.to_vec())
}

fn arb_bo_row() -> impl Strategy<Value = BoRow> {
    (
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        (arb_method_wire(), any::<u64>(), any::<u64>()),
        (0u16..4, any::<u16>()),
    )
        .prop_map(
            |(
                (id, size, views, dirty_pages),
                (syncs, pages_uploaded, bytes_uploaded),
                (method, sync_retries, sync_exclusive),
                (policy, flags),
            )| BoRow {
                id,
                size,
                views,
                dirty_pages,
                syncs,
                pages_uploaded,
                bytes_uploaded,
                method,
                sync_retries,
                sync_exclusive,
                policy,
                flags,
            },
        )
}

fn arb_daemon_stats(max_name: usize) -> impl Strategy<Value = DaemonStats> {
    (
        (any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>()),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        unicode_up_to(max_name),
    )
        .prop_map(
            |(
                (uptime_ms, connections, mm_subscriptions, bos),
                (views, syncs, pages_uploaded, bytes_uploaded),
                (upload_failures, errors, method_switches, extra_pages),
                (sync_retries, sync_exclusive, faults),
                backend,
            )| DaemonStats {
                uptime_ms,
                connections,
                mm_subscriptions,
                bos,
                views,
                syncs,
                pages_uploaded,
                bytes_uploaded,
                upload_failures,
                errors,
                method_switches,
                extra_pages,
                sync_retries,
                sync_exclusive,
                faults,
                backend,
            },
        )
}

fn arb_stats_report(max_name: usize, max_conns: usize, max_bos: usize) -> impl Strategy<Value = StatsReport> {
    (
        arb_daemon_stats(max_name),
        len_up_to(max_conns).prop_flat_map(|n| vec(arb_connection_row(), n..=n)),
        len_up_to(max_bos).prop_flat_map(|n| vec(arb_bo_row(), n..=n)),
        any::<bool>(),
    )
        .prop_map(|(daemon, connections, bos, truncated)| StatsReport {
            daemon,
            connections,
            bos,
            truncated,
        })
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u64>()).prop_map(|(min_version, max_version, caps)| {
            Request::Hello {
                min_version,
                max_version,
                caps,
            }
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(size, flags)| Request::CreateBo { size, flags }),
        Just(Request::ImportBo),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(token, uffd_features, flags)| {
            Request::AttachMm {
                token,
                uffd_features,
                flags,
            }
        }),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(bo, addr, len, offset)| Request::Map {
            bo,
            addr,
            len,
            offset
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(bo, view)| Request::Unmap { bo, view }),
        (any::<u32>(), any::<u32>()).prop_map(|(bo, flags)| Request::Sync { bo, flags }),
        any::<u32>().prop_map(|bo| Request::Destroy { bo }),
        any::<u32>().prop_map(|flags| Request::Stats { flags }),
        (any::<u32>(), any::<u32>()).prop_map(|(bo, index)| Request::ExportResource { bo, index }),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(bo, offset, len)| Request::AddResource {
            bo,
            offset,
            len
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(bo, index)| Request::ReleaseResource { bo, index }),
        any::<u32>().prop_map(|bo| Request::Scan { bo }),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(bo, index, flags)| Request::Transfer {
            bo,
            index,
            flags
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(bo, index)| Request::ClearResource { bo, index }),
        any::<u32>().prop_map(|bo| Request::ClearAll { bo }),
        any::<u32>().prop_map(|bo| Request::DirtyState { bo }),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(bo, offset, len)| Request::Damage { bo, offset, len }),
        (any::<u64>(), any::<u32>()).prop_map(|(id, flags)| Request::Snapshot { id, flags }),
        arb_mechanism().prop_map(|mechanism| Request::SetMechanism { mechanism }),
        (any::<u32>(), any::<u32>()).prop_map(|(bo, flags)| Request::Readback { bo, flags }),
        (any::<u64>(), arb_policy()).prop_map(|(id, policy)| Request::SetPolicy { id, policy }),
        Just(Request::Metrics),
        Just(Request::WatchDaemon),
        (any::<u32>(), any::<u32>(), arb_fourcc(), any::<u32>()).prop_map(|(width, height, fourcc, flags)| {
            Request::CreateImage {
                width,
                height,
                fourcc,
                flags,
            }
        }),
        arb_image_info().prop_map(|image| Request::ImportImage { image }),
        (any::<u64>(), any::<u32>()).prop_map(|(id, flags)| Request::Show { id, flags }),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..40)
        )
            .prop_map(|(bo, flags, ranges)| Request::DamageRanges {
                bo,
                flags,
                ranges: ranges
                    .into_iter()
                    .map(|(offset, len)| cohmem_proto::ByteRange { offset, len })
                    .collect(),
            }),
        (any::<u32>(), proptest::collection::vec(any::<u32>(), 0..40))
            .prop_map(|(flags, bos)| Request::SyncMany { flags, bos }),
    ]
}

/// Every reply variant. With `over = true` lists and strings may exceed the
/// limits (for the "encode cuts" properties); otherwise they stay within them.
fn arb_reply_with(over: bool) -> impl Strategy<Value = Reply> {
    let extra = |m: usize| if over { m + m / 2 + 1 } else { m };
    prop_oneof![
        (any::<u16>(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
            |(version, caps, max_frame, page_size, max_bo_size)| {
                Reply::Hello {
                    version,
                    caps,
                    max_frame,
                    page_size,
                    max_bo_size,
                }
            }
        ),
        (any::<u32>(), any::<u64>(), any::<u64>(), arb_opt_image()).prop_map(|(bo, size, id, image)| Reply::Bo {
            bo,
            size,
            id,
            image
        }),
        (arb_mechanism(), any::<bool>(), any::<bool>(), any::<u64>()).prop_map(|(mechanism, exact, joined, mm_id)| {
            Reply::MmAttached {
                mechanism,
                exact,
                joined,
                mm_id,
            }
        }),
        any::<u32>().prop_map(|view| Reply::Mapped { view }),
        Just(Reply::Ok),
        arb_sync_report_with(extra(MAX_REPORTED_RUNS), extra(MAX_DAMAGE_RECTS)).prop_map(Reply::SyncDone),
        arb_stats_report(extra(MAX_NAME), extra(MAX_STATS_CONNECTIONS), extra(MAX_STATS_BOS)).prop_map(Reply::Stats),
        (any::<u64>(), any::<u64>(), any::<u32>(), arb_opt_image()).prop_map(|(size, offset, pitch, image)| {
            Reply::Resource {
                size,
                offset,
                pitch,
                image,
            }
        }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(synced_pages, bytes, duration_ns)| Reply::ReadbackDone {
            synced_pages,
            bytes,
            duration_ns
        }),
        any::<u32>().prop_map(|index| Reply::ResourceAdded { index }),
        arb_scan_report().prop_map(Reply::Scanned),
        arb_dirty_state_report(extra(MAX_REPORTED_RUNS)).prop_map(Reply::DirtyState),
        (
            any::<u64>(),
            any::<bool>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            arb_opt_image()
        )
            .prop_map(|(size, exact, attempts, blocked_views, unblocked_views, image)| {
                Reply::Snapshot(SnapshotReport {
                    size,
                    exact,
                    attempts,
                    blocked_views,
                    unblocked_views,
                    image,
                })
            }),
        (
            arb_mechanism(),
            arb_mechanism(),
            any::<bool>(),
            any::<u32>(),
            any::<u64>()
        )
            .prop_map(|(from, to, exact, views, extra_pages)| Reply::MechanismSet {
                from,
                to,
                exact,
                views,
                extra_pages
            }),
        (arb_policy(), any::<u16>()).prop_map(|(previous, method)| Reply::PolicySet { previous, method }),
        any::<u64>().prop_map(|len| Reply::Metrics { len }),
        Just(Reply::DaemonProcess),
        proptest::collection::vec(
            (
                any::<u32>(),
                any::<u16>(),
                any::<u16>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            ),
            0..20
        )
        .prop_map(|v| Reply::SyncManyDone(
            v.into_iter()
                .map(
                    |(bo, status, mechanism, pages, bytes, duration_ns)| cohmem_proto::BoSyncOutcome {
                        bo,
                        status,
                        mechanism,
                        pages,
                        bytes,
                        duration_ns
                    }
                )
                .collect()
        )),
        (unicode_up_to(extra(MAX_NAME)), any::<u32>(), any::<u32>(), any::<u16>()).prop_map(
            |(connector, mode_width, mode_height, damage_path)| Reply::Shown {
                connector,
                mode_width,
                mode_height,
                damage_path
            }
        ),
        // Codes go through from_wire so that they are canonical
        // (ErrorCode::Other(1) would legitimately come back as BadFrame).
        (any::<u16>(), unicode_up_to(extra(MAX_ERROR_MESSAGE))).prop_map(|(code, message)| {
            Reply::Error {
                code: ErrorCode::from_wire(code),
                message,
            }
        }),
    ]
}

fn arb_reply() -> impl Strategy<Value = Reply> {
    arb_reply_with(false)
}

/// Arbitrary bytes: mostly short, sometimes up to 70000 (past MAX_FRAME),
/// sometimes behind a valid header so that the body decoders are reached.
fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    let known_kind = prop::sample::select(
        REQUEST_KINDS
            .iter()
            .chain(REPLY_KINDS.iter())
            .copied()
            .collect::<Vec<u16>>(),
    );
    prop_oneof![
        6 => vec(any::<u8>(), 0..=64),
        6 => (known_kind, any::<u32>(), vec(any::<u8>(), 0..=128)).prop_map(|(k, id, body)| {
            let mut f = Vec::with_capacity(HEADER_LEN + body.len());
            f.extend_from_slice(&k.to_le_bytes());
            f.extend_from_slice(&0u16.to_le_bytes());
            f.extend_from_slice(&id.to_le_bytes());
            f.extend_from_slice(&body);
            f
        }),
        1 => (0..=70000usize, any::<u64>()).prop_map(|(len, seed)| fill(len, seed)),
        1 => (
            prop::sample::select(vec![
                kind::R_SYNC_DONE,
                kind::R_STATS,
                kind::R_DIRTY_STATE,
                kind::R_ERROR,
            ]),
            (MAX_FRAME - 64)..=(MAX_FRAME + 64),
            any::<u64>()
        )
            .prop_map(|(k, len, seed)| {
                let mut f = fill(len, seed);
                f[0..2].copy_from_slice(&k.to_le_bytes());
                f[2..4].fill(0);
                f
            }),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Append(Vec<u8>),
    SetKind(u16),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        2 => vec(any::<u8>(), 1..=16).prop_map(Mutation::Append),
        1 => any::<u16>().prop_map(Mutation::SetKind),
    ]
}

fn mutate(frame: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip(i, x) => {
            if !frame.is_empty() {
                let at = i.index(frame.len());
                frame[at] ^= x;
            }
        }
        Mutation::Truncate(i) => {
            let at = i.index(frame.len() + 1);
            frame.truncate(at);
        }
        Mutation::Append(b) => frame.extend_from_slice(b),
        Mutation::SetKind(k) => {
            if frame.len() >= 2 {
                frame[0..2].copy_from_slice(&k.to_le_bytes());
            }
        }
    }
}

/// Prefix lengths to try: all of them for small frames, a sample for big ones.
fn prefix_lengths(len: usize, picks: &[Index]) -> Vec<usize> {
    if len <= 300 {
        (0..len).collect()
    } else {
        let mut v: Vec<usize> = picks.iter().map(|i| i.index(len)).collect();
        v.extend([0, 1, HEADER_LEN - 1, HEADER_LEN, len - 8, len - 1]);
        v
    }
}

/// A frame the decoder accepted must re-encode to a frame of the same size
/// that decodes to the same value (the decoded value is within the limits,
/// so encode cuts nothing).
fn check_request_canonical(f: &[u8]) {
    if let Ok((id, req)) = Request::decode(f) {
        let again = req.encode(id);
        assert_eq!(again.len(), f.len(), "accepted {req:?} from a frame of another size");
        assert_eq!(Request::decode(&again), Ok((id, req)));
    }
}

fn check_reply_canonical(f: &[u8]) {
    if let Ok((id, rep)) = Reply::decode(f) {
        let again = rep.encode(id);
        assert_eq!(again.len(), f.len(), "accepted {rep:?} from a frame of another size");
        assert_eq!(Reply::decode(&again), Ok((id, rep)));
    }
}

fn cheap() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        ..ProptestConfig::default()
    }
}

fn expensive() -> ProptestConfig {
    ProptestConfig {
        cases: 200,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------- properties

proptest! {
    #![proptest_config(cheap())]

    /// (a) Decoding arbitrary bytes never panics; whatever is accepted is canonical.
    #[test]
    fn decode_never_panics(bytes in arb_bytes()) {
        let rq = Request::decode(&bytes);
        let rp = Reply::decode(&bytes);
        if bytes.len() > MAX_FRAME {
            prop_assert_eq!(rq, Err(DecodeError::TooLong(bytes.len())));
            prop_assert_eq!(rp, Err(DecodeError::TooLong(bytes.len())));
        }
        check_request_canonical(&bytes);
        check_reply_canonical(&bytes);
        let _ = peek_request_id(&bytes);
    }

    /// (b) Requests round-trip with their request id.
    #[test]
    fn request_round_trip(req in arb_request(), id in any::<u32>()) {
        let f = req.encode(id);
        prop_assert!(f.len() <= MAX_FRAME);
        prop_assert_eq!(le_u16(&f, 0), req.kind());
        prop_assert_eq!(le_u16(&f, 2), 0);
        prop_assert_eq!(peek_request_id(&f), id);
        prop_assert_eq!(Request::decode(&f), Ok((id, req)));
        // A request is never mistaken for a reply.
        prop_assert_eq!(Reply::decode(&f), Err(DecodeError::UnknownKind(le_u16(&f, 0))));
    }

    /// (b) Replies (every variant, lists and strings within the limits)
    /// round-trip with their request id.
    #[test]
    fn reply_round_trip(rep in arb_reply(), id in any::<u32>()) {
        let f = rep.encode(id);
        prop_assert!(f.len() <= MAX_FRAME);
        prop_assert_eq!(le_u16(&f, 0), rep.kind());
        prop_assert_eq!(peek_request_id(&f), id);
        prop_assert_eq!(Reply::decode(&f), Ok((id, rep)));
        prop_assert_eq!(Request::decode(&f), Err(DecodeError::UnknownKind(le_u16(&f, 0))));
    }

    /// (c) Mutated request frames decode to Ok or Err without panicking.
    #[test]
    fn mutated_requests(req in arb_request(), id in any::<u32>(),
                        muts in vec(arb_mutation(), 1..=4)) {
        let mut f = req.encode(id);
        for m in &muts {
            mutate(&mut f, m);
        }
        let _ = Request::decode(&f);
        let _ = Reply::decode(&f);
        check_request_canonical(&f);
    }

    /// (c) Every strict prefix of a valid request frame is rejected
    /// (every message has an exact size determined by bytes before its end).
    #[test]
    fn truncated_requests_rejected(req in arb_request(), id in any::<u32>()) {
        let f = req.encode(id);
        for n in 0..f.len() {
            prop_assert!(Request::decode(&f[..n]).is_err(), "prefix {} of {:?} accepted", n, req);
        }
    }
}

proptest! {
    #![proptest_config(expensive())]

    /// (c) Mutated reply frames decode to Ok or Err without panicking.
    #[test]
    fn mutated_replies(rep in arb_reply(), id in any::<u32>(),
                       muts in vec(arb_mutation(), 1..=4)) {
        let mut f = rep.encode(id);
        for m in &muts {
            mutate(&mut f, m);
        }
        let _ = Request::decode(&f);
        let _ = Reply::decode(&f);
        check_reply_canonical(&f);
    }

    /// (c) Truncating a valid reply frame by one byte or more never decodes
    /// to the same value; in fact it never decodes at all.
    #[test]
    fn truncated_replies_rejected(rep in arb_reply(), id in any::<u32>(),
                                  picks in vec(any::<Index>(), 16)) {
        let f = rep.encode(id);
        for n in prefix_lengths(f.len(), &picks) {
            let d = Reply::decode(&f[..n]);
            prop_assert_ne!(&d, &Ok((id, rep.clone())), "prefix {} decodes to the same value", n);
            prop_assert!(d.is_err(), "prefix {} of a {}-byte frame accepted: {:?}", n, f.len(), d);
        }
    }

    /// (d) Encoded replies never exceed MAX_FRAME, even when the lists and
    /// strings are over their limits; encode cuts them to a prefix and sets
    /// the truncated flag where the format has one.
    #[test]
    fn encode_respects_max_frame(rep in arb_reply_with(true), id in any::<u32>()) {
        let f = rep.encode(id);
        prop_assert!(f.len() <= MAX_FRAME, "{} bytes", f.len());
        let (got_id, got) = Reply::decode(&f).expect("encoded reply must decode");
        prop_assert_eq!(got_id, id);
        match (&rep, &got) {
            (Reply::SyncDone(a), Reply::SyncDone(b)) => {
                let n = a.runs.len().min(MAX_REPORTED_RUNS);
                prop_assert_eq!(&b.runs[..], &a.runs[..n]);
                prop_assert_eq!(b.runs_truncated, a.runs_truncated || n < a.runs.len());
                prop_assert_eq!(b.run_count, a.run_count);
                prop_assert_eq!(b.method, a.method);
                match (&a.damage, &b.damage) {
                    (None, None) => {}
                    (Some(da), Some(db)) if da.rects.len() <= MAX_DAMAGE_RECTS => prop_assert_eq!(da, db),
                    // Over the cap the encoder keeps MAX_DAMAGE_RECTS
                    // rectangles; at least the first 255 are the given ones
                    // (the last may be the given one or a union covering
                    // the rest), and `merged` is never cleared.
                    (Some(da), Some(db)) => {
                        prop_assert_eq!(db.rects.len(), MAX_DAMAGE_RECTS);
                        prop_assert_eq!(&db.rects[..MAX_DAMAGE_RECTS - 1], &da.rects[..MAX_DAMAGE_RECTS - 1]);
                        prop_assert!(db.merged || !da.merged);
                    }
                    (da, db) => prop_assert!(false, "damage {:?} came back as {:?}", da, db),
                }
            }
            (Reply::DirtyState(a), Reply::DirtyState(b)) => {
                let n = a.runs.len().min(MAX_REPORTED_RUNS);
                prop_assert_eq!(&b.runs[..], &a.runs[..n]);
                prop_assert_eq!(b.truncated, a.truncated || n < a.runs.len());
                let strip = |d: &DirtyStateReport| DirtyStateReport {
                    truncated: false,
                    runs: Vec::new(),
                    ..d.clone()
                };
                prop_assert_eq!(strip(b), strip(a));
            }
            (Reply::Stats(a), Reply::Stats(b)) => {
                let nc = a.connections.len().min(MAX_STATS_CONNECTIONS);
                let nb = a.bos.len().min(MAX_STATS_BOS);
                prop_assert_eq!(&b.connections[..], &a.connections[..nc]);
                prop_assert_eq!(&b.bos[..], &a.bos[..nb]);
                prop_assert_eq!(
                    b.truncated,
                    a.truncated || nc < a.connections.len() || nb < a.bos.len()
                );
                prop_assert!(a.daemon.backend.starts_with(&b.daemon.backend));
                prop_assert_eq!(&b.daemon.backend, &cut(a.daemon.backend.clone(), MAX_NAME));
            }
            (Reply::Error { code: ca, message: ma }, Reply::Error { code: cb, message: mb }) => {
                prop_assert_eq!(ca, cb);
                prop_assert_eq!(mb, &cut(ma.clone(), MAX_ERROR_MESSAGE));
            }
            (Reply::Shown { connector: ca, .. }, Reply::Shown { connector: cb, .. }) => {
                prop_assert_eq!(cb, &cut(ca.clone(), MAX_NAME));
                let strip = |r: &Reply| match r {
                    Reply::Shown { mode_width, mode_height, damage_path, .. } => (*mode_width, *mode_height, *damage_path),
                    _ => (0, 0, 0),
                };
                prop_assert_eq!(strip(&rep), strip(&got));
            }
            (a, b) => prop_assert_eq!(a, b),
        }
    }

    /// (e) A SYNC_DONE run count over MAX_REPORTED_RUNS is OverLimit, whatever follows.
    #[test]
    fn sync_done_count_over_limit(n in (MAX_REPORTED_RUNS + 1)..=(u16::MAX as usize),
                                  present in 0..=(MAX_REPORTED_RUNS + 1)) {
        let f = sync_done_frame(n as u16, present);
        prop_assert!(f.len() <= MAX_FRAME);
        prop_assert_eq!(Reply::decode(&f), Err(over("reported runs", n, MAX_REPORTED_RUNS)));
    }

    /// (e) A DIRTY_STATE run count over MAX_REPORTED_RUNS is OverLimit, whatever follows.
    #[test]
    fn dirty_state_count_over_limit(n in (MAX_REPORTED_RUNS + 1)..=(u16::MAX as usize),
                                    present in 0..=(MAX_REPORTED_RUNS + 1)) {
        let f = dirty_state_frame(n as u16, present);
        prop_assert!(f.len() <= MAX_FRAME);
        prop_assert_eq!(Reply::decode(&f), Err(over("dirty runs", n, MAX_REPORTED_RUNS)));
    }

    /// (e) STATS row counts over their limits are OverLimit, whatever follows.
    #[test]
    fn stats_counts_over_limit(nc in 0..=(u16::MAX as usize), nb in 0..=(u16::MAX as usize),
                               name_len in 0..=255usize) {
        let (nc_present, nb_present) = (nc.min(MAX_STATS_CONNECTIONS), nb.min(MAX_STATS_BOS));
        let f = stats_frame(name_len, nc as u16, nc_present, nb as u16, nb_present);
        let d = Reply::decode(&f);
        if name_len > MAX_NAME {
            prop_assert_eq!(d, Err(over("backend length", name_len, MAX_NAME)));
        } else if nc > MAX_STATS_CONNECTIONS {
            prop_assert_eq!(d, Err(over("connection rows", nc, MAX_STATS_CONNECTIONS)));
        } else if nb > MAX_STATS_BOS {
            prop_assert_eq!(d, Err(over("bo rows", nb, MAX_STATS_BOS)));
        } else {
            let (_, rep) = d.expect("within limits");
            match rep {
                Reply::Stats(s) => {
                    prop_assert_eq!(s.connections.len(), nc);
                    prop_assert_eq!(s.bos.len(), nb);
                    prop_assert_eq!(s.daemon.backend.len(), name_len);
                }
                other => prop_assert!(false, "decoded {:?}", other),
            }
        }
    }

    /// (e) A damage rectangle count over MAX_DAMAGE_RECTS is OverLimit,
    /// whatever follows.
    #[test]
    fn damage_count_over_limit(n in (MAX_DAMAGE_RECTS + 1)..=(u16::MAX as usize),
                               present in 0..=(MAX_DAMAGE_RECTS + 1), merged in any::<u8>()) {
        let f = damage_frame(n as u16, present, merged);
        prop_assert!(f.len() <= MAX_FRAME);
        prop_assert_eq!(Reply::decode(&f), Err(over("damage.count", n, MAX_DAMAGE_RECTS)));
    }

    /// (e) Rectangle lists within the cap decode, with the count of
    /// rectangles the frame carries; a nonzero `merged` byte reads as true.
    #[test]
    fn damage_counts_within_limit(n in 0..=MAX_DAMAGE_RECTS, merged in any::<u8>()) {
        let f = damage_frame(n as u16, n, merged);
        match Reply::decode(&f) {
            Ok((1, Reply::SyncDone(SyncReport { damage: Some(d), .. }))) => {
                prop_assert_eq!(d.rects.len(), n);
                prop_assert_eq!(d.merged, merged != 0);
                if n > 0 {
                    prop_assert_eq!(d.rects[n - 1], Rect { x: n as u32 - 1, y: 2, w: 3, h: 4 });
                }
            }
            other => prop_assert!(false, "decoded {:?}", other),
        }
    }

    /// (e) The presence byte of an image description or of damage is 0 or
    /// 1; anything else is BadValue.
    #[test]
    fn presence_bytes_other_than_0_or_1_are_bad_values(p in 2..=u8::MAX) {
        for (frame, field) in [
            (image_frame(kind::R_BO, p), "image.present"),
            (image_frame(kind::R_RESOURCE, p), "image.present"),
            (image_frame(kind::R_SNAPSHOT, p), "image.present"),
            (damage_presence_frame(p), "damage.present"),
        ] {
            prop_assert_eq!(
                Reply::decode(&frame),
                Err(DecodeError::BadValue { field, value: u64::from(p) })
            );
        }
    }

    /// (e) An ERROR message length over MAX_ERROR_MESSAGE is OverLimit.
    #[test]
    fn error_length_over_limit(len in (MAX_ERROR_MESSAGE + 1)..=(u16::MAX as usize),
                               present in 0..=(MAX_ERROR_MESSAGE + 8)) {
        let mut f = header(kind::R_ERROR, 5);
        put16(&mut f, ErrorCode::Internal.to_wire());
        put16(&mut f, len as u16);
        f.resize(f.len() + present, b'x');
        prop_assert_eq!(Reply::decode(&f), Err(over("message length", len, MAX_ERROR_MESSAGE)));
    }
}

// ------------------------------------------------ hand-built frames for (e)

fn over(field: &'static str, value: usize, limit: usize) -> DecodeError {
    DecodeError::OverLimit {
        field,
        value: value as u64,
        limit: limit as u64,
    }
}

fn header(kind: u16, id: u32) -> Vec<u8> {
    let mut f = Vec::new();
    put16(&mut f, kind);
    put16(&mut f, 0);
    put32(&mut f, id);
    f
}
fn put16(f: &mut Vec<u8>, v: u16) {
    f.extend_from_slice(&v.to_le_bytes());
}
fn put32(f: &mut Vec<u8>, v: u32) {
    f.extend_from_slice(&v.to_le_bytes());
}
fn put64(f: &mut Vec<u8>, v: u64) {
    f.extend_from_slice(&v.to_le_bytes());
}

/// R_SYNC_DONE whose count field says `count` and which actually carries
/// `present` runs.
fn sync_done_frame(count: u16, present: usize) -> Vec<u8> {
    let mut f = header(kind::R_SYNC_DONE, 1);
    put64(&mut f, 10); // pages
    put64(&mut f, 40960); // bytes
    put32(&mut f, 3); // run_count
    put16(&mut f, 1); // mechanism
    put16(&mut f, 2); // method
    put16(&mut f, 0); // flags
    put64(&mut f, 1234); // duration_ns
    put32(&mut f, 2); // views_scanned
    put16(&mut f, count);
    for i in 0..present {
        put32(&mut f, i as u32);
        put32(&mut f, 1);
    }
    f.push(0); // damage: absent (a byte BO)
    f
}

/// R_SYNC_DONE of an image BO without runs whose damage says `count`
/// rectangles and actually carries `present` (rect i = (i, 2, 3, 4)).
fn damage_frame(count: u16, present: usize, merged: u8) -> Vec<u8> {
    let mut f = sync_done_frame(0, 0);
    f.pop(); // the absent-damage byte
    f.push(1); // damage: present
    f.push(merged);
    put16(&mut f, count);
    for i in 0..present {
        put32(&mut f, i as u32);
        put32(&mut f, 2);
        put32(&mut f, 3);
        put32(&mut f, 4);
    }
    f
}

/// R_SYNC_DONE without runs whose damage presence byte is `present`,
/// followed by an empty damage (merged 0, count 0).
fn damage_presence_frame(present: u8) -> Vec<u8> {
    let mut f = damage_frame(0, 0, 0);
    let at = f.len() - 4;
    f[at] = present;
    f
}

/// R_BO, R_RESOURCE or R_SNAPSHOT whose image presence byte is `present`,
/// followed by a 32-byte image description.
fn image_frame(kind: u16, present: u8) -> Vec<u8> {
    let mut f = header(kind, 4);
    // The fixed part before the presence byte: R_BO <IQQ> and R_RESOURCE
    // <QQI> 20 bytes, R_SNAPSHOT <QBIII> 21.
    let fixed = if kind == kind::R_SNAPSHOT { 21 } else { 20 };
    f.resize(HEADER_LEN + fixed, 0);
    f.push(present);
    put32(&mut f, 640); // width
    put32(&mut f, 480); // height
    put32(&mut f, fourcc::XRGB8888);
    put32(&mut f, 2560); // pitch
    put64(&mut f, 0); // offset
    put64(&mut f, MODIFIER_LINEAR);
    f
}

/// R_DIRTY_STATE whose count field says `count` and which actually carries
/// `present` runs.
fn dirty_state_frame(count: u16, present: usize) -> Vec<u8> {
    let mut f = header(kind::R_DIRTY_STATE, 3);
    put16(&mut f, 1); // method
    put32(&mut f, 2); // change_count
    put32(&mut f, 1); // users
    put64(&mut f, 100_000); // pages (N)
    put64(&mut f, 0); // start
    put64(&mut f, 2 * present as u64); // end
    put64(&mut f, present as u64); // dirty_pages
    f.push(0); // truncated
    put16(&mut f, count);
    for i in 0..present {
        put32(&mut f, 2 * i as u32);
        put32(&mut f, 1);
    }
    f
}

/// R_STATS with the given name length, row counts and rows actually present.
fn stats_frame(name_len: usize, nc: u16, nc_present: usize, nb: u16, nb_present: usize) -> Vec<u8> {
    let mut f = header(kind::R_STATS, 2);
    f.resize(HEADER_LEN + 104, 7); // the fixed daemon counters
    f.push(name_len as u8);
    f.resize(f.len() + name_len, b'n');
    f.push(0); // truncated
    put16(&mut f, nc);
    f.resize(f.len() + 32 * nc_present, 1);
    put16(&mut f, nb);
    f.resize(f.len() + 74 * nb_present, 2);
    f
}

#[test]
fn sync_done_one_run_over_the_limit_is_over_limit() {
    let f = sync_done_frame((MAX_REPORTED_RUNS + 1) as u16, MAX_REPORTED_RUNS + 1);
    assert!(f.len() <= MAX_FRAME);
    assert_eq!(
        Reply::decode(&f),
        Err(over("reported runs", MAX_REPORTED_RUNS + 1, MAX_REPORTED_RUNS))
    );
    // The same frame at exactly the limit is fine.
    let f = sync_done_frame(MAX_REPORTED_RUNS as u16, MAX_REPORTED_RUNS);
    match Reply::decode(&f) {
        Ok((1, Reply::SyncDone(s))) => assert_eq!(s.runs.len(), MAX_REPORTED_RUNS),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn dirty_state_one_run_over_the_limit_is_over_limit() {
    let f = dirty_state_frame((MAX_REPORTED_RUNS + 1) as u16, MAX_REPORTED_RUNS + 1);
    assert!(f.len() <= MAX_FRAME);
    assert_eq!(
        Reply::decode(&f),
        Err(over("dirty runs", MAX_REPORTED_RUNS + 1, MAX_REPORTED_RUNS))
    );
    // u16::MAX with no runs present: the limit check comes first.
    let f = dirty_state_frame(u16::MAX, 0);
    assert_eq!(
        Reply::decode(&f),
        Err(over("dirty runs", u16::MAX as usize, MAX_REPORTED_RUNS))
    );
    // The same frame at exactly the limit is fine.
    let f = dirty_state_frame(MAX_REPORTED_RUNS as u16, MAX_REPORTED_RUNS);
    assert_eq!(f.len(), HEADER_LEN + 45 + 8 * MAX_REPORTED_RUNS);
    match Reply::decode(&f) {
        Ok((3, Reply::DirtyState(d))) => {
            assert_eq!(d.runs.len(), MAX_REPORTED_RUNS);
            assert_eq!(
                d.runs[1],
                Run {
                    first_page: 2,
                    pages: 1
                }
            );
            assert!(!d.truncated);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn stats_rows_over_the_limit_are_over_limit() {
    let c = MAX_STATS_CONNECTIONS + 1;
    let f = stats_frame(4, c as u16, c, 0, 0);
    assert_eq!(
        Reply::decode(&f),
        Err(over("connection rows", c, MAX_STATS_CONNECTIONS))
    );
    let b = MAX_STATS_BOS + 1;
    let f = stats_frame(4, 0, 0, b as u16, b);
    assert_eq!(Reply::decode(&f), Err(over("bo rows", b, MAX_STATS_BOS)));
    // The backend length is a u8 and MAX_NAME is 255: it cannot be over.
    assert_eq!(MAX_NAME, u8::MAX as usize);
    // At the limits: accepted.
    let f = stats_frame(
        MAX_NAME,
        MAX_STATS_CONNECTIONS as u16,
        MAX_STATS_CONNECTIONS,
        MAX_STATS_BOS as u16,
        MAX_STATS_BOS,
    );
    assert!(Reply::decode(&f).is_ok());
}

#[test]
fn counts_that_do_not_fit_the_frame_are_rejected_before_allocation() {
    // Within the limit but the runs are missing: rejected (as OverLimit
    // against the remaining bytes), not read element by element.
    // 81 bytes remain: the 10 runs and the damage presence byte that
    // R_SYNC_DONE gained with image BOs (was 80).
    let f = sync_done_frame(100, 10);
    assert_eq!(Reply::decode(&f), Err(over("reported runs", 800, 81)));
    let f = dirty_state_frame(100, 10);
    assert_eq!(Reply::decode(&f), Err(over("dirty runs", 800, 80)));
    let f = stats_frame(0, 3, 2, 0, 0);
    assert!(matches!(
        Reply::decode(&f),
        Err(DecodeError::OverLimit {
            field: "connection rows",
            ..
        })
    ));
    // Connection rows are 32 bytes and BO rows 74: two BO rows with one
    // present need 148 bytes where 74 remain.
    let f = stats_frame(0, 1, 1, 2, 1);
    assert_eq!(Reply::decode(&f), Err(over("bo rows", 148, 74)));
    let f = stats_frame(0, 1, 1, 2, 2);
    assert!(Reply::decode(&f).is_ok());
}

#[test]
fn frames_over_max_frame_are_too_long() {
    let f = vec![0u8; MAX_FRAME + 1];
    assert_eq!(Request::decode(&f), Err(DecodeError::TooLong(MAX_FRAME + 1)));
    assert_eq!(Reply::decode(&f), Err(DecodeError::TooLong(MAX_FRAME + 1)));
    let mut f = Request::Destroy { bo: 1 }.encode(1);
    f.resize(MAX_FRAME, 0);
    assert_eq!(
        Request::decode(&f),
        Err(DecodeError::Trailing(MAX_FRAME - HEADER_LEN - 4))
    );
}

// ------------------------------------------------- (d) with maximal lists

#[test]
fn maximal_replies_fit_max_frame() {
    let runs = vec![
        Run {
            first_page: u32::MAX,
            pages: u32::MAX
        };
        3 * MAX_REPORTED_RUNS
    ];
    let sync = Reply::SyncDone(SyncReport {
        run_count: u32::MAX,
        runs,
        ..SyncReport::default()
    });
    let f = sync.encode(u32::MAX);
    // + 1: the damage presence byte (absent) that R_SYNC_DONE gained with
    // image BOs (was 40 + 8·4096 = 32816 bytes).
    assert_eq!(f.len(), HEADER_LEN + 41 + 8 * MAX_REPORTED_RUNS);
    assert_eq!(f.len(), 32817);
    assert!(f.len() <= MAX_FRAME);
    match Reply::decode(&f) {
        Ok((_, Reply::SyncDone(s))) => {
            assert!(s.runs_truncated);
            assert_eq!(s.runs.len(), MAX_REPORTED_RUNS);
        }
        other => panic!("unexpected {other:?}"),
    }

    // The largest reply of version 1 (README §1): every run and every
    // damage rectangle of an image BO.
    let rect = Rect {
        x: u32::MAX,
        y: u32::MAX,
        w: u32::MAX,
        h: u32::MAX,
    };
    let image_sync = Reply::SyncDone(SyncReport {
        run_count: u32::MAX,
        runs: vec![
            Run {
                first_page: u32::MAX,
                pages: u32::MAX
            };
            MAX_REPORTED_RUNS
        ],
        damage: Some(ImageDamage {
            rects: vec![rect; MAX_DAMAGE_RECTS],
            merged: true,
        }),
        ..SyncReport::default()
    });
    let f = image_sync.encode(u32::MAX);
    assert_eq!(
        f.len(),
        HEADER_LEN + 41 + 8 * MAX_REPORTED_RUNS + 3 + 16 * MAX_DAMAGE_RECTS
    );
    assert_eq!(f.len(), 36916);
    assert!(f.len() <= MAX_FRAME);
    match Reply::decode(&f) {
        Ok((_, Reply::SyncDone(s))) => {
            assert!(!s.runs_truncated);
            assert_eq!(s.runs.len(), MAX_REPORTED_RUNS);
            let d = s.damage.expect("damage");
            assert_eq!(d.rects.len(), MAX_DAMAGE_RECTS);
            assert!(d.merged);
        }
        other => panic!("unexpected {other:?}"),
    }

    // The largest reply of version 1 without an image BO.
    let dirty = Reply::DirtyState(DirtyStateReport {
        runs: vec![
            Run {
                first_page: u32::MAX,
                pages: u32::MAX
            };
            MAX_REPORTED_RUNS + 1
        ],
        ..DirtyStateReport::default()
    });
    let f = dirty.encode(u32::MAX);
    assert_eq!(f.len(), HEADER_LEN + 45 + 8 * MAX_REPORTED_RUNS);
    assert_eq!(f.len(), 32821);
    assert!(f.len() <= MAX_FRAME);
    match Reply::decode(&f) {
        Ok((_, Reply::DirtyState(d))) => {
            assert!(d.truncated);
            assert_eq!(d.runs.len(), MAX_REPORTED_RUNS);
        }
        other => panic!("unexpected {other:?}"),
    }

    let stats = Reply::Stats(StatsReport {
        daemon: DaemonStats {
            backend: "\u{10FFFF}".repeat(100),
            ..DaemonStats::default()
        },
        connections: vec![ConnectionRow::default(); 1000],
        bos: vec![BoRow::default(); 1000],
        truncated: false,
    });
    let f = stats.encode(1);
    assert_eq!(
        f.len(),
        // 4-byte characters cut on a character boundary: 252 of 255 bytes.
        HEADER_LEN + 110 + MAX_NAME / 4 * 4 + 32 * MAX_STATS_CONNECTIONS + 74 * MAX_STATS_BOS
    );
    assert_eq!(f.len(), 27506);
    assert!(f.len() <= MAX_FRAME);
    match Reply::decode(&f) {
        Ok((_, Reply::Stats(s))) => {
            assert!(s.truncated);
            assert_eq!(s.daemon.backend.len(), MAX_NAME / 4 * 4); // 63 four-byte chars
        }
        other => panic!("unexpected {other:?}"),
    }

    let err = Reply::error(ErrorCode::Kernel, "a".repeat(100_000));
    let f = err.encode(1);
    assert_eq!(f.len(), HEADER_LEN + 4 + MAX_ERROR_MESSAGE);
    assert!(f.len() <= MAX_FRAME);
}

// ------------------------------------------ byte layout of proto/README.md

/// Body sizes (bytes after the header) as documented in the README.
#[test]
fn documented_body_sizes() {
    let req = |r: Request| r.encode(0).len() - HEADER_LEN;
    assert_eq!(
        req(Request::Hello {
            min_version: 1,
            max_version: 1,
            caps: 0
        }),
        12
    );
    assert_eq!(req(Request::CreateBo { size: 0, flags: 0 }), 12);
    assert_eq!(req(Request::ImportBo), 0);
    assert_eq!(
        req(Request::AttachMm {
            token: 0,
            uffd_features: 0,
            flags: 0
        }),
        20
    );
    assert_eq!(
        req(Request::Map {
            bo: 0,
            addr: 0,
            len: 0,
            offset: 0
        }),
        28
    );
    assert_eq!(req(Request::Unmap { bo: 0, view: 0 }), 8);
    assert_eq!(req(Request::Sync { bo: 0, flags: 0 }), 8);
    assert_eq!(req(Request::Destroy { bo: 0 }), 4);
    assert_eq!(req(Request::Stats { flags: 0 }), 4);
    assert_eq!(req(Request::ExportResource { bo: 0, index: 0 }), 8);
    assert_eq!(
        req(Request::AddResource {
            bo: 0,
            offset: 0,
            len: 0
        }),
        20
    );
    assert_eq!(req(Request::ReleaseResource { bo: 0, index: 0 }), 8);
    assert_eq!(req(Request::Scan { bo: 0 }), 4);
    assert_eq!(
        req(Request::Transfer {
            bo: 0,
            index: 0,
            flags: 0
        }),
        12
    );
    assert_eq!(req(Request::ClearResource { bo: 0, index: 0 }), 8);
    assert_eq!(req(Request::ClearAll { bo: 0 }), 4);
    assert_eq!(req(Request::DirtyState { bo: 0 }), 4);
    assert_eq!(
        req(Request::Damage {
            bo: 0,
            offset: 0,
            len: 0
        }),
        20
    );
    assert_eq!(
        req(Request::SetMechanism {
            mechanism: Mechanism::UffdSync
        }),
        4
    );
    assert_eq!(
        req(Request::SetPolicy {
            id: 0,
            policy: BoPolicy::Full
        }),
        12
    );
    assert_eq!(req(Request::Metrics), 0);
    assert_eq!(req(Request::WatchDaemon), 0);
    assert_eq!(
        req(Request::CreateImage {
            width: 0,
            height: 0,
            fourcc: 0,
            flags: 0
        }),
        16
    );

    let rep = |r: Reply| r.encode(0).len() - HEADER_LEN;
    assert_eq!(
        rep(Reply::Hello {
            version: 1,
            caps: 0,
            max_frame: 0,
            page_size: 0,
            max_bo_size: 0
        }),
        28
    );
    // 21 = the old 20 + the image presence byte; + 32 with an image.
    let image = Some(ImageInfo {
        width: 0,
        height: 0,
        fourcc: 0,
        pitch: 0,
        offset: 0,
        modifier: 0,
    });
    assert_eq!(
        rep(Reply::Bo {
            bo: 0,
            size: 0,
            id: 0,
            image: None
        }),
        21
    );
    assert_eq!(
        rep(Reply::Bo {
            bo: 0,
            size: 0,
            id: 0,
            image
        }),
        21 + 32
    );
    assert_eq!(
        rep(Reply::MmAttached {
            mechanism: Mechanism::UffdAsync,
            exact: true,
            joined: true,
            mm_id: 0
        }),
        12
    );
    assert_eq!(rep(Reply::Mapped { view: 0 }), 4);
    assert_eq!(rep(Reply::Ok), 0);
    // 41 = the old 40 + the damage presence byte.
    assert_eq!(rep(Reply::SyncDone(SyncReport::default())), 41);
    assert_eq!(rep(Reply::Stats(StatsReport::default())), 110);
    assert_eq!(
        rep(Reply::Stats(StatsReport {
            daemon: DaemonStats {
                backend: "ab".into(),
                ..DaemonStats::default()
            },
            connections: vec![ConnectionRow::default(); 3],
            bos: vec![BoRow::default(); 5],
            truncated: false,
        })),
        110 + 2 + 32 * 3 + 74 * 5
    );
    // 21 = the old 20 + the image presence byte; + 32 with an image.
    assert_eq!(
        rep(Reply::Resource {
            size: 0,
            offset: 0,
            pitch: 0,
            image: None
        }),
        21
    );
    assert_eq!(
        rep(Reply::Resource {
            size: 0,
            offset: 0,
            pitch: 0,
            image
        }),
        21 + 32
    );
    assert_eq!(
        rep(Reply::ReadbackDone {
            synced_pages: 0,
            bytes: 0,
            duration_ns: 0
        }),
        24
    );
    assert_eq!(req(Request::Readback { bo: 0, flags: 0 }), 8);
    assert_eq!(rep(Reply::ResourceAdded { index: 0 }), 4);
    assert_eq!(rep(Reply::Scanned(ScanReport::default())), 16);
    assert_eq!(rep(Reply::DirtyState(DirtyStateReport::default())), 45);
    // 22 = the old 21 + the image presence byte; + 32 with an image.
    assert_eq!(rep(Reply::Snapshot(SnapshotReport::default())), 22);
    assert_eq!(
        rep(Reply::Snapshot(SnapshotReport {
            image,
            ..SnapshotReport::default()
        })),
        22 + 32
    );
    assert_eq!(
        rep(Reply::MechanismSet {
            from: Mechanism::UffdAsync,
            to: Mechanism::UffdSync,
            exact: true,
            views: 0,
            extra_pages: 0
        }),
        17
    );
    assert_eq!(
        rep(Reply::DirtyState(DirtyStateReport {
            runs: vec![
                Run {
                    first_page: 0,
                    pages: 1
                };
                3
            ],
            ..DirtyStateReport::default()
        })),
        45 + 8 * 3
    );
    assert_eq!(
        rep(Reply::SyncDone(SyncReport {
            runs: vec![
                Run {
                    first_page: 0,
                    pages: 1
                };
                3
            ],
            ..SyncReport::default()
        })),
        41 + 8 * 3
    );
    // Damage: presence byte, u8 merged, u16 count, then 16 bytes a rectangle.
    for n in [0, 1, 5, MAX_DAMAGE_RECTS] {
        assert_eq!(
            rep(Reply::SyncDone(SyncReport {
                runs: vec![
                    Run {
                        first_page: 0,
                        pages: 1
                    };
                    3
                ],
                damage: Some(ImageDamage {
                    rects: vec![Rect::default(); n],
                    merged: false
                }),
                ..SyncReport::default()
            })),
            41 + 8 * 3 + 3 + 16 * n
        );
    }
    assert_eq!(
        rep(Reply::PolicySet {
            previous: BoPolicy::Auto,
            method: 0
        }),
        4
    );
    assert_eq!(rep(Reply::Metrics { len: 0 }), 8);
    assert_eq!(rep(Reply::DaemonProcess), 0);
    assert_eq!(rep(Reply::error(ErrorCode::Internal, "")), 4);
}

/// Field offsets (from the start of the body) as documented in the README.
#[test]
fn documented_field_offsets() {
    const B: usize = HEADER_LEN;

    let f = Request::Hello {
        min_version: 0x0102,
        max_version: 0x0304,
        caps: 0x1122_3344_5566_7788,
    }
    .encode(0xdead_beef);
    assert_eq!(le_u16(&f, 0), 0x0001);
    assert_eq!(le_u16(&f, 2), 0);
    assert_eq!(le_u32(&f, 4), 0xdead_beef);
    assert_eq!(le_u16(&f, B), 0x0102);
    assert_eq!(le_u16(&f, B + 2), 0x0304);
    assert_eq!(le_u64(&f, B + 4), 0x1122_3344_5566_7788);

    let f = Request::AttachMm {
        token: 1,
        uffd_features: 2,
        flags: ATTACH_WITH_FDS,
    }
    .encode(0);
    assert_eq!((le_u64(&f, B), le_u64(&f, B + 8), le_u32(&f, B + 16)), (1, 2, 1));

    // Requested mechanism in bits 8..16 of the flags, next to the offer bits.
    let f = Request::AttachMm {
        token: 1,
        uffd_features: 2,
        flags: ATTACH_WITH_FDS
            | ATTACH_WITH_SYNC_UFFD
            | ATTACH_SYNC_ALL_FAULTS
            | (Mechanism::UffdSync as u32) << ATTACH_MECHANISM_SHIFT,
    }
    .encode(0);
    assert_eq!(le_u32(&f, B + 16), 0x0207);
    assert_eq!(f[B + 16..B + 20], [0x07, 0x02, 0, 0]);

    let f = Request::Map {
        bo: 9,
        addr: 10,
        len: 11,
        offset: 12,
    }
    .encode(0);
    assert_eq!(le_u32(&f, B), 9);
    assert_eq!(le_u64(&f, B + 4), 10);
    assert_eq!(le_u64(&f, B + 12), 11);
    assert_eq!(le_u64(&f, B + 20), 12);

    let f = Reply::Hello {
        version: 1,
        caps: 3,
        max_frame: 4,
        page_size: 5,
        max_bo_size: 6,
    }
    .encode(0);
    assert_eq!(le_u16(&f, B), 1);
    assert_eq!(le_u16(&f, B + 2), 0);
    assert_eq!(le_u64(&f, B + 4), 3);
    assert_eq!(le_u32(&f, B + 12), 4);
    assert_eq!(le_u32(&f, B + 16), 5);
    assert_eq!(le_u64(&f, B + 20), 6);

    let f = Reply::Bo {
        bo: 1,
        size: 2,
        id: 3,
        image: None,
    }
    .encode(0);
    assert_eq!((le_u32(&f, B), le_u64(&f, B + 4), le_u64(&f, B + 12)), (1, 2, 3));
    assert_eq!(f[B + 20], 0, "image absent");
    assert_eq!(f.len(), B + 21);

    // An image BO: the presence byte 1, then <IIIIQQ>.
    let image = ImageInfo {
        width: 640,
        height: 480,
        fourcc: fourcc::XRGB8888,
        pitch: 2816,
        offset: 0x40,
        modifier: 0x0100_0000_0000_0001,
    };
    let f = Reply::Bo {
        bo: 1,
        size: 0x14_a000,
        id: 3,
        image: Some(image),
    }
    .encode(0);
    assert_eq!(le_u16(&f, 0), 0x8002);
    assert_eq!(
        (le_u32(&f, B), le_u64(&f, B + 4), le_u64(&f, B + 12)),
        (1, 0x14_a000, 3)
    );
    assert_eq!(f[B + 20], 1, "image present");
    assert_eq!(le_u32(&f, B + 21), 640);
    assert_eq!(le_u32(&f, B + 25), 480);
    assert_eq!(le_u32(&f, B + 29), 0x3432_5258);
    assert_eq!(&f[B + 29..B + 33], b"XR24");
    assert_eq!(le_u32(&f, B + 33), 2816);
    assert_eq!(le_u64(&f, B + 37), 0x40);
    assert_eq!(le_u64(&f, B + 45), 0x0100_0000_0000_0001);
    assert_eq!(f.len(), B + 53);

    let f = Request::CreateImage {
        width: 1920,
        height: 1080,
        fourcc: fourcc::ARGB8888,
        flags: 0x8000_0001,
    }
    .encode(0x0102_0304);
    assert_eq!(le_u16(&f, 0), 0x0019);
    assert_eq!(le_u16(&f, 2), 0);
    assert_eq!(le_u32(&f, 4), 0x0102_0304);
    assert_eq!(le_u32(&f, B), 1920);
    assert_eq!(le_u32(&f, B + 4), 1080);
    assert_eq!(le_u32(&f, B + 8), 0x3432_5241);
    assert_eq!(&f[B + 8..B + 12], b"AR24");
    assert_eq!(le_u32(&f, B + 12), 0x8000_0001);
    assert_eq!(f.len(), 8 + 16);

    let f = Reply::MmAttached {
        mechanism: Mechanism::SoftDirty,
        exact: false,
        joined: true,
        mm_id: 77,
    }
    .encode(0);
    assert_eq!((le_u16(&f, B), le_u16(&f, B + 2), le_u64(&f, B + 4)), (3, 2, 77));

    let f = Reply::SyncDone(SyncReport {
        pages: 1,
        bytes: 2,
        run_count: 3,
        mechanism: 4,
        method: Method::MkWrite as u16,
        runs_truncated: true,
        duration_ns: 5,
        views_scanned: 6,
        runs: vec![Run {
            first_page: 7,
            pages: 8,
        }],
        damage: None,
    })
    .encode(0);
    assert_eq!(le_u64(&f, B), 1);
    assert_eq!(le_u64(&f, B + 8), 2);
    assert_eq!(le_u32(&f, B + 16), 3);
    assert_eq!(le_u16(&f, B + 20), 4);
    assert_eq!(le_u16(&f, B + 22), 2);
    assert_eq!(le_u16(&f, B + 24), 1);
    assert_eq!(le_u64(&f, B + 26), 5);
    assert_eq!(le_u32(&f, B + 34), 6);
    assert_eq!(le_u16(&f, B + 38), 1);
    assert_eq!((le_u32(&f, B + 40), le_u32(&f, B + 44)), (7, 8));
    // The damage presence byte (absent) after the runs: one byte more than
    // before image BOs (B + 48).
    assert_eq!(f[B + 48], 0);
    assert_eq!(f.len(), B + 49);

    let f = Reply::SyncDone(SyncReport {
        runs: vec![Run {
            first_page: 7,
            pages: 8,
        }],
        damage: Some(ImageDamage {
            rects: vec![Rect { x: 1, y: 2, w: 3, h: 4 }, Rect { x: 5, y: 6, w: 7, h: 8 }],
            merged: true,
        }),
        ..SyncReport::default()
    })
    .encode(0);
    assert_eq!(le_u16(&f, B + 38), 1);
    assert_eq!((le_u32(&f, B + 40), le_u32(&f, B + 44)), (7, 8));
    assert_eq!(f[B + 48], 1, "damage present");
    assert_eq!(f[B + 49], 1, "merged");
    assert_eq!(le_u16(&f, B + 50), 2);
    assert_eq!(
        [B + 52, B + 56, B + 60, B + 64, B + 68, B + 72, B + 76, B + 80].map(|at| le_u32(&f, at)),
        [1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(f.len(), B + 84);

    let f = Reply::Stats(StatsReport {
        daemon: DaemonStats {
            uptime_ms: 1,
            connections: 2,
            mm_subscriptions: 3,
            bos: 4,
            views: 5,
            syncs: 6,
            pages_uploaded: 7,
            bytes_uploaded: 8,
            upload_failures: 9,
            errors: 10,
            method_switches: 24,
            extra_pages: 25,
            sync_retries: 26,
            sync_exclusive: 27,
            faults: 28,
            backend: "abc".into(),
        },
        connections: vec![ConnectionRow {
            id: 11,
            pid: 12,
            uid: 13,
            bos: 14,
            views: 15,
            requests: 16,
        }],
        bos: vec![BoRow {
            id: 17,
            size: 18,
            views: 19,
            dirty_pages: 20,
            syncs: 21,
            pages_uploaded: 22,
            bytes_uploaded: 23,
            method: Method::PageTable as u16,
            sync_retries: 29,
            sync_exclusive: 30,
            policy: BoPolicy::Full as u16,
            flags: BO_ROW_PAUSED,
        }],
        truncated: true,
    })
    .encode(0);
    assert_eq!(le_u64(&f, B), 1);
    assert_eq!(le_u32(&f, B + 8), 2);
    assert_eq!(le_u32(&f, B + 12), 3);
    assert_eq!(le_u32(&f, B + 16), 4);
    assert_eq!(le_u32(&f, B + 20), 5);
    assert_eq!(le_u64(&f, B + 24), 6);
    assert_eq!(le_u64(&f, B + 32), 7);
    assert_eq!(le_u64(&f, B + 40), 8);
    assert_eq!(le_u64(&f, B + 48), 9);
    assert_eq!(le_u64(&f, B + 56), 10);
    assert_eq!(le_u64(&f, B + 64), 24);
    assert_eq!(le_u64(&f, B + 72), 25);
    assert_eq!(le_u64(&f, B + 80), 26);
    assert_eq!(le_u64(&f, B + 88), 27);
    assert_eq!(le_u64(&f, B + 96), 28);
    assert_eq!(f[B + 104], 3);
    assert_eq!(&f[B + 105..B + 108], b"abc");
    let l = 3;
    assert_eq!(f[B + 105 + l], 1);
    assert_eq!(le_u16(&f, B + 106 + l), 1);
    let c = B + 108 + l;
    assert_eq!(le_u64(&f, c), 11);
    assert_eq!(le_u32(&f, c + 8), 12);
    assert_eq!(le_u32(&f, c + 12), 13);
    assert_eq!(le_u32(&f, c + 16), 14);
    assert_eq!(le_u32(&f, c + 20), 15);
    assert_eq!(le_u64(&f, c + 24), 16);
    assert_eq!(le_u16(&f, c + 32), 1);
    let b = c + 34;
    assert_eq!(le_u64(&f, b), 17);
    assert_eq!(le_u64(&f, b + 8), 18);
    assert_eq!(le_u32(&f, b + 16), 19);
    assert_eq!(le_u64(&f, b + 20), 20);
    assert_eq!(le_u64(&f, b + 28), 21);
    assert_eq!(le_u64(&f, b + 36), 22);
    assert_eq!(le_u64(&f, b + 44), 23);
    assert_eq!(le_u16(&f, b + 52), 1);
    assert_eq!(le_u64(&f, b + 54), 29);
    assert_eq!(le_u64(&f, b + 62), 30);
    assert_eq!(le_u16(&f, b + 70), 3);
    assert_eq!(le_u16(&f, b + 72), 1);
    assert_eq!(f.len(), b + 74);
    assert_eq!(f.len(), B + 110 + l + 32 + 74);

    let f = Request::SetPolicy {
        id: 0x1122_3344_5566_7788,
        policy: BoPolicy::PageTable,
    }
    .encode(0);
    assert_eq!(le_u16(&f, 0), 0x0016);
    assert_eq!(le_u64(&f, B), 0x1122_3344_5566_7788);
    assert_eq!(le_u16(&f, B + 8), 2);
    assert_eq!(le_u16(&f, B + 10), 0);
    let f = Reply::PolicySet {
        previous: BoPolicy::MkWrite,
        method: Method::PageTable as u16,
    }
    .encode(0);
    assert_eq!(le_u16(&f, 0), 0x800f);
    assert_eq!(le_u16(&f, B), 1);
    assert_eq!(le_u16(&f, B + 2), 1);
    let f = Reply::Metrics { len: 77 }.encode(0);
    assert_eq!(le_u16(&f, 0), 0x8010);
    assert_eq!(le_u64(&f, B), 77);

    let f = Reply::Resource {
        size: 1,
        offset: 2,
        pitch: 4096,
        image: None,
    }
    .encode(0);
    assert_eq!((le_u64(&f, B), le_u64(&f, B + 8)), (1, 2));
    assert_eq!(u32::from_le_bytes(f[B + 16..B + 20].try_into().unwrap()), 4096);
    assert_eq!(f[B + 20], 0, "image absent");
    assert_eq!(f.len(), B + 21);

    let f = Reply::Resource {
        size: 0x14_a000,
        offset: 0,
        pitch: 2816,
        image: Some(ImageInfo {
            width: 700,
            height: 480,
            fourcc: fourcc::RGB565,
            pitch: 2816,
            offset: 0,
            modifier: MODIFIER_LINEAR,
        }),
    }
    .encode(0);
    assert_eq!(le_u16(&f, 0), 0x8008);
    assert_eq!(le_u32(&f, B + 16), 2816);
    assert_eq!(f[B + 20], 1, "image present");
    assert_eq!(
        (
            le_u32(&f, B + 21),
            le_u32(&f, B + 25),
            le_u32(&f, B + 29),
            le_u32(&f, B + 33)
        ),
        (700, 480, 0x3631_4752, 2816)
    );
    assert_eq!(&f[B + 29..B + 33], b"RG16");
    assert_eq!((le_u64(&f, B + 37), le_u64(&f, B + 45)), (0, 0));
    assert_eq!(f.len(), B + 53);

    let f = Request::CreateBo {
        size: 0x1_0000_0000,
        flags: CREATE_NO_RESOURCE,
    }
    .encode(0);
    assert_eq!((le_u64(&f, B), le_u32(&f, B + 8)), (0x1_0000_0000, 1));

    let f = Request::AddResource {
        bo: 1,
        offset: 0x2000,
        len: 0x3000,
    }
    .encode(0);
    assert_eq!(le_u16(&f, 0), 0x000b);
    assert_eq!(
        (le_u32(&f, B), le_u64(&f, B + 4), le_u64(&f, B + 12)),
        (1, 0x2000, 0x3000)
    );

    for (r, k) in [
        (Request::ReleaseResource { bo: 4, index: 5 }, 0x000c),
        (Request::ClearResource { bo: 4, index: 5 }, 0x000f),
    ] {
        let f = r.encode(0);
        assert_eq!(le_u16(&f, 0), k);
        assert_eq!((le_u32(&f, B), le_u32(&f, B + 4)), (4, 5));
    }
    for (r, k) in [
        (Request::Scan { bo: 6 }, 0x000d),
        (Request::ClearAll { bo: 6 }, 0x0010),
        (Request::DirtyState { bo: 6 }, 0x0011),
    ] {
        let f = r.encode(0);
        assert_eq!(le_u16(&f, 0), k);
        assert_eq!(le_u32(&f, B), 6);
    }

    let f = Request::Transfer {
        bo: 7,
        index: 8,
        flags: SYNC_REPORT_RUNS,
    }
    .encode(0);
    assert_eq!(le_u16(&f, 0), 0x000e);
    assert_eq!((le_u32(&f, B), le_u32(&f, B + 4), le_u32(&f, B + 8)), (7, 8, 1));

    let f = Reply::ResourceAdded { index: 9 }.encode(0);
    assert_eq!(le_u16(&f, 0), 0x8009);
    assert_eq!(le_u32(&f, B), 9);

    let f = Reply::Scanned(ScanReport {
        method: Method::PageTable as u16,
        switched_to: Method::MkWrite as u16,
        change_count: 3,
        num_marked: 0x1_0000_0004,
    })
    .encode(0);
    assert_eq!(le_u16(&f, 0), 0x800a);
    assert_eq!(le_u16(&f, B), 1);
    assert_eq!(le_u16(&f, B + 2), 2);
    assert_eq!(le_u32(&f, B + 4), 3);
    assert_eq!(le_u64(&f, B + 8), 0x1_0000_0004);
    assert_eq!(f.len(), B + 16);

    let f = Reply::DirtyState(DirtyStateReport {
        method: Method::MkWrite as u16,
        change_count: 1,
        users: 2,
        pages: 3,
        start: 4,
        end: 5,
        dirty_pages: 6,
        truncated: true,
        runs: vec![
            Run {
                first_page: 7,
                pages: 8,
            },
            Run {
                first_page: 9,
                pages: 10,
            },
        ],
    })
    .encode(0);
    assert_eq!(le_u16(&f, 0), 0x800b);
    assert_eq!(le_u16(&f, B), 2);
    assert_eq!(le_u32(&f, B + 2), 1);
    assert_eq!(le_u32(&f, B + 6), 2);
    assert_eq!(le_u64(&f, B + 10), 3);
    assert_eq!(le_u64(&f, B + 18), 4);
    assert_eq!(le_u64(&f, B + 26), 5);
    assert_eq!(le_u64(&f, B + 34), 6);
    assert_eq!(f[B + 42], 1);
    assert_eq!(le_u16(&f, B + 43), 2);
    assert_eq!((le_u32(&f, B + 45), le_u32(&f, B + 49)), (7, 8));
    assert_eq!((le_u32(&f, B + 53), le_u32(&f, B + 57)), (9, 10));
    assert_eq!(f.len(), B + 61);

    let f = Reply::error(ErrorCode::NeedMmFds, "hé").encode(0);
    assert_eq!((le_u16(&f, B), le_u16(&f, B + 2)), (11, 3));
    assert_eq!(&f[B + 4..], "hé".as_bytes());
}

/// Kinds, flags, capability bits, mechanisms and error codes as documented.
#[test]
fn documented_constants() {
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(
        REQUEST_KINDS,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29],
        "request kinds are 0x0001..=0x001d"
    );
    assert_eq!(kind::CREATE_IMAGE, 0x0019);
    assert_eq!(kind::IMPORT_IMAGE, 0x001a);
    assert_eq!(kind::SHOW, 0x001b);
    assert_eq!(kind::R_SHOWN, 0x8012);
    assert_eq!(
        REPLY_KINDS,
        [
            0x8001, 0x8002, 0x8003, 0x8004, 0x8005, 0x8006, 0x8007, 0x8008, 0x8009, 0x800a, 0x800b, 0x800c, 0x800d,
            0x800e, 0x800f, 0x8010, 0x8011, 0x8012, 0x8013, 0x80ff
        ]
    );
    assert_eq!(
        (
            SYNC_REPORT_RUNS,
            STATS_CONNECTIONS,
            STATS_BOS,
            ATTACH_WITH_FDS,
            CREATE_NO_RESOURCE
        ),
        (1, 1, 2, 1, 1)
    );
    assert_eq!(
        (ATTACH_WITH_SYNC_UFFD, ATTACH_SYNC_ALL_FAULTS, ATTACH_MECHANISM_SHIFT),
        (2, 4, 8)
    );
    assert_eq!(
        [
            caps::UFFD_ASYNC,
            caps::UFFD_SYNC,
            caps::SOFT_DIRTY,
            caps::EXPORT_RESOURCE,
            caps::SYNC_RUNS,
            caps::IMAGES,
            caps::MAP_EVENTS,
            caps::ALL
        ],
        [1, 2, 4, 8, 16, 32, 64, 127]
    );
    // Image formats (drm_fourcc.h), as the README's table gives them.
    assert_eq!(
        [fourcc::XRGB8888, fourcc::ARGB8888, fourcc::RGB565],
        [0x3432_5258, 0x3432_5241, 0x3631_4752]
    );
    assert_eq!(
        [fourcc::XRGB8888, fourcc::ARGB8888, fourcc::RGB565].map(fourcc::name),
        ["XR24", "AR24", "RG16"]
    );
    assert_eq!(
        [fourcc::XRGB8888, fourcc::ARGB8888, fourcc::RGB565, 0].map(fourcc::bytes_per_pixel),
        [Some(4), Some(4), Some(2), None]
    );
    assert_eq!(fourcc::name(0x0000_0001), "0x00000001");
    assert_eq!((MODIFIER_LINEAR, MAX_DAMAGE_RECTS), (0, 256));
    for (v, m) in [
        Mechanism::None,
        Mechanism::UffdAsync,
        Mechanism::UffdSync,
        Mechanism::SoftDirty,
        Mechanism::Full,
        Mechanism::Explicit,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(m as u16, v as u16);
        assert_eq!(Mechanism::from_wire(v as u16), Ok(m));
    }
    assert!(Mechanism::from_wire(6).is_err());
    for (v, m) in [Method::None, Method::PageTable, Method::MkWrite]
        .into_iter()
        .enumerate()
    {
        assert_eq!(m as u16, v as u16);
        assert_eq!(Method::from_wire(v as u16), Ok(m));
    }
    assert_eq!(
        [Method::None, Method::PageTable, Method::MkWrite].map(Method::name),
        ["none", "pagetable", "mkwrite"]
    );
    assert_eq!(
        Method::from_wire(3),
        Err(DecodeError::BadValue {
            field: "method",
            value: 3
        })
    );
    let codes = [
        ErrorCode::BadFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::NotNegotiated,
        ErrorCode::UnknownRequest,
        ErrorCode::BadFds,
        ErrorCode::NoSuchBo,
        ErrorCode::NoSuchView,
        ErrorCode::InvalidArgument,
        ErrorCode::TooLarge,
        ErrorCode::LimitExceeded,
        ErrorCode::NeedMmFds,
        ErrorCode::NoMm,
        ErrorCode::Unsupported,
        ErrorCode::Kernel,
        ErrorCode::Gpu,
        ErrorCode::Internal,
        ErrorCode::PermissionDenied,
    ];
    for (i, c) in codes.into_iter().enumerate() {
        assert_eq!(c.to_wire(), i as u16 + 1);
    }
    assert_eq!(ErrorCode::from_wire(0), ErrorCode::Other(0));
    assert_eq!(ErrorCode::from_wire(18), ErrorCode::Other(18));
    assert_eq!(
        (MAX_FRAME, MAX_ERROR_MESSAGE, MAX_NAME, MAX_REPORTED_RUNS),
        (65536, 1024, 255, 4096)
    );
    assert_eq!(
        (MAX_STATS_CONNECTIONS, MAX_STATS_BOS, MAX_BO_SIZE, MAX_FDS),
        (256, 256, 64 << 30, 6)
    );
}

/// File descriptors per message as documented.
#[test]
fn documented_fd_counts() {
    let create = Request::CreateBo { size: 4096, flags: 0 };
    let attach = |flags| Request::AttachMm {
        token: 1,
        uffd_features: 0,
        flags,
    };
    assert_eq!(create.fd_count(), (0, 0));
    assert_eq!(Request::ImportBo.fd_count(), (1, 1));
    assert_eq!(attach(0).fd_count(), (0, 0));
    assert_eq!(attach(ATTACH_WITH_FDS).fd_count(), (2, 2));
    assert_eq!(attach(ATTACH_WITH_SYNC_UFFD).fd_count(), (1, 1));
    assert_eq!(
        attach(ATTACH_WITH_FDS | ATTACH_WITH_SYNC_UFFD | ATTACH_SYNC_ALL_FAULTS).fd_count(),
        (3, 3)
    );
    assert_eq!(attach(ATTACH_WITH_FDS | ATTACH_WITH_SYNC_UFFD).fd_count(), (3, 3));
    assert_eq!(
        attach(ATTACH_WITH_SYNC_UFFD | ATTACH_SYNC_ALL_FAULTS).fd_count(),
        (1, 1)
    );
    // Neither ATTACH_SYNC_ALL_FAULTS alone nor the requested mechanism
    // (bits 8..16) carries an fd.
    assert_eq!(attach(ATTACH_SYNC_ALL_FAULTS).fd_count(), (0, 0));
    let ask = |m: Mechanism| (m as u32) << ATTACH_MECHANISM_SHIFT;
    assert_eq!(attach(ask(Mechanism::UffdSync)).fd_count(), (0, 0));
    assert_eq!(attach(ask(Mechanism::UffdAsync) | ATTACH_WITH_FDS).fd_count(), (2, 2));
    assert_eq!(attach(ATTACH_WITH_CLEAR_REFS).fd_count(), (2, 2));
    assert_eq!(
        attach(ATTACH_WITH_FDS | ATTACH_WITH_SYNC_UFFD | ATTACH_WITH_CLEAR_REFS).fd_count(),
        (5, 5)
    );
    assert_eq!(attach(ATTACH_WITH_MAPS).fd_count(), (1, 1));
    assert_eq!(
        attach(ATTACH_WITH_FDS | ATTACH_WITH_SYNC_UFFD | ATTACH_WITH_CLEAR_REFS | ATTACH_WITH_MAPS).fd_count(),
        (6, 6)
    );
    assert_eq!(MAX_FDS, 6, "ATTACH_MM with every offer carries MAX_FDS fds");
    assert_eq!(Request::Sync { bo: 1, flags: 0 }.fd_count(), (0, 0));
    assert_eq!(Request::ExportResource { bo: 1, index: 0 }.fd_count(), (0, 0));
    let tracker_requests = [
        Request::CreateBo {
            size: 4096,
            flags: CREATE_NO_RESOURCE,
        },
        Request::AddResource {
            bo: 1,
            offset: 0,
            len: 4096,
        },
        Request::ReleaseResource { bo: 1, index: 0 },
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
            len: 1,
        },
    ];
    for r in &tracker_requests {
        assert_eq!(r.fd_count(), (0, 0), "{r:?}");
    }
    for (rep, r) in [
        (Reply::ResourceAdded { index: 0 }, &tracker_requests[1]),
        (Reply::Ok, &tracker_requests[2]),
        (Reply::Scanned(ScanReport::default()), &tracker_requests[3]),
        (Reply::SyncDone(SyncReport::default()), &tracker_requests[4]),
        (Reply::Ok, &tracker_requests[5]),
        (Reply::Ok, &tracker_requests[6]),
        (Reply::DirtyState(DirtyStateReport::default()), &tracker_requests[7]),
    ] {
        assert_eq!(rep.fd_count(r), 0, "{rep:?} to {r:?}");
    }

    let bo = Reply::Bo {
        bo: 1,
        size: 4096,
        id: 1,
        image: None,
    };
    assert_eq!(bo.fd_count(&create), 1);
    assert_eq!(bo.fd_count(&Request::ImportBo), 0);
    let res = Reply::Resource {
        size: 1,
        offset: 0,
        pitch: 4096,
        image: None,
    };
    assert_eq!(res.fd_count(&Request::ExportResource { bo: 1, index: 0 }), 1);

    // CREATE_IMAGE carries no fd; its R_BO carries the memfd, as CREATE_BO's.
    let create_image = Request::CreateImage {
        width: 64,
        height: 64,
        fourcc: fourcc::XRGB8888,
        flags: 0,
    };
    assert_eq!(create_image.fd_count(), (0, 0));
    let image = ImageInfo {
        width: 64,
        height: 64,
        fourcc: fourcc::XRGB8888,
        pitch: 256,
        offset: 0,
        modifier: MODIFIER_LINEAR,
    };
    let image_bo = Reply::Bo {
        bo: 2,
        size: 16384,
        id: 2,
        image: Some(image),
    };
    assert_eq!(image_bo.fd_count(&create_image), 1);
    assert_eq!(bo.fd_count(&create_image), 1);
    // An image BO imported by its memfd: the fd came with the request.
    assert_eq!(image_bo.fd_count(&Request::ImportBo), 0);
    let image_res = Reply::Resource {
        size: 16384,
        offset: 0,
        pitch: 256,
        image: Some(image),
    };
    assert_eq!(image_res.fd_count(&Request::ExportResource { bo: 2, index: 0 }), 1);
    assert_eq!(
        Reply::error(ErrorCode::Unsupported, "fourcc").fd_count(&create_image),
        0
    );
    let damaged = Reply::SyncDone(SyncReport {
        damage: Some(ImageDamage::default()),
        ..SyncReport::default()
    });
    assert_eq!(damaged.fd_count(&Request::Sync { bo: 2, flags: 0 }), 0);
    assert_eq!(Reply::Ok.fd_count(&Request::Destroy { bo: 1 }), 0);
    assert_eq!(Reply::error(ErrorCode::BadFds, "").fd_count(&Request::ImportBo), 0);
}

/// The hex example in the README (caps `ALL`, 0x7f since `MAP_EVENTS`).
#[test]
fn readme_hello_example() {
    let f = Request::Hello {
        min_version: 1,
        max_version: 1,
        caps: caps::ALL,
    }
    .encode(1);
    assert_eq!(f, [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0x7f, 0, 0, 0, 0, 0, 0, 0]);
}

// ------------------------------------------------------------- image BOs

/// Exact frame sizes of the messages image BOs added or grew.
#[test]
fn image_message_sizes() {
    let create = Request::CreateImage {
        width: 1,
        height: 1,
        fourcc: fourcc::XRGB8888,
        flags: 0,
    };
    assert_eq!(create.encode(1).len(), 8 + 16);
    let info = ImageInfo {
        width: 1,
        height: 1,
        fourcc: fourcc::XRGB8888,
        pitch: 64,
        offset: 0,
        modifier: MODIFIER_LINEAR,
    };
    // Before image BOs: R_BO 8 + 20, R_RESOURCE 8 + 20, R_SYNC_DONE 8 + 40.
    let bo = |image| Reply::Bo {
        bo: 1,
        size: 4096,
        id: 1,
        image,
    };
    assert_eq!(bo(None).encode(1).len(), 8 + 20 + 1);
    assert_eq!(bo(Some(info)).encode(1).len(), 8 + 20 + 1 + 32);
    let res = |image| Reply::Resource {
        size: 4096,
        offset: 0,
        pitch: 64,
        image,
    };
    assert_eq!(res(None).encode(1).len(), 8 + 20 + 1);
    assert_eq!(res(Some(info)).encode(1).len(), 8 + 20 + 1 + 32);
    // R_SNAPSHOT was 8 + 21.
    let snap = |image| {
        Reply::Snapshot(SnapshotReport {
            image,
            ..SnapshotReport::default()
        })
    };
    assert_eq!(snap(None).encode(1).len(), 8 + 21 + 1);
    assert_eq!(snap(Some(info)).encode(1).len(), 8 + 21 + 1 + 32);
    let f = snap(Some(info)).encode(1);
    assert_eq!(le_u16(&f, 0), 0x800c);
    assert_eq!(f[HEADER_LEN + 21], 1, "image present");
    assert_eq!(le_u32(&f, HEADER_LEN + 22), 1);
    assert_eq!(le_u32(&f, HEADER_LEN + 30), fourcc::XRGB8888);
    assert_eq!(le_u32(&f, HEADER_LEN + 34), 64);
    let sync = |damage| {
        Reply::SyncDone(SyncReport {
            damage,
            ..SyncReport::default()
        })
    };
    assert_eq!(sync(None).encode(1).len(), 8 + 40 + 1);
    assert_eq!(sync(Some(ImageDamage::default())).encode(1).len(), 8 + 40 + 1 + 3);
    let full = ImageDamage {
        rects: vec![Rect::default(); MAX_DAMAGE_RECTS],
        merged: true,
    };
    assert_eq!(sync(Some(full)).encode(1).len(), 8 + 40 + 1 + 3 + 16 * 256);
}

/// Every new message and optional field round-trips, present and absent.
#[test]
fn image_messages_round_trip() {
    let info = ImageInfo {
        width: 1024,
        height: 768,
        fourcc: fourcc::ARGB8888,
        pitch: 4096,
        offset: 0x100,
        modifier: MODIFIER_LINEAR,
    };
    let create = Request::CreateImage {
        width: 1024,
        height: 768,
        fourcc: fourcc::ARGB8888,
        flags: 0,
    };
    assert_eq!(Request::decode(&create.encode(9)), Ok((9, create.clone())));
    let damage = |n: usize, merged| ImageDamage {
        rects: (0..n as u32)
            .map(|i| Rect {
                x: i,
                y: 2 * i,
                w: 1 + i,
                h: 1,
            })
            .collect(),
        merged,
    };
    let replies = [
        Reply::Bo {
            bo: 1,
            size: 0x30_1000,
            id: 1,
            image: Some(info),
        },
        Reply::Bo {
            bo: 1,
            size: 4096,
            id: 1,
            image: None,
        },
        Reply::Resource {
            size: 0x30_1000,
            offset: 0,
            pitch: 4096,
            image: Some(info),
        },
        Reply::Resource {
            size: 4096,
            offset: 0,
            pitch: 4096,
            image: None,
        },
        Reply::Snapshot(SnapshotReport {
            size: 0x30_1000,
            exact: true,
            attempts: 1,
            blocked_views: 0,
            unblocked_views: 1,
            image: Some(info),
        }),
        Reply::Snapshot(SnapshotReport::default()),
        Reply::SyncDone(SyncReport::default()),
        Reply::SyncDone(SyncReport {
            damage: Some(damage(0, false)),
            ..SyncReport::default()
        }),
        Reply::SyncDone(SyncReport {
            pages: 3,
            run_count: 1,
            runs: vec![Run {
                first_page: 1,
                pages: 3,
            }],
            damage: Some(damage(1, false)),
            ..SyncReport::default()
        }),
        Reply::SyncDone(SyncReport {
            damage: Some(damage(MAX_DAMAGE_RECTS, true)),
            ..SyncReport::default()
        }),
    ];
    for rep in replies {
        let f = rep.encode(7);
        assert_eq!(Reply::decode(&f), Ok((7, rep.clone())), "{rep:?}");
        // Every strict prefix is rejected.
        for n in 0..f.len() {
            assert!(Reply::decode(&f[..n]).is_err(), "prefix {n} of {rep:?}");
        }
    }
}

/// 256 rectangles decode; 257 are OverLimit before any is read.
#[test]
fn damage_count_257_is_over_limit() {
    let f = damage_frame(257, 257, 0);
    assert_eq!(Reply::decode(&f), Err(over("damage.count", 257, MAX_DAMAGE_RECTS)));
    // The count alone decides: no rectangles follow.
    let f = damage_frame(257, 0, 1);
    assert_eq!(Reply::decode(&f), Err(over("damage.count", 257, MAX_DAMAGE_RECTS)));
    let f = damage_frame(u16::MAX, 0, 1);
    assert_eq!(
        Reply::decode(&f),
        Err(over("damage.count", u16::MAX as usize, MAX_DAMAGE_RECTS))
    );
    let f = damage_frame(256, 256, 1);
    match Reply::decode(&f) {
        Ok((1, Reply::SyncDone(s))) => {
            let d = s.damage.expect("damage");
            assert_eq!(d.rects.len(), 256);
            assert!(d.merged);
            assert_eq!(
                d.rects[255],
                Rect {
                    x: 255,
                    y: 2,
                    w: 3,
                    h: 4
                }
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A presence byte of 2 is BadValue, in R_BO, R_RESOURCE, R_SNAPSHOT and
/// R_SYNC_DONE.
#[test]
fn presence_byte_2_is_bad_value() {
    let bad = |field| Err(DecodeError::BadValue { field, value: 2 });
    assert_eq!(Reply::decode(&image_frame(kind::R_BO, 2)), bad("image.present"));
    assert_eq!(Reply::decode(&image_frame(kind::R_RESOURCE, 2)), bad("image.present"));
    assert_eq!(Reply::decode(&image_frame(kind::R_SNAPSHOT, 2)), bad("image.present"));
    assert!(matches!(
        Reply::decode(&image_frame(kind::R_SNAPSHOT, 1)),
        Ok((4, Reply::Snapshot(SnapshotReport { image: Some(_), .. })))
    ));
    assert_eq!(Reply::decode(&damage_presence_frame(2)), bad("damage.present"));
    // The same frames with 1 decode.
    match Reply::decode(&image_frame(kind::R_BO, 1)) {
        Ok((4, Reply::Bo { image: Some(i), .. })) => {
            assert_eq!(
                (i.width, i.height, i.fourcc, i.pitch),
                (640, 480, fourcc::XRGB8888, 2560)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        Reply::decode(&image_frame(kind::R_RESOURCE, 1)),
        Ok((4, Reply::Resource { image: Some(_), .. }))
    ));
    assert!(matches!(
        Reply::decode(&damage_presence_frame(1)),
        Ok((1, Reply::SyncDone(SyncReport { damage: Some(_), .. })))
    ));
    // Absent (0) with the 32 bytes still there: trailing bytes.
    assert_eq!(
        Reply::decode(&image_frame(kind::R_BO, 0)),
        Err(DecodeError::Trailing(32))
    );
    // The reply of a byte BO from before image BOs (no presence byte) is
    // now a truncated frame.
    let mut old = image_frame(kind::R_BO, 0);
    old.truncate(HEADER_LEN + 20);
    assert_eq!(Reply::decode(&old), Err(DecodeError::Truncated("image.present")));
    let mut old = sync_done_frame(1, 1);
    old.pop();
    assert_eq!(Reply::decode(&old), Err(DecodeError::Truncated("damage.present")));
}

/// A rectangle list cut short is rejected: a count whose rectangles do not
/// fit the remaining bytes is OverLimit before anything is allocated (README
/// §6 rule 5, as for runs); a frame cut inside the damage header or a
/// rectangle's fixed fields is Truncated.
#[test]
fn truncated_rect_list_is_rejected() {
    // 3 rectangles announced, 2 present: 48 bytes needed, 32 remain.
    let f = damage_frame(3, 2, 0);
    assert_eq!(Reply::decode(&f), Err(over("damage.count", 48, 32)));
    // One byte short of the last rectangle.
    let mut f = damage_frame(3, 3, 0);
    f.pop();
    assert_eq!(Reply::decode(&f), Err(over("damage.count", 48, 47)));
    // Cut inside the damage header.
    let f = damage_frame(3, 3, 0);
    let rects_at = f.len() - 48;
    assert_eq!(
        Reply::decode(&f[..rects_at - 1]),
        Err(DecodeError::Truncated("damage.count"))
    );
    assert_eq!(
        Reply::decode(&f[..rects_at - 2]),
        Err(DecodeError::Truncated("damage.count"))
    );
    assert_eq!(
        Reply::decode(&f[..rects_at - 3]),
        Err(DecodeError::Truncated("damage.merged"))
    );
    assert_eq!(
        Reply::decode(&f[..rects_at - 4]),
        Err(DecodeError::Truncated("damage.present"))
    );
    // Every prefix of the frame is rejected, none decodes.
    for n in 0..f.len() {
        assert!(Reply::decode(&f[..n]).is_err(), "prefix {n}");
    }
    // Cut inside an image description: the field it ends in is named.
    let f = image_frame(kind::R_BO, 1);
    for (cut, field) in [
        (HEADER_LEN + 21, "image.width"),
        (HEADER_LEN + 24, "image.width"),
        (HEADER_LEN + 25, "image.height"),
        (HEADER_LEN + 29, "image.fourcc"),
        (HEADER_LEN + 33, "image.pitch"),
        (HEADER_LEN + 37, "image.offset"),
        (HEADER_LEN + 45, "image.modifier"),
        (HEADER_LEN + 52, "image.modifier"),
    ] {
        assert_eq!(
            Reply::decode(&f[..cut]),
            Err(DecodeError::Truncated(field)),
            "cut at {cut}"
        );
    }
    // Trailing bytes after a complete rectangle list.
    let mut f = damage_frame(2, 2, 0);
    f.push(0);
    assert_eq!(Reply::decode(&f), Err(DecodeError::Trailing(1)));
}

/// The image layout helpers follow the README: pixel (x, y) at
/// offset + y·pitch + x·cpp.
#[test]
fn image_layout_follows_the_readme() {
    let i = ImageInfo {
        width: 100,
        height: 10,
        fourcc: fourcc::XRGB8888,
        pitch: 512,
        offset: 64,
        modifier: MODIFIER_LINEAR,
    };
    assert_eq!(i.bytes_per_pixel(), 4);
    assert_eq!(i.pixel_offset(0, 0), 64);
    assert_eq!(i.pixel_offset(3, 2), 64 + 2 * 512 + 3 * 4);
    assert_eq!(i.end(), 64 + 9 * 512 + 100 * 4);
    let rgb565 = ImageInfo {
        fourcc: fourcc::RGB565,
        pitch: 256,
        ..i
    };
    assert_eq!(rgb565.pixel_offset(5, 1), 64 + 256 + 10);
    let r = Rect { x: 2, y: 3, w: 4, h: 5 };
    assert!(r.contains(2, 3) && r.contains(5, 7));
    assert!(!r.contains(6, 3) && !r.contains(2, 8) && !r.contains(1, 3));
    assert_eq!(r.area(), 20);
    assert_eq!(
        r.union(&Rect {
            x: 10,
            y: 0,
            w: 1,
            h: 1
        }),
        Rect { x: 2, y: 0, w: 9, h: 8 }
    );
}

#[test]
fn import_image_carries_the_memfd_and_the_32_byte_description() {
    let image = ImageInfo {
        width: 1000,
        height: 10,
        fourcc: fourcc::XRGB8888,
        pitch: 4032,
        offset: 0,
        modifier: MODIFIER_LINEAR,
    };
    let req = Request::ImportImage { image };
    assert_eq!(req.fd_count(), (1, 1), "IMPORT_IMAGE carries the BO's memfd");
    let f = req.encode(9);
    assert_eq!(f.len(), 8 + 32, "header + <IIIIQQ");
    assert_eq!(&f[..2], &kind::IMPORT_IMAGE.to_le_bytes());
    assert_eq!(&f[8 + 12..8 + 16], &4032u32.to_le_bytes(), "pitch at body offset 12");
    assert_eq!(Request::decode(&f).unwrap(), (9, req));
    assert!(
        Request::decode(&f[..f.len() - 1]).is_err(),
        "a cut description is refused"
    );
}
