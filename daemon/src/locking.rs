//! Poison-tolerant locking, shared by every layer of the daemon.
//!
//! A panic while a daemon lock is held (a bug, never a client's doing) must
//! not take every later request down with it: the data behind the daemon's
//! mutexes is kept valid at every step, so a poisoned lock is simply taken
//! over. The lowest module of the daemon, so that any layer may use it.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering from poisoning (a panicked holder left valid data).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
