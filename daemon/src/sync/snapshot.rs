//! SNAPSHOT: an exact copy of a BO under seed 004's quiesce (writers
//! blocked or checked), each attempt a seed 000 read section against
//! structural changes with the same exclusive fallback as SYNC.

use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use cohmem_proto::SnapshotReport;
use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::Memfd;

use super::{SyncEngine, SyncError, MAX_SYNC_COLLISIONS};
use crate::bo::{lock, Bo, View};
use crate::gpu::GpuError;

/// Releases the parked writers however a snapshot attempt ends (even by a
/// panic), so a quiesce can never hold them forever.
struct Release<'e, 'b>(&'e SyncEngine<'e>, &'b Bo);

impl Drop for Release<'_, '_> {
    fn drop(&mut self) {
        self.0.release_quiesce(self.1);
    }
}

/// What the check of a quiesced copy found, over the live views.
struct Check {
    /// Views whose writers were blocked (uffd-sync).
    blocked: u32,
    /// Views whose writers could not be blocked, checked instead.
    unblocked: u32,
    /// Whether every unblocked view could be checked.
    checkable: bool,
    /// Addresses written through unblocked views since the quiesce.
    written: Vec<Range<u64>>,
}

impl Check {
    /// Checks the views of a quiesced copy (the writers are still parked).
    fn of(views: &[Arc<View>]) -> Self {
        let mut written = Vec::new();
        let (mut blocked, mut unblocked, mut checkable) = (0, 0, true);
        for view in views.iter().filter(|v| !v.dead.load(Ordering::Relaxed)) {
            let t = view.mm.tracker();
            if t.eager() {
                blocked += 1;
            } else {
                unblocked += 1;
                checkable &= !t.whole_bo() && t.mechanism() != cohmem_proto::Mechanism::Explicit;
                if t.peek(view.range(), &mut written).is_err() {
                    checkable = false;
                }
            }
        }
        Check {
            blocked,
            unblocked,
            checkable,
            written,
        }
    }
}

impl SyncEngine<'_> {
    /// An exact copy of the BO (seed 004's quiesce): every view is harvested
    /// and write-protected; uffd-sync writers are then blocked (their faults
    /// parked) while the BO is copied; uffd-async writers cannot be blocked,
    /// so the copy is checked afterwards and retried if they wrote. Bounded
    /// by `bound`; the parked writers are always released.
    ///
    /// The quiesce holds only the views present when it starts: a view
    /// mapped during the copy was never write-protected by it, and one
    /// unmapped during it is no longer checked, so writes through either can
    /// tear the copy unseen. An attempt is therefore a read section against
    /// structural changes (seed 000, as in SYNC): one that overlapped a
    /// change is not exact and is retried; after [`MAX_SYNC_COLLISIONS`]
    /// such attempts, the next blocks structural changes for its duration
    /// (a MAP or UNMAP then waits, at most `bound`).
    pub fn snapshot(&self, bo: &Bo, bound: std::time::Duration) -> Result<(Memfd, SnapshotReport), SyncError> {
        let _serial = lock(&bo.sync_lock);
        let deadline = Instant::now() + bound;
        let mut report = SnapshotReport {
            size: bo.size,
            image: bo.image,
            ..SnapshotReport::default()
        };
        let mut collisions = 0u32;
        loop {
            report.attempts += 1;
            let exclusive = collisions >= MAX_SYNC_COLLISIONS;
            // Declared before the release: dropped after it (lock order:
            // structural changes, then the state lock).
            let _blocked = exclusive.then(|| bo.block_structural_changes());
            let seq = bo.structure_seq();
            let release = Release(self, bo);
            let views = {
                let mut st = bo.state();
                let views = bo.views();
                st.quiesced = true;
                // Protect before collect: afterwards every write either
                // blocks (uffd-sync) or shows up in the check below.
                self.harvest_all(bo, &mut st, &views, true);
                Self::hot_compare(bo, &mut st);
                views
            };
            let copied = Self::copy_bo(bo);
            let Check {
                blocked,
                unblocked,
                checkable,
                written,
            } = Check::of(&views);
            drop(release);
            let memfd = copied?;
            let stable = exclusive || (seq % 2 == 0 && bo.structure_seq() == seq);
            if !stable {
                collisions += 1;
                bo.counters.sync_retries.fetch_add(1, Ordering::Relaxed);
            }
            report.blocked_views = blocked;
            report.unblocked_views = unblocked;
            report.exact = stable && checkable && written.is_empty();
            if report.exact || !checkable || Instant::now() >= deadline {
                return Ok((memfd, report));
            }
        }
    }

    /// Ends a quiesce: resolves every parked fault (recording it).
    fn release_quiesce(&self, bo: &Bo) {
        let mut st = bo.state();
        st.quiesced = false;
        for (view, page) in std::mem::take(&mut st.deferred) {
            crate::faults::resolve_one(&mut st, &view, page);
        }
    }

    /// Copies the BO into a new memfd sealed against any change.
    fn copy_bo(bo: &Bo) -> Result<Memfd, SyncError> {
        let memfd = Memfd::create(
            &format!("cohmem-snapshot-{}", bo.id),
            bo.size,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
        .map_err(GpuError::from)?;
        {
            let dst = SharedMapping::map(memfd.as_fd(), bo.size, 0, true).map_err(GpuError::from)?;
            bo.mapping
                .copy_to(0, &dst, 0, bo.size as usize)
                .map_err(GpuError::from)?;
        }
        memfd
            .add_seals(libc::F_SEAL_WRITE | libc::F_SEAL_SEAL)
            .map_err(GpuError::from)?;
        Ok(memfd)
    }
}
