//! Threads that never run the application's signal handlers.
//!
//! A library's own threads (the client's lifeline watcher) live in an
//! application that may install handlers without `SA_RESTART` and direct
//! signals at any thread. A signal a library thread does not expect can only
//! interrupt it, so its threads start with every signal blocked: the kernel
//! then delivers process-directed signals to the application's threads, and
//! thread-directed ones stay pending on ours, harmless.

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};

/// Spawns a thread named `name` with every signal blocked from its first
/// instruction (the mask is inherited at `clone`, so there is no window in
/// which a handler could run on it).
pub fn spawn_with_signals_blocked<F, T>(name: &str, f: F) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let mut previous = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut previous))
        .map_err(std::io::Error::from)?;
    let spawned = std::thread::Builder::new().name(name.into()).spawn(f);
    // The caller's own mask is restored whatever happened.
    let restored = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
    let handle = spawned?;
    restored.map_err(std::io::Error::from)?;
    Ok(handle)
}

/// The signals blocked in the calling thread.
pub fn blocked_now() -> std::io::Result<SigSet> {
    let mut now = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut now)).map_err(std::io::Error::from)?;
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn the_thread_blocks_everything_and_the_caller_keeps_its_mask() {
        let before = blocked_now().unwrap();
        let inside = spawn_with_signals_blocked("t", || blocked_now().unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(
            inside.contains(Signal::SIGALRM) && inside.contains(Signal::SIGUSR1) && inside.contains(Signal::SIGINT)
        );
        let after = blocked_now().unwrap();
        assert_eq!(before.contains(Signal::SIGALRM), after.contains(Signal::SIGALRM));
        assert_eq!(before.contains(Signal::SIGUSR1), after.contains(Signal::SIGUSR1));
    }
}
