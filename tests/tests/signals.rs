//! Issue 14, items 1 and 3: an application's signals never cost a write or
//! a call. The application installs handlers without `SA_RESTART` (as an
//! interval timer would) and a storm thread sends signals to every thread
//! of the process, the library's own included, while writer threads write
//! and the test syncs. Every write completed before a SYNC must be in the
//! GPU copy when it returns, no call may fail, the connection must never
//! reconnect, and the library's lifeline thread must have every signal
//! blocked.
//!
//! One test in this binary: the storm reaches every thread of the process,
//! so no other test may share it.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohmem_client::{Connection, Mechanism};
use cohmem_sys::mapping::SharedMapping;
use cohmem_tests::{spawn_daemon_for, CompletedWriters};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

static HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn count(_: i32) {
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// Handlers for SIGUSR1 and SIGALRM without `SA_RESTART`: every blocking
/// call they interrupt fails with `EINTR`.
fn install_interrupting_handlers() -> anyhow::Result<()> {
    let action = SigAction::new(SigHandler::Handler(count), SaFlags::empty(), SigSet::empty());
    for s in [Signal::SIGUSR1, Signal::SIGALRM] {
        // SAFETY: the handler only increments an atomic (async-signal-safe).
        unsafe { sigaction(s, &action) }?;
    }
    Ok(())
}

/// The thread ids of this process, with their names.
fn process_threads() -> anyhow::Result<Vec<(i32, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task")? {
        let e = e?;
        let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        out.push((tid, name.trim().to_owned()));
    }
    Ok(out)
}

/// Sends SIGUSR1 or SIGALRM to every other thread of the process, one
/// round every 50 µs, until `stop`; returns the signals sent.
fn storm(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    std::thread::spawn(move || {
        let me = nix::unistd::gettid().as_raw();
        let pid = std::process::id() as i32;
        let mut sent = 0u64;
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let signal = if round % 2 == 0 { libc::SIGUSR1 } else { libc::SIGALRM };
            round += 1;
            for (tid, _) in process_threads()? {
                if tid == me {
                    continue;
                }
                // SAFETY: tgkill takes plain integers and touches no memory
                // of ours; a thread that exited meanwhile gives ESRCH.
                if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) } == 0 {
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(sent)
    })
}

/// True when every standard signal an application could direct at thread
/// `tid` is blocked there (`SigBlk` in its status; SIGKILL and SIGSTOP
/// cannot be blocked, and glibc keeps its own two real-time signals
/// unblocked).
fn blocks_everything(tid: i32) -> anyhow::Result<bool> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))?;
    let blocked = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .map(|v| u64::from_str_radix(v.trim(), 16))
        .transpose()?
        .unwrap_or(0);
    let unblockable = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
    let standard = (1u64 << 31) - 1;
    Ok((blocked | unblockable) & standard == standard && blocked >> (libc::SIGRTMIN() + 2) != 0)
}

fn storm_under(mechanism: Mechanism) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let (threads, pages_per_thread) = (2u64, 32u64);
    let bo = conn.create_bo(threads * pages_per_thread * ps)?;
    let map = Arc::new(bo.map_detached()?);
    let res = bo.export_resource(0)?;
    let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
    if mechanism == Mechanism::UffdSync {
        // The thread names itself once it runs.
        let t0 = Instant::now();
        let lifeline = loop {
            let named: Vec<i32> = process_threads()?
                .into_iter()
                .filter(|(_, n)| n == "cohmem-lifeline")
                .map(|(t, _)| t)
                .collect();
            if !named.is_empty() || t0.elapsed() > Duration::from_secs(2) {
                break named;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        anyhow::ensure!(lifeline.len() == 1, "uffd-sync runs one lifeline thread: {lifeline:?}");
        anyhow::ensure!(
            blocks_everything(lifeline[0])?,
            "the library's lifeline thread must block every signal"
        );
    }
    let writers = CompletedWriters::start(map.clone(), threads, pages_per_thread);
    let stop = Arc::new(AtomicBool::new(false));
    let handled_before = HANDLED.load(Ordering::Relaxed);
    let stormer = storm(stop.clone());
    let t0 = Instant::now();
    let mut syncs = 0u64;
    let mut pages = 0u64;
    while t0.elapsed() < Duration::from_secs(2) || syncs < 200 {
        let before = writers.snapshot();
        // Any failing call fails the test: none may.
        pages += bo.sync()?.pages;
        syncs += 1;
        writers.check(&before, &gpu)?;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = stormer.join().map_err(|_| anyhow::anyhow!("storm panicked"))??;
    let writes = writers.stop()?;
    let handled = HANDLED.load(Ordering::Relaxed) - handled_before;
    let before = writers_final(&map, threads * pages_per_thread)?;
    bo.sync()?;
    for (p, want) in before.iter().enumerate() {
        anyhow::ensure!(
            gpu.read_u64(p * ps as usize)? == *want,
            "page {p} differs after the last sync"
        );
    }
    eprintln!(
        "{mechanism}: {sent} signals sent, {handled} handled by the application, {writes} writes, {syncs} syncs \
         ({pages} pages uploaded) checked, {} reconnects",
        conn.reconnects()
    );
    anyhow::ensure!(
        handled > 1000,
        "the storm must interrupt the process often ({handled} handled)"
    );
    anyhow::ensure!(
        conn.reconnects() == 0,
        "a signal must not break the session ({} reconnects)",
        conn.reconnects()
    );
    Ok(())
}

/// The first word of every page, read through the mapping once the writers
/// stopped.
fn writers_final(map: &cohmem_client::Mapping, pages: u64) -> anyhow::Result<Vec<u64>> {
    let ps = cohmem_sys::page_size() as usize;
    (0..pages as usize).map(|p| Ok(map.read_u64(p * ps)?)).collect()
}

#[test]
fn signal_storms_on_every_thread_cost_no_write_and_no_call() -> anyhow::Result<()> {
    install_interrupting_handlers()?;
    let caps = cohmem_tests::caps();
    let mut ran = 0;
    for (mechanism, ok) in [
        (Mechanism::UffdAsync, caps.uffd_async.ok),
        (Mechanism::UffdSync, caps.uffd_sync.ok),
    ] {
        if ok {
            storm_under(mechanism)?;
            ran += 1;
        } else {
            eprintln!("{mechanism} unavailable on this kernel");
        }
    }
    anyhow::ensure!(ran > 0, "no tracking mechanism to test");
    Ok(())
}
