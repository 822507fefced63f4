//! Replays a vmwgfx trace against a running cohmemd and the reference model
//! side by side, and reports the first step where they disagree.
//!
//! The daemon side is real: each mapping `M` of the trace is a writer child
//! process (a real client process with its own userfaultfd) that maps the
//! BO's pages; `write`/`read` events are real memory accesses in that
//! process; `scan`, `transfer`, `clear`, `clearall`, `add`, `release` and
//! `sync` are the daemon's requests of the same names. After every step the
//! daemon's DIRTY_STATE (method, change count, users, envelope, set bits) is
//! compared with the model's observation, and the runs reported by
//! `transfer` and `sync` with the model's.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context};
use cohmem_client::{Bo, Connection, DirtyStateReport, Method as WireMethod, Run};

use super::model::{Method, Model, ModelConfig, Observation, StepResult, TrackerState};
use super::trace::Event;
use crate::writer::WriterChild;
use crate::SplitMix64;

/// How to start a writer child process: a program and the arguments that
/// come before the writer's own (`SOCKET MEMFD_FD OFFSET LEN`).
#[derive(Debug, Clone)]
pub struct WriterCommand {
    /// The program.
    pub program: PathBuf,
    /// Leading arguments (e.g. a subcommand).
    pub pre_args: Vec<String>,
}

/// What a running replay is doing, shared with a watchdog on another
/// thread: the step it is at and the writer processes it has running, so
/// that a replay that does not finish can be reported and its writers
/// killed (a replay waiting on a killed writer then fails at once).
#[derive(Debug, Clone, Default)]
pub struct ReplayWatch {
    inner: Arc<Mutex<WatchState>>,
}

#[derive(Debug, Default)]
struct WatchState {
    /// Index of the event being applied, and which side is applying it.
    step: usize,
    phase: &'static str,
    /// Writer pid → its mapping. A pid is removed before its process is
    /// reaped, so [`ReplayWatch::kill_writers`] never signals a reused pid.
    writers: BTreeMap<u32, u32>,
}

impl ReplayWatch {
    /// A watch for one replay.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, WatchState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn at(&self, step: usize, phase: &'static str) {
        let mut s = self.state();
        s.step = step;
        s.phase = phase;
    }

    /// The index of the event being applied (0 = the `bo` line) and what
    /// the replay was doing with it (`model`, `daemon`, `dirty_state`,
    /// `quit`, or `done`).
    pub fn position(&self) -> (usize, &'static str) {
        let s = self.state();
        (s.step, s.phase)
    }

    /// The running writer processes: (pid, mapping).
    pub fn writers(&self) -> Vec<(u32, u32)> {
        self.state().writers.iter().map(|(&pid, &m)| (pid, m)).collect()
    }

    /// SIGKILLs every writer process still running (not yet reaped);
    /// returns their pids.
    pub fn kill_writers(&self) -> Vec<u32> {
        let s = self.state();
        for &pid in s.writers.keys() {
            if let Ok(raw) = i32::try_from(pid) {
                // Still our unreaped child (see `writers`): the pid is ours.
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
            }
        }
        s.writers.keys().copied().collect()
    }

    fn add_writer(&self, pid: u32, m: u32) {
        self.state().writers.insert(pid, m);
    }

    fn remove_writer(&self, pid: u32) {
        self.state().writers.remove(&pid);
    }
}

/// The first step where daemon and model differ.
#[derive(Debug, Clone)]
pub struct Disagreement {
    /// Index of the event in the trace (0 = the `bo` line).
    pub step: usize,
    /// The event.
    pub event: Event,
    /// What differed.
    pub what: String,
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} `{}`: {}", self.step, self.event, self.what)
    }
}

fn runs_of(runs: &[Run]) -> Vec<Range<u64>> {
    runs.iter()
        .map(|r| u64::from(r.first_page)..u64::from(r.first_page) + u64::from(r.pages))
        .collect()
}

fn fmt_runs(runs: &[Range<u64>]) -> String {
    if runs.is_empty() {
        return "-".into();
    }
    runs.iter()
        .map(|r| format!("{}..{}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(",")
}

/// The daemon's tracker in the model's terms (`None`: no tracker).
fn daemon_tracker(d: &DirtyStateReport) -> anyhow::Result<Option<TrackerState>> {
    let method = match WireMethod::from_wire(d.method) {
        Ok(WireMethod::None) => return Ok(None),
        Ok(WireMethod::PageTable) => Method::PageTable,
        Ok(WireMethod::MkWrite) => Method::MkWrite,
        Err(e) => bail!("daemon reported an unknown method: {e}"),
    };
    if d.truncated {
        bail!("daemon's bit list was truncated; use smaller traces");
    }
    Ok(Some(TrackerState {
        method,
        change_count: d.change_count,
        users: d.users,
        start: d.start,
        end: d.end,
        bits: runs_of(&d.runs),
    }))
}

/// Compares two trackers; an empty envelope compares equal to any empty
/// envelope (vmwgfx's pre_unmap can leave a non-canonical empty one).
fn tracker_diff(daemon: &Option<TrackerState>, model: &Option<TrackerState>) -> Option<String> {
    let fmt_t = |t: &Option<TrackerState>| match t {
        None => "no tracker".to_string(),
        Some(t) => format!(
            "method={} change_count={} users={} envelope={}..{} bits={}",
            t.method.name(),
            t.change_count,
            t.users,
            t.start,
            t.end,
            fmt_runs(&t.bits)
        ),
    };
    let same = match (daemon, model) {
        (None, None) => true,
        (Some(d), Some(m)) => {
            let envelope_same = (d.start >= d.end && m.start >= m.end) || (d.start == m.start && d.end == m.end);
            d.method == m.method
                && d.change_count == m.change_count
                && d.users == m.users
                && envelope_same
                && d.bits == m.bits
        }
        _ => false,
    };
    (!same).then(|| format!("daemon has {}, model has {}", fmt_t(daemon), fmt_t(model)))
}

/// The daemon side of a replay.
struct DaemonSide {
    socket: PathBuf,
    writer: WriterCommand,
    conn: Connection,
    bo: Option<Bo>,
    procs: HashMap<u32, WriterChild>,
    resources: HashMap<u32, u32>,
    rng: SplitMix64,
    page_size: u64,
    watch: ReplayWatch,
}

impl Drop for DaemonSide {
    fn drop(&mut self) {
        // Before `procs` is dropped (which kills and reaps the writers).
        for child in self.procs.values() {
            self.watch.remove_writer(child.pid());
        }
    }
}

impl DaemonSide {
    fn bo(&self) -> anyhow::Result<&Bo> {
        self.bo.as_ref().context("trace does not start with `bo`")
    }

    fn resource(&self, w: u32) -> anyhow::Result<u32> {
        self.resources
            .get(&w)
            .copied()
            .with_context(|| format!("no resource {w}"))
    }

    fn child(&mut self, m: u32) -> anyhow::Result<&mut WriterChild> {
        self.procs
            .get_mut(&m)
            .with_context(|| format!("mapping {m} is not mapped"))
    }

    /// Applies one event; returns the runs it reported (transfer, sync) and
    /// the method a scan switched to.
    fn apply(&mut self, ev: &Event) -> anyhow::Result<(Vec<Range<u64>>, Option<Method>)> {
        let ps = self.page_size;
        match ev {
            Event::Bo { pages } => {
                self.bo = Some(self.conn.create_bo_without_resource(pages * ps)?);
            }
            Event::Map { m, first, count } => {
                let pre: Vec<&str> = self.writer.pre_args.iter().map(String::as_str).collect();
                let child = WriterChild::spawn_as(
                    None,
                    &self.writer.program,
                    &pre,
                    &self.socket,
                    self.bo()?.memfd(),
                    first * ps,
                    count * ps,
                )?;
                self.watch.add_writer(child.pid(), *m);
                if let Some(old) = self.procs.insert(*m, child) {
                    self.watch.remove_writer(old.pid());
                }
            }
            Event::Unmap { m } => {
                let child = self
                    .procs
                    .remove(m)
                    .with_context(|| format!("mapping {m} is not mapped"))?;
                self.watch.remove_writer(child.pid());
                child.quit()?;
            }
            Event::Add { w, first, count } => {
                let index = self.bo()?.add_resource(first * ps, count * ps)?;
                self.resources.insert(*w, index);
            }
            Event::Release { w } => {
                let index = self.resource(*w)?;
                self.bo()?.release_resource(index)?;
                self.resources.remove(w);
            }
            Event::Write { m, pages } => {
                let seed = self.rng.next_u64();
                self.child(*m)?.write_pages(seed, pages)?;
            }
            Event::Read { m, pages } => self.child(*m)?.read_pages(pages)?,
            Event::Scan => {
                let s = self.bo()?.scan()?;
                let switched = match WireMethod::from_wire(s.switched_to)? {
                    WireMethod::None => None,
                    WireMethod::PageTable => Some(Method::PageTable),
                    WireMethod::MkWrite => Some(Method::MkWrite),
                };
                return Ok((Vec::new(), switched));
            }
            Event::Transfer { w } => {
                let index = self.resource(*w)?;
                let done = self.bo()?.transfer(index)?;
                return Ok((runs_of(&done.runs), None));
            }
            Event::Clear { w } => {
                let index = self.resource(*w)?;
                self.bo()?.clear_resource(index)?;
            }
            Event::ClearAll => self.bo()?.clear_all()?,
            Event::Sync => {
                let done = self.bo()?.sync_with_runs()?;
                if done.runs_truncated {
                    bail!("sync reported more runs than listed; use smaller traces");
                }
                return Ok((runs_of(&done.runs), None));
            }
        }
        Ok((Vec::new(), None))
    }
}

/// Merges adjacent runs and sorts them (sync concatenates per-resource runs).
fn normalise(mut runs: Vec<Range<u64>>) -> Vec<Range<u64>> {
    runs.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in runs {
        match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

fn compare_step(ev: &Event, daemon: &(Vec<Range<u64>>, Option<Method>), model: &StepResult) -> Option<String> {
    match ev {
        Event::Transfer { .. } if daemon.0 != model.runs => Some(format!(
            "transfer reported {} on the daemon, {} in the model",
            fmt_runs(&daemon.0),
            fmt_runs(&model.runs)
        )),
        Event::Sync if normalise(daemon.0.clone()) != normalise(model.runs.clone()) => Some(format!(
            "sync reported {} on the daemon, {} in the model",
            fmt_runs(&daemon.0),
            fmt_runs(&model.runs)
        )),
        Event::Scan if daemon.1 != model.switched_to => Some(format!(
            "scan switched to {:?} on the daemon, {:?} in the model",
            daemon.1, model.switched_to
        )),
        _ => None,
    }
}

/// Replays `events` against the daemon at `socket` and the model. Returns
/// the number of steps that agreed, or the first disagreement. An event the
/// model rejects (an invalid trace) is an error, as is any daemon failure.
pub fn replay(socket: &Path, writer: &WriterCommand, events: &[Event]) -> anyhow::Result<Result<usize, Disagreement>> {
    replay_watched(socket, writer, events, &ReplayWatch::new())
}

/// [`replay`], publishing its progress and its writer processes in
/// `watch` (for a watchdog on another thread).
pub fn replay_watched(
    socket: &Path,
    writer: &WriterCommand,
    events: &[Event],
    watch: &ReplayWatch,
) -> anyhow::Result<Result<usize, Disagreement>> {
    let Some(Event::Bo { pages }) = events.first() else {
        bail!("a trace must start with `bo N`");
    };
    // The daemon closes one hole vmwgfx leaves open (a write after a
    // scanless transfer), so it is compared with the model that does too.
    let mut model = Model::with_config(
        *pages,
        ModelConfig {
            protect_clean_writable: true,
            ..ModelConfig::default()
        },
    );
    let mut daemon = DaemonSide {
        socket: socket.to_owned(),
        writer: writer.clone(),
        conn: Connection::connect(socket)?,
        bo: None,
        procs: HashMap::new(),
        resources: HashMap::new(),
        rng: SplitMix64::new(0x7ace),
        page_size: cohmem_sys::page_size(),
        watch: watch.clone(),
    };
    watch.at(0, "daemon");
    daemon.apply(&events[0])?;
    for (step, ev) in events.iter().enumerate().skip(1) {
        watch.at(step, "model");
        let expected = model
            .apply(ev)
            .map_err(|e| anyhow::anyhow!("the trace is invalid at step {step} `{ev}`: {e}"))?;
        watch.at(step, "daemon");
        let got = daemon
            .apply(ev)
            .with_context(|| format!("daemon side failed at step {step} `{ev}`"))?;
        let disagree = |what: String| Disagreement {
            step,
            event: ev.clone(),
            what,
        };
        if let Some(what) = compare_step(ev, &got, &expected) {
            return Ok(Err(disagree(what)));
        }
        let observed: Observation = model.observe();
        watch.at(step, "dirty_state");
        let state = daemon.bo()?.dirty_state()?;
        if let Some(what) = tracker_diff(&daemon_tracker(&state)?, &observed.tracker) {
            return Ok(Err(disagree(what)));
        }
    }
    watch.at(events.len(), "quit");
    let children: Vec<WriterChild> = daemon.procs.drain().map(|(_, c)| c).collect();
    for child in children {
        watch.remove_writer(child.pid());
        child.quit()?;
    }
    watch.at(events.len(), "done");
    Ok(Ok(events.len()))
}

/// A random valid trace of about `steps` events over a BO of `pages`
/// pages, with up to three mappings and three resources.
pub fn random_trace(rng: &mut SplitMix64, pages: u64, steps: usize) -> Vec<Event> {
    let mut events = vec![Event::Bo { pages }];
    let mut maps: HashMap<u32, Range<u64>> = HashMap::new();
    let mut resources: Vec<u32> = Vec::new();
    let mut next_w = 0;
    let window = |rng: &mut SplitMix64| {
        let first = rng.below(pages);
        let count = 1 + rng.below(pages - first);
        (first, count)
    };
    while events.len() < steps {
        match rng.below(20) {
            0 | 1 if maps.len() < 3 => {
                let m = (0..3).find(|m| !maps.contains_key(m)).unwrap_or(0);
                let (first, count) = if rng.below(2) == 0 { (0, pages) } else { window(rng) };
                maps.insert(m, first..first + count);
                events.push(Event::Map { m, first, count });
            }
            2 if !maps.is_empty() => {
                let m = *maps.keys().min().unwrap_or(&0);
                maps.remove(&m);
                events.push(Event::Unmap { m });
            }
            3 if resources.len() < 3 => {
                let (first, count) = if rng.below(2) == 0 { (0, pages) } else { window(rng) };
                events.push(Event::Add {
                    w: next_w,
                    first,
                    count,
                });
                resources.push(next_w);
                next_w += 1;
            }
            4 if !resources.is_empty() => {
                let w = resources.remove(rng.below(resources.len() as u64) as usize);
                events.push(Event::Release { w });
            }
            5..=10 if !maps.is_empty() => {
                let keys: Vec<u32> = maps.keys().copied().collect();
                let m = keys[rng.below(keys.len() as u64) as usize];
                let r = maps[&m].clone();
                // Mostly sparse, sometimes dense (to cross the 10 % threshold).
                let n = if rng.below(4) == 0 {
                    (r.end - r.start) / 2 + 1
                } else {
                    1 + rng.below(4)
                };
                let chosen = rng.distinct(r.end - r.start, n as usize);
                let pages: Vec<u64> = chosen.into_iter().map(|p| p + r.start).collect();
                if rng.below(8) == 0 {
                    events.push(Event::Read { m, pages });
                } else {
                    events.push(Event::Write { m, pages });
                }
            }
            11 | 12 => events.push(Event::Scan),
            13 if !resources.is_empty() => {
                let w = resources[rng.below(resources.len() as u64) as usize];
                events.push(Event::Transfer { w });
            }
            14 if !resources.is_empty() && rng.below(3) == 0 => {
                let w = resources[rng.below(resources.len() as u64) as usize];
                events.push(Event::Clear { w });
            }
            15 if rng.below(4) == 0 => events.push(Event::ClearAll),
            _ => events.push(Event::Sync),
        }
    }
    events
}
