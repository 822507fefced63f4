//! Sorted, disjoint address-range lists: merging and subtraction, for the
//! mechanisms' harvests.

use std::ops::Range;

/// Appends `r` to `out`, merged with the last range if adjacent or
/// overlapping (`out` sorted, `r` not before its last range's start).
pub(super) fn push_merged(out: &mut Vec<Range<u64>>, r: Range<u64>) {
    if r.start >= r.end {
        return;
    }
    match out.last_mut() {
        Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
        _ => out.push(r),
    }
}

/// Appends the parts of `r` outside `holes` (sorted, disjoint) to `out`.
pub(super) fn subtract(r: Range<u64>, holes: &[Range<u64>], out: &mut Vec<Range<u64>>) {
    let mut at = r.start;
    for h in holes {
        if h.end <= at {
            continue;
        }
        if h.start >= r.end {
            break;
        }
        if h.start > at {
            push_merged(out, at..h.start);
        }
        at = at.max(h.end);
    }
    if at < r.end {
        push_merged(out, at..r.end);
    }
}

/// Sorts and merges `out[first..]` (two scans' runs of one range).
pub(super) fn merge_runs(out: &mut Vec<Range<u64>>, first: usize) {
    let mut runs = out.split_off(first);
    runs.sort_unstable_by_key(|r| r.start);
    let mut merged = Vec::with_capacity(runs.len());
    for r in runs {
        push_merged(&mut merged, r);
    }
    out.extend(merged);
}
