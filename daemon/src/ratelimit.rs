//! Rate-limited logging for events a client can trigger (issue 15: a client
//! sending SET_POLICY in a loop made the daemon write 28 MB of logs in 6.5 s).
//!
//! Each kind of event may log [`PER_SCOPE`] lines per [`WINDOW`] for one
//! scope (a connection, a BO, a user) and [`PER_KIND`] lines per window over
//! all scopes; what is held back is counted, and the next line logged for
//! that kind and scope carries `suppressed = N`. Memory is bounded: at most
//! [`MAX_SCOPES`] scopes are remembered; past that, idle ones are forgotten
//! and the rest share one overflow scope.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Length of one window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Lines per window for one kind and scope.
pub const PER_SCOPE: u32 = 5;
/// Lines per window for one kind over every scope.
pub const PER_KIND: u32 = 50;
/// Scopes remembered at most.
pub const MAX_SCOPES: usize = 4096;
/// The scope standing for every scope past [`MAX_SCOPES`].
const OVERFLOW_SCOPE: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    window_start: Instant,
    lines: u32,
    suppressed: u64,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            lines: 0,
            suppressed: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.lines = 0;
        }
    }
}

/// The limiter: buckets by (kind, scope) and by kind.
#[derive(Debug, Default)]
pub struct LogLimiter {
    scopes: HashMap<(&'static str, u64), Bucket>,
    kinds: HashMap<&'static str, Bucket>,
}

impl LogLimiter {
    /// Whether an event of `kind` in `scope` may be logged at `now`:
    /// `Some(n)` with the lines of this kind and scope held back since the
    /// last one logged, `None` when this one is held back.
    pub fn allow(&mut self, kind: &'static str, scope: u64, now: Instant) -> Option<u64> {
        let mut scope = scope;
        if !self.scopes.contains_key(&(kind, scope)) && self.scopes.len() >= MAX_SCOPES {
            self.scopes
                .retain(|_, b| now.duration_since(b.window_start) < WINDOW || b.suppressed > 0);
            if self.scopes.len() >= MAX_SCOPES {
                scope = OVERFLOW_SCOPE;
            }
        }
        let kind_bucket = self.kinds.entry(kind).or_insert_with(|| Bucket::new(now));
        kind_bucket.roll(now);
        let bucket = self.scopes.entry((kind, scope)).or_insert_with(|| Bucket::new(now));
        bucket.roll(now);
        if bucket.lines >= PER_SCOPE || kind_bucket.lines >= PER_KIND {
            bucket.suppressed += 1;
            return None;
        }
        bucket.lines += 1;
        kind_bucket.lines += 1;
        Some(std::mem::take(&mut bucket.suppressed))
    }
}

/// The daemon-wide limiter.
pub fn allow(kind: &'static str, scope: u64) -> Option<u64> {
    static LIMITER: OnceLock<Mutex<LogLimiter>> = OnceLock::new();
    let limiter = LIMITER.get_or_init(|| Mutex::new(LogLimiter::default()));
    limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allow(kind, scope, Instant::now())
}

/// Logs through `tracing` at `level` if [`allow`] lets this event of `kind`
/// in `scope` through, with a `suppressed` field counting what was held
/// back before it.
#[macro_export]
macro_rules! limited {
    ($level:ident, $kind:expr, $scope:expr, $($rest:tt)+) => {
        if let Some(suppressed) = $crate::ratelimit::allow($kind, $scope) {
            tracing::$level!(suppressed, $($rest)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_few_lines_then_counts_what_it_held_back() {
        let mut l = LogLimiter::default();
        let t0 = Instant::now();
        let logged = (0..10_000).filter(|_| l.allow("policy", 7, t0).is_some()).count();
        assert_eq!(logged, PER_SCOPE as usize);
        // Another scope still gets its lines; the kind's cap holds overall.
        assert_eq!(l.allow("policy", 8, t0), Some(0));
        let later = t0 + WINDOW;
        assert_eq!(l.allow("policy", 7, later), Some(10_000 - PER_SCOPE as u64));
        let many = (0..10_000u64)
            .filter(|s| l.allow("connected", *s, t0).is_some())
            .count();
        assert_eq!(many, PER_KIND as usize, "the kind's cap bounds a burst of scopes");
        assert!(
            l.scopes.len() <= MAX_SCOPES + 2,
            "scopes are bounded: {}",
            l.scopes.len()
        );
    }
}
