//! Which pages a scenario writes between two syncs: a density (one page or a
//! fraction of the BO's pages) laid out scattered (distinct pages drawn
//! uniformly at random, a fresh draw every repetition) or clustered (one
//! contiguous run at a random start).

use serde::Serialize;

use crate::SplitMix64;

/// How many of a BO's pages are written between syncs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Density {
    /// Exactly one page.
    OnePage,
    /// This fraction of the pages (at least one).
    Fraction(f64),
}

impl Density {
    /// The densities: 1 page, 0.1 %, 1 %, 10 %, 50 %, 100 %.
    pub const ALL: [Density; 6] = [
        Density::OnePage,
        Density::Fraction(0.001),
        Density::Fraction(0.01),
        Density::Fraction(0.1),
        Density::Fraction(0.5),
        Density::Fraction(1.0),
    ];

    /// Pages written in a BO of `pages` pages.
    pub fn pages_of(self, pages: u64) -> u64 {
        match self {
            Density::OnePage => 1,
            Density::Fraction(f) => ((f * pages as f64).round() as u64).clamp(1, pages),
        }
    }

    /// Short label: `1 page`, `0.1%`, …
    pub fn label(self) -> String {
        match self {
            Density::OnePage => "1 page".into(),
            Density::Fraction(f) => format!("{}%", f * 100.0),
        }
    }
}

/// How the written pages lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Distinct pages drawn uniformly at random.
    Scattered,
    /// One contiguous run at a random start.
    Clustered,
}

impl Layout {
    /// Both layouts.
    pub const ALL: [Layout; 2] = [Layout::Scattered, Layout::Clustered];

    /// `scattered` or `clustered`.
    pub fn label(self) -> &'static str {
        match self {
            Layout::Scattered => "scattered",
            Layout::Clustered => "clustered",
        }
    }
}

/// Draws `k` of `n` pages laid out as `layout`, ascending.
pub fn pick_pages(rng: &mut SplitMix64, n: u64, k: u64, layout: Layout) -> Vec<u64> {
    let k = k.min(n);
    match layout {
        Layout::Clustered => {
            let start = rng.below(n - k + 1);
            (start..start + k).collect()
        }
        Layout::Scattered if k == n => (0..n).collect(),
        Layout::Scattered => {
            // Partial Fisher-Yates: O(n) set-up, exact k distinct pages.
            let mut all: Vec<u64> = (0..n).collect();
            for i in 0..k as usize {
                let j = i + rng.below(n - i as u64) as usize;
                all.swap(i, j);
            }
            all.truncate(k as usize);
            all.sort_unstable();
            all
        }
    }
}

/// Merges ascending pages into `(first_page, pages)` runs.
pub fn runs_of(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        match runs.last_mut() {
            Some((first, len)) if *first + *len == p => *len += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn densities_and_layouts() {
        assert_eq!(Density::OnePage.pages_of(262_144), 1);
        assert_eq!(Density::Fraction(0.001).pages_of(262_144), 262);
        assert_eq!(Density::Fraction(0.001).pages_of(16), 1);
        assert_eq!(Density::Fraction(1.0).pages_of(16), 16);
        let mut rng = SplitMix64::new(1);
        let s = pick_pages(&mut rng, 1000, 100, Layout::Scattered);
        assert_eq!(s.len(), 100);
        assert!(s.windows(2).all(|w| w[0] < w[1]) && s[99] < 1000);
        let c = pick_pages(&mut rng, 1000, 100, Layout::Clustered);
        assert_eq!(runs_of(&c).len(), 1);
        assert_eq!(runs_of(&[1, 2, 3, 7, 9, 10]), vec![(1, 3), (7, 1), (9, 2)]);
    }
}
