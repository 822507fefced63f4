//! Background upload (issue 6, "beyond the baselines"): with
//! `--background-upload-us N` a thread syncs every BO that has views every
//! N µs, so that the pages a client wrote are harvested and uploaded while
//! it is still writing, and its own SYNC finds little or nothing left.
//!
//! It runs the ordinary sync (the same harvest-and-re-protect before copy,
//! seed 000's read section, the same per-BO serialisation), so no write is
//! lost; it only skips a BO whose sync is already running. A client's SYNC
//! still guarantees that everything written before it was sent is in the
//! GPU copy when it returns; it reports only the pages it uploaded itself.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::server::Daemon;

/// Starts the background thread; it stops when the daemon is dropped.
pub fn start(daemon: &Arc<Daemon>, interval: Duration) -> std::io::Result<()> {
    let weak: Weak<Daemon> = Arc::downgrade(daemon);
    std::thread::Builder::new()
        .name("cohmem-background".into())
        .spawn(move || run(&weak, interval))?;
    tracing::info!(?interval, "background upload on");
    Ok(())
}

fn run(daemon: &Weak<Daemon>, interval: Duration) {
    loop {
        std::thread::sleep(interval);
        let Some(d) = daemon.upgrade() else {
            return;
        };
        for bo in d.bos.all() {
            if bo.view_count() == 0 {
                continue;
            }
            // Tracking paused for dense writes: every sync uploads the
            // whole BO, so a background pass would only copy it all again
            // and again; the client's SYNC does it once (and probes).
            if bo.state().tracker.as_ref().is_some_and(|t| t.paused.is_some()) {
                continue;
            }
            let engine = d.sync_engine();
            d.bypass.note(&engine, &bo);
            match engine.sync_if_idle(&bo) {
                Some(Ok(report)) => {
                    d.background.syncs.fetch_add(1, Ordering::Relaxed);
                    d.background.pages.fetch_add(report.pages, Ordering::Relaxed);
                }
                Some(Err(e)) => crate::limited!(
                    warn,
                    "background upload failed",
                    bo.id,
                    bo = bo.id,
                    error = %e,
                    "background upload failed (pages kept dirty)"
                ),
                None => {}
            }
        }
    }
}
