//! Write-tracking mechanisms behind one trait.
//!
//! A [`WriteTracker`] belongs to one client process's mm subscription and observes
//! the views that process maps: `uffd-async`
//! (userfaultfd WP_ASYNC + `PAGEMAP_SCAN`): the MKWRITE-like
//! "protect, then harvest-and-re-protect" cycle of vmwgfx with the kernel
//! doing the fault handling; and `uffd-sync`, where the faults come to the
//! daemon (`faults`), the true MKWRITE analogue; `full` (no
//! tracking, everything is written); `explicit` (the client reports its
//! damage); and `soft-dirty` (clear_refs + pagemap bit 55, with the process's
//! writers quiesced around every read-and-clear). A process's mechanism can be
//! switched while its views stay mapped (`switch`).
//!
//! One file per mechanism: [`uffd_async`], [`uffd_sync`], [`soft_dirty`],
//! and [`untracked`] (`full`, `explicit`); range helpers in [`ranges`].
//! The mechanisms sit at the bottom of the tracking layer: they see the
//! tracked process's views only through [`ProcessViews`].

use std::ops::Range;

use cohmem_proto::Mechanism;
use cohmem_sys::uffd::Userfaultfd;
use cohmem_sys::SysError;
use nix::errno::Errno;
use thiserror::Error;

pub mod map_events;
mod ranges;
pub mod soft_dirty;
mod split_protect;
pub mod uffd_async;
pub mod uffd_sync;
pub mod untracked;

pub use soft_dirty::SoftDirtyTracker;
pub use uffd_async::UffdAsyncTracker;
pub use uffd_sync::UffdSyncTracker;
pub use untracked::{ExplicitTracker, FullTracker};

/// Why a tracker operation failed.
#[derive(Debug, Error)]
pub enum TrackError {
    /// The client process is gone (its mm has exited).
    #[error("client process has exited")]
    Gone,
    /// Part of the view is no longer mapped and registered where it was
    /// announced (unmapped, moved or replaced behind the daemon's back).
    #[error("{missing} of the view's bytes are no longer mapped and registered at its address")]
    Moved {
        /// Bytes of the view found missing.
        missing: u64,
    },
    /// The view cannot be tracked as announced.
    #[error("{0}")]
    BadView(String),
    /// A kernel call failed.
    #[error("{0}")]
    Sys(SysError),
}

impl From<SysError> for TrackError {
    fn from(e: SysError) -> Self {
        match e.errno() {
            Some(Errno::ESRCH) => Self::Gone,
            _ => Self::Sys(e),
        }
    }
}

/// Where the tracked process's views are, as a mechanism may ask: soft-dirty
/// clears the bits of the whole process, so each of its cycles reads every
/// view. Implemented by the mm subscription (`mm`), which sits
/// above the mechanisms and hands itself over with
/// [`WriteTracker::bind_mm`].
pub trait ProcessViews: Send + Sync {
    /// Address ranges of the process's live views.
    fn view_ranges(&self) -> Vec<Range<u64>>;
    /// The address range of the live view containing `addr`, if any.
    fn view_range_at(&self, addr: u64) -> Option<Range<u64>>;
}

/// Observes writes to the views of one client process.
pub trait WriteTracker: Send + Sync {
    /// Which mechanism this is.
    fn mechanism(&self) -> Mechanism;
    /// Whether collection is exact under concurrent writers.
    fn exact(&self) -> bool;
    /// Checks a newly announced view and write-protects it, so that only
    /// writes from now on are reported.
    fn attach_view(&self, range: Range<u64>) -> Result<(), TrackError>;
    /// Appends the address ranges written since they were last protected
    /// and re-protects them (protect before collect: one atomic step per
    /// page). Afterwards the whole range is protected.
    fn harvest(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError>;
    /// [`WriteTracker::harvest`] of `range` except the sorted, disjoint
    /// address ranges `skip`, which are neither reported nor re-protected
    /// (hot ranges the caller compares instead). May harvest all of
    /// `range` (the default).
    fn harvest_except(
        &self,
        range: Range<u64>,
        _skip: &[Range<u64>],
        out: &mut Vec<Range<u64>>,
    ) -> Result<(), TrackError> {
        self.harvest(range, out)
    }
    /// Appends the address ranges written since they were last protected,
    /// changing nothing.
    fn peek(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError>;
    /// Write-protects a range again (the MKWRITE re-protect).
    fn protect(&self, range: Range<u64>) -> Result<(), TrackError>;
    /// Write-protects a whole view, failing with [`TrackError::Moved`] if any
    /// part of it is no longer registered where it was announced. Eager
    /// mechanisms append to `unprotected` the pages they found writable
    /// before protecting them (the known-writable ones, and any the daemon
    /// did not know of: see [`WriteTracker::verify`]).
    fn protect_all(&self, range: Range<u64>, _unprotected: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        self.protect(range)
    }
    /// Proves that `range` is still mapped and registered where it was
    /// announced, leaving the pages of `writable` (known to be unprotected)
    /// as they are. Used by eager mechanisms, whose writes the daemon
    /// otherwise only learns about from faults. A page outside `writable`
    /// found writable anyway (a mapping put back and registered again behind
    /// the library has no protection) may have been written without a
    /// fault: it is appended to `unrecorded`, for the caller to record as
    /// written, and protected.
    fn verify(
        &self,
        _range: Range<u64>,
        _writable: &[Range<u64>],
        _unrecorded: &mut Vec<Range<u64>>,
    ) -> Result<(), TrackError> {
        Ok(())
    }
    /// Gives the mechanism its subscription (mm-wide mechanisms need the
    /// process's other views).
    fn bind_mm(&self, _mm: std::sync::Weak<dyn ProcessViews>) {}
    /// Called by the fault service for each fault; true when the mechanism
    /// parks it (it wakes the writer itself later).
    fn park(&self, _addr: u64) -> bool {
        false
    }
    /// True when the kernel resolves write faults itself and the daemon
    /// learns of writes only by harvesting (PAGETABLE is then the cheaper
    /// method: `policy::MethodPolicy::Auto`).
    fn harvests_only(&self) -> bool {
        false
    }
    /// True when the views of this mechanism may be left unprotected while
    /// a BO's writes are dense (`policy::DensePolicy`).
    fn can_pause(&self) -> bool {
        false
    }
    /// Write-unprotects a range (tracking paused for dense writes: every
    /// sync uploads the whole BO meanwhile).
    fn unprotect(&self, _range: Range<u64>) -> Result<(), TrackError> {
        Ok(())
    }
    /// Lifts tracking from a range the daemon forgets, waking any thread
    /// waiting in a fault there (eager mechanisms; best effort).
    fn release(&self, _range: Range<u64>) {}
    /// True when every sync must treat the whole BO as written (`full`).
    fn whole_bo(&self) -> bool {
        false
    }
    /// True when first writes are delivered as faults and recorded by the
    /// fault service as they happen (the view's writable set is then the
    /// truth, and `harvest`/`peek` are not used to find writes).
    fn eager(&self) -> bool {
        false
    }
    /// The userfaultfd whose messages the fault service reads, if this
    /// mechanism has one: a synchronous one's faults, or uffd-async's
    /// mapping changes ([`WriteTracker::drain_map_events`]).
    fn fault_uffd(&self) -> Option<&Userfaultfd> {
        None
    }
    /// Reads the mapping-change messages of [`WriteTracker::fault_uffd`]
    /// itself (uffd-async with events); true when it did, and the fault
    /// service then reads no faults from that uffd.
    fn drain_map_events(&self) -> bool {
        false
    }
    /// Forgets what it keeps about a view the daemon no longer tracks.
    fn forget(&self, _range: Range<u64>) {}
    /// Called by a mechanism switch once no view is registered with this
    /// tracker's uffd any more: reads the mapping changes still in flight
    /// on it (uffd-async with events), which nobody reads afterwards,
    /// waiting for them at most `wait`.
    fn release_map_events(&self, _wait: std::time::Duration) {}
    /// The userfaultfd the process's views are registered with under this
    /// mechanism, if any: a mechanism switch (`switch`) moves every
    /// view from the old one to the new one.
    fn registration_uffd(&self) -> Option<&Userfaultfd> {
        self.fault_uffd()
    }
}
