//! The worker: one client process of `cohmem-stress`.
//!
//! It connects to the daemon, creates its BOs, maps each one, and then runs
//! rounds: a random write pattern per BO, written by several threads at once
//! through the client's [`Mapping`] API, then a sync of every BO, each
//! followed by a byte-for-byte comparison of the exported GPU resource with
//! the worker's shadow copy of what it wrote. The worker is the only writer
//! of its BOs, so after its threads have joined and the sync has returned,
//! every page must match; a page that does not is lost.
//!
//! With `retry` (chaos mode) a call that fails because the daemon went away
//! (`Disconnected`, or `Connect` while it is not back yet) is retried every
//! 20 ms for up to 15 s: the client library reconnects and re-imports the
//! worker's BOs on the next call, and the first sync after that uploads the
//! whole BO. A comparison always pairs a completed sync with the resource of
//! the same daemon session: when the export fails, or reconnects (the
//! connection's [`Connection::reconnects`] count moved), the worker syncs
//! again before comparing.
//!
//! In chaos mode the worker also lives like a real application (issue 14):
//! it handles SIGUSR1 with a handler installed without `SA_RESTART` (the
//! parent sends signal storms to every thread), and between rounds it forks
//! children that drop every inherited object, and switches its process's
//! tracking mechanism, when the parent asks.

use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cohmem_client::{Bo, ClientError, Connection, Mapping};
use cohmem_sys::mapping::SharedMapping;

use super::patterns::{generate, pick_kind, split_among_threads, Op, OpData};
use super::report::Tally;
use crate::SplitMix64;

/// How long a worker keeps retrying a call while the daemon is away.
pub const RETRY_WINDOW: Duration = Duration::from_secs(15);
/// Pause between two retries.
pub const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// `lost` lines reported per BO and round at most.
const LOST_LINES: u64 = 4;

/// What a worker does (its command line, set by the parent).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// BOs to create.
    pub bos: u32,
    /// Size of each BO in bytes.
    pub bo_size: u64,
    /// Writer threads per round.
    pub threads: usize,
    /// RNG seed.
    pub seed: u64,
    /// Rounds to run; 0 runs until told to stop.
    pub rounds: u64,
    /// Retry calls that fail because the daemon went away.
    pub retry: bool,
}

/// Writes report lines to stdout, one flush per line.
#[derive(Clone)]
struct Out(Arc<Mutex<std::io::Stdout>>);

impl Out {
    fn line(&self, line: &str) -> anyhow::Result<()> {
        let out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = out.lock();
        writeln!(out, "{line}").context("writing to the parent")?;
        out.flush().context("writing to the parent")?;
        Ok(())
    }
}

/// True for the errors a daemon restart causes.
fn daemon_away(e: &ClientError) -> bool {
    matches!(e, ClientError::Disconnected | ClientError::Connect { .. })
}

/// Runs calls, retrying (when enabled) while the daemon is away.
struct Retrier {
    enabled: bool,
    out: Out,
    retries: u64,
}

impl Retrier {
    /// Runs `f` until it succeeds, fails for another reason, or the daemon
    /// has been away for [`RETRY_WINDOW`]. The first failure of a streak is
    /// reported to the parent as a `retry` line.
    fn call<T>(&mut self, what: &str, mut f: impl FnMut() -> Result<T, ClientError>) -> anyhow::Result<T> {
        let mut since: Option<Instant> = None;
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if self.enabled && daemon_away(&e) => {
                    let streak_starts = since.is_none();
                    let first = *since.get_or_insert_with(Instant::now);
                    self.retries += 1;
                    if streak_starts {
                        self.out.line(&format!("retry {what}: {e}"))?;
                    }
                    if first.elapsed() > RETRY_WINDOW {
                        bail!("{what}: the daemon has been unreachable for {RETRY_WINDOW:?}: {e}");
                    }
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(e) => return Err(anyhow::Error::new(e).context(what.to_owned())),
            }
        }
    }
}

/// One BO of the worker with its mapping and expected content.
struct Slot {
    bo: Bo,
    map: Mapping<'static>,
    shadow: Vec<u8>,
}

/// The worker's entry point: runs the rounds and reports on stdout; on
/// failure prints `error …` and returns the error.
pub fn worker_main(cfg: &WorkerConfig) -> anyhow::Result<()> {
    let out = Out(Arc::new(Mutex::new(std::io::stdout())));
    let result = run(cfg, &out);
    if let Err(e) = &result {
        let _ = out.line(&format!("error {}", format!("{e:#}").replace('\n', " ")));
    }
    result
}

fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG only sets which signal this process gets
    // when its parent exits; it touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
}

/// Signals handled by [`count_signal`].
static SIGNALS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_signal(_: i32) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// What the parent asked for between rounds.
#[derive(Default)]
struct Requests {
    stop: AtomicBool,
    fork: AtomicBool,
    switch: AtomicBool,
}

fn run(cfg: &WorkerConfig, out: &Out) -> anyhow::Result<()> {
    die_with_parent();
    if cfg.bo_size == 0 || cfg.bos == 0 {
        bail!("need at least one BO of at least one byte");
    }
    if cfg.retry {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        let action = SigAction::new(SigHandler::Handler(count_signal), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler only increments an atomic (async-signal-safe).
        unsafe { sigaction(Signal::SIGUSR1, &action) }.context("installing the SIGUSR1 handler")?;
    }
    // `stop` or end of input from the parent ends the run after the round.
    let requests = Arc::new(Requests::default());
    {
        let requests = requests.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line.as_deref().map(str::trim) {
                    Ok("fork") => requests.fork.store(true, Ordering::Relaxed),
                    Ok("switch") => requests.switch.store(true, Ordering::Relaxed),
                    Ok("stop") | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            requests.stop.store(true, Ordering::Relaxed);
        });
    }
    let stop = &requests.stop;
    let mut retrier = Retrier {
        enabled: cfg.retry,
        out: out.clone(),
        retries: 0,
    };
    let conn = retrier.call("connect", || Connection::connect(&cfg.socket))?;
    let ps = cohmem_sys::page_size();
    let mut slots = Vec::new();
    for _ in 0..cfg.bos {
        let bo = retrier.call("create_bo", || conn.create_bo(cfg.bo_size))?;
        let map = retrier.call("map", || bo.map_detached())?;
        let shadow = vec![0u8; bo.size() as usize];
        slots.push(Slot { bo, map, shadow });
    }
    let ids: Vec<String> = slots.iter().map(|s| s.bo.id().to_string()).collect();
    out.line(&format!("ready {} {}", std::process::id(), ids.join(" ")))?;

    let mut rng = SplitMix64::new(cfg.seed);
    let mut total = Tally::default();
    let mut round = 0u64;
    let mut reconnects_seen = conn.reconnects();
    while !stop.load(Ordering::Relaxed) && (cfg.rounds == 0 || round < cfg.rounds) {
        round += 1;
        let retries_before = retrier.retries;
        let signals_before = SIGNALS.load(Ordering::Relaxed);
        let mut tally = run_round(cfg, &conn, &mut slots, &mut rng, &mut retrier, out, ps)?;
        tally.rounds = 1;
        if requests.fork.swap(false, Ordering::Relaxed) {
            fork_and_drop(&conn, &mut slots)?;
            tally.forks = 1;
        }
        if requests.switch.swap(false, Ordering::Relaxed) {
            let to = if rng.below(2) == 0 {
                cohmem_client::Mechanism::UffdAsync
            } else {
                cohmem_client::Mechanism::UffdSync
            };
            match retrier.call("set_mechanism", || match conn.set_mechanism(to) {
                // A mechanism this kernel or process cannot offer is
                // refused, typed, and changes nothing.
                Err(e) if e.code() == Some(cohmem_client::ErrorCode::Unsupported) => Ok(false),
                other => other.map(|_| true),
            }) {
                Ok(true) => tally.switches = 1,
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }
        tally.signals = SIGNALS.load(Ordering::Relaxed) - signals_before;
        tally.retries = retrier.retries - retries_before;
        let reconnects_now = conn.reconnects();
        tally.reconnects = reconnects_now - reconnects_seen;
        reconnects_seen = reconnects_now;
        total.add(&tally);
        out.line(&format!("round {round} {tally}"))?;
    }
    drop(slots);
    out.line(&format!("done {total}"))?;
    Ok(())
}

/// Forks a child that drops every object it inherited (the connection,
/// the BOs, the mappings) and exits: none of that may touch this process's
/// session or tracking (issue 14, item 5). Called between rounds, when this
/// process runs no writer thread.
fn fork_and_drop(conn: &Connection, slots: &mut Vec<Slot>) -> anyhow::Result<()> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let conn = conn.clone();
    // SAFETY: the child only runs the client library's drops (which check
    // the fork and touch no lock of the parent's threads) and _exit.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Child => {
            drop(std::mem::take(slots));
            drop(conn);
            // SAFETY: ends the child without the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let t0 = Instant::now();
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)).context("waitpid")? {
                    WaitStatus::StillAlive if t0.elapsed() < Duration::from_secs(10) => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    WaitStatus::Exited(_, 0) => return Ok(()),
                    WaitStatus::StillAlive => {
                        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                        let _ = waitpid(child, None);
                        bail!("a forked child dropping its inherited objects hung for 10 s");
                    }
                    other => bail!("a forked child dropping its inherited objects ended with {other:?}"),
                }
            }
        }
    }
}

/// Writes one pattern per BO from `cfg.threads` threads, then syncs and
/// verifies every BO.
fn run_round(
    cfg: &WorkerConfig,
    conn: &Connection,
    slots: &mut [Slot],
    rng: &mut SplitMix64,
    retrier: &mut Retrier,
    out: &Out,
    ps: u64,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    // Patterns, applied to the shadows, and cut into per-thread pieces.
    let mut per_thread: Vec<Vec<Vec<Op>>> = Vec::with_capacity(slots.len());
    for slot in slots.iter_mut() {
        let size = slot.shadow.len() as u64;
        let kind = pick_kind(rng);
        let ops = generate(rng, kind, size, ps, &slot.shadow);
        let mut touched = vec![false; size.div_ceil(ps) as usize];
        for op in &ops {
            op.apply(&mut slot.shadow);
            tally.ops += 1;
            tally.written_bytes += op.len();
            let first = op.offset / ps;
            let last = (op.offset + op.len() - 1) / ps;
            for t in &mut touched[first as usize..=last as usize] {
                *t = true;
            }
        }
        tally.written_pages += touched.iter().filter(|t| **t).count() as u64;
        per_thread.push(split_among_threads(&ops, cfg.threads, ps, rng.next_u64()));
    }
    // The writers: thread t writes its pieces of every BO.
    let threads = cfg.threads.max(1);
    let slots_ro: &[Slot] = slots;
    let per_thread_ref = &per_thread;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<(), ClientError> {
                    for (slot, parts) in slots_ro.iter().zip(per_thread_ref) {
                        for piece in &parts[t] {
                            let at = piece.offset as usize;
                            match &piece.data {
                                OpData::Bytes(b) => slot.map.write(at, b)?,
                                OpData::Fill { len, byte } => slot.map.fill(at, *len as usize, *byte)?,
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(r) => r.context("writer thread")?,
                Err(_) => bail!("a writer thread panicked"),
            }
        }
        Ok(())
    })?;
    // Sync and verify each BO.
    for slot in slots.iter() {
        verify_slot(conn, slot, retrier, out, ps, &mut tally)?;
    }
    Ok(tally)
}

/// Syncs one BO and compares its exported GPU resource with the shadow.
fn verify_slot(
    conn: &Connection,
    slot: &Slot,
    retrier: &mut Retrier,
    out: &Out,
    ps: u64,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    // The BO itself must hold what was written (the worker is its only
    // writer); otherwise the comparison below would be meaningless.
    let mut page = vec![0u8; ps as usize];
    for (p, want) in slot.shadow.chunks(ps as usize).enumerate() {
        let buf = &mut page[..want.len()];
        slot.map.read(p * ps as usize, buf)?;
        if buf != want {
            bail!(
                "BO {} page {p} does not hold what this worker wrote into it (the mapping changed under it)",
                slot.bo.id()
            );
        }
    }
    let started = Instant::now();
    let (synced, res) = loop {
        let synced = retrier.call("sync", || slot.bo.sync())?;
        let session = conn.reconnects();
        let why = match slot.bo.export_resource(0) {
            Ok(res) if conn.reconnects() == session => break (synced, res),
            // The export reconnected: it is the new daemon's resource,
            // which only a sync on that daemon fills.
            Ok(_) => "export: reconnected after the sync".to_owned(),
            // The daemon went away after the sync: its resource is gone.
            Err(e) if retrier.enabled && daemon_away(&e) => format!("export: {e}"),
            Err(e) => return Err(anyhow::Error::new(e).context("export_resource")),
        };
        // Sync again (on the new daemon) before comparing.
        tally.unverified_syncs += 1;
        retrier.retries += 1;
        out.line(&format!("retry {why}"))?;
        if started.elapsed() > RETRY_WINDOW {
            bail!("sync+export did not complete against one daemon within {RETRY_WINDOW:?}");
        }
        std::thread::sleep(RETRY_PAUSE);
    };
    let size = slot.shadow.len() as u64;
    if res.offset != 0 || res.size < size {
        bail!(
            "resource 0 of BO {} covers [{}, +{}), not the whole BO of {size} bytes",
            slot.bo.id(),
            res.offset,
            res.size
        );
    }
    let pages = size.div_ceil(ps);
    let pitch = res.pitch.max(ps);
    let gpu = SharedMapping::map(res.fd.as_fd(), (pages - 1) * pitch + ps, 0, false).context("mapping the export")?;
    let mut lost_here = 0;
    for (p, want) in slot.shadow.chunks(ps as usize).enumerate() {
        let buf = &mut page[..want.len()];
        gpu.read_at(p * pitch as usize, buf)?;
        if buf != want {
            if lost_here < LOST_LINES {
                let first = buf.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                out.line(&format!("lost {} {p} {first}", slot.bo.id()))?;
            }
            lost_here += 1;
        }
    }
    tally.syncs += 1;
    tally.pages += pages;
    tally.bytes += size;
    tally.lost += lost_here;
    tally.uploaded_pages += synced.pages;
    tally.uploaded_bytes += synced.bytes;
    Ok(())
}
