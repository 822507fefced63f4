//! The BO store: every live BO, found again by the identity of its memfd
//! (possessing the memfd is the only way to import a BO; no global name).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use cohmem_sys::memfd::FileIdentity;

use super::{lock, Bo};

/// All live BOs, findable by memfd identity.
#[derive(Default)]
pub struct BoStore {
    by_identity: Mutex<HashMap<FileIdentity, Weak<Bo>>>,
    next_id: AtomicU64,
}

impl BoStore {
    /// A fresh daemon-wide BO id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Makes sure ids handed out later are above `id` (a BO adopted with
    /// the id it had before a restart).
    pub fn reserve_id(&self, id: u64) {
        self.next_id.fetch_max(id, Ordering::Relaxed);
    }

    /// Registers a new BO.
    pub fn insert(&self, bo: &Arc<Bo>) {
        let mut map = lock(&self.by_identity);
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(bo.identity, Arc::downgrade(bo));
    }

    /// The live BO whose memfd has this identity.
    pub fn find(&self, identity: FileIdentity) -> Option<Arc<Bo>> {
        lock(&self.by_identity).get(&identity).and_then(Weak::upgrade)
    }

    /// All live BOs.
    pub fn all(&self) -> Vec<Arc<Bo>> {
        let mut v: Vec<Arc<Bo>> = lock(&self.by_identity).values().filter_map(Weak::upgrade).collect();
        v.sort_by_key(|b| b.id);
        v
    }
}
