//! Multi-BO sync (issue 19, item 4): one SYNC_MANY request syncs every BO
//! of a frame's submission; each BO's outcome is its own, and every BO's
//! GPU copy is checked byte for byte against the BO.

use cohmem_client::{ClientError, Connection, ErrorCode};
use cohmem_proto::{Reply, Request};
use cohmem_tests::{spawn_daemon, RawClient};
use cohmem_tools::{verify_gpu_copy, SplitMix64};

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

#[test]
fn one_request_syncs_every_bo_of_a_frame_exactly() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    // 300 BOs: more than one request's worth (256), so the library splits.
    let bos: Vec<_> = (0..300).map(|_| conn.create_bo(8 * ps)).collect::<Result<_, _>>()?;
    let maps: Vec<_> = bos.iter().map(|b| b.map()).collect::<Result<_, _>>()?;
    let list: Vec<&cohmem_client::Bo> = bos.iter().collect();
    conn.sync_many(&list)?;
    let mut rng = SplitMix64::new(0x5a11);
    for round in 0..8u8 {
        let mut written = vec![0u64; bos.len()];
        for (i, map) in maps.iter().enumerate() {
            // At most one page a BO and round: sparse enough that vmwgfx's
            // dense-write policy never pauses tracking (which would upload
            // more than was written, exactly as SYNC would).
            let pages: Vec<u64> = (rng.below(2) == 0).then(|| rng.below(8)).into_iter().collect();
            for &p in &pages {
                map.write_u64((p * ps) as usize + 8 * round as usize, rng.next_u64())?;
            }
            written[i] = pages.len() as u64;
        }
        let outcomes = conn.sync_many(&list)?;
        assert_eq!(outcomes.len(), bos.len());
        for (i, o) in outcomes.into_iter().enumerate() {
            let o = o?;
            assert_eq!(o.pages, written[i], "round {round}, BO {i}");
        }
        for (i, bo) in bos.iter().enumerate() {
            let differing = verify_gpu_copy(bo)?;
            assert!(differing.is_empty(), "round {round}, BO {i}: {differing:?}");
        }
    }
    Ok(())
}

#[test]
fn a_foreign_bo_is_refused_and_a_bad_handle_fails_alone() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let other = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let (a, b) = (conn.create_bo(4 * ps)?, other.create_bo(4 * ps)?);
    let map = a.map()?;
    map.write_u64(0, 1)?;
    let e = conn.sync_many(&[&a, &b]).expect_err("a BO of another connection");
    assert!(matches!(e, ClientError::InvalidArgument(_)), "{e}");
    assert_eq!(a.sync()?.pages, 1, "the refused list synced nothing");

    // Raw: a handle that is not open fails in its own outcome, the others
    // are synced; a list over the limit is a bad frame, and the connection
    // goes on.
    let raw = RawClient::connect_hello(daemon.socket())?;
    let (reply, _) = raw.call(2, &Request::ImportBo, &[a.memfd()])?;
    let Reply::Bo { bo: handle, .. } = reply else {
        anyhow::bail!("IMPORT_BO: {reply:?}");
    };
    map.write_u64(ps as usize, 2)?;
    let req = Request::SyncMany {
        flags: 0,
        bos: vec![handle, 999, handle],
    };
    let (reply, _) = raw.call(3, &req, &[])?;
    let Reply::SyncManyDone(outcomes) = reply else {
        anyhow::bail!("SYNC_MANY: {reply:?}");
    };
    assert_eq!(outcomes.len(), 3);
    assert_eq!((outcomes[0].error(), outcomes[0].pages), (None, 1));
    assert_eq!(outcomes[1].error(), Some(ErrorCode::NoSuchBo));
    assert_eq!((outcomes[2].error(), outcomes[2].pages), (None, 0));
    assert!(verify_gpu_copy(&a)?.is_empty());
    let too_many = Request::SyncMany {
        flags: 0,
        bos: vec![handle; 257],
    };
    let (reply, _) = raw.call(4, &too_many, &[])?;
    assert!(
        matches!(reply, Reply::Error { code: ErrorCode::BadFrame, ref message } if message.contains("bo_count")),
        "{reply:?}"
    );
    let (reply, _) = raw.call(
        5,
        &Request::SyncMany {
            flags: 1,
            bos: vec![handle],
        },
        &[],
    )?;
    assert!(
        matches!(
            reply,
            Reply::Error {
                code: ErrorCode::InvalidArgument,
                ..
            }
        ),
        "{reply:?}"
    );
    let (reply, _) = raw.call(6, &Request::Sync { bo: handle, flags: 0 }, &[])?;
    assert!(matches!(reply, Reply::SyncDone(_)), "{reply:?}");
    Ok(())
}
