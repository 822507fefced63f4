//! Order statistics over repeated timings: every figure the bench prints is
//! a median (with p90/p99 where the sample is large enough to mean
//! something), never a single run.

use std::time::Duration;

use serde::Serialize;

/// Summary of one sample of durations (nanoseconds).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Smallest value.
    pub min_ns: u64,
    /// Median (nearest rank).
    pub median_ns: u64,
    /// 90th percentile (nearest rank).
    pub p90_ns: u64,
    /// 99th percentile (nearest rank).
    pub p99_ns: u64,
    /// Largest value.
    pub max_ns: u64,
    /// Arithmetic mean.
    pub mean_ns: u64,
}

impl Summary {
    /// Summarises `values` (nanoseconds); all zero for an empty sample.
    pub fn of_ns(mut values: Vec<u64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        let n = values.len();
        let rank = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        let sum: u128 = values.iter().map(|&v| u128::from(v)).sum();
        Self {
            n,
            min_ns: values[0],
            median_ns: rank(0.5),
            p90_ns: rank(0.9),
            p99_ns: rank(0.99),
            max_ns: values[n - 1],
            mean_ns: (sum / n as u128) as u64,
        }
    }

    /// Summarises durations.
    pub fn of(values: &[Duration]) -> Self {
        Self::of_ns(values.iter().map(|d| nanos(*d)).collect())
    }

    /// The median as a [`Duration`].
    pub fn median(&self) -> Duration {
        Duration::from_nanos(self.median_ns)
    }
}

/// A duration in whole nanoseconds (saturating).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `a / b` of two medians, `None` when `b` is zero.
pub fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Human form of a nanosecond figure: `850 ns`, `12.3 µs`, `4.56 ms`, `1.23 s`.
pub fn fmt_ns(ns: u64) -> String {
    let v = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", v / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.2} s", v / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Summary::of_ns((1..=100).collect());
        assert_eq!(
            (s.n, s.min_ns, s.median_ns, s.p90_ns, s.p99_ns, s.max_ns),
            (100, 1, 50, 90, 99, 100)
        );
        let one = Summary::of_ns(vec![7]);
        assert_eq!((one.median_ns, one.p99_ns), (7, 7));
        assert_eq!(Summary::of_ns(vec![]).n, 0);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_ns(850), "850 ns");
        assert_eq!(fmt_ns(12_345), "12.3 µs");
        assert_eq!(fmt_ns(4_560_000), "4.56 ms");
    }
}
