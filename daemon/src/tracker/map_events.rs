//! The proof that lets `uffd-async` harvest with the kernel's fast scan of
//! written pages (issue 19's fixed cost; issue 14, item 9's coverage proof
//! without a walk of every page).
//!
//! A view loses pages (and with them their written state) only through a
//! change of its mapping: munmap or an mmap over it, mremap, madvise. With
//! the client's uffd asking for `features::MAP_EVENTS`, each such change of
//! a registered range raises the uffd's `mmap_changing` under the mmap lock
//! before it touches the mapping, queues a message, and lowers the counter
//! only once the message was read (the changing thread waits for that).
//! The fault service reads the messages as they come and counts them here,
//! holding the count's lock across each read. One count serves every
//! tracker built on the same uffd file ([`MapEventsRegistry`]), so a
//! message read by any of them (a tracker a switch retires, or one a racing
//! attach threw away) is counted where the others look.
//!
//! So, for a harvest H of a view: take the count before H; after H, if
//! `mm_changing` is false, every change that began before H has been read
//! and counted; if the count still equals the one taken before the view's
//! previous harvest (or its attach), no change began between that harvest
//! and H, and the view was whole at H. Otherwise a walk proves it, as
//! without events.
//!
//! A madvise queues its message and lowers the counter before it zaps
//! the range, but a zapped page keeps its "written" mark (a none entry in
//! a WP_ASYNC range reads as written), so a harvest after it still finds
//! the page; only unmapping takes marks away.
//!
//! What the events cannot see (README, "uffd-async's coverage proof"): a
//! client that reads its own uffd's messages takes them from the daemon,
//! and hides its own remaps (as it could by registering a remapped view
//! again); and a thread killed while its change waits for the message
//! lowers `mm_changing` with the message unread, so a sync by another
//! process of the BO before the dying process is gone can miss what the
//! dying one wrote into the unmapped view (the view's removal then marks
//! it dirty).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cohmem_sys::uffd::{MapEvent, Userfaultfd};

use crate::locking::lock;

/// Views remembered at most per tracker: past this the table starts over,
/// and every view is proven by a walk once (what a view not in the table
/// gets).
const MAX_VIEWS: usize = 1 << 16;

/// Messages read per drain at most (the fault service comes back while the
/// uffd stays readable).
const MAX_READS: usize = 64;

/// The mapping changes read from one uffd file, by whichever tracker read
/// them.
#[derive(Default)]
pub struct MapEvents {
    /// Mapping-change messages read so far; held across each read, so a
    /// message the kernel handed over is counted before the lock is free.
    seen: Mutex<u64>,
    /// A change stayed under way past a write-protect's wait: later
    /// write-protects fail at once until one succeeds.
    stuck: AtomicBool,
}

impl MapEvents {
    /// Mapping changes counted so far (waits for a read under way).
    pub fn seen(&self) -> u64 {
        *lock(&self.seen)
    }

    /// Whether a change was seen stuck (see [`MapEvents::set_stuck`]).
    pub fn stuck(&self) -> bool {
        self.stuck.load(Ordering::Relaxed)
    }

    /// Records that a change stayed under way past a write-protect's wait
    /// (`true`), or that a write-protect went through (`false`).
    pub fn set_stuck(&self, stuck: bool) {
        self.stuck.store(stuck, Ordering::Relaxed);
    }

    /// Reads messages until no mapping change of the process waits for one
    /// (`mm_changing`), for at most `bound`.
    pub fn read_until_quiet(&self, uffd: &Userfaultfd, bound: Duration) {
        uffd.read_until_quiet(bound, |u| self.drain(u));
    }

    /// Reads the pending messages of `uffd` (without blocking) and counts
    /// them. Every message counts: which view a change touched does not
    /// matter, a view whose count moved is walked once.
    pub fn drain(&self, uffd: &Userfaultfd) {
        let mut seen = lock(&self.seen);
        let mut changes: Vec<MapEvent> = Vec::new();
        for _ in 0..MAX_READS {
            match uffd.read_events(&mut changes) {
                Ok(0) => break,
                Ok(n) => *seen += n as u64,
                Err(e) => {
                    tracing::debug!(error = %e, "reading mapping changes failed");
                    // Count it anyway: a failed read may have taken messages.
                    *seen += 1;
                    break;
                }
            }
        }
        drop(seen);
        if !changes.is_empty() {
            tracing::trace!(?changes, "mapping changes of a uffd-async client");
        }
    }
}

/// The daemon's [`MapEvents`], one per uffd file (by device and inode, the
/// same for every fd of one uffd).
#[derive(Default)]
pub struct MapEventsRegistry {
    by_file: Mutex<HashMap<(u64, u64), Weak<MapEvents>>>,
}

impl MapEventsRegistry {
    /// The count of `uffd`'s file, created on first use. Two files that
    /// came to share an inode number (it wraps) share a count: more
    /// increments, more walks, never fewer.
    pub fn for_uffd(&self, uffd: &Userfaultfd) -> cohmem_sys::Result<Arc<MapEvents>> {
        let id = uffd.file_id()?;
        let mut by_file = lock(&self.by_file);
        if let Some(events) = by_file.get(&id).and_then(Weak::upgrade) {
            return Ok(events);
        }
        by_file.retain(|_, w| w.strong_count() > 0);
        let events = Arc::new(MapEvents::default());
        by_file.insert(id, Arc::downgrade(&events));
        Ok(events)
    }
}

/// One value per view of one tracker (by range), for at most
/// [`MAX_VIEWS`] views: past that the table starts over, and a view not in
/// it gets what its caller does without (for the proof: a walk).
pub struct ViewTable<T> {
    values: Mutex<HashMap<(u64, u64), T>>,
}

impl<T> Default for ViewTable<T> {
    fn default() -> Self {
        Self {
            values: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Copy> ViewTable<T> {
    /// The value recorded for `view`, if any.
    pub fn get(&self, view: &Range<u64>) -> Option<T> {
        lock(&self.values).get(&(view.start, view.end)).copied()
    }

    /// Records `value` for `view`.
    pub fn set(&self, view: &Range<u64>, value: T) {
        let mut values = lock(&self.values);
        if values.len() >= MAX_VIEWS && !values.contains_key(&(view.start, view.end)) {
            values.clear();
        }
        values.insert((view.start, view.end), value);
    }

    /// Forgets a view the daemon no longer tracks.
    pub fn forget(&self, view: &Range<u64>) {
        lock(&self.values).remove(&(view.start, view.end));
    }
}

/// For each view of one tracker: the [`MapEvents`] count taken before its
/// last proven harvest (or its attach) began, set when a harvest that began
/// at that count found the view whole.
pub type ProvenViews = ViewTable<u64>;
