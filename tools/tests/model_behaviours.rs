//! Behaviour tests for the vmwgfx dirty-tracker reference model.
//!
//! `bNN_*` tests follow §10 of `shared/research/vmwgfx-dirty-spec.md`, one per
//! behaviour. Behaviours that need concurrency or prefault cannot be
//! expressed on the sequential model; their tests check the closest
//! sequential property and say what the daemon-side test must add.

use std::collections::BTreeSet;
use std::ops::Range;

use cohmem_tools::vmwgfx::model::{
    pages_for_bytes, run_trace, run_trace_with, Method, Model, ModelConfig, Observation, Pte, StepResult, TrackerState,
    CHANGE_TRIGGERS, MKWRITE_MIN_PAGES, PAGETABLE_PERCENT,
};
use cohmem_tools::vmwgfx::trace::{parse_trace, parse_trace_lines, Event, TraceError};
use proptest::prelude::*;

// ----- helpers ---------------------------------------------------------------

/// A model driven by trace lines, checking invariant 21 after every step.
struct Sim {
    model: Model,
}

impl Sim {
    fn new(pages: u64) -> Sim {
        Sim {
            model: Model::new(pages),
        }
    }

    fn with_config(pages: u64, config: ModelConfig) -> Sim {
        Sim {
            model: Model::with_config(pages, config),
        }
    }

    /// Applies every event of `text` (trace syntax, no `bo`), returning the
    /// last step's result. Panics on any error.
    fn run(&mut self, text: &str) -> StepResult {
        let mut last = StepResult::default();
        for ev in parse_trace(text).expect("test trace parses") {
            last = self.model.apply(&ev).unwrap_or_else(|e| panic!("`{ev}` failed: {e}"));
            let obs = self.model.observe();
            if let Some(t) = &obs.tracker {
                assert!(t.envelope_invariant_holds(), "invariant 21 after `{ev}`: {t}");
                assert!(t.change_count <= CHANGE_TRIGGERS, "{t}");
            }
        }
        last
    }

    /// Applies one event that must fail; checks the model is unchanged.
    fn fail(&mut self, line: &str) -> String {
        let ev = parse_trace(line).expect("parses").remove(0);
        let before = format!("{:?}", self.model);
        let err = self.model.apply(&ev).expect_err(line);
        assert_eq!(before, format!("{:?}", self.model), "failed `{line}` changed the model");
        err
    }

    fn obs(&self) -> Observation {
        self.model.observe()
    }

    fn t(&self) -> TrackerState {
        self.model.observe().tracker.expect("tracker exists")
    }

    fn pte(&self, m: u32, p: u64) -> Pte {
        self.model.pte(m, p).expect("page mapped")
    }

    fn bitset(&self) -> BTreeSet<u64> {
        pages_of(&self.t().bits)
    }
}

fn pages_of(runs: &[Range<u64>]) -> BTreeSet<u64> {
    runs.iter().flat_map(|r| r.clone()).collect()
}

fn write_line(m: u32, pages: impl IntoIterator<Item = u64>) -> String {
    let pages: Vec<String> = pages.into_iter().map(|p| p.to_string()).collect();
    format!("write {m} {}", pages.join(" "))
}

const RO_CLEAN: Pte = Pte {
    present: true,
    writable: false,
    dirty: false,
};
const RW_CLEAN: Pte = Pte {
    present: true,
    writable: true,
    dirty: false,
};
const RW_DIRTY: Pte = Pte {
    present: true,
    writable: true,
    dirty: true,
};
const RO_DIRTY: Pte = Pte {
    present: true,
    writable: false,
    dirty: true,
};
const ABSENT: Pte = Pte {
    present: false,
    writable: false,
    dirty: false,
};

// ----- §10 behaviours --------------------------------------------------------

/// §10 item 1: Geometry: N = ceil(bytes/page), BO-relative bits, empty envelope at start.
#[test]
fn b01_geometry() {
    assert_eq!(pages_for_bytes(0), 0);
    assert_eq!(pages_for_bytes(1), 1);
    assert_eq!(pages_for_bytes(4096), 1);
    assert_eq!(pages_for_bytes(4097), 2);
    assert_eq!(pages_for_bytes(16 * 4096 - 1), 16);

    let mut s = Sim::new(16);
    assert_eq!(s.model.pages(), 16);
    assert_eq!(s.obs().tracker, None);
    assert!(!s.obs().is_dirty());
    s.run("add 1 0 16");
    let t = s.t();
    assert_eq!((t.start, t.end), (16, 0), "canonical empty envelope");
    assert!(t.bits.is_empty());
    assert!(!t.is_dirty());
    assert!(!s.obs().is_dirty());
    assert_eq!((t.users, t.change_count), (1, 0));

    // Bit i is BO page i, whatever the mapping offset.
    s.run("map 1 4 8\nwrite 1 6\nscan");
    assert_eq!(s.t().bits, vec![6..7]);
    assert_eq!((s.t().start, s.t().end), (6, 7));
}

/// §10 item 2: Initial method: N < 512 → PAGETABLE, N >= 512 → MKWRITE.
#[test]
fn b02_initial_method() {
    assert_eq!(MKWRITE_MIN_PAGES, 512);
    for (n, want) in [
        (1, Method::PageTable),
        (511, Method::PageTable),
        (512, Method::MkWrite),
        (513, Method::MkWrite),
    ] {
        let mut s = Sim::new(n);
        s.run(&format!("add 0 0 {n}"));
        assert_eq!(s.t().method, want, "N={n}");
        assert_eq!(Method::initial(n), want);
    }
}

/// §10 item 3: Add on MKWRITE records pre-existing writes immediately; on PAGETABLE
/// only after the first scan.
#[test]
fn b03_add_records_preexisting() {
    // MKWRITE
    let mut s = Sim::new(512);
    s.run("map 1 0 512\nwrite 1 3 4 100\nread 1 200");
    assert_eq!(s.pte(1, 3), RW_DIRTY, "no tracker: writable and dirty");
    assert_eq!(s.pte(1, 200), RW_CLEAN);
    s.run("add 0 0 512");
    assert_eq!(s.t().bits, vec![3..5, 100..101]);
    assert_eq!((s.t().start, s.t().end), (3, 101));
    // write-protected first, then cleaned
    assert_eq!(s.pte(1, 3), RO_CLEAN);
    assert_eq!(s.pte(1, 200), RO_CLEAN);
    assert_eq!(s.pte(1, 5), ABSENT);
    let r = s.run("transfer 0");
    assert_eq!(r.runs, vec![3..5, 100..101], "reported without any scan");

    // PAGETABLE
    let mut s = Sim::new(16);
    s.run("map 1 0 16\nwrite 1 3 4\nadd 0 0 16");
    assert!(s.t().bits.is_empty());
    assert_eq!(s.pte(1, 3), RW_DIRTY, "PAGETABLE add touches no PTE");
    assert!(s.run("transfer 0").runs.is_empty());
    s.run("scan");
    assert_eq!(s.run("transfer 0").runs, vec![3..5]);
}

/// §10 item 4: MKWRITE first write records exactly once; reads never record.
#[test]
fn b04_mkwrite_first_write_records_once() {
    let mut s = Sim::new(512);
    s.run("add 0 0 512\nmap 1 0 512\nwrite 1 7");
    assert_eq!(s.t().bits, vec![7..8]);
    assert_eq!((s.t().start, s.t().end), (7, 8));
    assert_eq!(s.pte(1, 7), RW_DIRTY);
    let before = s.obs();
    s.run("write 1 7\nwrite 1 7");
    assert_eq!(s.obs(), before, "further writes do not record");
    s.run("read 1 8\nread 1 7\nread 1 300");
    assert_eq!(s.obs(), before, "reads never record");
    assert_eq!(s.pte(1, 8), RO_CLEAN, "read fault in MKWRITE inserts read-only");
    assert_eq!(s.pte(1, 300), RO_CLEAN);
    // Exactly once: the PTE is now writable, so until a scan re-protects it
    // even a write after a transfer does not record (this is why the kernel
    // always scans before transferring, item 17b).
    assert_eq!(s.run("transfer 0").runs, vec![7..8]);
    s.run("write 1 7");
    assert!(s.t().bits.is_empty());
}

/// §10 item 5: After a scan re-protects a page whose bit is still set, a write to it
/// succeeds and changes neither bitmap nor envelope.
#[test]
fn b05_write_to_recorded_page() {
    let mut s = Sim::new(512);
    s.run("add 0 0 512\nmap 1 0 512\nwrite 1 7 9\nscan");
    assert_eq!(s.pte(1, 7), RO_DIRTY, "scan re-protects; it does not clean");
    let before = s.obs();
    s.run("write 1 7");
    assert_eq!(s.obs(), before);
    assert_eq!(s.pte(1, 7), RW_DIRTY, "the write proceeded");
}

/// §10 item 6: MKWRITE scan re-protects only the envelope and clears nothing.
#[test]
fn b06_mkwrite_scan_reprotects_envelope_only() {
    let mut s = Sim::new(512);
    s.run("add 0 0 512\nadd 1 100 1\nmap 1 0 512\nwrite 1 10 20 100");
    assert_eq!((s.t().start, s.t().end), (10, 101));
    // clear_res of resource 1 drops page 100 and shrinks the end edge.
    s.run("clear 1");
    assert_eq!((s.t().start, s.t().end), (10, 100));
    let before = s.t();
    s.run("scan");
    let after = s.t();
    assert_eq!(after.bits, before.bits, "scan clears nothing");
    assert_eq!((after.start, after.end), (before.start, before.end));
    assert_eq!(s.pte(1, 10), RO_DIRTY);
    assert_eq!(s.pte(1, 20), RO_DIRTY);
    assert_eq!(
        s.pte(1, 100),
        RW_DIRTY,
        "page 100 lies outside the envelope: not re-protected"
    );
    // Writes to envelope pages fault again; once their bits are consumed they
    // record again.
    assert_eq!(s.run("transfer 0").runs, vec![10..11, 20..21]);
    assert!(!s.t().is_dirty());
    s.run("write 1 10 20");
    assert_eq!(s.t().bits, vec![10..11, 20..21]);
    // Page 100 was never re-protected (the clear skipped the scan), so the
    // kernel does not record it: faithful to §3.2 step 2.
    s.run("write 1 100");
    assert!(!s.t().bit(100));
}

/// §10 item 7: MKWRITE → PAGETABLE threshold (N=1000: 110 switches on round 3, 109
/// never; a <=10% round resets; an empty-envelope scan neither counts nor
/// resets).
#[test]
fn b07_mkwrite_to_pagetable_threshold() {
    fn round(s: &mut Sim, pages: Range<u64>) -> StepResult {
        s.run(&write_line(1, pages));
        s.run("scan")
    }
    let setup = "add 0 0 1000\nmap 1 0 1000";
    assert_eq!(PAGETABLE_PERCENT, 10);

    // 110 distinct pages per round, a fresh set each round.
    let mut s = Sim::new(1000);
    s.run(setup);
    assert_eq!(s.t().method, Method::MkWrite);
    for r in 0..2u64 {
        let res = round(&mut s, r * 110..r * 110 + 110);
        assert_eq!(res.switched_to, None);
        assert_eq!(s.t().change_count, r as u32 + 1);
        assert_eq!(s.t().method, Method::MkWrite);
    }
    let res = round(&mut s, 220..330);
    assert_eq!(res.switched_to, Some(Method::PageTable), "switch on round 3");
    assert_eq!(s.t().method, Method::PageTable);
    assert_eq!(s.t().change_count, 0);

    // 110 distinct pages per round, the same set each round (bits stay set;
    // the PTEs are made writable again and re-protected each round).
    let mut s = Sim::new(1000);
    s.run(setup);
    assert_eq!(round(&mut s, 0..110).switched_to, None);
    assert_eq!(round(&mut s, 0..110).switched_to, None);
    assert_eq!(round(&mut s, 0..110).switched_to, Some(Method::PageTable));

    // With a sync (scan + transfer) instead of a bare scan: same counting.
    let mut s = Sim::new(1000);
    s.run(setup);
    for r in 1..=3u64 {
        s.run(&write_line(1, 500..610));
        let res = s.run("sync");
        assert_eq!(res.switched_to.is_some(), r == 3);
    }

    // 109 per round never switches.
    let mut s = Sim::new(1000);
    s.run(setup);
    for r in 0..9u64 {
        let res = round(&mut s, r * 109..r * 109 + 109);
        assert_eq!(res.switched_to, None);
        assert_eq!(s.t().change_count, 0, "floor(100*109/1000) = 10 is not > 10");
    }
    assert_eq!(s.t().method, Method::MkWrite);

    // A <=10% round resets the count.
    let mut s = Sim::new(1000);
    s.run(setup);
    round(&mut s, 0..110);
    round(&mut s, 0..110);
    assert_eq!(s.t().change_count, 2);
    assert_eq!(round(&mut s, 0..109).switched_to, None);
    assert_eq!(s.t().change_count, 0);
    round(&mut s, 0..110);
    round(&mut s, 0..110);
    assert_eq!(round(&mut s, 0..110).switched_to, Some(Method::PageTable));

    // An empty-envelope scan neither counts nor resets, and touches no PTE.
    let mut s = Sim::new(1000);
    s.run(setup);
    round(&mut s, 0..110);
    round(&mut s, 0..110);
    assert_eq!(s.t().change_count, 2);
    s.run(&write_line(1, 200..310)); // 110 PTEs become writable...
    s.run("clearall"); // ...but the envelope is emptied
    assert!(!s.t().is_dirty());
    assert_eq!(s.run("scan").switched_to, None);
    assert_eq!(s.t().change_count, 2, "neither counted nor reset");
    assert_eq!(s.pte(1, 200), RW_DIRTY, "no PTE touched");
    // The next counted scan is the third trigger. Pages 200..310 lie outside
    // the new envelope [0,110) and are not counted.
    assert_eq!(round(&mut s, 0..110).switched_to, Some(Method::PageTable));

    // Threshold arithmetic at N=512: 57 triggers, 56 does not.
    for (k, switches) in [(56u64, false), (57, true)] {
        let mut s = Sim::new(512);
        s.run("add 0 0 512\nmap 1 0 512");
        let mut switched = false;
        for _ in 0..3 {
            switched |= round(&mut s, 0..k).switched_to.is_some();
        }
        assert_eq!(switched, switches, "N=512 k={k}");
    }
}

/// §10 item 8: State after MKWRITE → PAGETABLE: recorded set = envelope, outside
/// clean, counter 0, no write lost, PTEs stay read-only.
#[test]
fn b08_state_after_switch_to_pagetable() {
    let mut s = Sim::new(1000);
    s.run("add 0 0 1000\nmap 1 0 1000");
    for _ in 0..2 {
        s.run(&write_line(1, 0..110));
        s.run("write 1 600\nscan");
    }
    s.run(&write_line(1, 0..110));
    s.run("write 1 600");
    let before = s.bitset();
    let env = (s.t().start, s.t().end);
    assert_eq!(env, (0, 601));
    let res = s.run("scan");
    assert_eq!(res.switched_to, Some(Method::PageTable));
    let t = s.t();
    assert_eq!(t.method, Method::PageTable);
    assert_eq!(t.change_count, 0);
    assert_eq!(t.bits, vec![0..601], "all ones on the envelope");
    assert_eq!((t.start, t.end), env, "envelope unchanged");
    assert!(before.is_subset(&s.bitset()), "superset: nothing lost");
    // PTEs stay read-only; their dirty bits were reset (throw-away clean).
    assert_eq!(s.pte(1, 5), RO_CLEAN);
    assert_eq!(s.pte(1, 600), RO_CLEAN);
    // A PAGETABLE-era write to a read-only PTE goes through mkwrite, which
    // records nothing; the next harvest picks it up.
    s.run("write 1 5 700");
    assert_eq!(s.pte(1, 5), RW_DIRTY);
    assert_eq!(s.pte(1, 700), RW_DIRTY, "new faults insert writable");
    assert!(!s.t().bit(700));
    s.run("scan");
    assert_eq!(s.run("transfer 0").runs, vec![0..601, 700..701]);
}

/// §10 item 9: PAGETABLE scan ORs new writes into the bitmap and never removes bits.
#[test]
fn b09_pagetable_scan() {
    let mut s = Sim::new(16);
    s.run("add 0 0 16\nmap 1 0 16\nwrite 1 1 2");
    assert!(s.t().bits.is_empty(), "no fault-time recording in PAGETABLE");
    s.run("scan");
    assert_eq!(s.t().bits, vec![1..3]);
    assert_eq!((s.t().start, s.t().end), (1, 3));
    assert_eq!(s.pte(1, 1), RW_CLEAN, "harvest cleans, leaves writable");
    s.run("write 1 9\nscan");
    assert_eq!(s.t().bits, vec![1..3, 9..10]);
    assert_eq!((s.t().start, s.t().end), (1, 10));
    s.run("scan");
    assert_eq!(s.t().bits, vec![1..3, 9..10], "an empty harvest removes nothing");
    assert_eq!(s.t().change_count, 1);
    s.run("write 1 2\nscan");
    assert_eq!(s.t().change_count, 0, "a harvest with a dirty PTE resets");
    assert_eq!(s.t().bits, vec![1..3, 9..10]);
}

/// §10 item 10: PAGETABLE → MKWRITE on the 3rd consecutive empty harvest.
///
/// Daemon-side addition: "a write made between the last harvest and the
/// protection is still recorded" needs a writer racing the switch (step 3d,
/// the second harvest); sequentially every dirty PTE is caught by step 1.
#[test]
fn b10_pagetable_to_mkwrite_threshold() {
    let mut s = Sim::new(16);
    s.run("add 0 0 16\nmap 1 0 16\nmap 2 8 8\nwrite 1 3\nread 2 9");
    s.run("scan"); // finds page 3
    assert_eq!(s.t().change_count, 0);
    assert_eq!(s.run("scan").switched_to, None);
    assert_eq!(s.t().change_count, 1);
    assert_eq!(s.run("scan").switched_to, None);
    assert_eq!(s.t().change_count, 2);
    s.run("write 1 4");
    assert_eq!(s.run("scan").switched_to, None);
    assert_eq!(s.t().change_count, 0, "a write resets the count");
    s.run("scan\nscan");
    assert_eq!(s.t().change_count, 2);
    let res = s.run("scan");
    assert_eq!(res.switched_to, Some(Method::MkWrite), "3rd consecutive");
    let t = s.t();
    assert_eq!((t.method, t.change_count), (Method::MkWrite, 0));
    assert_eq!(t.bits, vec![3..5], "bits kept across the switch");
    // The whole BO is protected, in every mapping.
    for p in 0..16 {
        let pte = s.pte(1, p);
        assert!(!pte.writable && !pte.dirty, "m1 page {p}: {pte:?}");
    }
    assert_eq!(s.pte(2, 9), RO_CLEAN);
    assert_eq!(s.pte(2, 10), ABSENT);
    // Writes after the switch fault into mkwrite and are recorded at once.
    s.run("write 1 12\nwrite 2 10");
    assert_eq!(s.t().bits, vec![3..5, 10..11, 12..13]);
}

/// §10 item 11: Only transfer and clear remove bits: a long sequence of scans, faults
/// and switches in both directions never drops an unconsumed page.
#[test]
fn b11_only_transfer_and_clear_remove_bits() {
    let mut s = Sim::new(600);
    s.run("add 0 0 600\nadd 1 300 300\nmap 1 0 600\nmap 2 100 200");
    let mut recorded = BTreeSet::new();
    let mut switches = Vec::new();
    let script: Vec<String> = vec![
        write_line(1, 0..70),
        "scan".into(),
        write_line(2, 100..170),
        "scan".into(),
        write_line(1, 400..470),
        "scan".into(), // → PAGETABLE
        "write 1 5 550".into(),
        "read 2 250".into(),
        "scan".into(),
        "scan".into(),
        "scan".into(),
        "scan".into(), // → MKWRITE
        "write 2 299".into(),
        "unmap 2".into(),
        "scan".into(),
    ];
    for line in &script {
        let res = s.run(line);
        if let Some(m) = res.switched_to {
            switches.push(m);
        }
        let now = s.bitset();
        assert!(recorded.is_subset(&now), "`{line}` dropped a recorded page");
        recorded = now;
    }
    assert_eq!(switches, vec![Method::PageTable, Method::MkWrite]);
    for p in [0, 69, 100, 169, 400, 469, 5, 550, 299] {
        assert!(recorded.contains(&p), "page {p}");
    }
    // Now consume: transfer removes exactly what it reports.
    let before = s.bitset();
    let res = s.run("transfer 1");
    let removed: BTreeSet<u64> = before.difference(&s.bitset()).copied().collect();
    assert_eq!(removed, pages_of(&res.runs));
}

/// §10 item 12: transfer(res): maximal runs inside [rs,re) ∩ envelope, `min` limit,
/// neighbours keep their bits, envelope shrinks only at covered edges.
#[test]
fn b12_transfer() {
    let mut s = Sim::new(512);
    s.run("add 0 0 16\nadd 1 16 16\nadd 2 40 8\nmap 1 0 64\nwrite 1 2 3 4 8 20 21");
    assert_eq!((s.t().start, s.t().end), (2, 22));
    // Window not intersecting the envelope: no-op.
    let before = s.obs();
    assert!(s.run("transfer 2").runs.is_empty());
    assert_eq!(s.obs(), before);

    let r = s.run("transfer 0");
    assert_eq!(r.runs, vec![2..5, 8..9]);
    assert_eq!(s.t().bits, vec![20..22], "neighbour's bits survive (min)");
    assert_eq!((s.t().start, s.t().end), (16, 22), "start edge covered");
    assert_eq!(s.run("transfer 1").runs, vec![20..22]);
    assert_eq!((s.t().start, s.t().end), (512, 0), "both edges: empty");
    assert!(!s.t().is_dirty());

    // Interior resource: envelope unchanged, becomes looser.
    let mut s = Sim::new(512);
    s.run("add 0 0 512\nadd 1 8 4\nmap 1 0 64\nwrite 1 2 9 10 30");
    assert_eq!(s.run("transfer 1").runs, vec![9..11]);
    assert_eq!((s.t().start, s.t().end), (2, 31));
    assert_eq!(s.t().bits, vec![2..3, 30..31]);
    // End edge only.
    s.run("add 2 20 100");
    assert_eq!(s.run("transfer 2").runs, vec![30..31]);
    assert_eq!((s.t().start, s.t().end), (2, 20));
}

/// §10 item 13: clear_res and dirty_clear behave like transfer without reporting.
#[test]
fn b13_clear() {
    let mut s = Sim::new(512);
    s.run("add 0 0 16\nadd 1 16 16\nadd 2 100 4\nmap 1 0 64\nwrite 1 2 3 8 20 21");
    let before = s.obs();
    let r = s.run("clear 2");
    assert!(r.runs.is_empty());
    assert_eq!(s.obs(), before, "non-intersecting clear is a no-op");
    let r = s.run("clear 0");
    assert!(r.runs.is_empty(), "clear reports nothing");
    assert_eq!(s.t().bits, vec![20..22]);
    assert_eq!((s.t().start, s.t().end), (16, 22));
    s.run("write 1 40");
    let r = s.run("clearall");
    assert!(r.runs.is_empty());
    assert!(s.t().bits.is_empty());
    assert_eq!((s.t().start, s.t().end), (512, 0), "clear(BO) leaves it empty");
    assert!(!s.obs().is_dirty());
    // clearall on an empty envelope / without a tracker: no-op.
    s.run("clearall");
    let mut s = Sim::new(16);
    s.run("clearall");
    assert_eq!(s.obs().tracker, None);
}

/// §10 item 14: Refcounting: a second add keeps state; the last release frees; a
/// later add starts fresh.
#[test]
fn b14_refcounting() {
    let mut s = Sim::new(16);
    s.run("add 0 0 16\nmap 1 0 16\nwrite 1 3\nscan\nscan\nscan");
    let t = s.t();
    assert_eq!((t.method, t.change_count, t.users), (Method::PageTable, 2, 1));
    s.run("add 1 0 8");
    let t2 = s.t();
    assert_eq!(t2.users, 2);
    assert_eq!(TrackerState { users: 1, ..t2 }, t, "nothing but the user count changed");
    assert_eq!(s.run("scan").switched_to, Some(Method::MkWrite), "count inherited");
    s.run("release 1");
    assert_eq!(s.t().users, 1);
    assert_eq!(s.t().bits, vec![3..4]);
    s.run("release 0");
    assert_eq!(s.obs().tracker, None, "freed on the last release");
    // No tracker: a write to a read-only PTE goes through mkwrite (a no-op)
    // and becomes writable; new faults insert writable PTEs.
    s.run("write 1 3 5");
    assert_eq!(s.pte(1, 3), RW_DIRTY);
    assert_eq!(s.pte(1, 5), RW_DIRTY);
    assert_eq!(s.obs().tracker, None);
    s.run("scan\nclearall");
    assert_eq!(s.obs().tracker, None, "scan/clearall without a tracker are no-ops");
    assert!(s.fail("transfer 0").contains("unknown resource"));
    // A new add starts fresh: N=16 → PAGETABLE, empty, count 0.
    s.run("add 0 0 16");
    let t = s.t();
    assert_eq!(
        (t.method, t.change_count, t.users, t.start, t.end),
        (Method::PageTable, 0, 1, 16, 0)
    );
    assert!(t.bits.is_empty(), "old bits are gone");

    // MKWRITE BO: a new tracker write-protects again.
    let mut s = Sim::new(512);
    s.run("add 0 0 512\nmap 1 0 512\nwrite 1 7\nrelease 0\nwrite 1 7 8\nadd 0 0 512");
    assert_eq!(
        s.t().bits,
        vec![7..9],
        "dirty PTEs from the untracked era are recorded by the new add"
    );
    assert_eq!(s.pte(1, 8), RO_CLEAN);
}

/// §10 item 15: unmap: PAGETABLE harvests before dropping; MKWRITE already recorded;
/// later accesses fault again.
///
/// Daemon-side addition: after the unmap, an access to a page of a
/// GPU-dirty resource must see read-back data first (not modelled).
#[test]
fn b15_unmap() {
    let mut s = Sim::new(16);
    s.run("add 0 0 16\nmap 1 0 16\nmap 2 0 16\nwrite 1 3 5\nwrite 2 5 7");
    s.run("unmap 1");
    assert_eq!(s.t().bits, vec![3..4, 5..6], "harvested at unmap, before any scan");
    assert_eq!(s.pte(2, 7), RW_DIRTY, "only the unmapped mapping's PTEs are harvested");
    assert_eq!(s.model.pte(1, 3), None);
    s.run("scan");
    assert_eq!(s.run("transfer 0").runs, vec![3..4, 5..6, 7..8]);
    // Remapping: PTEs start absent and fault again.
    s.run("map 1 0 16");
    assert_eq!(s.pte(1, 3), ABSENT);
    s.run("write 1 3");
    assert_eq!(s.pte(1, 3), RW_DIRTY);

    // MKWRITE: already recorded at fault time; unmap changes nothing.
    let mut s = Sim::new(512);
    s.run("add 0 0 512\nmap 1 0 512\nwrite 1 3 5");
    let before = s.obs();
    s.run("unmap 1");
    assert_eq!(s.obs(), before);
    s.run("map 1 0 512\nread 1 3");
    assert_eq!(s.pte(1, 3), RO_CLEAN);

    // Without a tracker, unmap just drops the PTEs (dirty bits lost).
    let mut s = Sim::new(16);
    s.run("map 1 0 16\nwrite 1 3\nunmap 1\nadd 0 0 16\nscan");
    assert!(s.t().bits.is_empty());
}

/// §10 item 16: No lost write under concurrency (sequential analogue): rounds of
/// writes through two mappings, each followed by `sync` (scan → transfer);
/// every page written in a round is reported by that round's sync, and
/// while no method switch happens the report is exact.
///
/// Daemon-side addition: real writer threads hammering pages while another
/// thread loops scan → transfer; check sum(reported) >= touched and each
/// harvest <= touched (pagemap "transact" style).
#[test]
fn b16_no_lost_write_sequential() {
    let mut rng = cohmem_tools::SplitMix64::new(16);
    for n in [64u64, 2000] {
        let mut s = Sim::new(n);
        s.run(&format!("add 0 0 {n}\nmap 1 0 {n}\nmap 2 0 {n}"));
        let method = s.t().method;
        for _ in 0..200 {
            let mut touched = BTreeSet::new();
            for _ in 0..(1 + rng.below(20)) {
                let p = rng.below(n);
                let m = 1 + rng.below(2) as u32;
                s.run(&format!("write {m} {p}"));
                touched.insert(p);
            }
            let res = s.run("sync");
            assert_eq!(res.switched_to, None);
            assert_eq!(pages_of(&res.runs), touched, "N={n}");
        }
        assert_eq!(s.t().method, method);
    }
}

/// §10 item 17: Ordering: (a) protect before collect, (b) scan before transfer,
/// (c) record + make writable is one atomic step.
///
/// Daemon-side addition for (c): interleave a scan+transfer between the
/// record and the unprotect of a write fault and check the later write is
/// still reported.
#[test]
fn b17_ordering() {
    // (b) Without the scan, a MKWRITE transfer leaves the PTE writable and a
    // later write goes unrecorded (the hazard the ordering rule prevents).
    let mut s = Sim::new(512);
    s.run("add 0 0 512\nmap 1 0 512\nwrite 1 7");
    assert_eq!(s.run("transfer 0").runs, vec![7..8]);
    s.run("write 1 7");
    assert!(s.run("sync").runs.is_empty(), "lost: transfer without scan");
    // With scan → transfer (sync), the next write records again.
    let mut s = Sim::new(512);
    s.run("add 0 0 512\nmap 1 0 512\nwrite 1 7");
    assert_eq!(s.run("sync").runs, vec![7..8]);
    assert_eq!(s.pte(1, 7), RO_DIRTY);
    // (c) a scan + transfer between two writes still sees the later write.
    s.run("write 1 7");
    assert_eq!(s.run("sync").runs, vec![7..8]);
    // (a) MKWRITE add protects before it collects: every present PTE ends
    // read-only and clean, every dirty one recorded.
    let mut s = Sim::new(512);
    s.run("map 1 0 512\nmap 2 0 512\nwrite 1 1 2\nread 2 3\nwrite 2 2\nadd 0 0 512");
    for (m, p) in [(1, 1), (1, 2), (2, 2), (2, 3)] {
        assert_eq!(s.pte(m, p), RO_CLEAN, "m{m} p{p}");
    }
    assert_eq!(s.t().bits, vec![1..3]);
}

/// §10 item 18: Out-of-range accesses are errors and record nothing.
#[test]
fn b18_out_of_range() {
    let mut s = Sim::new(16);
    s.run("add 0 0 16\nmap 1 0 16\nmap 2 4 4");
    let e = s.fail("write 1 16");
    assert!(e.contains("out of range"), "{e}");
    s.fail("write 1 3 16"); // page 3 is not written either
    assert_eq!(s.pte(1, 3), ABSENT);
    s.fail("read 1 99");
    let e = s.fail("write 2 8");
    assert!(e.contains("outside mapping"), "{e}");
    s.fail("map 3 10 7");
    s.fail("map 3 16 1");
    s.fail("map 3 0 0");
    s.fail("add 5 15 2");
    s.fail("add 5 18446744073709551615 2");
    s.run("scan");
    assert!(s.t().bits.is_empty());
}

/// §10 item 19: Prefault is not modelled (one page per fault). Closest property:
/// fault-ins without a write never make a page reported: read faults insert
/// read-only clean PTEs in MKWRITE and writable clean PTEs in PAGETABLE.
///
/// Daemon-side addition: a fault maps at most 16 pages (1 with
/// MADV_RANDOM), clipped to the mapping end and to cleaned resources, and
/// prefaulted neighbours are never reported dirty unless written.
#[test]
fn b19_prefault_never_dirty() {
    let mut s = Sim::new(512);
    s.run("add 0 0 512\nmap 1 0 512\nread 1 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16");
    assert_eq!(s.pte(1, 5), RO_CLEAN);
    s.run("write 1 8");
    assert_eq!(s.pte(1, 9), RO_CLEAN, "neighbour of a write stays clean");
    assert_eq!(s.run("sync").runs, vec![8..9]);

    let mut s = Sim::new(16);
    s.run("add 0 0 16\nmap 1 0 16\nread 1 0 1 2 3 4 5 6 7\nwrite 1 4");
    assert_eq!(s.pte(1, 5), RW_CLEAN);
    assert_eq!(s.run("sync").runs, vec![4..5]);
}

/// §10 item 20: Protection changes are not writes; dirty never implies writable.
#[test]
fn b20_protection_changes_are_not_writes() {
    let mut s = Sim::new(512);
    s.run("map 1 0 512\nread 1 1 2 3\nadd 0 0 512\nscan");
    for p in 1..4 {
        assert_eq!(s.pte(1, p), RO_CLEAN, "write-protect does not dirty");
    }
    assert!(s.t().bits.is_empty());
    // A recorded, re-protected page is dirty but read-only.
    s.run("write 1 2\nscan");
    assert_eq!(s.pte(1, 2), RO_DIRTY);
    s.run("transfer 0\nscan");
    assert_eq!(s.pte(1, 2), RO_DIRTY, "still not writable");
    assert_eq!(s.pte(1, 1), RO_CLEAN);

    // Switches protect/unprotect without dirtying.
    let mut s = Sim::new(16);
    s.run("add 0 0 16\nmap 1 0 16\nread 1 1 2\nscan\nscan\nscan");
    assert_eq!(s.t().method, Method::MkWrite);
    assert_eq!(s.pte(1, 1), RO_CLEAN);
    assert!(s.t().bits.is_empty());
}

/// §10 item 21: Envelope invariant; `is_dirty` can be true with no bits set.
#[test]
fn b21_envelope_invariant() {
    let mut s = Sim::new(512);
    s.run("add 0 0 512\nadd 1 0 5\nadd 2 5 5\nadd 3 15 10\nmap 1 0 512\nwrite 1 2 7 20");
    assert_eq!((s.t().start, s.t().end), (2, 21));
    s.run("transfer 1");
    assert_eq!((s.t().start, s.t().end), (5, 21));
    s.run("transfer 3");
    assert_eq!((s.t().start, s.t().end), (5, 15));
    s.run("transfer 2");
    let t = s.t();
    assert_eq!((t.start, t.end), (10, 15));
    assert!(t.bits.is_empty());
    assert!(t.is_dirty() && s.obs().is_dirty(), "dirty with no bit set");
    assert!(t.envelope_invariant_holds());
    // Sim::run checks invariant 21 after every step of every test.
}

/// §10 item 22: Per-mapping counting: a page written through two mappings counts
/// twice towards the MKWRITE threshold but sets one bit.
///
/// (In PAGETABLE the per-PTE count is only compared with zero, so double
/// counting is not observable there.)
#[test]
fn b22_per_mapping_counting() {
    let mut s = Sim::new(1000);
    s.run("add 0 0 1000\nmap 1 0 1000\nmap 2 0 1000");
    for r in 1..=3 {
        s.run(&write_line(1, 0..55));
        s.run(&write_line(2, 0..55));
        assert_eq!(s.t().bits, vec![0..55], "one bit per page");
        let res = s.run("scan");
        assert_eq!(res.switched_to.is_some(), r == 3, "110 PTEs per round");
    }
    // The same pages through one mapping (55 PTEs) never switch.
    let mut s = Sim::new(1000);
    s.run("add 0 0 1000\nmap 1 0 1000\nmap 2 0 1000");
    for _ in 0..5 {
        s.run(&write_line(1, 0..55));
        assert_eq!(s.run("scan").switched_to, None);
    }
}

/// §10 item 23: Moved or replaced mappings: the new mapping starts with no PTEs, so
/// its writes fault and are recorded; writes made before the unmap are not
/// lost.
///
/// Daemon-side addition: mremap a tracked range to a new address (and
/// MAP_FIXED over it) and check the moved pages are treated as written.
#[test]
fn b23_moved_mappings() {
    for n in [16u64, 512] {
        let mut s = Sim::new(n);
        s.run(&format!("add 0 0 {n}\nmap 1 0 8\nwrite 1 3\nunmap 1\nmap 1 8 8"));
        assert_eq!(s.pte(1, 9), ABSENT, "N={n}");
        s.run("write 1 9\nwrite 1 9");
        let res = s.run("sync");
        assert_eq!(res.runs, vec![3..4, 9..10], "N={n}");
        // Replace again at the same place: still recorded after the swap.
        s.run("unmap 1\nmap 1 8 8\nwrite 1 9");
        assert_eq!(s.run("sync").runs, vec![9..10], "N={n}");
    }
}

// ----- other model properties -------------------------------------------------

#[test]
fn sync_transfers_in_first_then_id_order() {
    let mut s = Sim::new(16);
    s.run("add 9 0 4\nadd 3 8 4\nadd 5 0 2\nadd 1 4 4\nmap 1 0 16\nwrite 1 0 1 2 5 9\nscan");
    // Order: (0,5) (0,9) (4,1) (8,3).
    let res = s.run("sync");
    assert_eq!(res.runs, vec![0..2, 2..3, 5..6, 9..10]);
}

#[test]
fn transfer_with_overlapping_resources_reports_once() {
    let mut s = Sim::new(512);
    s.run("add 0 0 8\nadd 1 4 8\nmap 1 0 16\nwrite 1 3 4 5 6");
    assert_eq!(s.run("transfer 1").runs, vec![4..7]);
    assert_eq!(s.run("transfer 0").runs, vec![3..4]);
}

#[test]
fn kernel_envelope_quirks() {
    let quirks = ModelConfig {
        kernel_envelope_quirks: true,
        ..ModelConfig::default()
    };
    // transfer covering both edges: start = limit, end = rs.
    let mut s = Sim::with_config(512, quirks);
    s.run("add 0 0 512\nmap 1 0 16\nwrite 1 2 4");
    s.run("transfer 0");
    assert_eq!((s.t().start, s.t().end), (5, 0));
    assert!(!s.t().is_dirty());
    // A later record extends the non-canonical empty envelope loosely.
    s.run("write 1 9");
    assert_eq!((s.t().start, s.t().end), (5, 10));
    // Default config: canonical.
    let mut s = Sim::new(512);
    s.run("add 0 0 512\nmap 1 0 16\nwrite 1 2 4\ntransfer 0\nwrite 1 9");
    assert_eq!((s.t().start, s.t().end), (9, 10));

    // pre_unmap on an empty envelope seeds (e - s, 0).
    let mut s = Sim::with_config(16, quirks);
    s.run("add 0 0 16\nmap 1 8 4\nwrite 1 10\nunmap 1");
    assert_eq!((s.t().start, s.t().end), (4, 11));
    assert_eq!(s.t().bits, vec![10..11]);
    let mut s = Sim::with_config(16, quirks);
    s.run("add 0 0 16\nmap 1 8 4\nread 1 10\nunmap 1");
    assert_eq!((s.t().start, s.t().end), (4, 0));
    let mut s = Sim::new(16);
    s.run("add 0 0 16\nmap 1 8 4\nwrite 1 10\nunmap 1");
    assert_eq!((s.t().start, s.t().end), (10, 11));
}

// ----- trace format -------------------------------------------------------------

const SAMPLE: &str = "\
# a comment line
bo 16

map 1 0 16      # trailing comment
unmap 1
add 7 0 8
release 7
write 1 3 4 5
read 2 0
scan
transfer 7
clear 7
clearall
sync
";

#[test]
fn trace_parse_and_display_round_trip() {
    let evs = parse_trace(SAMPLE).unwrap();
    assert_eq!(
        evs,
        vec![
            Event::Bo { pages: 16 },
            Event::Map {
                m: 1,
                first: 0,
                count: 16
            },
            Event::Unmap { m: 1 },
            Event::Add {
                w: 7,
                first: 0,
                count: 8
            },
            Event::Release { w: 7 },
            Event::Write {
                m: 1,
                pages: vec![3, 4, 5]
            },
            Event::Read { m: 2, pages: vec![0] },
            Event::Scan,
            Event::Transfer { w: 7 },
            Event::Clear { w: 7 },
            Event::ClearAll,
            Event::Sync,
        ]
    );
    let text: String = evs.iter().map(|e| format!("{e}\n")).collect();
    assert_eq!(parse_trace(&text).unwrap(), evs);
    assert_eq!(evs[5].to_string(), "write 1 3 4 5");
    assert_eq!(evs[1].to_string(), "map 1 0 16");
    let lines = parse_trace_lines(SAMPLE).unwrap();
    assert_eq!(lines[0].0, 2);
    assert_eq!(lines[1].0, 4);
}

#[test]
fn trace_syntax_errors() {
    let err = |text: &str| -> TraceError { parse_trace(text).expect_err(text) };
    let e = err("bo 4\nfrobnicate 1\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("unknown keyword"), "{e}");
    assert_eq!(e.to_string(), format!("line 2: {}", e.message));
    let _: &dyn std::error::Error = &e;
    for bad in [
        "bo",
        "bo 1 2",
        "map 1 0",
        "map 1 0 1 2",
        "unmap",
        "add 1 0",
        "release",
        "write 1",
        "read",
        "scan 1",
        "transfer",
        "clear 1 2",
        "clearall x",
        "sync 0",
    ] {
        let e = err(&format!("\n{bad}"));
        assert_eq!(e.line, 2, "{bad}");
        assert!(e.message.contains("wrong number"), "{bad}: {e}");
    }
    for bad in [
        "bo -1",
        "bo 0x10",
        "bo +3",
        "bo 1.5",
        "map 4294967296 0 1",
        "add 1 18446744073709551616 1",
        "write 1 3 x",
        "release -0",
    ] {
        let e = err(bad);
        assert!(e.message.contains("bad number"), "{bad}: {e}");
        assert_eq!(e.line, 1);
    }
    assert!(parse_trace("BO 4").is_err(), "keywords are lower case");
    assert_eq!(parse_trace("  # only a comment\n\n").unwrap(), vec![]);
    assert_eq!(parse_trace("bo 007").unwrap(), vec![Event::Bo { pages: 7 }]);
    assert_eq!(
        parse_trace("write\t1   2#c").unwrap(),
        vec![Event::Write { m: 1, pages: vec![2] }]
    );
}

#[test]
fn trace_semantic_errors() {
    let run = |text: &str| run_trace(&parse_trace(text).unwrap());
    let err = |text: &str| run(text).expect_err(text);
    assert_eq!(err("scan").0, 0);
    assert_eq!(run_trace(&[]).unwrap_err().0, 0);
    assert_eq!(err("bo 0").0, 0);
    assert_eq!(err("bo 4\nscan\nbo 4").0, 2);
    for (text, idx) in [
        ("bo 4\nwrite 1 0", 1),                     // unknown mapping
        ("bo 4\nmap 1 0 4\nwrite 1 4", 2),          // page >= N
        ("bo 4\nmap 1 0 2\nread 1 2", 2),           // outside mapping
        ("bo 4\nmap 1 0 2\nmap 1 2 2", 2),          // already mapped
        ("bo 4\nmap 1 0 5", 1),                     // window outside BO
        ("bo 4\nmap 1 4 1", 1),                     // window outside BO
        ("bo 4\nunmap 1", 1),                       // unknown mapping
        ("bo 4\nmap 1 0 4\nunmap 1\nwrite 1 0", 3), // unmapped
        ("bo 4\nadd 1 0 4\nadd 1 0 4", 2),          // existing resource
        ("bo 4\nadd 1 3 2", 1),                     // window outside BO
        ("bo 4\nrelease 1", 1),                     // unknown resource
        ("bo 4\nadd 1 0 4\nrelease 1\nrelease 1", 3),
        ("bo 4\ntransfer 1", 1),
        ("bo 4\nclear 1", 1),
    ] {
        assert_eq!(err(text).0, idx, "{text}");
    }
    // Mapping and resource ids can be reused after unmap / release.
    let out = run("bo 4\nmap 1 0 4\nunmap 1\nmap 1 1 2\nadd 1 0 4\nrelease 1\nadd 1 0 2").unwrap();
    assert_eq!(out.len(), 6);
    assert_eq!(out[5].1.tracker.as_ref().unwrap().users, 1);
}

/// The worked example in TRACE_FORMAT.md runs and produces exactly the
/// observations printed there.
#[test]
fn trace_format_doc_example() {
    let doc = include_str!("../TRACE_FORMAT.md");
    let block = |tag: &str| -> String {
        let open = format!("```{tag}\n");
        let start = doc.find(&open).unwrap_or_else(|| panic!("no {tag} block")) + open.len();
        let len = doc[start..].find("```").expect("closed block");
        doc[start..start + len].to_string()
    };
    let trace = block("trace");
    let expected = block("observations");
    let events = parse_trace(&trace).unwrap();
    let out = run_trace(&events).unwrap();
    let got: String = events[1..]
        .iter()
        .zip(&out)
        .map(|(ev, (res, obs))| format!("{:<16} {res} | {obs}\n", ev.to_string()))
        .collect();
    assert_eq!(got, expected, "update TRACE_FORMAT.md:\n{got}");
}

// ----- property tests -----------------------------------------------------------

/// Turns random numbers into a valid event for the current model state.
fn valid_event(model: &Model, kind: u8, a: u64, b: u64, c: u64) -> Event {
    let n = model.pages();
    let maps = model.mappings();
    let ress = model.resources();
    match kind % 12 {
        0 | 1 => {
            let m = (a % 4) as u32;
            if maps.iter().any(|(id, _)| *id == m) {
                Event::Unmap { m }
            } else {
                let first = b % n;
                let count = 1 + c % (n - first);
                Event::Map { m, first, count }
            }
        }
        2 => {
            let w = (a % 4) as u32;
            if ress.iter().any(|(id, _)| *id == w) {
                Event::Release { w }
            } else {
                let first = b % n;
                let count = 1 + c % (n - first);
                Event::Add { w, first, count }
            }
        }
        3..=6 if !maps.is_empty() => {
            let (m, r) = maps[(a as usize) % maps.len()].clone();
            let len = r.end - r.start;
            // Mostly dense runs (to cross the 10% threshold), sometimes sparse.
            let k = 1 + c % len.min(if kind % 2 == 0 { 200 } else { 8 });
            let base = b % len;
            let pages = (0..k).map(|i| r.start + (base + i * (1 + a % 3)) % len).collect();
            if kind % 12 == 6 {
                Event::Read { m, pages }
            } else {
                Event::Write { m, pages }
            }
        }
        7 => Event::Scan,
        8 if !ress.is_empty() => Event::Transfer {
            w: ress[(a as usize) % ress.len()].0,
        },
        9 if !ress.is_empty() && b % 4 == 0 => Event::Clear {
            w: ress[(a as usize) % ress.len()].0,
        },
        10 if b % 8 == 0 => Event::ClearAll,
        _ => Event::Sync,
    }
}

fn tracker_bits(obs: &Observation) -> BTreeSet<u64> {
    obs.tracker.as_ref().map(|t| pages_of(&t.bits)).unwrap_or_default()
}

/// Checks invariants 21 and 11 across one step.
fn check_step(
    model: &Model,
    ev: &Event,
    before: &Observation,
    res: &StepResult,
    after: &Observation,
) -> Result<(), TestCaseError> {
    if let Some(t) = &after.tracker {
        prop_assert!(t.envelope_invariant_holds(), "21 after {}: {}", ev, t);
        prop_assert!(t.change_count <= CHANGE_TRIGGERS);
        prop_assert_eq!(t.users as usize, model.resources().len());
        // bits are maximal runs, ascending, non-empty
        for w in t.bits.windows(2) {
            prop_assert!(w[0].end < w[1].start);
        }
        prop_assert!(t.bits.iter().all(|r| r.start < r.end && r.end <= model.pages()));
        if !t.is_dirty() {
            prop_assert!(t.bits.is_empty());
        }
    } else {
        prop_assert!(model.resources().is_empty());
    }
    let b = tracker_bits(before);
    let a = tracker_bits(after);
    let removed: BTreeSet<u64> = b.difference(&a).copied().collect();
    let reported = pages_of(&res.runs);
    let window = |w: &u32| -> BTreeSet<u64> {
        model
            .resources()
            .into_iter()
            .find(|(id, _)| id == w)
            .map(|(_, r)| r.collect())
            .unwrap_or_default()
    };
    match ev {
        Event::Transfer { w } => {
            prop_assert_eq!(&removed, &reported, "transfer removes exactly what it reports");
            prop_assert!(reported.is_subset(&window(w)));
        }
        Event::Clear { w } => {
            prop_assert!(removed.is_subset(&window(w)));
            prop_assert!(reported.is_empty());
        }
        Event::ClearAll => prop_assert!(a.is_empty()),
        Event::Sync => {
            prop_assert!(removed.is_subset(&reported), "sync drops only reported pages");
        }
        Event::Release { .. } if after.tracker.is_none() => {}
        _ => prop_assert!(removed.is_empty(), "{} dropped {:?}", ev, removed),
    }
    if !matches!(ev, Event::Transfer { .. } | Event::Sync) {
        prop_assert!(res.runs.is_empty());
    }
    for w in res.runs.windows(2) {
        if !matches!(ev, Event::Sync) {
            prop_assert!(w[0].end < w[1].start, "maximal ascending runs");
        }
    }
    Ok(())
}

fn ops() -> impl Strategy<Value = Vec<(u8, u64, u64, u64)>> {
    prop::collection::vec((any::<u8>(), any::<u64>(), any::<u64>(), any::<u64>()), 1..120)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random valid traces never panic and keep invariants 21 and 11.
    #[test]
    fn random_valid_traces_keep_invariants(
        n in prop_oneof![Just(1u64), Just(8), Just(16), Just(511), Just(512), Just(600)],
        quirks in any::<bool>(),
        ops in ops(),
    ) {
        let mut model = Model::with_config(n, ModelConfig { kernel_envelope_quirks: quirks, ..ModelConfig::default() });
        let mut events = vec![Event::Bo { pages: n }];
        for (kind, a, b, c) in ops {
            let ev = valid_event(&model, kind, a, b, c);
            let before = model.observe();
            let res = model.apply(&ev).map_err(|e| TestCaseError::fail(format!("{ev}: {e}")))?;
            let after = model.observe();
            check_step(&model, &ev, &before, &res, &after)?;
            events.push(ev);
        }
        // The trace text round-trips and replays to the same observations.
        let text: String = events.iter().map(|e| format!("{e}\n")).collect();
        let parsed = parse_trace(&text).unwrap();
        prop_assert_eq!(&parsed, &events);
        let replay = run_trace_with(ModelConfig { kernel_envelope_quirks: quirks, ..ModelConfig::default() }, &parsed)
            .map_err(|(i, e)| TestCaseError::fail(format!("{i}: {e}")))?;
        prop_assert_eq!(replay.last().map(|(_, o)| o.clone()), Some(model.observe()));
    }

    /// Arbitrary (mostly invalid) events never panic; errors leave the model
    /// unchanged.
    #[test]
    fn arbitrary_events_never_panic(
        n in 1u64..40,
        evs in prop::collection::vec(arb_event(48), 0..80),
    ) {
        let mut model = Model::new(n);
        for ev in &evs {
            let before = format!("{model:?}");
            if model.apply(ev).is_err() {
                prop_assert_eq!(before, format!("{model:?}"));
            }
            if let Some(t) = model.observe().tracker {
                prop_assert!(t.envelope_invariant_holds());
            }
        }
        let mut all = vec![Event::Bo { pages: n }];
        all.extend(evs);
        let _ = run_trace(&all);
    }

    /// Display/parse round trip for every event.
    #[test]
    fn event_display_round_trips(ev in arb_event(u64::MAX)) {
        let text = ev.to_string();
        prop_assert_eq!(parse_trace(&text).unwrap(), vec![ev]);
    }

    /// Disciplined use (a resource over the whole BO always alive, the only
    /// consumer is `sync`): every page written before a sync is reported by
    /// that sync. No write is ever lost, across switches, unmaps and remaps.
    #[test]
    fn no_lost_write_with_sync(
        n in prop_oneof![Just(16u64), Just(512), Just(600)],
        ops in ops(),
    ) {
        let mut model = Model::new(n);
        model.apply(&Event::Add { w: 0, first: 0, count: n }).unwrap();
        let mut ghost = BTreeSet::new();
        for (kind, a, b, c) in ops {
            let mut ev = valid_event(&model, kind, a, b, c);
            match ev {
                Event::Release { w: 0 } | Event::Transfer { .. } | Event::Clear { .. }
                | Event::ClearAll => ev = Event::Sync,
                _ => {}
            }
            let res = model.apply(&ev).map_err(|e| TestCaseError::fail(format!("{ev}: {e}")))?;
            match &ev {
                Event::Write { pages, .. } => ghost.extend(pages.iter().copied()),
                Event::Sync => {
                    let reported = pages_of(&res.runs);
                    prop_assert!(ghost.is_subset(&reported),
                        "lost {:?}", ghost.difference(&reported).collect::<Vec<_>>());
                    ghost.clear();
                }
                _ => {}
            }
        }
    }
}

fn arb_event(max_page: u64) -> impl Strategy<Value = Event> {
    let id = 0u32..4;
    let pg = 0..=max_page;
    prop_oneof![
        pg.clone().prop_map(|pages| Event::Bo { pages }),
        (id.clone(), pg.clone(), pg.clone()).prop_map(|(m, first, count)| Event::Map { m, first, count }),
        id.clone().prop_map(|m| Event::Unmap { m }),
        (id.clone(), pg.clone(), pg.clone()).prop_map(|(w, first, count)| Event::Add { w, first, count }),
        id.clone().prop_map(|w| Event::Release { w }),
        (id.clone(), prop::collection::vec(pg.clone(), 1..6)).prop_map(|(m, pages)| Event::Write { m, pages }),
        (id.clone(), prop::collection::vec(pg, 1..6)).prop_map(|(m, pages)| Event::Read { m, pages }),
        Just(Event::Scan),
        id.clone().prop_map(|w| Event::Transfer { w }),
        id.clone().prop_map(|w| Event::Clear { w }),
        Just(Event::ClearAll),
        Just(Event::Sync),
        any::<u32>().prop_map(|m| Event::Unmap { m }),
    ]
}

/// cohmem's deviation (ModelConfig::protect_clean_writable): a transfer
/// without a scan re-protects the writable pages whose bit it cleared, so
/// the next write is recorded; pure vmwgfx misses it. Both when the page
/// ends up outside the envelope and when other resources keep the envelope
/// open around it.
#[test]
fn protect_clean_writable_records_writes_after_a_scanless_transfer() {
    let safe_config = ModelConfig {
        protect_clean_writable: true,
        ..ModelConfig::default()
    };
    let outside = "add 0 0 512\nmap 1 0 512\nwrite 1 3\ntransfer 0\nwrite 1 3";
    let inside =
        "add 0 0 8\nadd 1 8 8\nadd 2 16 8\nmap 1 0 512\nwrite 1 2 10 20\nscan\nwrite 1 10\ntransfer 1\nwrite 1 10";
    for (trace, page) in [(outside, 3), (inside, 10)] {
        let mut vmw = Sim::new(512);
        vmw.run(trace);
        assert!(!vmw.t().bit(page), "vmwgfx misses the second write:\n{trace}");
        let mut safe = Sim::with_config(512, safe_config);
        safe.run(trace);
        assert!(safe.t().bit(page), "the safe variant records it:\n{trace}");
    }
}
