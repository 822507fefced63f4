//! Scale (target 5): many client processes, each with several BOs written
//! sparsely and synced at a fixed frame rate, against one daemon whose CPU
//! time (`/proc/PID/stat` utime + stime) and memory (`/proc/PID/status`
//! RssAnon, RssShmem) are read by the parent over the measured window.
//!
//! The clients are this same executable re-run with the hidden `scale-child`
//! subcommand. Line protocol on the child's stdin/stdout: the child prints
//! `ready` once its BOs are created, populated and synced; the parent
//! answers `go`; after the run the child prints one `done key=value…` line
//! and waits for `quit` (so that tearing down does not fall in the window).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cohmem_client::Connection;
use serde::Serialize;

use super::pattern::{pick_pages, Density, Layout};
use super::stats::{nanos, Summary};
use crate::{DaemonProcess, SplitMix64};

/// What one client process does.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    /// Daemon socket.
    pub socket: PathBuf,
    /// BOs in this process.
    pub bos: usize,
    /// Size of each BO in bytes.
    pub size: u64,
    /// Fraction of each BO's pages written per frame.
    pub density: f64,
    /// Frames per second (each frame writes every BO, then syncs them all
    /// with one SYNC_MANY).
    pub rate: f64,
    /// Length of the run.
    pub seconds: f64,
    /// RNG seed.
    pub seed: u64,
}

/// The `scale-child` side.
pub fn child_main(cfg: &ChildConfig) -> anyhow::Result<()> {
    let ps = cohmem_sys::page_size() as usize;
    let conn = Connection::connect(&cfg.socket)?;
    let mut bos = Vec::with_capacity(cfg.bos);
    for _ in 0..cfg.bos {
        let bo = conn.create_bo(cfg.size)?;
        let map = bo.map_detached()?;
        map.fill(0, map.len(), 0x11)?;
        bo.sync()?;
        bos.push((bo, map));
    }
    let mut out = std::io::stdout().lock();
    let mut input = std::io::stdin().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut line = String::new();
    input.read_line(&mut line)?;
    if line.trim() != "go" {
        bail!("expected go, got {line:?}");
    }
    let mut rng = SplitMix64::new(cfg.seed);
    let n = cfg.size / ps as u64;
    let k = Density::Fraction(cfg.density).pages_of(n);
    let frame = Duration::from_secs_f64(1.0 / cfg.rate);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(cfg.seconds);
    let (mut frames, mut late, mut under, mut uploaded) = (0u64, 0u64, 0u64, 0u64);
    let mut syncs = Vec::new();
    let mut next = start;
    let list: Vec<&cohmem_client::Bo> = bos.iter().map(|(bo, _)| bo).collect();
    while Instant::now() < end {
        // A frame writes into every BO, then submits: one SYNC_MANY syncs
        // them all, as a command submission references every BO it uses.
        for (i, (_, map)) in bos.iter().enumerate() {
            for p in pick_pages(&mut rng, n, k, Layout::Scattered) {
                map.fill(p as usize * ps, ps, (frames as u8).wrapping_add(i as u8))?;
            }
        }
        let t = Instant::now();
        let outcomes = conn.sync_many(&list)?;
        let d = nanos(t.elapsed());
        for r in outcomes {
            let r = r?;
            syncs.push(d);
            uploaded += r.pages;
            if r.pages < k {
                under += 1;
            }
        }
        frames += 1;
        next += frame;
        let now = Instant::now();
        if now > next {
            late += 1;
            next = now;
        } else {
            std::thread::sleep(next - now);
        }
    }
    let s = Summary::of_ns(syncs);
    writeln!(
        out,
        "done frames={frames} late={late} syncs={} sync_median_ns={} sync_p99_ns={} uploaded={uploaded} under={under}",
        s.n, s.median_ns, s.p99_ns
    )?;
    out.flush()?;
    line.clear();
    input.read_line(&mut line)?;
    Ok(())
}

/// The parent's configuration.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleConfig {
    /// Client processes.
    pub clients: usize,
    /// BOs per client.
    pub bos: usize,
    /// BO size in bytes.
    pub size: u64,
    /// Fraction of pages written per frame.
    pub density: f64,
    /// Frames per second.
    pub rate: f64,
    /// Measured window in seconds.
    pub seconds: f64,
}

/// Memory of the daemon, from `/proc/PID/status` (bytes).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// VmRSS.
    pub rss: u64,
    /// RssAnon: private memory (heap, stacks, bitmaps).
    pub anon: u64,
    /// RssShmem: the BOs and software-GPU resources it has mapped and touched.
    pub shmem: u64,
}

/// What the scale run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    /// The configuration.
    pub config: ScaleConfig,
    /// Bytes of BOs tracked (clients × BOs × size).
    pub bytes_tracked: u64,
    /// Syncs the clients were asked to make in the window.
    pub syncs_requested: u64,
    /// Syncs they made.
    pub syncs_done: u64,
    /// Frames that ended after the next frame's start.
    pub late_frames: u64,
    /// Frames run.
    pub frames: u64,
    /// Median over clients of their median sync round trip (ns).
    pub sync_median_ns: u64,
    /// Worst client p99 sync round trip (ns).
    pub sync_p99_ns: u64,
    /// Syncs that uploaded fewer pages than were written.
    pub under_reported: u64,
    /// Daemon CPU time (user + system) over the window, seconds.
    pub daemon_cpu_seconds: f64,
    /// Wall time of the window, seconds.
    pub window_seconds: f64,
    /// CPU seconds per second: cores used.
    pub daemon_cores: f64,
    /// Daemon memory before any client connected.
    pub memory_idle: Memory,
    /// Largest RssAnon seen during the window (other fields from that sample).
    pub memory_peak: Memory,
    /// RssAnon growth from idle to the peak: memory beyond the BOs.
    pub memory_beyond_bos: u64,
}

/// `utime + stime` of `pid` in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short stat line")?
            .parse::<u64>()
            .context("stat field")
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&v| v > 0)
        .unwrap_or(100) as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / hz)
}

/// VmRSS, RssAnon and RssShmem of `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("/proc/{pid}/status"))?;
    let mut m = Memory::default();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kib = || -> u64 {
            value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        match key {
            "VmRSS" => m.rss = kib(),
            "RssAnon" => m.anon = kib(),
            "RssShmem" => m.shmem = kib(),
            _ => {}
        }
    }
    Ok(m)
}

struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    fn spawn(exe: &Path, cfg: &ScaleConfig, socket: &Path, seed: u64) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .arg("scale-child")
            .arg("--socket")
            .arg(socket)
            .args(["--bos", &cfg.bos.to_string()])
            .args(["--size", &cfg.size.to_string()])
            .args(["--density", &cfg.density.to_string()])
            .args(["--rate", &cfg.rate.to_string()])
            .args(["--seconds", &cfg.seconds.to_string()])
            .args(["--seed", &seed.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} scale-child", exe.display()))?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        Ok(Self { child, stdin, stdout })
    }

    fn expect_line(&mut self, prefix: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if !line.starts_with(prefix) {
            bail!("scale child {}: expected {prefix:?}, got {line:?}", self.child.id());
        }
        Ok(line)
    }

    fn say(&mut self, what: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{what}")?;
        Ok(self.stdin.flush()?)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs the scale scenario against a private `auto` daemon.
pub fn run(cfg: &ScaleConfig) -> anyhow::Result<ScaleResult> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let daemon = DaemonProcess::spawn(&["--mechanism", "auto", "--log", "warn"])?;
    let pid = daemon.pid();
    // Let the daemon settle before the idle reading.
    std::thread::sleep(Duration::from_millis(200));
    let memory_idle = memory(pid)?;
    let mut clients = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        clients.push(Client::spawn(&exe, cfg, daemon.socket(), 0x5ca1e + i as u64)?);
    }
    for c in &mut clients {
        c.expect_line("ready")?;
    }
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    for c in &mut clients {
        c.say("go")?;
    }
    let window = Duration::from_secs_f64(cfg.seconds);
    let mut memory_peak = memory(pid)?;
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_millis(250).min(window.saturating_sub(t0.elapsed())));
        let m = memory(pid)?;
        if m.anon > memory_peak.anon {
            memory_peak = m;
        }
    }
    let cpu1 = cpu_seconds(pid)?;
    let window_seconds = t0.elapsed().as_secs_f64();
    let (mut frames, mut late, mut syncs, mut under) = (0u64, 0u64, 0u64, 0u64);
    let (mut medians, mut worst_p99) = (Vec::new(), 0u64);
    for c in &mut clients {
        let line = c.expect_line("done")?;
        let get = |key: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        frames += get("frames");
        late += get("late");
        syncs += get("syncs");
        under += get("under");
        medians.push(get("sync_median_ns"));
        worst_p99 = worst_p99.max(get("sync_p99_ns"));
    }
    for c in &mut clients {
        let _ = c.say("quit");
    }
    for c in &mut clients {
        let _ = c.child.wait();
    }
    drop(clients);
    let bytes_tracked = (cfg.clients * cfg.bos) as u64 * cfg.size;
    let cpu = cpu1 - cpu0;
    Ok(ScaleResult {
        config: cfg.clone(),
        bytes_tracked,
        syncs_requested: (cfg.clients * cfg.bos) as u64 * (cfg.rate * cfg.seconds).round() as u64,
        syncs_done: syncs,
        late_frames: late,
        frames,
        sync_median_ns: Summary::of_ns(medians).median_ns,
        sync_p99_ns: worst_p99,
        under_reported: under,
        daemon_cpu_seconds: cpu,
        window_seconds,
        daemon_cores: cpu / window_seconds,
        memory_idle,
        memory_peak,
        memory_beyond_bos: memory_peak.anon.saturating_sub(memory_idle.anon),
    })
}
