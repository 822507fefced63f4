//! Sequential reference model of the vmwgfx BO dirty tracker.
//!
//! Written only from `shared/research/vmwgfx-dirty-spec.md`; section numbers
//! (§) below refer to that document. The model keeps, for every client
//! mapping and every page it maps, an explicit PTE state (present, writable,
//! hardware-dirty) and drives the tracker exactly as the spec describes:
//!
//! * the tracker (§1): bitmap, envelope `[start, end)`, method,
//!   `change_count`, user count;
//! * the two mm helpers (§6): write-protect (counts PTEs made read-only) and
//!   clean-and-record (counts dirty PTEs cleaned, records their pages);
//! * the fault handlers (§4.9, §4.10), without prefault (one page per fault);
//! * `add`, `release`, `scan`, `pre_unmap`, `transfer_to_res` with the `min`
//!   limit, `clear_res` and `dirty_clear` (§3, §4).
//!
//! Everything is sequential: one event is applied atomically. Concurrency
//! (§10 item 16/17) cannot be expressed here.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use super::trace::Event;

/// Page size assumed by the model (x86-64).
pub const PAGE_SIZE: u64 = 4096;
/// Initial-method threshold: `N < MKWRITE_MIN_PAGES` starts PAGETABLE
/// (PAGE_SIZE / sizeof(PTE) on x86-64, §2).
pub const MKWRITE_MIN_PAGES: u64 = 512;
/// A switch happens when `change_count > CHANGE_TRIGGERS` (§2).
pub const CHANGE_TRIGGERS: u32 = 2;
/// A MKWRITE scan triggers when `floor(100 * num_marked / N) > PAGETABLE_PERCENT` (§2).
pub const PAGETABLE_PERCENT: u64 = 10;

/// Tracker size for a BO of `bytes` bytes: rounded up to whole pages (§1, §10 item 1).
pub fn pages_for_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE)
}

/// Dirty-tracking method (§2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// PTEs writable, hardware dirty bits harvested by scans.
    PageTable,
    /// PTEs write-protected, first writes recorded by mkwrite.
    MkWrite,
}

impl Method {
    /// The method a freshly created tracker of `pages` pages starts in (§2, §4.1).
    pub fn initial(pages: u64) -> Method {
        if pages < MKWRITE_MIN_PAGES {
            Method::PageTable
        } else {
            Method::MkWrite
        }
    }

    /// Upper-case name as used in the spec (`PAGETABLE` / `MKWRITE`).
    pub fn name(self) -> &'static str {
        match self {
            Method::PageTable => "PAGETABLE",
            Method::MkWrite => "MKWRITE",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// State of one user PTE (one mapping, one page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pte {
    /// The PTE exists (the page has been faulted in through this mapping).
    pub present: bool,
    /// The PTE allows writes without a fault.
    pub writable: bool,
    /// The hardware dirty bit.
    pub dirty: bool,
}

/// Observable tracker state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrackerState {
    /// Current method.
    pub method: Method,
    /// Consecutive scans that asked for a switch.
    pub change_count: u32,
    /// Number of users (`add`s not yet `release`d).
    pub users: u32,
    /// Envelope start (inclusive).
    pub start: u64,
    /// Envelope end (exclusive).
    pub end: u64,
    /// Maximal runs of set bits, ascending, in pages.
    pub bits: Vec<Range<u64>>,
}

impl TrackerState {
    /// `is_dirty`: the envelope is non-empty (§1, §4.8).
    pub fn is_dirty(&self) -> bool {
        self.start < self.end
    }

    /// Whether bit `page` is set.
    pub fn bit(&self, page: u64) -> bool {
        self.bits.iter().any(|r| r.contains(&page))
    }

    /// Number of set bits.
    pub fn bit_count(&self) -> u64 {
        self.bits.iter().map(|r| r.end - r.start).sum()
    }

    /// Every set bit lies inside `[start, end)` (§1, §10 item 21).
    pub fn envelope_invariant_holds(&self) -> bool {
        self.bits
            .iter()
            .all(|r| r.is_empty() || (self.start <= r.start && r.end <= self.end))
    }
}

impl fmt::Display for TrackerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "method={} change_count={} users={} start={} end={} bits={}",
            self.method,
            self.change_count,
            self.users,
            self.start,
            self.end,
            RunsDisplay(&self.bits)
        )
    }
}

/// What can be observed of the model after a step.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Observation {
    /// The tracker, or `None` when the BO has none.
    pub tracker: Option<TrackerState>,
}

impl Observation {
    /// `is_dirty(BO)`: a tracker exists and its envelope is non-empty.
    pub fn is_dirty(&self) -> bool {
        self.tracker.as_ref().is_some_and(TrackerState::is_dirty)
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tracker {
            None => f.write_str("tracker=none"),
            Some(t) => t.fmt(f),
        }
    }
}

/// Result of applying one event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct StepResult {
    /// Pages reported by `transfer` / `sync`: maximal runs per transfer, in
    /// ascending order; for `sync` the concatenation in transfer order.
    pub runs: Vec<Range<u64>>,
    /// Set when this step's scan switched method (to this method).
    pub switched_to: Option<Method>,
}

impl fmt::Display for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "runs={}", RunsDisplay(&self.runs))?;
        if let Some(m) = self.switched_to {
            write!(f, " switched_to={m}")?;
        }
        Ok(())
    }
}

/// Formats runs as `a..b,c..d`, or `-` when there are none.
pub struct RunsDisplay<'a>(pub &'a [Range<u64>]);

impl fmt::Display for RunsDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}..{}", r.start, r.end)?;
        }
        Ok(())
    }
}

/// Options for envelope details where the kernel is looser than the spec's
/// canonical form. Both settings agree on every reported page as long as the
/// envelope is only used as a bound; they differ in `start`/`end` values and,
/// through the looser envelope, in which pages a MKWRITE scan re-protects and
/// which pages a MKWRITE→PAGETABLE switch marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ModelConfig {
    /// `false` (default): whenever an operation leaves the envelope empty it
    /// is stored as the canonical `start = N, end = 0` (§1), and a
    /// clean-and-record on an empty envelope seeds `(N, 0)`.
    ///
    /// `true`: keep the literal kernel arithmetic: a transfer/clear covering
    /// both edges leaves `start = limit, end = rs` (§4.6 formulas), and
    /// `pre_unmap` on an empty envelope seeds its local envelope with
    /// `(e - s, 0)` (§4.4 quirk, §6.2).
    pub kernel_envelope_quirks: bool,
    /// cohmem's one deliberate deviation from vmwgfx (`false` = vmwgfx): in
    /// MKWRITE, a transfer or clear re-protects every writable PTE whose bit
    /// is clear afterwards (outside the envelope, or inside it when other
    /// resources keep it open). vmwgfx leaves them writable, so a later
    /// write to such a page is never recorded when a transfer is not
    /// preceded by a scan; cohmem exposes TRANSFER and CLEAR to clients, so
    /// it closes that hole (the PTE stays dirty, as any re-protected PTE).
    pub protect_clean_writable: bool,
}

#[derive(Debug, Clone)]
struct Tracker {
    method: Method,
    change_count: u32,
    users: u32,
    start: u64,
    end: u64,
    bits: Vec<bool>,
}

impl Tracker {
    fn new(pages: u64) -> Tracker {
        Tracker {
            method: Method::initial(pages),
            change_count: 0,
            users: 1,
            start: pages,
            end: 0,
            bits: vec![false; pages as usize],
        }
    }

    fn envelope_empty(&self) -> bool {
        self.start >= self.end
    }
}

#[derive(Debug, Clone)]
struct Mapping {
    first: u64,
    ptes: Vec<Pte>,
}

impl Mapping {
    fn range(&self) -> Range<u64> {
        self.first..self.first + self.ptes.len() as u64
    }
}

#[derive(Debug, Clone, Copy)]
struct Resource {
    first: u64,
    count: u64,
}

/// Which mappings a PTE walk visits.
#[derive(Debug, Clone, Copy)]
enum Scope {
    All,
    Only(u32),
}

/// The reference model: one BO, its mappings, its coherent resources and its
/// (optional) tracker.
#[derive(Debug, Clone)]
pub struct Model {
    pages: u64,
    config: ModelConfig,
    tracker: Option<Tracker>,
    mappings: BTreeMap<u32, Mapping>,
    resources: BTreeMap<u32, Resource>,
}

impl Model {
    /// A BO of `pages` pages with no tracker, no mapping and no resource.
    /// `pages` should be >= 1 ([`run_trace`] rejects `bo 0`); with 0 pages
    /// every window is invalid, so nothing can happen.
    pub fn new(pages: u64) -> Model {
        Model::with_config(pages, ModelConfig::default())
    }

    /// Like [`Model::new`] with explicit [`ModelConfig`].
    pub fn with_config(pages: u64, config: ModelConfig) -> Model {
        Model {
            pages,
            config,
            tracker: None,
            mappings: BTreeMap::new(),
            resources: BTreeMap::new(),
        }
    }

    /// Number of pages N of the BO.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The configuration in use.
    pub fn config(&self) -> ModelConfig {
        self.config
    }

    /// PTE state of mapping `m` for BO page `page`, or `None` if `m` is not
    /// mapped or does not map `page`.
    pub fn pte(&self, m: u32, page: u64) -> Option<Pte> {
        let map = self.mappings.get(&m)?;
        if !map.range().contains(&page) {
            return None;
        }
        Some(map.ptes[(page - map.first) as usize])
    }

    /// Ids of the live mappings with their page windows, ascending by id.
    pub fn mappings(&self) -> Vec<(u32, Range<u64>)> {
        self.mappings.iter().map(|(&m, map)| (m, map.range())).collect()
    }

    /// Ids of the live resources with their page windows, ascending by id.
    pub fn resources(&self) -> Vec<(u32, Range<u64>)> {
        self.resources
            .iter()
            .map(|(&w, r)| (w, r.first..r.first + r.count))
            .collect()
    }

    /// Current observation.
    pub fn observe(&self) -> Observation {
        Observation {
            tracker: self.tracker.as_ref().map(|t| TrackerState {
                method: t.method,
                change_count: t.change_count,
                users: t.users,
                start: t.start,
                end: t.end,
                bits: runs_of(&t.bits, 0, self.pages),
            }),
        }
    }

    /// Applies one event. Semantic errors are returned as `Err` and leave the
    /// model unchanged (every check happens before any mutation).
    pub fn apply(&mut self, ev: &Event) -> Result<StepResult, String> {
        let mut res = StepResult::default();
        match ev {
            Event::Bo { .. } => return Err("`bo` must be the first event and may appear only once".into()),
            Event::Map { m, first, count } => {
                if self.mappings.contains_key(m) {
                    return Err(format!("mapping {m} is already mapped"));
                }
                self.check_window("map", *first, *count)?;
                self.mappings.insert(
                    *m,
                    Mapping {
                        first: *first,
                        ptes: vec![Pte::default(); *count as usize],
                    },
                );
            }
            Event::Unmap { m } => {
                let range = self
                    .mappings
                    .get(m)
                    .ok_or_else(|| format!("unmap of unknown mapping {m}"))?
                    .range();
                self.pre_unmap(*m, range);
                self.mappings.remove(m);
            }
            Event::Add { w, first, count } => {
                if self.resources.contains_key(w) {
                    return Err(format!("resource {w} already exists"));
                }
                self.check_window("add", *first, *count)?;
                self.resources.insert(
                    *w,
                    Resource {
                        first: *first,
                        count: *count,
                    },
                );
                self.dirty_add();
            }
            Event::Release { w } => {
                if self.resources.remove(w).is_none() {
                    return Err(format!("release of unknown resource {w}"));
                }
                self.dirty_release();
            }
            Event::Write { m, pages } => {
                self.check_access("write", *m, pages)?;
                for &p in pages {
                    self.write_page(*m, p);
                }
            }
            Event::Read { m, pages } => {
                self.check_access("read", *m, pages)?;
                for &p in pages {
                    self.read_page(*m, p);
                }
            }
            Event::Scan => res.switched_to = self.scan(),
            Event::Transfer { w } => {
                let r = self.resource(*w, "transfer")?;
                res.runs = self.transfer(r.first..r.first + r.count);
            }
            Event::Clear { w } => {
                let r = self.resource(*w, "clear")?;
                self.clear_res(r.first..r.first + r.count);
            }
            Event::ClearAll => self.dirty_clear(),
            Event::Sync => {
                res.switched_to = self.scan();
                let mut order: Vec<(u64, u32)> = self.resources.iter().map(|(&w, r)| (r.first, w)).collect();
                order.sort_unstable();
                for (_, w) in order {
                    let r = self.resources[&w];
                    res.runs.extend(self.transfer(r.first..r.first + r.count));
                }
            }
        }
        Ok(res)
    }

    // ----- validation -------------------------------------------------------

    fn check_window(&self, what: &str, first: u64, count: u64) -> Result<(), String> {
        if count == 0 {
            return Err(format!("{what}: empty window (COUNT must be >= 1)"));
        }
        match first.checked_add(count) {
            Some(end) if end <= self.pages => Ok(()),
            _ => Err(format!(
                "{what}: window [{first}, {first}+{count}) lies outside the BO of {} pages",
                self.pages
            )),
        }
    }

    fn check_access(&self, what: &str, m: u32, pages: &[u64]) -> Result<(), String> {
        let map = self
            .mappings
            .get(&m)
            .ok_or_else(|| format!("{what} through unknown mapping {m}"))?;
        if pages.is_empty() {
            return Err(format!("{what}: no page given"));
        }
        for &p in pages {
            if p >= self.pages {
                return Err(format!(
                    "{what}: page {p} is out of range (BO has {} pages; SIGBUS)",
                    self.pages
                ));
            }
            if !map.range().contains(&p) {
                let r = map.range();
                return Err(format!(
                    "{what}: page {p} is outside mapping {m} ([{}, {}))",
                    r.start, r.end
                ));
            }
        }
        Ok(())
    }

    fn resource(&self, w: u32, what: &str) -> Result<Resource, String> {
        self.resources
            .get(&w)
            .copied()
            .ok_or_else(|| format!("{what} of unknown resource {w}"))
    }

    // ----- mm helpers (§6) ----------------------------------------------------

    /// `wp_shared_mapping_range` over BO pages `range` (§6.1): every present
    /// writable PTE becomes read-only; returns how many did.
    fn write_protect(&mut self, range: Range<u64>, scope: Scope) -> u64 {
        let mut n = 0;
        self.for_each_pte(range, scope, |_, pte| {
            if pte.present && pte.writable {
                pte.writable = false;
                n += 1;
            }
        });
        n
    }

    /// The PTE half of `clean_record_shared_mapping_range` (§6.2): every
    /// present dirty PTE is cleaned. Returns the number of PTEs cleaned and
    /// their pages (one entry per PTE, so a page mapped twice appears twice).
    fn clean_ptes(&mut self, range: Range<u64>, scope: Scope) -> (u64, Vec<u64>) {
        let mut pages = Vec::new();
        self.for_each_pte(range, scope, |page, pte| {
            if pte.present && pte.dirty {
                pte.dirty = false;
                pages.push(page);
            }
        });
        (pages.len() as u64, pages)
    }

    /// `clean_record_shared_mapping_range` into the real bitmap and envelope.
    /// `nr` is the length of the walked range (used only for the kernel's
    /// empty-envelope seed when quirks are enabled).
    fn clean_record(&mut self, range: Range<u64>, scope: Scope) -> u64 {
        let nr = range.end - range.start;
        let (n, pages) = self.clean_ptes(range, scope);
        let quirks = self.config.kernel_envelope_quirks;
        let big_n = self.pages;
        let t = self.tracker.as_mut().expect("clean_record needs a tracker");
        let (mut s, mut e) = if t.envelope_empty() {
            (if quirks { nr } else { big_n }, 0)
        } else {
            (t.start, t.end)
        };
        for p in pages {
            t.bits[p as usize] = true;
            s = s.min(p);
            e = e.max(p + 1);
        }
        t.start = s;
        t.end = e;
        n
    }

    fn for_each_pte(&mut self, range: Range<u64>, scope: Scope, mut f: impl FnMut(u64, &mut Pte)) {
        let mut visit = |map: &mut Mapping| {
            let lo = range.start.max(map.first);
            let hi = range.end.min(map.first + map.ptes.len() as u64);
            for page in lo..hi {
                f(page, &mut map.ptes[(page - map.first) as usize]);
            }
        };
        match scope {
            Scope::All => self.mappings.values_mut().for_each(&mut visit),
            Scope::Only(m) => {
                if let Some(map) = self.mappings.get_mut(&m) {
                    visit(map);
                }
            }
        }
    }

    // ----- faults (§4.9, §4.10) -----------------------------------------------

    fn method(&self) -> Option<Method> {
        self.tracker.as_ref().map(|t| t.method)
    }

    /// `.fault` on a not-present PTE: insert it clean, read-only in MKWRITE
    /// (private-style protection), writable in PAGETABLE or without a tracker.
    /// Never touches the bitmap.
    fn fault_in(method: Option<Method>, pte: &mut Pte) {
        if !pte.present {
            *pte = Pte {
                present: true,
                writable: method != Some(Method::MkWrite),
                dirty: false,
            };
        }
    }

    fn write_page(&mut self, m: u32, page: u64) {
        let method = self.method();
        let map = self.mappings.get_mut(&m).expect("validated");
        let pte = &mut map.ptes[(page - map.first) as usize];
        Model::fault_in(method, pte);
        if !pte.writable {
            // vm_mkwrite: record only in MKWRITE with the bit clear.
            if let Some(t) = self.tracker.as_mut() {
                if t.method == Method::MkWrite && !t.bits[page as usize] {
                    t.bits[page as usize] = true;
                    t.start = t.start.min(page);
                    t.end = t.end.max(page + 1);
                }
            }
            // The core then makes the PTE writable (and dirty, below).
            pte.writable = true;
        }
        pte.dirty = true;
    }

    fn read_page(&mut self, m: u32, page: u64) {
        let method = self.method();
        let map = self.mappings.get_mut(&m).expect("validated");
        Model::fault_in(method, &mut map.ptes[(page - map.first) as usize]);
    }

    // ----- tracker operations (§3, §4) ----------------------------------------

    /// §4.1 `dirty_add`.
    fn dirty_add(&mut self) {
        if let Some(t) = self.tracker.as_mut() {
            t.users += 1;
            return;
        }
        let t = Tracker::new(self.pages);
        let method = t.method;
        self.tracker = Some(t);
        if method == Method::MkWrite {
            self.write_protect(0..self.pages, Scope::All);
            self.clean_record(0..self.pages, Scope::All);
        }
    }

    /// §4.2 `dirty_release`. No PTE is touched.
    fn dirty_release(&mut self) {
        if let Some(t) = self.tracker.as_mut() {
            t.users -= 1;
            if t.users == 0 {
                self.tracker = None;
            }
        }
    }

    /// §3 `scan`. Returns the new method if it switched.
    fn scan(&mut self) -> Option<Method> {
        let method = self.method()?;
        let n = self.pages;
        match method {
            Method::PageTable => {
                let marked = self.clean_record(0..n, Scope::All);
                let t = self.tracker.as_mut().expect("tracker");
                if marked == 0 {
                    t.change_count += 1;
                } else {
                    t.change_count = 0;
                }
                if t.change_count > CHANGE_TRIGGERS {
                    t.change_count = 0;
                    t.method = Method::MkWrite;
                    self.write_protect(0..n, Scope::All);
                    self.clean_record(0..n, Scope::All);
                    return Some(Method::MkWrite);
                }
                None
            }
            Method::MkWrite => {
                let (start, end) = {
                    let t = self.tracker.as_ref().expect("tracker");
                    (t.start, t.end)
                };
                if start >= end {
                    return None;
                }
                let marked = self.write_protect(start..end, Scope::All);
                let t = self.tracker.as_mut().expect("tracker");
                if 100 * marked / n > PAGETABLE_PERCENT {
                    t.change_count += 1;
                } else {
                    t.change_count = 0;
                }
                if t.change_count > CHANGE_TRIGGERS {
                    t.method = Method::PageTable;
                    // Clean-and-record with a throw-away envelope: the hardware
                    // dirty bits are reset; the bitmap is rebuilt just below,
                    // so whatever this records is overwritten.
                    self.clean_ptes(0..n, Scope::All);
                    let t = self.tracker.as_mut().expect("tracker");
                    for (i, b) in t.bits.iter_mut().enumerate() {
                        *b = (start..end).contains(&(i as u64));
                    }
                    t.change_count = 0;
                    return Some(Method::PageTable);
                }
                None
            }
        }
    }

    /// §4.4 `pre_unmap`, restricted to mapping `m`'s PTEs: in PAGETABLE mode
    /// write-protect, then clean-and-record them; otherwise nothing.
    fn pre_unmap(&mut self, m: u32, range: Range<u64>) {
        if self.method() != Some(Method::PageTable) || range.start >= range.end {
            return;
        }
        self.write_protect(range.clone(), Scope::Only(m));
        self.clean_record(range, Scope::Only(m));
    }

    /// Stores the canonical empty envelope unless kernel quirks are on.
    fn normalize(&mut self) {
        let n = self.pages;
        if self.config.kernel_envelope_quirks {
            return;
        }
        if let Some(t) = self.tracker.as_mut() {
            if t.envelope_empty() {
                t.start = n;
                t.end = 0;
            }
        }
    }

    /// Shared body of transfer/clear: intersection test, clamp with `min`,
    /// clear bits, envelope edge update. Returns the cleared runs.
    fn consume(&mut self, window: Range<u64>) -> Vec<Range<u64>> {
        let Some(t) = self.tracker.as_mut() else {
            return Vec::new();
        };
        let (rs, re) = (window.start, window.end);
        if rs >= t.end || re <= t.start {
            return Vec::new();
        }
        let cur = rs.max(t.start);
        let limit = re.min(t.end);
        let runs = runs_of(&t.bits, cur, limit);
        for r in &runs {
            for p in r.clone() {
                t.bits[p as usize] = false;
            }
        }
        let (old_start, old_end) = (t.start, t.end);
        if rs <= old_start && old_start < limit {
            t.start = limit;
        }
        if rs < old_end && old_end <= limit {
            t.end = rs;
        }
        self.normalize();
        if self.config.protect_clean_writable && self.method() == Some(Method::MkWrite) {
            let bits = self.tracker.as_ref().map(|t| t.bits.clone()).unwrap_or_default();
            for map in self.mappings.values_mut() {
                for (i, pte) in map.ptes.iter_mut().enumerate() {
                    let page = map.first + i as u64;
                    if pte.present && pte.writable && !bits.get(page as usize).copied().unwrap_or(false) {
                        pte.writable = false;
                    }
                }
            }
        }
        runs
    }

    /// §4.6 `transfer_to_res` with the `min` limit: returns the reported runs.
    fn transfer(&mut self, window: Range<u64>) -> Vec<Range<u64>> {
        self.consume(window)
    }

    /// §4.7 `clear_res`: like transfer, without reporting.
    fn clear_res(&mut self, window: Range<u64>) {
        self.consume(window);
    }

    /// §4.8 `dirty_clear`: transfer over the whole BO without callbacks.
    fn dirty_clear(&mut self) {
        self.consume(0..self.pages);
    }
}

/// Maximal runs of set bits in `bits[lo..hi)`, ascending.
fn runs_of(bits: &[bool], lo: u64, hi: u64) -> Vec<Range<u64>> {
    let mut runs = Vec::new();
    let mut p = lo;
    while p < hi {
        if !bits[p as usize] {
            p += 1;
            continue;
        }
        let a = p;
        while p < hi && bits[p as usize] {
            p += 1;
        }
        runs.push(a..p);
    }
    runs
}

/// Runs a whole trace. The first event must be `bo N` with N >= 1; the result
/// has one entry per event after it. An error carries the index (into
/// `events`) of the offending event.
pub fn run_trace(events: &[Event]) -> Result<Vec<(StepResult, Observation)>, (usize, String)> {
    run_trace_with(ModelConfig::default(), events)
}

/// [`run_trace`] with an explicit [`ModelConfig`].
pub fn run_trace_with(
    config: ModelConfig,
    events: &[Event],
) -> Result<Vec<(StepResult, Observation)>, (usize, String)> {
    let pages = match events.first() {
        Some(Event::Bo { pages }) => *pages,
        Some(_) => return Err((0, "the first event must be `bo N`".into())),
        None => return Err((0, "empty trace: the first event must be `bo N`".into())),
    };
    if pages == 0 {
        return Err((0, "`bo N` needs N >= 1".into()));
    }
    let mut model = Model::with_config(pages, config);
    let mut out = Vec::with_capacity(events.len() - 1);
    for (i, ev) in events.iter().enumerate().skip(1) {
        let r = model.apply(ev).map_err(|e| (i, e))?;
        out.push((r, model.observe()));
    }
    Ok(out)
}
