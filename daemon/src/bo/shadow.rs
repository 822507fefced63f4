//! The shadow copy of a BO under the `shadow` policy (issue 19): the bytes
//! the GPU resources last received, kept by the daemon the way a VNC server
//! keeps its shadow surface (QEMU's VNC server, TigerVNC;
//! `shared/research/display.md` §2). A SYNC compares the BO with it and
//! uploads what differs; every upload of the BO first refreshes the shadow
//! from the BO and then copies from the shadow, so the GPU always holds
//! exactly the shadow's bytes for the pages it received (a write that puts
//! back a page's old bytes between the compare and the copy cannot be
//! missed).

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::Memfd;

/// Largest BO the daemon keeps a shadow for: the shadow doubles the BO's
/// memory in the daemon. A larger BO under the `shadow` policy is uploaded
/// whole at every sync instead, as under `full`.
pub const MAX_SHADOW_BYTES: u64 = 256 << 20;

use crate::quota::{BoCharge, ExtraCharge};

/// Most bytes of shadows the daemon keeps for BOs it chose to compare by
/// itself (`TrackingPolicy::shadow_max_bytes`), over all clients: beyond
/// it, small BOs are tracked as before. Shadows an operator asked for with
/// the `shadow` policy are bounded by the BO quotas instead.
pub const AUTO_SHADOW_BUDGET: u64 = 64 << 20;

/// Bytes of automatic shadows in use (against [`AUTO_SHADOW_BUDGET`]).
static AUTO_SHADOW_BYTES: AtomicU64 = AtomicU64::new(0);

/// A daemon-private copy of a BO's bytes, page for page.
#[derive(Debug)]
pub struct Shadow {
    /// Keeps the copy's memory; the mapping is how it is used.
    _memfd: Memfd,
    /// The copy, mapped read-write, the BO's size.
    pub map: SharedMapping,
    /// Bytes charged to [`AUTO_SHADOW_BUDGET`], returned on drop.
    budgeted: AtomicU64,
    /// The operator-asked shadow's bytes, charged to the BO's uid.
    _quota: Option<ExtraCharge>,
}

impl Shadow {
    /// A zero-filled shadow of `size` bytes for BO `id` under the `shadow`
    /// policy, its bytes charged to the BO's uid (`charge`): `None` over
    /// [`MAX_SHADOW_BYTES`], over the uid's byte quota, without a charge to
    /// extend, or when memory for it cannot be had.
    pub fn create(id: u64, size: u64, charge: Option<&BoCharge>) -> Option<Self> {
        if size > MAX_SHADOW_BYTES {
            return None;
        }
        let quota = match charge.map(|c| c.charge_more(size)) {
            Some(Ok(extra)) => extra,
            Some(Err(e)) => {
                crate::limited!(info, "no shadow copy", id, bo = id, error = %e, "no shadow copy: the BO is uploaded whole at each sync");
                return None;
            }
            None => return None,
        };
        let mut made = Self::make(id, size, 0)?;
        made._quota = Some(quota);
        Some(made)
    }

    /// A shadow the daemon chose for a small BO, or `None` when
    /// [`AUTO_SHADOW_BUDGET`] is spent or memory cannot be had.
    pub fn create_automatic(id: u64, size: u64) -> Option<Self> {
        let charged = AUTO_SHADOW_BYTES.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            (used + size <= AUTO_SHADOW_BUDGET).then_some(used + size)
        });
        if charged.is_err() {
            return None;
        }
        let made = Self::make(id, size, size);
        if made.is_none() {
            AUTO_SHADOW_BYTES.fetch_sub(size, Ordering::AcqRel);
        }
        made
    }

    /// A BO-sized shadow of which only some pages will be written (hot
    /// ranges, `super::HotPages`): nothing charged until
    /// [`Shadow::reserve`].
    pub fn create_sparse(id: u64, size: u64) -> Option<Self> {
        Self::make(id, size, 0)
    }

    /// Charges `bytes` more of a sparse shadow to [`AUTO_SHADOW_BUDGET`];
    /// false (nothing charged) when the budget is spent.
    pub fn reserve(&self, bytes: u64) -> bool {
        let charged = AUTO_SHADOW_BYTES.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            (used + bytes <= AUTO_SHADOW_BUDGET).then_some(used + bytes)
        });
        if charged.is_ok() {
            self.budgeted.fetch_add(bytes, Ordering::AcqRel);
        }
        charged.is_ok()
    }

    fn make(id: u64, size: u64, budgeted: u64) -> Option<Self> {
        let made = Memfd::create(&format!("cohmem-shadow-{id}"), size, 0)
            .and_then(|memfd| SharedMapping::map(memfd.as_fd(), size, 0, true).map(|map| (memfd, map)));
        match made {
            Ok((memfd, map)) => Some(Self {
                _memfd: memfd,
                map,
                budgeted: AtomicU64::new(budgeted),
                _quota: None,
            }),
            Err(e) => {
                tracing::warn!(bo = id, error = %e, "no shadow copy");
                None
            }
        }
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        let budgeted = *self.budgeted.get_mut();
        if budgeted > 0 {
            AUTO_SHADOW_BYTES.fetch_sub(budgeted, Ordering::AcqRel);
        }
    }
}
