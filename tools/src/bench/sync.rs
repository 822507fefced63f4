//! Sync scenarios through a private daemon: a BO is written by 1 or 4
//! threads through its tracked [`Mapping`], then synced; the client times the
//! writes and the sync round trip (for mechanism `explicit`, one
//! DAMAGE_RANGES request carrying every written run and the sync), and the
//! daemon reports the time it spent.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cohmem_client::{Bo, BoPolicy, Connection, Mapping};
use serde::Serialize;

use super::pattern::{pick_pages, runs_of, Density, Layout};
use super::stats::Summary;
use super::Reps;
use crate::{DaemonProcess, SplitMix64};

/// A private daemon running one mechanism, and a connection to it.
pub struct Session {
    /// What `--mechanism` was given (`auto`, `uffd-async`, …).
    pub mechanism: String,
    /// The daemon (stopped on drop).
    pub daemon: DaemonProcess,
    /// The connection.
    pub conn: Connection,
}

impl Session {
    /// Starts `cohmemd --gpu soft --mechanism MECHANISM` on a temporary socket.
    /// `shadow` is the `auto` mechanism with every BO under the `shadow`
    /// policy ([`Session::prepare`]): the users' no-damage baseline.
    pub fn start(mechanism: &str) -> anyhow::Result<Self> {
        Self::start_with(mechanism, &[])
    }

    /// [`Session::start`] with more daemon arguments.
    pub fn start_with(mechanism: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let daemon_mechanism = if mechanism == "shadow" { "auto" } else { mechanism };
        let mut args = vec!["--mechanism", daemon_mechanism, "--log", "warn"];
        args.extend_from_slice(extra);
        let daemon = DaemonProcess::spawn(&args)
            .with_context(|| format!("starting cohmemd --mechanism {mechanism} {}", extra.join(" ")))?;
        let conn = Connection::connect(daemon.socket())?;
        Ok(Self {
            mechanism: mechanism.to_string(),
            daemon,
            conn,
        })
    }

    /// Whether the client must report its writes.
    pub fn explicit(&self) -> bool {
        self.mechanism == "explicit"
    }

    /// Puts a new BO under this session's policy: `shadow` for the shadow
    /// baseline, the daemon's own choice otherwise.
    pub fn prepare(&self, bo: &Bo) -> anyhow::Result<()> {
        if self.mechanism == "shadow" {
            bo.set_policy(BoPolicy::Shadow)?;
        }
        Ok(())
    }

    /// Creates a BO of `size` bytes, maps it, writes every page once and
    /// syncs twice, so that measurements start from a populated, clean BO.
    pub fn populated_bo(&self, size: u64) -> anyhow::Result<(Bo, Mapping<'static>)> {
        let bo = self.conn.create_bo(size)?;
        self.prepare(&bo)?;
        let map = bo.map_detached()?;
        map.fill(0, map.len(), 0xa5)?;
        if self.explicit() {
            bo.damage(0, size)?;
        }
        bo.sync()?;
        bo.sync()?;
        Ok((bo, map))
    }
}

/// One measured scenario.
#[derive(Debug, Clone, Serialize)]
pub struct SyncCell {
    /// Mechanism asked of the daemon.
    pub mechanism: String,
    /// Mechanism the daemon reported in the sync replies.
    pub effective: String,
    /// vmwgfx method after the last measured sync.
    pub method: String,
    /// BO size in bytes.
    pub size: u64,
    /// Density label.
    pub density: String,
    /// Pages written per repetition.
    pub dirty_pages: u64,
    /// Pages in the BO.
    pub total_pages: u64,
    /// Layout.
    pub layout: Layout,
    /// Writer threads.
    pub threads: usize,
    /// Writing the dirty pages (first thread start to last thread end).
    pub write: Summary,
    /// Damage reported apart from the sync: zero since the explicit
    /// baseline reports its runs with the sync (`Bo::sync_damaged`).
    pub damage: Summary,
    /// The sync round trip as the client sees it.
    pub sync_wall: Summary,
    /// The time the daemon reports for the sync.
    pub sync_daemon: Summary,
    /// What the client pays to get the writes to the GPU: damage + sync round trip.
    pub sync_cost: Summary,
    /// write + damage + sync round trip.
    pub total: Summary,
    /// Fewest and most pages one measured sync uploaded.
    pub uploaded_min: u64,
    /// Most pages one measured sync uploaded.
    pub uploaded_max: u64,
}

impl SyncCell {
    /// True when a sync uploaded fewer pages than were written: a lost
    /// write (for the tracking mechanisms; never expected).
    pub fn under_reported(&self) -> bool {
        self.uploaded_min < self.dirty_pages
    }
}

/// Writes every byte of `pages` from `threads` threads (contiguous shares
/// of the ascending list); returns first start to last end. Each call's
/// pages get a byte and, in their first 8 bytes, a stamp that no earlier
/// call of the process wrote, so no page's new bytes equal its old ones
/// (shadow compare uploads only what differs: a rewrite with the same
/// bytes would look like a lost write).
pub fn write_threads(map: &Mapping, pages: &[u64], threads: usize) -> anyhow::Result<Duration> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x3c3c_0000);
    let stamp = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let byte = stamp as u8;
    let ps = cohmem_sys::page_size() as usize;
    let share = pages.len().div_ceil(threads.max(1)).max(1);
    let spans = std::thread::scope(|s| {
        let handles: Vec<_> = pages
            .chunks(share)
            .map(|chunk| {
                s.spawn(move || -> anyhow::Result<(Instant, Instant)> {
                    let t = Instant::now();
                    for &p in chunk {
                        map.fill(p as usize * ps, ps, byte)?;
                        map.write_u64(p as usize * ps, stamp)?;
                    }
                    Ok((t, Instant::now()))
                })
            })
            .collect();
        super::join_writers(handles)
    })?;
    let start = spans.iter().map(|s| s.0).min();
    let end = spans.iter().map(|s| s.1).max();
    match (start, end) {
        (Some(a), Some(b)) => Ok(b.saturating_duration_since(a)),
        _ => Ok(Duration::ZERO),
    }
}

/// Measures one (density, layout, threads) scenario on a populated BO.
#[allow(clippy::too_many_arguments)]
pub fn measure_cell(
    session: &Session,
    bo: &Bo,
    map: &Mapping,
    density: Density,
    layout: Layout,
    threads: usize,
    reps: &Reps,
    rng: &mut SplitMix64,
) -> anyhow::Result<SyncCell> {
    let ps = cohmem_sys::page_size();
    let n = bo.size() / ps;
    let k = density.pages_of(n);
    let (mut write, mut damage, mut wall, mut daemon, mut cost, mut total) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut up_min, mut up_max) = (u64::MAX, 0);
    let (mut effective, mut method) = (String::new(), String::new());
    let started = Instant::now();
    for rep in 0.. {
        if reps.done(rep, started) {
            break;
        }
        let pages = pick_pages(rng, n, k, layout);
        let w = write_threads(map, &pages, threads)?;
        // The explicit baseline is a cooperative client at its strongest:
        // every written run in one DAMAGE_RANGES request that also syncs
        // (one round trip, as Wayland's damage_buffer + commit or DIRTYFB
        // with all its clips), not a DAMAGE call per run.
        let d = Duration::ZERO;
        let damaged: Vec<std::ops::Range<u64>> = if session.explicit() {
            runs_of(&pages)
                .into_iter()
                .map(|(first, len)| first * ps..(first + len) * ps)
                .collect()
        } else {
            Vec::new()
        };
        let t = Instant::now();
        let r = if session.explicit() {
            bo.sync_damaged(&damaged)?
        } else {
            bo.sync()?
        };
        let s = t.elapsed();
        if rep >= reps.warmup {
            write.push(w);
            damage.push(d);
            wall.push(s);
            daemon.push(r.duration);
            cost.push(d + s);
            total.push(w + d + s);
            up_min = up_min.min(r.pages);
            up_max = up_max.max(r.pages);
            effective = r.mechanism.name().to_string();
            method = r.method.name().to_string();
        }
    }
    if wall.is_empty() {
        bail!("no repetition measured");
    }
    Ok(SyncCell {
        mechanism: session.mechanism.clone(),
        effective,
        method,
        size: bo.size(),
        density: density.label(),
        dirty_pages: k,
        total_pages: n,
        layout,
        threads,
        write: Summary::of(&write),
        damage: Summary::of(&damage),
        sync_wall: Summary::of(&wall),
        sync_daemon: Summary::of(&daemon),
        sync_cost: Summary::of(&cost),
        total: Summary::of(&total),
        uploaded_min: up_min,
        uploaded_max: up_max,
    })
}

/// Background upload: the daemon runs with `--background-upload-us`; each
/// repetition writes `density` of the pages (scattered, one thread), waits
/// `idle` after the last write, then times the SYNC round trip. Returns
/// (round trip, most pages a SYNC still had to upload, pages written).
pub fn background_syncs(
    bo: &Bo,
    map: &Mapping,
    density: Density,
    idle: Duration,
    reps: &Reps,
    rng: &mut SplitMix64,
) -> anyhow::Result<(Summary, u64, u64)> {
    let ps = cohmem_sys::page_size();
    let n = bo.size() / ps;
    let k = density.pages_of(n);
    let (mut wall, mut left) = (Vec::new(), 0);
    let started = Instant::now();
    for rep in 0.. {
        if reps.done(rep, started) {
            break;
        }
        let pages = pick_pages(rng, n, k, Layout::Scattered);
        write_threads(map, &pages, 1)?;
        std::thread::sleep(idle);
        let t = Instant::now();
        let r = bo.sync()?;
        if rep >= reps.warmup {
            wall.push(t.elapsed());
            left = left.max(r.pages);
        }
    }
    if wall.is_empty() {
        bail!("no repetition measured");
    }
    Ok((Summary::of(&wall), left, k))
}

/// Syncs without writes until one uploads nothing (at most 200); returns
/// how many uploaded something. After dense writes with tracking paused,
/// that is how long whole-BO uploads go on once the writes stop.
pub fn settle(bo: &Bo) -> anyhow::Result<u64> {
    for n in 0..200 {
        if bo.sync()?.pages == 0 {
            return Ok(n);
        }
    }
    bail!("200 syncs without writes still uploaded pages")
}

/// Syncs of a clean BO (nothing written in between): the cost of scanning
/// through the daemon. Returns (round trip, daemon time, most pages uploaded).
pub fn clean_syncs(bo: &Bo, reps: &Reps) -> anyhow::Result<(Summary, Summary, u64)> {
    let (mut wall, mut daemon, mut uploaded) = (vec![], vec![], 0);
    let started = Instant::now();
    for rep in 0.. {
        if reps.done(rep, started) {
            break;
        }
        let t = Instant::now();
        let r = bo.sync()?;
        let s = t.elapsed();
        if rep >= reps.warmup {
            wall.push(s);
            daemon.push(r.duration);
            uploaded = uploaded.max(r.pages);
        }
    }
    Ok((Summary::of(&wall), Summary::of(&daemon), uploaded))
}
