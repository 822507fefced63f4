//! Issue 15, items 1 and 2: replies a client never reads cost the daemon a
//! bounded amount. Each SNAPSHOT reply carries a memfd with a copy of the
//! BO, alive for as long as the reply lies unread in the socket; one client
//! sending SNAPSHOT after SNAPSHOT without reading made the daemon hold a
//! copy per request (about 1,970 MiB for a 16 MiB BO). A connection now
//! holds at most one such reply unread; further ones are refused with
//! `LimitExceeded` until it reads. Fifty such connections flooding at once
//! leave a bystander's SYNC latency within a bound.
//!
//! One test in this binary: it measures the machine's shared memory.

use std::time::{Duration, Instant};

use cohmem_client::{Connection, ErrorCode};
use cohmem_proto::{Reply, Request};
use cohmem_tests::{quantile, spawn_daemon, time_scale, RawClient, RawOutcome};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// `Shmem` of /proc/meminfo (memfds count there), KiB.
fn shmem_kib() -> anyhow::Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    info.lines()
        .find_map(|l| l.strip_prefix("Shmem:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Shmem in /proc/meminfo"))
}

/// Sends `n` SNAPSHOT requests of BO `id` without reading a reply.
fn flood(raw: &RawClient, id: u64, n: u32) -> anyhow::Result<()> {
    for i in 0..n {
        let frame = Request::Snapshot { id, flags: 0 }.encode(100 + i);
        // The socket's own send: RawClient::send would read the answer.
        raw.sock.send(&frame, &[])?;
    }
    Ok(())
}

/// Reads `n` replies: (snapshots, refusals).
fn drain(raw: &RawClient, n: u32) -> anyhow::Result<(u32, u32)> {
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..n {
        match raw.recv()? {
            RawOutcome::Reply(_, Reply::Snapshot(_), _) => ok += 1,
            RawOutcome::Reply(
                _,
                Reply::Error {
                    code: ErrorCode::LimitExceeded,
                    message,
                },
                _,
            ) if message.contains("unread") => refused += 1,
            other => anyhow::bail!("unexpected reply to a flooded SNAPSHOT: {other:?}"),
        }
    }
    Ok((ok, refused))
}

fn latencies(
    conn: &Connection,
    bo: &cohmem_client::Bo,
    map: &cohmem_client::Mapping,
    span: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let ps = cohmem_sys::page_size() as usize;
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < span {
        map.write_u64((i as usize % 16) * ps, i)?;
        let s = Instant::now();
        bo.sync()?;
        out.push(s.elapsed());
        i += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = conn;
    out.sort();
    Ok(out)
}

#[test]
fn unread_snapshot_replies_hold_at_most_one_copy_per_connection() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let owner = Connection::connect(daemon.socket())?;
    const MIB: u64 = 1 << 20;
    let big = owner.create_bo(16 * MIB)?;
    let raw = RawClient::connect_hello(daemon.socket())?;
    const REQUESTS: u32 = 100;
    let before = shmem_kib()?;
    flood(&raw, big.id(), REQUESTS)?;
    // Until the daemon has answered them all (it reads on: the refusals are
    // small).
    std::thread::sleep(Duration::from_millis(1500) * time_scale());
    let held = shmem_kib()?.saturating_sub(before);
    let (ok, refused) = drain(&raw, REQUESTS)?;
    eprintln!(
        "{REQUESTS} unread SNAPSHOTs of a 16 MiB BO: {ok} served, {refused} refused; shared memory held meanwhile \
         +{} MiB",
        held / 1024
    );
    anyhow::ensure!(ok == 1 && refused == REQUESTS - 1, "{ok} served, {refused} refused");
    anyhow::ensure!(
        held < 48 * 1024,
        "the daemon held {} MiB for unread replies",
        held / 1024
    );
    // Once read, the next one is served.
    let (reply, _) = raw.call(999, &Request::Snapshot { id: big.id(), flags: 0 }, &[])?;
    anyhow::ensure!(matches!(reply, Reply::Snapshot(_)), "after reading: {reply:?}");

    // Fifty flooding connections against a bystander's SYNC.
    let bystander = Connection::connect(daemon.socket())?;
    let bo = bystander.create_bo(16 * cohmem_sys::page_size())?;
    let map = bo.map()?;
    let quiet = latencies(&bystander, &bo, &map, Duration::from_millis(500))?;
    let small = owner.create_bo(MIB)?;
    let floods: Vec<RawClient> = (0..50)
        .map(|_| RawClient::connect_hello(daemon.socket()))
        .collect::<anyhow::Result<_>>()?;
    let id = small.id();
    let handles: Vec<_> = floods
        .into_iter()
        .map(|raw| {
            std::thread::spawn(move || -> anyhow::Result<RawClient> {
                flood(&raw, id, 20)?;
                Ok(raw)
            })
        })
        .collect();
    let stormy = latencies(&bystander, &bo, &map, Duration::from_secs(1))?;
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("flooder panicked"))??;
    }
    let (q50, q99) = (quantile(&quiet, 0.5), quantile(&quiet, 0.99));
    let (s50, s99) = (quantile(&stormy, 0.5), quantile(&stormy, 0.99));
    eprintln!(
        "bystander SYNC: quiet median {q50:?} p99 {q99:?} ({} syncs); during 50 unread floods median {s50:?} p99 \
         {s99:?} ({} syncs)",
        quiet.len(),
        stormy.len()
    );
    let bound = Duration::from_millis(100) * time_scale();
    anyhow::ensure!(
        s99 <= bound,
        "the bystander's p99 {s99:?} during the floods (bound {bound:?})"
    );
    Ok(())
}
