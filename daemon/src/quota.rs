//! Per-user quotas and the uid allow-list (DESIGN.md §5.4; issue 5 "limits"
//! and "access control").
//!
//! Every connection and every live BO is charged to the uid that the kernel
//! reports for the connection's peer (SO_PEERCRED), so one user's flood can
//! never exhaust the daemon for another. A charge is an RAII value: it is
//! released when the connection closes or the BO dies, however that
//! happens (a client killed mid-request included). A refusal names the limit
//! and its value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::locking::lock;

/// The per-user limits (configurable: `--max-*-per-user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLimits {
    /// Open connections per uid.
    pub connections: u32,
    /// Live BOs created or adopted by one uid.
    pub bos: u64,
    /// Bytes of those BOs.
    pub bytes: u64,
}

impl Default for UserLimits {
    fn default() -> Self {
        Self {
            connections: 256,
            bos: 16_384,
            bytes: 32 << 30,
        }
    }
}

/// A refused charge: which limit, its value, and the uid's usage.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum QuotaError {
    /// Too many connections.
    #[error("uid {uid} already has {used} connections open (limit max_connections_per_user = {limit})")]
    Connections {
        /// The uid.
        uid: u32,
        /// Connections open.
        used: u32,
        /// The limit.
        limit: u32,
    },
    /// Too many BOs.
    #[error("uid {uid} already holds {used} BOs (limit max_bos_per_user = {limit})")]
    Bos {
        /// The uid.
        uid: u32,
        /// BOs held.
        used: u64,
        /// The limit.
        limit: u64,
    },
    /// Too many bytes.
    #[error("uid {uid} holds {used} bytes of BOs; {asked} more would exceed the limit max_bytes_per_user = {limit}")]
    Bytes {
        /// The uid.
        uid: u32,
        /// Bytes held.
        used: u64,
        /// Bytes asked for.
        asked: u64,
        /// The limit.
        limit: u64,
    },
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    connections: u32,
    bos: u64,
    bytes: u64,
}

/// What every uid currently holds.
#[derive(Debug, Default)]
pub struct QuotaTable {
    limits: UserLimits,
    users: Arc<Mutex<HashMap<u32, Usage>>>,
}

/// A connection slot of a uid; released on drop.
#[derive(Debug)]
#[must_use = "the slot is released when dropped"]
pub struct ConnectionCharge {
    uid: u32,
    users: Arc<Mutex<HashMap<u32, Usage>>>,
}

/// One BO's charge to a uid; released on drop (when the BO dies).
#[derive(Debug)]
#[must_use = "the charge is released when dropped"]
pub struct BoCharge {
    uid: u32,
    bytes: u64,
    /// The uid's byte limit, for [`BoCharge::charge_more`].
    limit_bytes: u64,
    users: Arc<Mutex<HashMap<u32, Usage>>>,
}

/// Bytes a BO keeps beyond its own for its uid (its shadow copy), counted
/// against the uid's byte limit; released on drop.
#[derive(Debug)]
pub struct ExtraCharge {
    uid: u32,
    bytes: u64,
    users: Arc<Mutex<HashMap<u32, Usage>>>,
}

impl BoCharge {
    /// Charges `bytes` more to the BO's uid (no BO counted), within the
    /// uid's byte limit.
    pub fn charge_more(&self, bytes: u64) -> Result<ExtraCharge, QuotaError> {
        let mut users = lock(&self.users);
        let u = users.entry(self.uid).or_default();
        if u.bytes.saturating_add(bytes) > self.limit_bytes {
            return Err(QuotaError::Bytes {
                uid: self.uid,
                used: u.bytes,
                asked: bytes,
                limit: self.limit_bytes,
            });
        }
        u.bytes += bytes;
        Ok(ExtraCharge {
            uid: self.uid,
            bytes,
            users: self.users.clone(),
        })
    }
}

impl Drop for ExtraCharge {
    fn drop(&mut self) {
        let bytes = self.bytes;
        release(&self.users, self.uid, |u| u.bytes = u.bytes.saturating_sub(bytes));
    }
}

impl QuotaTable {
    /// A table enforcing `limits`.
    pub fn new(limits: UserLimits) -> Self {
        Self {
            limits,
            users: Arc::default(),
        }
    }

    /// The limits enforced.
    pub fn limits(&self) -> UserLimits {
        self.limits
    }

    /// Charges one connection to `uid`.
    pub fn connect(&self, uid: u32) -> Result<ConnectionCharge, QuotaError> {
        let mut users = lock(&self.users);
        let u = users.entry(uid).or_default();
        if u.connections >= self.limits.connections {
            return Err(QuotaError::Connections {
                uid,
                used: u.connections,
                limit: self.limits.connections,
            });
        }
        u.connections += 1;
        Ok(ConnectionCharge {
            uid,
            users: self.users.clone(),
        })
    }

    /// Charges a BO of `bytes` to `uid`.
    pub fn charge_bo(&self, uid: u32, bytes: u64) -> Result<BoCharge, QuotaError> {
        let mut users = lock(&self.users);
        let u = users.entry(uid).or_default();
        if u.bos >= self.limits.bos {
            return Err(QuotaError::Bos {
                uid,
                used: u.bos,
                limit: self.limits.bos,
            });
        }
        if u.bytes.saturating_add(bytes) > self.limits.bytes {
            return Err(QuotaError::Bytes {
                uid,
                used: u.bytes,
                asked: bytes,
                limit: self.limits.bytes,
            });
        }
        u.bos += 1;
        u.bytes += bytes;
        Ok(BoCharge {
            uid,
            bytes,
            limit_bytes: self.limits.bytes,
            users: self.users.clone(),
        })
    }

    /// (connections, BOs, bytes) charged to `uid` now.
    pub fn usage(&self, uid: u32) -> (u32, u64, u64) {
        lock(&self.users)
            .get(&uid)
            .map_or((0, 0, 0), |u| (u.connections, u.bos, u.bytes))
    }
}

/// Drops a uid's entry once it holds nothing, so the table does not grow
/// with every uid ever seen.
fn release(users: &Mutex<HashMap<u32, Usage>>, uid: u32, change: impl FnOnce(&mut Usage)) {
    let mut users = lock(users);
    if let Some(u) = users.get_mut(&uid) {
        change(u);
        if u.connections == 0 && u.bos == 0 {
            users.remove(&uid);
        }
    }
}

impl Drop for ConnectionCharge {
    fn drop(&mut self) {
        release(&self.users, self.uid, |u| {
            u.connections = u.connections.saturating_sub(1)
        });
    }
}

impl Drop for BoCharge {
    fn drop(&mut self) {
        let bytes = self.bytes;
        release(&self.users, self.uid, |u| {
            u.bos = u.bos.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(bytes);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced_and_released_on_drop() {
        let t = QuotaTable::new(UserLimits {
            connections: 2,
            bos: 2,
            bytes: 100,
        });
        let c1 = t.connect(7).expect("first");
        let _c2 = t.connect(7).expect("second");
        assert!(matches!(
            t.connect(7),
            Err(QuotaError::Connections { used: 2, limit: 2, .. })
        ));
        // Another uid is not affected.
        let _other = t.connect(8).expect("other uid");
        drop(c1);
        let _c3 = t.connect(7).expect("slot released");

        let b1 = t.charge_bo(7, 60).expect("first BO");
        let e = t.charge_bo(7, 41).expect_err("bytes");
        assert_eq!(
            e.to_string(),
            "uid 7 holds 60 bytes of BOs; 41 more would exceed the limit max_bytes_per_user = 100"
        );
        let _b2 = t.charge_bo(7, 40).expect("fits exactly");
        assert!(matches!(
            t.charge_bo(7, 0),
            Err(QuotaError::Bos { used: 2, limit: 2, .. })
        ));
        drop(b1);
        assert_eq!(t.usage(7), (2, 1, 40));
    }

    #[test]
    fn an_idle_uid_is_forgotten() {
        let t = QuotaTable::new(UserLimits::default());
        drop(t.charge_bo(5, 10).expect("charge"));
        drop(t.connect(5).expect("connect"));
        assert!(lock(&t.users).is_empty());
    }
}
