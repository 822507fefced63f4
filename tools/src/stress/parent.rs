//! The parent of `cohmem-stress`: starts the daemon (or uses a running one),
//! spawns the worker processes, aggregates their reports, detects hung and
//! failed workers, and in chaos mode SIGKILLs workers and the daemon at
//! random moments.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::daemon::RestartableDaemon;
use super::report::{Tally, WorkerLine};
use crate::daemon::find_cohmemd;
use crate::{DaemonProcess, SplitMix64};

/// Sends SIGUSR1 to every thread of process `pid`, a round every 200 µs,
/// for `span`, from a thread of its own (the worker handles it without
/// `SA_RESTART`, so every blocking call it interrupts fails with `EINTR`).
fn signal_storm(pid: u32, span: Duration) {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < span {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return;
            };
            for t in tasks.flatten() {
                if let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() {
                    // SAFETY: tgkill takes plain integers and touches no
                    // memory of ours; a thread that exited gives ESRCH.
                    unsafe { libc::syscall(libc::SYS_tgkill, pid as i32, tid, libc::SIGUSR1) };
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
}

/// How a run is configured (the parent's command line).
#[derive(Debug, Clone)]
pub struct StressConfig {
    /// A running daemon's socket (None: spawn one).
    pub socket: Option<PathBuf>,
    /// Extra `cohmemd` arguments for a spawned daemon.
    pub daemon_args: Vec<String>,
    /// Worker processes at a time.
    pub clients: u32,
    /// BOs per worker.
    pub bos: u32,
    /// Bytes per BO.
    pub bo_size: u64,
    /// Rounds per worker (used when `duration` is None).
    pub rounds: u64,
    /// Run for this long instead of a number of rounds.
    pub duration: Option<Duration>,
    /// Writer threads per worker.
    pub threads: usize,
    /// Master seed.
    pub seed: u64,
    /// Kill workers and the daemon at random moments.
    pub chaos: bool,
    /// Mean time between two chaos events.
    pub chaos_interval: Duration,
    /// A worker without progress for this long is hung.
    pub hang_timeout: Duration,
}

/// What a run found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    /// Everything the workers verified.
    pub tally: Tally,
    /// Daemon restarts (chaos).
    pub daemon_restarts: u64,
    /// Workers SIGKILLed by chaos.
    pub client_kills: u64,
    /// Signal storms sent to every thread of a worker (chaos).
    pub signal_storms: u64,
    /// Forks asked of workers (chaos; their tallies count those done).
    pub fork_requests: u64,
    /// Mechanism switches asked of workers (chaos).
    pub switch_requests: u64,
    /// Workers started (including replacements).
    pub workers_spawned: u64,
    /// Workers that finished cleanly.
    pub workers_completed: u64,
    /// What went wrong (lost pages, hangs, failed workers, a dead daemon).
    pub failures: Vec<String>,
    /// Wall time in seconds.
    pub elapsed_s: f64,
    /// The master seed.
    pub seed: u64,
}

impl Outcome {
    /// True when nothing was lost and nothing failed.
    pub fn ok(&self) -> bool {
        self.tally.lost == 0 && self.failures.is_empty()
    }
}

/// The daemon the workers talk to.
enum Daemon {
    /// Someone else's.
    External(PathBuf),
    /// A private one on a temporary socket.
    Private(DaemonProcess),
    /// A private one that chaos restarts on the same path.
    Restartable(RestartableDaemon),
}

impl Daemon {
    fn socket(&self) -> &Path {
        match self {
            Self::External(p) => p,
            Self::Private(d) => d.socket(),
            Self::Restartable(d) => d.socket(),
        }
    }

    /// False when a daemon of ours died without being killed by chaos.
    fn alive(&mut self) -> bool {
        match self {
            Self::External(_) => true,
            Self::Private(d) => d.is_running(),
            Self::Restartable(d) => d.is_running(),
        }
    }
}

/// What a reader thread forwards: a worker's line, or `None` at its end.
struct Event {
    slot: usize,
    generation: u64,
    line: Option<String>,
}

/// One worker process.
struct Worker {
    generation: u64,
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    /// Rounds this process was asked to run (0: until stopped).
    rounds_target: u64,
    rounds_done: u64,
    last_progress: Instant,
    /// Sum of its round lines (checked against its `done` line).
    summed: Tally,
    finished: bool,
    killed_by_chaos: bool,
    hung: bool,
    error: Option<String>,
}

/// Runs the stress test. `exe` is this program (workers are `exe worker …`).
pub fn run_stress(cfg: &StressConfig, exe: &Path) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut daemon = match &cfg.socket {
        Some(p) => Daemon::External(p.clone()),
        None if cfg.chaos => Daemon::Restartable(
            RestartableDaemon::start(&find_cohmemd()?, &cfg.daemon_args).context("starting cohmemd")?,
        ),
        None => {
            let args: Vec<&str> = cfg.daemon_args.iter().map(String::as_str).collect();
            Daemon::Private(DaemonProcess::spawn(&args).context("starting cohmemd")?)
        }
    };
    let socket = daemon.socket().to_owned();
    let mut run = Run {
        cfg,
        exe,
        socket,
        rng: SplitMix64::new(cfg.seed ^ 0xc4a0_5c4a_05c4_a05c),
        tx: channel(),
        workers: Vec::new(),
        outcome: Outcome {
            seed: cfg.seed,
            ..Outcome::default()
        },
        lost_lines: 0,
        stopping: false,
        pb: progress_bar(cfg),
    };
    if let Daemon::Restartable(d) = &daemon {
        run.say(&format!(
            "chaos: cohmemd pid {} on {} (log: {})",
            d.pid().unwrap_or(0),
            d.socket().display(),
            d.log().display()
        ));
    }
    let target = if cfg.duration.is_some() { 0 } else { cfg.rounds };
    for slot in 0..cfg.clients as usize {
        let w = run.spawn_worker(slot, 0, target)?;
        run.workers.push(Some(w));
    }
    let result = run.main_loop(&mut daemon, started);
    run.pb.finish_and_clear();
    // Whatever happened, no worker outlives the run.
    for w in run.workers.iter_mut().flatten() {
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
    result?;
    if let Daemon::Restartable(d) = &mut daemon {
        run.outcome.daemon_restarts = d.restarts();
        if !run.outcome.ok() {
            d.keep_dir();
            run.outcome
                .failures
                .push(format!("(daemon log kept: {})", d.log().display()));
        }
    }
    run.outcome.elapsed_s = started.elapsed().as_secs_f64();
    Ok(run.outcome)
}

fn progress_bar(cfg: &StressConfig) -> ProgressBar {
    let (len, unit) = match cfg.duration {
        Some(d) => (d.as_secs().max(1), "s"),
        None => (u64::from(cfg.clients) * cfg.rounds, "rounds"),
    };
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!("{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style);
    }
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

struct Run<'a> {
    cfg: &'a StressConfig,
    exe: &'a Path,
    socket: PathBuf,
    rng: SplitMix64,
    tx: (Sender<Event>, Receiver<Event>),
    workers: Vec<Option<Worker>>,
    outcome: Outcome,
    lost_lines: u32,
    stopping: bool,
    pb: ProgressBar,
}

impl Run<'_> {
    /// Prints a line on stderr without tearing the progress bar.
    fn say(&self, msg: &str) {
        self.pb.suspend(|| eprintln!("{msg}"));
    }

    fn fail(&mut self, msg: String) {
        self.say(&format!("cohmem-stress: {msg}"));
        self.outcome.failures.push(msg);
    }

    fn spawn_worker(&mut self, slot: usize, generation: u64, rounds: u64) -> anyhow::Result<Worker> {
        let seed = SplitMix64::new(self.cfg.seed ^ ((slot as u64) << 40) ^ generation).next_u64();
        let mut cmd = Command::new(self.exe);
        cmd.arg("worker")
            .arg("--socket")
            .arg(&self.socket)
            .args(["--bos", &self.cfg.bos.to_string()])
            .args(["--bo-size", &self.cfg.bo_size.to_string()])
            .args(["--threads", &self.cfg.threads.to_string()])
            .args(["--seed", &seed.to_string()])
            .args(["--rounds", &rounds.to_string()]);
        if self.cfg.chaos {
            cmd.arg("--retry");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting worker {}", self.exe.display()))?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let stdin = child.stdin.take();
        let tx = self.tx.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => {
                        if tx
                            .send(Event {
                                slot,
                                generation,
                                line: Some(line),
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(Event {
                slot,
                generation,
                line: None,
            });
        });
        self.outcome.workers_spawned += 1;
        Ok(Worker {
            generation,
            pid: child.id(),
            child,
            stdin,
            rounds_target: rounds,
            rounds_done: 0,
            last_progress: Instant::now(),
            summed: Tally::default(),
            finished: false,
            killed_by_chaos: false,
            hung: false,
            error: None,
        })
    }

    /// Asks every worker to finish its round and exit.
    fn stop_all(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        for w in self.workers.iter_mut().flatten() {
            if let Some(mut stdin) = w.stdin.take() {
                let _ = writeln!(stdin, "stop");
            }
        }
    }

    fn main_loop(&mut self, daemon: &mut Daemon, started: Instant) -> anyhow::Result<()> {
        let mut next_chaos = self.cfg.chaos.then(|| Instant::now() + self.chaos_gap());
        while self.workers.iter().any(Option::is_some) {
            let now = Instant::now();
            if let Some(d) = self.cfg.duration {
                if now.duration_since(started) >= d {
                    self.stop_all();
                }
                self.pb
                    .set_position(now.duration_since(started).as_secs().min(d.as_secs()));
            }
            if !daemon.alive() {
                self.fail("cohmemd died (not killed by this tool)".into());
                self.stop_all();
                // Nothing can progress without it.
                for w in self.workers.iter_mut().flatten() {
                    let _ = w.child.kill();
                }
                drain(self);
                return Ok(());
            }
            if let Some(at) = next_chaos {
                if now >= at && !self.stopping {
                    self.chaos_event(daemon)?;
                    next_chaos = Some(Instant::now() + self.chaos_gap());
                }
            }
            match self.tx.1.recv_timeout(Duration::from_millis(20)) {
                Ok(ev) => self.handle(ev)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("worker channel closed"),
            }
            self.check_hangs();
            self.pb.set_message(format!(
                "syncs={} lost={} restarts={} kills={}",
                self.outcome.tally.syncs,
                self.outcome.tally.lost,
                match daemon {
                    Daemon::Restartable(d) => d.restarts(),
                    _ => 0,
                },
                self.outcome.client_kills
            ));
        }
        Ok(())
    }

    /// A random gap between chaos events: uniform in [interval/4, 7/4 interval].
    fn chaos_gap(&mut self) -> Duration {
        let mean = self.cfg.chaos_interval.as_millis().max(4) as u64;
        Duration::from_millis(mean / 4 + self.rng.below(mean * 3 / 2))
    }

    fn chaos_event(&mut self, daemon: &mut Daemon) -> anyhow::Result<()> {
        let live: Vec<usize> = self
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.as_ref().filter(|w| !w.finished && !w.killed_by_chaos).map(|_| i))
            .collect();
        // Daemon restarts and client kills as before; signal storms, forks
        // and mechanism switches as real applications make them.
        let pick = if live.is_empty() { 0 } else { self.rng.below(8) };
        let target = (!live.is_empty()).then(|| live[self.rng.below(live.len() as u64) as usize]);
        match (pick, target) {
            (4 | 5, Some(slot)) => {
                // Only once it finished a round: its handler is installed
                // (SIGUSR1's default action would end it).
                if let Some(w) = self.workers[slot].as_ref().filter(|w| w.rounds_done > 0) {
                    signal_storm(w.pid, Duration::from_millis(50));
                    self.outcome.signal_storms += 1;
                }
                return Ok(());
            }
            (6, Some(slot)) => {
                self.ask(slot, "fork");
                self.outcome.fork_requests += 1;
                return Ok(());
            }
            (7, Some(slot)) => {
                self.ask(slot, "switch");
                self.outcome.switch_requests += 1;
                return Ok(());
            }
            _ => {}
        }
        let kill_daemon = pick < 2 || live.is_empty();
        if kill_daemon {
            let Daemon::Restartable(d) = daemon else {
                bail!("--chaos needs a daemon of its own");
            };
            d.kill()?;
            // Let the clients find it gone (their calls fail with Connect).
            let down = Duration::from_millis(self.rng.below(300));
            std::thread::sleep(down);
            let t = Instant::now();
            d.restart().context("restarting cohmemd")?;
            let restart = t.elapsed();
            // Time the parent spent here is not the workers' fault.
            let blocked = down + restart;
            for w in self.workers.iter_mut().flatten() {
                w.last_progress += blocked;
            }
            self.outcome.daemon_restarts = d.restarts();
        } else {
            let slot = live[self.rng.below(live.len() as u64) as usize];
            if let Some(w) = self.workers[slot].as_mut() {
                // Child::kill: SIGKILL to this worker's pid only.
                if w.child.kill().is_ok() {
                    w.killed_by_chaos = true;
                    self.outcome.client_kills += 1;
                }
            }
        }
        Ok(())
    }

    /// Sends a command line to a worker (ignored if it is gone).
    fn ask(&mut self, slot: usize, command: &str) {
        if let Some(stdin) = self.workers[slot].as_mut().and_then(|w| w.stdin.as_mut()) {
            let _ = writeln!(stdin, "{command}");
        }
    }

    fn check_hangs(&mut self) {
        let timeout = self.cfg.hang_timeout;
        let mut hung = Vec::new();
        for (slot, w) in self.workers.iter_mut().enumerate() {
            let Some(w) = w else { continue };
            if w.killed_by_chaos || w.hung || w.last_progress.elapsed() < timeout {
                continue;
            }
            w.hung = true;
            let _ = w.child.kill();
            hung.push(format!(
                "client {slot} (pid {}) hung: no progress for {:?} after round {}",
                w.pid, timeout, w.rounds_done
            ));
        }
        for msg in hung {
            self.fail(msg);
            self.stop_all();
        }
    }

    fn handle(&mut self, ev: Event) -> anyhow::Result<()> {
        let Some(w) = self.workers[ev.slot].as_mut() else {
            return Ok(());
        };
        if w.generation != ev.generation {
            return Ok(()); // a killed predecessor's last words
        }
        let Some(line) = ev.line else {
            return self.worker_ended(ev.slot);
        };
        let parsed = WorkerLine::parse(&line);
        let w = self.workers[ev.slot].as_mut().context("worker slot")?;
        match parsed {
            Ok(WorkerLine::Ready { .. }) => w.last_progress = Instant::now(),
            Ok(WorkerLine::Round { tally, .. }) => {
                w.last_progress = Instant::now();
                w.rounds_done += 1;
                w.summed.add(&tally);
                self.outcome.tally.add(&tally);
                if self.cfg.duration.is_none() {
                    self.pb.inc(1);
                }
            }
            Ok(WorkerLine::Lost { bo, page, first_byte }) => {
                self.lost_lines += 1;
                if self.lost_lines <= 20 {
                    let msg = format!(
                        "client {} (pid {}): BO {bo} page {page} lost (first differing byte {first_byte})",
                        ev.slot, w.pid
                    );
                    self.say(&msg);
                }
            }
            Ok(WorkerLine::Retry(_)) => {}
            Ok(WorkerLine::Done(total)) => {
                w.finished = true;
                if total != w.summed {
                    let msg = format!(
                        "client {} (pid {}): final tally {total} differs from its rounds {}",
                        ev.slot, w.pid, w.summed
                    );
                    self.fail(msg);
                }
            }
            Ok(WorkerLine::Error(e)) => w.error = Some(e),
            Err(e) => {
                let msg = format!("client {} (pid {}): unreadable line {line:?}: {e}", ev.slot, w.pid);
                self.fail(msg);
            }
        }
        Ok(())
    }

    /// A worker's output ended: reap it, judge it, respawn after chaos.
    fn worker_ended(&mut self, slot: usize) -> anyhow::Result<()> {
        let Some(mut w) = self.workers[slot].take() else {
            return Ok(());
        };
        let status = w.child.wait().context("reaping a worker")?;
        if w.killed_by_chaos {
            let remaining = if w.rounds_target == 0 {
                0
            } else {
                w.rounds_target.saturating_sub(w.rounds_done)
            };
            let want_more = w.rounds_target == 0 || remaining > 0;
            if !self.stopping && want_more {
                let fresh = self.spawn_worker(slot, w.generation + 1, remaining)?;
                self.workers[slot] = Some(fresh);
            } else if w.rounds_target != 0 && remaining > 0 {
                // Stopped early: the rounds it did not run are not owed.
                self.pb.inc(remaining);
            }
            return Ok(());
        }
        if w.hung {
            return Ok(()); // already reported
        }
        if let Some(e) = w.error {
            self.fail(format!("client {slot} (pid {}) failed: {e}", w.pid));
            self.stop_all();
        } else if !w.finished || !status.success() {
            self.fail(format!(
                "client {slot} (pid {}) ended without finishing: {status} after round {}",
                w.pid, w.rounds_done
            ));
            self.stop_all();
        } else {
            self.outcome.workers_completed += 1;
        }
        Ok(())
    }
}

/// Reaps every worker after they were killed.
fn drain(run: &mut Run<'_>) {
    for w in run.workers.iter_mut() {
        if let Some(w) = w.take() {
            let mut child = w.child;
            let _ = child.wait();
        }
    }
}
