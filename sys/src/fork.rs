//! Telling, in one atomic load, whether this process is a forked child of
//! the process that made an object.
//!
//! `fork` copies a process's Rust values but not everything they stand
//! for: a mapping made `MADV_DONTFORK` is absent in the child, and a
//! socket or userfaultfd is shared with the parent (using it acts on the
//! parent's session or address space). Objects record the [`ForkEpoch`]
//! they were made in; a `pthread_atfork` child handler advances the epoch,
//! so a check costs no system call (`getpid` on every store into a mapping
//! would).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static EPOCH: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

extern "C" fn advance_in_child() {
    // Async-signal-safe: one atomic add, no allocation, no lock.
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// The fork generation an object was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkEpoch(u64);

impl ForkEpoch {
    /// The current generation (registers the fork handler on first use).
    pub fn now() -> Self {
        REGISTER.call_once(|| {
            // SAFETY: registers a handler with no preconditions; it only
            // touches a static atomic. A failure (ENOMEM) leaves the epoch
            // still, and the callers' pid checks still apply.
            let _ = unsafe { libc::pthread_atfork(None, None, Some(advance_in_child)) };
        });
        Self(EPOCH.load(Ordering::Relaxed))
    }

    /// True in a process forked (directly or not) after this epoch.
    pub fn forked_since(self) -> bool {
        EPOCH.load(Ordering::Relaxed) != self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_changes_in_a_forked_child_only() {
        let epoch = ForkEpoch::now();
        assert!(!epoch.forked_since());
        // SAFETY: the child only reads an atomic and exits with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = if epoch.forked_since() { 0 } else { 1 };
                // SAFETY: _exit ends the child without running the
                // parent's destructors or atexit handlers.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
                assert!(!epoch.forked_since());
            }
        }
    }
}
