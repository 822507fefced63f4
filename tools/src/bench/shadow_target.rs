//! Issue 19's target 3, printed as target 7: tracking against the users'
//! no-damage choice, shadow compare (the daemon compares the BO with the
//! copy the GPU last received, as a VNC server compares against its shadow
//! surface, `shared/research/display.md` §2). Shadow compare must cost at
//! least 5× auto's sync on the 1080p animation and on 64 MiB at 1 %, and
//! auto never more than 1.1× shadow compare at any size and density.

use super::pattern::Layout;
use super::report::Target;
use super::stats::{fmt_ns, ratio};
use super::Report;

/// Target 7 from the report's `shadow` and `auto` rows.
pub fn target(r: &Report) -> Target {
    let mut t = Target {
        number: 7,
        name: "shadow compare".into(),
        measured: None,
        goal: "shadow sync / auto sync >= 5 on the animation and on 64 MiB at 1%; worst auto sync / shadow sync <= 1.1"
            .into(),
        met: None,
        details: Vec::new(),
    };
    let anim = |m: &str| r.animation.iter().find(|a| a.mechanism == m);
    let mut fives = Vec::new();
    if let (Some(a), Some(s)) = (anim("auto"), anim("shadow")) {
        let x = ratio(s.sync.median_ns, a.sync.median_ns);
        t.details.push(format!(
            "1080p animation: shadow sync {} ({} pages/frame) / auto sync {} ({} pages/frame) = {}",
            fmt_ns(s.sync.median_ns),
            s.pages_median,
            fmt_ns(a.sync.median_ns),
            a.pages_median,
            x.map_or("n/a".into(), |x| format!("{x:.2}"))
        ));
        fives.push(x);
    }
    let cell = |m: &str, size: u64, density: &str, layout: Layout, threads: usize| {
        r.cells.iter().find(|c| {
            c.mechanism == m && c.size == size && c.density == density && c.layout == layout && c.threads == threads
        })
    };
    if let (Some(a), Some(s)) = (
        cell("auto", 64 << 20, "1%", Layout::Scattered, 1),
        cell("shadow", 64 << 20, "1%", Layout::Scattered, 1),
    ) {
        let x = ratio(s.sync_cost.median_ns, a.sync_cost.median_ns);
        t.details.push(format!(
            "64 MiB, 1% scattered: shadow sync {} / auto sync {} = {}",
            fmt_ns(s.sync_cost.median_ns),
            fmt_ns(a.sync_cost.median_ns),
            x.map_or("n/a".into(), |x| format!("{x:.2}"))
        ));
        fives.push(x);
    }
    // auto / shadow over every cell both ran, the worst one named.
    let mut worst: Option<(f64, String)> = None;
    let mut worst_total: Option<(f64, String)> = None;
    for a in r.cells.iter().filter(|c| c.mechanism == "auto") {
        let Some(s) = cell("shadow", a.size, &a.density, a.layout, a.threads) else {
            continue;
        };
        let what = format!(
            "{} {} {} {} thread(s): auto {} / shadow {}",
            super::report::size_label(a.size),
            a.density,
            a.layout.label(),
            a.threads,
            fmt_ns(a.sync_cost.median_ns),
            fmt_ns(s.sync_cost.median_ns)
        );
        if let Some(x) = ratio(a.sync_cost.median_ns, s.sync_cost.median_ns) {
            if worst.as_ref().is_none_or(|(w, _)| x > *w) {
                worst = Some((x, what));
            }
        }
        if let Some(x) = ratio(a.total.median_ns, s.total.median_ns) {
            if worst_total.as_ref().is_none_or(|(w, _)| x > *w) {
                worst_total = Some((x, format!("{} {}", super::report::size_label(a.size), a.density)));
            }
        }
    }
    if let Some((x, what)) = &worst {
        t.details
            .push(format!("worst auto sync / shadow sync: {x:.3} at {what}"));
        t.measured = Some(*x);
    }
    if let Some((x, what)) = &worst_total {
        t.details.push(format!(
            "(write + sync, faults included: worst auto / shadow {x:.3} at {what})"
        ));
    }
    if fives.len() == 2 && worst.is_some() {
        let five_ok = fives.iter().all(|x| x.is_some_and(|x| x >= 5.0));
        t.met = Some(five_ok && worst.as_ref().is_some_and(|(x, _)| *x <= 1.1));
    } else if fives.is_empty() && worst.is_none() {
        t.details
            .push("not measured (shadow or auto not among the mechanisms)".into());
    }
    t
}
