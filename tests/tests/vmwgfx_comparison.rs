//! vmwgfx comparison: the same trace drives the real daemon (real client
//! processes writing real memory through userfaultfd-tracked mappings) and
//! the reference model written from `research/vmwgfx-dirty-spec.md`
//! (`cohmem_tools::vmwgfx::model`). After every step the daemon's method,
//! change count, users, envelope and dirty bits, and the runs each transfer
//! or sync reports, must equal the model's. One test per behaviour of the
//! spec's §10, plus random traces.

use std::path::Path;

use cohmem_client::Mechanism;
use cohmem_tests::spawn_daemon_with;
use cohmem_tools::vmwgfx::replay::{random_trace, replay, WriterCommand};
use cohmem_tools::vmwgfx::trace::parse_trace;
use cohmem_tools::SplitMix64;
use proptest::prelude::*;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

fn writer() -> WriterCommand {
    WriterCommand {
        program: Path::new(env!("CARGO_BIN_EXE_cohmem-test-writer")).to_owned(),
        pre_args: Vec::new(),
    }
}

/// A daemon that tracks exactly as vmwgfx does (`--methods vmwgfx`, no
/// pausing for dense writes), so that it can be compared with the model.
fn vmwgfx_daemon(mechanism: Option<Mechanism>) -> anyhow::Result<cohmem_tools::DaemonProcess> {
    let mut args = vec!["--methods", "vmwgfx", "--dense-percent", "0"];
    if let Some(m) = mechanism {
        args.extend(["--mechanism", m.name()]);
    }
    spawn_daemon_with(DAEMON, &args)
}

/// The mechanisms this host offers; every trace runs under each.
fn mechanisms() -> Vec<Mechanism> {
    let caps = cohmem_sys::probe::probe_all();
    [
        (Mechanism::UffdAsync, caps.uffd_async.ok),
        (Mechanism::UffdSync, caps.uffd_sync.ok),
        (Mechanism::SoftDirty, cohmem_tests::soft_dirty_available()),
    ]
    .into_iter()
    .filter_map(|(m, ok)| ok.then_some(m))
    .collect()
}

/// Replays `trace` against a fresh daemon and the model, once per
/// mechanism; panics on the first disagreement.
fn agree(trace: &str) {
    let events = parse_trace(trace).unwrap_or_else(|e| panic!("bad trace: {e}"));
    for mechanism in mechanisms() {
        let _one = (mechanism == Mechanism::SoftDirty).then(cohmem_tests::soft_dirty_serial);
        let daemon = vmwgfx_daemon(Some(mechanism)).expect("daemon");
        match replay(daemon.socket(), &writer(), &events).expect("replay failed") {
            Ok(steps) => assert_eq!(steps, events.len()),
            Err(d) => panic!("{mechanism}: daemon and model disagree at {d}\ntrace:\n{trace}"),
        }
    }
}

fn pages(range: std::ops::Range<u64>) -> String {
    range.map(|p| p.to_string()).collect::<Vec<_>>().join(" ")
}

#[test]
fn b01_geometry_and_empty_start() {
    agree("bo 10\nadd 0 0 10\nmap 0 0 10\nscan\nwrite 0 9\nscan\ntransfer 0\n");
}

#[test]
fn b02_initial_method_by_size() {
    agree("bo 511\nadd 0 0 511\n");
    agree("bo 512\nadd 0 0 512\n");
}

#[test]
fn b03_add_records_preexisting_writes() {
    // MKWRITE: reported by the first transfer without a scan.
    agree("bo 512\nmap 0 0 512\nwrite 0 5 77\nadd 0 0 512\ntransfer 0\n");
    // PAGETABLE: only after the first scan.
    agree("bo 100\nmap 0 0 100\nwrite 0 5 77\nadd 0 0 100\ntransfer 0\nscan\ntransfer 0\n");
}

#[test]
fn b04_mkwrite_first_write_records_once_reads_never() {
    agree("bo 600\nadd 0 0 600\nmap 0 0 600\nread 0 4 5\nwrite 0 3\nwrite 0 3\nread 0 3\nwrite 0 300\n");
}

#[test]
fn b05_write_to_an_already_recorded_page() {
    agree("bo 600\nadd 0 0 600\nmap 0 0 600\nwrite 0 3\nscan\nwrite 0 3\nscan\nwrite 0 3\n");
}

#[test]
fn b06_mkwrite_scan_reprotects_only_the_envelope_and_clears_nothing() {
    agree("bo 600\nadd 0 0 600\nmap 0 0 600\nwrite 0 3 10\nscan\nwrite 0 5 20\nscan\nwrite 0 3\nscan\n");
}

#[test]
fn b07_mkwrite_to_pagetable_threshold() {
    let set = |n: u64| format!("write 0 {}\n", pages(0..n));
    // 110 of 1000 pages per round: switches on the third scan.
    agree(&format!(
        "bo 1000\nadd 0 0 1000\nmap 0 0 1000\n{0}scan\n{0}scan\n{0}scan\n",
        set(110)
    ));
    // 109 never switches.
    agree(&format!(
        "bo 1000\nadd 0 0 1000\nmap 0 0 1000\n{0}scan\n{0}scan\n{0}scan\n{0}scan\n",
        set(109)
    ));
    // A round of <= 10 % resets the count.
    agree(&format!(
        "bo 1000\nadd 0 0 1000\nmap 0 0 1000\n{0}scan\n{0}scan\n{1}scan\n{0}scan\n",
        set(110),
        set(5)
    ));
    // An empty-envelope scan neither counts nor resets.
    agree(&format!(
        "bo 1000\nadd 0 0 1000\nmap 0 0 1000\n{0}scan\ntransfer 0\nscan\n{0}scan\n{0}scan\n",
        set(110)
    ));
}

#[test]
fn b08_state_after_switch_to_pagetable_is_the_whole_envelope() {
    let set = format!("write 0 {} 500\n", pages(0..110));
    agree(&format!(
        "bo 1000\nadd 0 0 1000\nmap 0 0 1000\n{set}scan\n{set}scan\n{set}scan\nwrite 0 900\nsync\n"
    ));
}

#[test]
fn b09_pagetable_scan_ors_and_extends() {
    agree("bo 100\nadd 0 0 100\nmap 0 0 100\nwrite 0 1\nscan\nwrite 0 2 50\nscan\nscan\ntransfer 0\n");
}

#[test]
fn b10_pagetable_to_mkwrite_after_three_empty_scans() {
    agree("bo 100\nadd 0 0 100\nmap 0 0 100\nwrite 0 7\nscan\nscan\nscan\nscan\nwrite 0 8\ntransfer 0\nscan\n");
}

#[test]
fn b11_only_transfer_and_clear_remove_bits() {
    let set = format!("write 0 {}\n", pages(0..120));
    agree(&format!(
        "bo 1000\nadd 0 0 1000\nmap 0 0 1000\nwrite 0 999\n{set}scan\n{set}scan\n{set}scan\nscan\nscan\nscan\nscan\nclearall\n"
    ));
}

#[test]
fn b12_transfer_uses_min_and_spares_the_neighbouring_resource() {
    agree("bo 20\nadd 0 0 10\nadd 1 10 10\nmap 0 0 20\nwrite 0 3 15\nscan\ntransfer 0\ntransfer 1\n");
    agree("bo 600\nadd 0 0 300\nadd 1 300 300\nmap 0 0 600\nwrite 0 3 299 300 450\ntransfer 1\ntransfer 0\n");
}

#[test]
fn b13_clear_res_and_clear_all() {
    agree("bo 600\nadd 0 0 300\nadd 1 300 300\nmap 0 0 600\nwrite 0 3 400\nclear 1\ntransfer 0\nwrite 0 5\nclearall\n");
}

#[test]
fn b14_refcounting() {
    agree("bo 600\nmap 0 0 600\nadd 0 0 600\nadd 1 0 600\nwrite 0 4\nrelease 0\nwrite 0 5\nrelease 1\nwrite 0 6\nadd 2 0 600\ntransfer 2\n");
}

#[test]
fn b15_unmap_harvests_first() {
    // PAGETABLE: writes before the unmap are reported after it.
    agree("bo 100\nadd 0 0 100\nmap 0 0 100\nwrite 0 4 9\nunmap 0\nscan\ntransfer 0\n");
    // MKWRITE: they were already recorded.
    agree("bo 600\nadd 0 0 600\nmap 0 0 600\nwrite 0 4 9\nunmap 0\ntransfer 0\n");
}

#[test]
fn b16_interleaved_processes_lose_nothing() {
    // The concurrent form is tests/no_lost_write.rs; here two processes
    // interleave writes with transfers and syncs step by step.
    agree("bo 600\nadd 0 0 600\nmap 0 0 600\nmap 1 100 200\nwrite 0 1\nwrite 1 150\nsync\nwrite 1 150 299\nwrite 0 1\ntransfer 0\nscan\nwrite 0 599\nsync\n");
}

#[test]
fn b17_scan_before_transfer_keeps_later_writes() {
    agree("bo 600\nadd 0 0 600\nmap 0 0 600\nwrite 0 3\nscan\ntransfer 0\nwrite 0 3\nscan\ntransfer 0\n");
}

#[test]
fn b18_out_of_range_is_an_error() {
    let events = parse_trace("bo 10\nadd 0 0 10\nmap 0 0 10\nwrite 0 10\n").expect("syntax");
    let daemon = vmwgfx_daemon(None).expect("daemon");
    let result = replay(daemon.socket(), &writer(), &events);
    assert!(result.is_err(), "a write past the BO must be rejected, got {result:?}");
}

#[test]
fn b19_neighbours_of_a_write_are_never_reported() {
    // No prefault: reading pages and writing one reports exactly that one.
    agree("bo 600\nadd 0 0 600\nmap 0 0 600\nread 0 10 11 12 13 14\nwrite 0 12\nsync\n");
    agree("bo 100\nadd 0 0 100\nmap 0 0 100\nread 0 10 11 12 13 14\nwrite 0 12\nsync\n");
}

#[test]
fn b20_protection_changes_are_not_writes() {
    agree("bo 100\nadd 0 0 100\nmap 0 0 100\nscan\nscan\nscan\nscan\nread 0 1 2\nscan\nsync\n");
}

#[test]
fn b21_envelope_may_be_dirty_with_no_bits() {
    agree("bo 30\nadd 0 10 10\nadd 1 0 30\nmap 0 0 30\nwrite 0 0 12 29\nscan\ntransfer 0\n");
}

#[test]
fn b22_each_mapping_counts_towards_the_threshold() {
    // Two mappings writing the same 56 pages: 112 marks per scan of 1000
    // pages (> 10 %) switch; one mapping alone (56) never does.
    let both = format!("write 0 {0}\nwrite 1 {0}\n", pages(0..56));
    agree(&format!(
        "bo 1000\nadd 0 0 1000\nmap 0 0 1000\nmap 1 0 1000\n{both}scan\n{both}scan\n{both}scan\n"
    ));
    let one = format!("write 0 {}\n", pages(0..56));
    agree(&format!(
        "bo 1000\nadd 0 0 1000\nmap 0 0 1000\n{one}scan\n{one}scan\n{one}scan\n"
    ));
}

#[test]
fn b23_remapped_views_start_protected_and_report_writes() {
    agree("bo 600\nadd 0 0 600\nmap 0 0 300\nwrite 0 5\nunmap 0\nmap 0 300 300\nwrite 0 305\nsync\nmap 1 0 600\nwrite 1 5 305\nsync\n");
    agree("bo 100\nadd 0 0 100\nmap 0 0 50\nwrite 0 5\nunmap 0\nmap 0 50 50\nwrite 0 55\nsync\n");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random traces over both initial methods agree step by step.
    #[test]
    fn random_traces_agree(seed in any::<u64>(), size in 0usize..3) {
        let pages = [24u64, 300, 640][size];
        let mut rng = SplitMix64::new(seed);
        let events = random_trace(&mut rng, pages, 60);
        let text: String = events.iter().map(|e| format!("{e}\n")).collect();
        for mechanism in mechanisms() {
            let _one = (mechanism == Mechanism::SoftDirty).then(cohmem_tests::soft_dirty_serial);
            let daemon = vmwgfx_daemon(Some(mechanism)).expect("daemon");
            match replay(daemon.socket(), &writer(), &events).expect("replay failed") {
                Ok(_) => {}
                Err(d) => prop_assert!(false, "{}: disagreement at {}\ntrace:\n{}", mechanism, d, text),
            }
        }
    }
}
