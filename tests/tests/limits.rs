//! Issue 5 "limits": oversized and absurd requests — a 1 TiB BO, a million
//! BOs, more bytes or connections than a user may have, a flood of requests
//! nobody reads the replies of — each get a typed error naming the limit and
//! its value (or, for the flood, cost only the flooding connection), while
//! another client's syncs keep succeeding with byte-identical GPU copies.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohmem_client::{ClientError, Connection, ErrorCode};
use cohmem_proto::{Reply, Request};
use cohmem_sys::memfd::Memfd;
use cohmem_tests::{bystander, process_rss_kib as rss_kib, spawn_daemon_with, RawClient};

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// The daemon's refusal: its code and message.
fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Daemon { code, message, .. }) => (code, message),
        other => panic!("expected a typed refusal, got {other:?}"),
    }
}

#[test]
fn absurd_requests_get_typed_errors_while_another_client_syncs() -> anyhow::Result<()> {
    const BOS_PER_USER: u64 = 300;
    let daemon = spawn_daemon_with(
        DAEMON,
        &[
            "--max-bos-per-user",
            &BOS_PER_USER.to_string(),
            "--max-bytes-per-user",
            &(256u64 << 20).to_string(),
            "--max-connections-per-user",
            "12",
        ],
    )?;
    let socket = daemon.socket().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let good = bystander(&socket, stop.clone());
    let ps = cohmem_sys::page_size();

    // A 1 TiB BO: over max_bo_size.
    let conn = Connection::connect(&socket)?;
    // The bystander's BO exists before the quotas are run into.
    let t0 = Instant::now();
    while conn.stats(0)?.daemon.views == 0 {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "the bystander never mapped its BO"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, message) = refusal(conn.create_bo(1 << 40));
    assert_eq!(code, ErrorCode::TooLarge, "{message}");
    assert!(message.contains("max_bo_size = 4294967296"), "{message}");
    // ... and as an adopted memfd (sparse: costs nothing here).
    let huge = Memfd::create_sealed("huge", 1 << 40)?;
    let raw = RawClient::connect_hello(&socket)?;
    match raw.call(2, &Request::ImportBo, &[huge.as_fd()])?.0 {
        Reply::Error { code, message } => {
            assert_eq!(code, ErrorCode::TooLarge, "{message}");
            assert!(message.contains("max_bo_size"), "{message}");
        }
        other => panic!("a 1 TiB memfd was adopted: {other:?}"),
    }

    // Bytes per user: 256 MiB, in 100 MiB BOs (the bystander holds 1 MiB).
    let big: Vec<_> = (0..2).map(|_| conn.create_bo(100 << 20)).collect::<Result<_, _>>()?;
    let (code, message) = refusal(conn.create_bo(100 << 20));
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(message.contains("max_bytes_per_user = 268435456"), "{message}");
    drop(big);

    // A million BOs: refused at the per-user limit, with its value.
    let t0 = Instant::now();
    let mut held = Vec::new();
    let refused = loop {
        match conn.create_bo(ps) {
            Ok(bo) => held.push(bo),
            Err(e) => break e,
        }
        assert!(held.len() < 1_000_000);
    };
    let (code, message) = refusal::<()>(Err(refused));
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(
        message.contains(&format!("max_bos_per_user = {BOS_PER_USER}")),
        "{message}"
    );
    // The bystander's BO counts too.
    assert_eq!(held.len() as u64, BOS_PER_USER - 1);
    eprintln!(
        "a million BOs: refused after {} in {:?}: {message}",
        held.len(),
        t0.elapsed()
    );
    drop(held);
    // Released: BOs can be created again.
    drop(conn.create_bo(ps)?);

    // Connections per user: 12 in all (the bystander and its lifeline,
    // `conn`, and `raw` hold some).
    let mut conns = Vec::new();
    let refused = loop {
        match Connection::connect(&socket) {
            Ok(c) => conns.push(c),
            Err(e) => break e,
        }
        assert!(conns.len() < 100, "no connection limit");
    };
    let (code, message) = refusal::<()>(Err(refused));
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(message.contains("max_connections_per_user = 12"), "{message}");
    drop(conns);
    // The daemon releases a closed connection's charge when its thread sees
    // the hang-up, a moment after the close: wait for the slots to free.
    let t0 = Instant::now();
    let flood = loop {
        match RawClient::connect_hello(&socket) {
            Ok(c) => break c,
            Err(e) => anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "closed connections were never released: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(5));
    };

    // A flood: requests sent as fast as the socket takes them, replies never
    // read. The daemon reads one request at a time per connection and stops
    // reading this one when its replies back up, so the flooder's queue is
    // bounded by the socket buffers and its sends block.
    let rss_before = rss_kib(daemon.pid())?;
    flood.sock.set_timeout(Some(Duration::from_millis(500)))?;
    let frame = Request::Stats { flags: 3 }.encode(9);
    let mut sent = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        match flood.sock.send(&frame, &[]) {
            Ok(()) => sent += 1,
            Err(_) => break, // blocked for 500 ms: the queue is full
        }
    }
    let blocked = t0.elapsed() < Duration::from_secs(3);
    let rss_flood = rss_kib(daemon.pid())?;
    drop(flood);
    eprintln!(
        "flood: {sent} requests queued before the sender blocked ({blocked}); daemon RSS {rss_before} → {rss_flood} KiB"
    );
    assert!(blocked, "the flooder was never pushed back ({sent} requests in 3 s)");
    assert!(
        rss_flood < rss_before + 64 * 1024,
        "the flood grew the daemon by {} KiB",
        rss_flood - rss_before
    );

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let verified = good.join().map_err(|_| anyhow::anyhow!("bystander panicked"))??;
    assert!(verified > 0, "the bystander never synced");
    eprintln!("bystander: {verified} verified syncs during the abuse");
    Ok(())
}
