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
//! holding the count's lock across each read.
//!
//! So, for a harvest H of a view: take the count before H; after H, if
//! `mm_changing` is false, every change that began before H has been read
//! and counted; if the count still equals the one taken before the view's
//! previous harvest (or its attach), no change began between that harvest
//! and H, and the view was whole at H. Otherwise a walk proves it, as
//! without events.
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
use std::sync::Mutex;

use cohmem_sys::uffd::{MapEvent, Userfaultfd};

use crate::locking::lock;

/// Views remembered at most: past this the table starts over, and every
/// view is proven by a walk once (what a view not in the table gets).
const MAX_VIEWS: usize = 1 << 16;

/// Messages read per drain at most (the fault service comes back while the
/// uffd stays readable).
const MAX_READS: usize = 64;

/// Mapping changes read from one process's uffd, and how far each view is
/// proven.
pub struct MapEvents {
    /// The kernel passed the probe: the events prove views.
    trusted: bool,
    /// Mapping-change messages read so far; held across each read, so a
    /// message the kernel handed over is counted before the lock is free.
    seen: Mutex<u64>,
    /// For each view (by range): [`MapEvents::seen`] taken before its last
    /// harvest (or its attach) began.
    proven: Mutex<HashMap<(u64, u64), u64>>,
}

impl MapEvents {
    /// Nothing read yet; `trusted`: see [`MapEvents::trusted`].
    pub fn new(trusted: bool) -> Self {
        Self {
            trusted,
            seen: Mutex::new(0),
            proven: Mutex::new(HashMap::new()),
        }
    }

    /// True when the kernel passed the probe (`KernelCaps::map_events`):
    /// otherwise the messages are only read, and walks prove every view.
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// Mapping changes counted so far (waits for a read under way).
    pub fn seen(&self) -> u64 {
        *lock(&self.seen)
    }

    /// The count before the view's last proven harvest, if it has one.
    pub fn proven(&self, view: &Range<u64>) -> Option<u64> {
        lock(&self.proven).get(&(view.start, view.end)).copied()
    }

    /// Records that `view` was whole when a harvest that began at count
    /// `before` scanned it.
    pub fn set_proven(&self, view: &Range<u64>, before: u64) {
        let mut proven = lock(&self.proven);
        if proven.len() >= MAX_VIEWS && !proven.contains_key(&(view.start, view.end)) {
            proven.clear();
        }
        proven.insert((view.start, view.end), before);
    }

    /// Forgets a view the daemon no longer tracks.
    pub fn forget(&self, view: &Range<u64>) {
        lock(&self.proven).remove(&(view.start, view.end));
    }

    /// Reads messages until no mapping change of the process waits for one
    /// (`mm_changing`), for at most `bound`: for a uffd no view is
    /// registered with any more, so no new change can start.
    pub fn read_until_quiet(&self, uffd: &Userfaultfd, bound: std::time::Duration) {
        let deadline = std::time::Instant::now() + bound;
        loop {
            self.drain(uffd);
            if !matches!(uffd.mm_changing(), Ok(true)) || std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
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
