//! Coherent scanout (issue 17; DESIGN.md §8): an image BO's GPU image on
//! a KMS output, with the rectangles each sync changed sent to the device
//! as damage.
//!
//! On drivers that keep their own copy of the framebuffer (virtio-gpu with
//! `blob=false`, USB and BMC displays) writing into the mapped dumb buffer
//! never reaches the screen: only an atomic commit with `FB_DAMAGE_CLIPS`, a
//! page flip or DIRTYFB moves pixels (research/display.md §3). This is the
//! userspace counterpart of fbdev deferred I/O, with exact rectangles on
//! demand instead of one bounding box after a fixed 50 ms, and of vmwgfx's
//! coherent KMS framebuffers. The output is opened at start (`--display`)
//! on the DRM backend's own device (a framebuffer is made of the dumb
//! buffer's GEM handle); a client puts one of its image BOs on it with SHOW.
//! After every SYNC of the shown BO its rectangles are committed, at once or
//! paced ([`pacing`]); an unmap, a close or a hide flush what is pending.

pub mod pacing;

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cohmem_proto::{Rect, DAMAGE_PATH_ATOMIC, DAMAGE_PATH_DIRTYFB, DAMAGE_PATH_NONE};
use cohmem_sys::kms::{ClipRect, DamageKind, Framebuffer, Kms, Output};
use thiserror::Error;

use crate::bo::Bo;
use crate::gpu::GpuBackend;
use crate::resource::Resource;
use pacing::{Decision, Pacer};

pub use crate::config::DisplayConfig;

/// Why a display request failed.
#[derive(Debug, Error)]
pub enum DisplayError {
    /// The daemon runs without `--display`.
    #[error("this daemon has no display output (start cohmemd with --display CONNECTOR|auto on a DRM device)")]
    NotConfigured,
    /// The backend has no KMS device.
    #[error("the display output needs the DRM backend (--gpu drm:/dev/dri/cardN); {0} has no KMS device")]
    NoKmsDevice(String),
    /// Another process is DRM master (a compositor owns the device).
    #[error("{0}")]
    NotMaster(String),
    /// The BO is no image BO (or its resource is not on the KMS device).
    #[error("{0}")]
    NotShowable(String),
    /// Another user's BO is on the display.
    #[error("{0}")]
    Taken(String),
    /// A KMS call failed.
    #[error("{0}")]
    Kms(#[from] cohmem_sys::SysError),
}

/// Whether `uid` may replace or hide what `shown_by` put on the display:
/// the same user, or root; an empty display is anyone's. The display is one
/// for all clients, and a client must not take it from another user's.
pub fn may_take_over(shown_by: Option<u32>, uid: u32) -> bool {
    uid == 0 || shown_by.is_none_or(|owner| owner == uid)
}

/// What SHOW did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownInfo {
    /// The connector's name.
    pub connector: String,
    /// The mode set on it.
    pub mode: (u32, u32),
    /// [`DAMAGE_PATH_ATOMIC`] or [`DAMAGE_PATH_DIRTYFB`].
    pub damage_path: u16,
}

/// Display counters (METRICS).
#[derive(Debug, Default)]
pub struct DisplayCounters {
    /// Damage commits sent to the device.
    pub commits: std::sync::atomic::AtomicU64,
    /// Clip rectangles in them.
    pub clips: std::sync::atomic::AtomicU64,
    /// Commits that failed (their rectangles are kept for the next one).
    pub failures: std::sync::atomic::AtomicU64,
    /// Nanoseconds spent in damage commits.
    pub commit_ns: std::sync::atomic::AtomicU64,
}

/// The BO on screen.
struct Shown {
    /// Kept alive while shown: the output keeps its last picture even
    /// after every client handle closed.
    bo: Arc<Bo>,
    /// Keeps the GEM handle alive as long as the framebuffer.
    _resource: Arc<Resource>,
    output: Output,
    /// Dropped before `_resource` (RMFB before the dumb buffer goes).
    fb: Framebuffer,
    path: u16,
    /// The user whose request put it there.
    uid: u32,
}

struct State {
    shown: Option<Shown>,
    pacer: Pacer,
    stop: bool,
}

/// The display output of a daemon started with `--display`.
pub struct Display {
    kms: Kms,
    config: DisplayConfig,
    /// Why the daemon is not DRM master (SHOW then fails with it; syncing
    /// goes on).
    master_error: Option<String>,
    state: Mutex<State>,
    wake: Condvar,
    /// Counters.
    pub counters: DisplayCounters,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn clips(rects: &[Rect]) -> Vec<ClipRect> {
    rects
        .iter()
        .map(|r| ClipRect {
            x: r.x,
            y: r.y,
            w: r.w,
            h: r.h,
        })
        .collect()
}

impl Display {
    /// Opens the output on the backend's KMS device and becomes DRM
    /// master; a master refusal is kept (and logged), not fatal: SHOW then
    /// says why, and everything else goes on. Starts the pacing thread
    /// when an interval is set.
    pub fn open(gpu: &dyn GpuBackend, config: DisplayConfig) -> Result<Arc<Self>, DisplayError> {
        let device = gpu.kms_device().ok_or_else(|| DisplayError::NoKmsDevice(gpu.name()))?;
        let kms = Kms::new(device)?;
        let master_error = kms.acquire_master().err().map(|e| e.to_string());
        if let Some(why) = &master_error {
            tracing::warn!(error = %why, "display output unavailable: not DRM master");
        }
        let interval = config.interval;
        let display = Arc::new(Self {
            kms,
            config,
            master_error,
            state: Mutex::new(State {
                shown: None,
                pacer: Pacer::new(interval),
                stop: false,
            }),
            wake: Condvar::new(),
            counters: DisplayCounters::default(),
        });
        if interval.is_some() {
            let weak = Arc::downgrade(&display);
            std::thread::Builder::new()
                .name("cohmem-display".into())
                .spawn(move || pace(weak))
                .map_err(|e| cohmem_sys::SysError::Invalid(format!("starting the display pacing thread: {e}")))?;
        }
        Ok(display)
    }

    /// The connectors of the device, one line each (for errors and
    /// operators).
    pub fn connectors(&self) -> String {
        match self.kms.connectors() {
            Ok(list) => list.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            Err(e) => format!("(connectors unreadable: {e})"),
        }
    }

    /// Puts image BO `bo` on the output (replacing what was shown): a
    /// framebuffer of its GPU image, a modeset, and everything pending
    /// for the previous BO dropped (it is no longer visible). `uid` (the
    /// requester) may replace only its own BO, unless it is root.
    pub fn show(&self, bo: Arc<Bo>, uid: u32) -> Result<ShownInfo, DisplayError> {
        if let Some(why) = &self.master_error {
            return Err(DisplayError::NotMaster(why.clone()));
        }
        let image = bo
            .image
            .ok_or_else(|| DisplayError::NotShowable(format!("BO {} is no image BO (CREATE_IMAGE)", bo.id)))?;
        let resource = bo
            .state()
            .resources
            .first()
            .cloned()
            .flatten()
            .filter(|r| r.image().is_some())
            .ok_or_else(|| DisplayError::NotShowable(format!("BO {} has no image resource", bo.id)))?;
        let handle = resource.gpu.gem_handle().ok_or_else(|| {
            DisplayError::NotShowable(format!("BO {}'s image is not a buffer of the KMS device", bo.id))
        })?;
        let output = self
            .kms
            .find_output(self.config.connector.as_deref(), image.width, image.height)?;
        let format = output.scanout_format(image.fourcc)?;
        let offset = u32::try_from(image.offset)
            .map_err(|_| DisplayError::NotShowable(format!("image offset {} is past 4 GiB", image.offset)))?;
        let fb = self
            .kms
            .add_framebuffer(handle, image.width, image.height, format, image.pitch, offset)?;
        let mut st = lock(&self.state);
        self.check_owner(&st, uid)?;
        self.kms.show(&output, &fb)?;
        let path = if output.has_damage_clips() {
            DAMAGE_PATH_ATOMIC
        } else {
            DAMAGE_PATH_DIRTYFB
        };
        let info = ShownInfo {
            connector: output.name().to_string(),
            mode: output.mode_size(),
            damage_path: path,
        };
        // The modeset showed the whole image: what was pending for the
        // previous BO is moot, and the pacing interval starts now.
        let _ = st.pacer.flush();
        st.pacer.committed(Instant::now());
        tracing::info!(bo = bo.id, connector = %info.connector, mode = ?info.mode, path, "BO shown");
        st.shown = Some(Shown {
            bo,
            _resource: resource,
            output,
            fb,
            path,
            uid,
        });
        Ok(info)
    }

    fn check_owner(&self, st: &State, uid: u32) -> Result<(), DisplayError> {
        let shown_by = st.shown.as_ref().map(|s| s.uid);
        if may_take_over(shown_by, uid) {
            return Ok(());
        }
        let id = st.shown.as_ref().map_or(0, |s| s.bo.id);
        Err(DisplayError::Taken(format!(
            "the display shows BO {id} of another user (uid {}); only that user or root may replace or hide it",
            shown_by.unwrap_or(0)
        )))
    }

    /// Takes BO `id` off the output after committing what is pending;
    /// `false` if it was not shown. As [`Display::show`], only the user
    /// who showed it, or root, may.
    pub fn hide(&self, id: u64, uid: u32) -> Result<bool, DisplayError> {
        let mut st = lock(&self.state);
        if st.shown.as_ref().is_none_or(|s| s.bo.id != id) {
            return Ok(false);
        }
        self.check_owner(&st, uid)?;
        self.commit_pending(&mut st);
        // Dropping the framebuffer turns the plane off.
        st.shown = None;
        Ok(true)
    }

    /// Whether BO `id` is the one shown.
    pub fn is_shown(&self, id: u64) -> bool {
        lock(&self.state).shown.as_ref().is_some_and(|s| s.bo.id == id)
    }

    /// The rectangles a SYNC of `bo` changed on its GPU copy: committed
    /// now, or kept for the pacing thread. Returns once the device has
    /// them (a blocking commit) or they are kept.
    pub fn damaged(&self, bo: &Bo, rects: &[Rect]) {
        let mut st = lock(&self.state);
        if st.shown.as_ref().is_none_or(|s| s.bo.id != bo.id) {
            return;
        }
        match st.pacer.offer(Instant::now(), rects) {
            Decision::CommitNow(r) => self.commit(&mut st, &r),
            Decision::Deferred(_) => self.wake.notify_one(),
            Decision::Nothing => {}
        }
    }

    /// Commits what is pending for BO `id` now (an unmap or a close).
    pub fn flush(&self, id: u64) {
        let mut st = lock(&self.state);
        if st.shown.as_ref().is_some_and(|s| s.bo.id == id) {
            self.commit_pending(&mut st);
        }
    }

    /// What SHOW reports of the current output.
    pub fn status(&self) -> Option<ShownInfo> {
        lock(&self.state).shown.as_ref().map(|s| ShownInfo {
            connector: s.output.name().to_string(),
            mode: s.output.mode_size(),
            damage_path: s.path,
        })
    }

    fn commit_pending(&self, st: &mut State) {
        if let Some(r) = st.pacer.flush() {
            self.commit(st, &r);
        }
    }

    /// One damage commit; a failure keeps the rectangles for the next.
    fn commit(&self, st: &mut State, rects: &[Rect]) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(shown) = st.shown.as_ref() else {
            return;
        };
        let t0 = Instant::now();
        match self.kms.damage(&shown.output, &shown.fb, &clips(rects)) {
            Ok(kind) => {
                let now = Instant::now();
                st.pacer.committed(now);
                self.counters.commits.fetch_add(1, Relaxed);
                self.counters.clips.fetch_add(rects.len() as u64, Relaxed);
                self.counters
                    .commit_ns
                    .fetch_add(now.duration_since(t0).as_nanos() as u64, Relaxed);
                if kind == DamageKind::Direct {
                    tracing::trace!("the device scans the buffer out directly");
                }
            }
            Err(e) => {
                self.counters.failures.fetch_add(1, Relaxed);
                st.pacer.put_back(rects);
                crate::limited!(warn, "display commit failed", 0u64, error = %e, "display damage commit failed; rectangles kept");
            }
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        lock(&self.state).stop = true;
        self.wake.notify_all();
    }
}

/// The pacing thread: commits deferred rectangles when their interval
/// has elapsed; ends with the display.
fn pace(display: std::sync::Weak<Display>) {
    loop {
        let Some(d) = display.upgrade() else {
            return;
        };
        let mut st = lock(&d.state);
        if st.stop {
            return;
        }
        if let Some(r) = st.pacer.due(Instant::now()) {
            d.commit(&mut st, &r);
            continue;
        }
        // Wake at the deadline, on new damage, or every 100 ms to notice
        // the display's end.
        let wait = st
            .pacer
            .deadline()
            .map_or(Duration::from_millis(100), |at| {
                at.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(100));
        let (guard, _) = d.wake.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner());
        drop(guard);
        drop(d);
    }
}

/// The wire form of an unused output.
pub fn hidden_info() -> ShownInfo {
    ShownInfo {
        connector: String::new(),
        mode: (0, 0),
        damage_path: DAMAGE_PATH_NONE,
    }
}

#[cfg(test)]
mod tests {
    use super::may_take_over;

    #[test]
    fn only_the_same_user_or_root_takes_the_display_over() {
        assert!(may_take_over(None, 1000), "an empty display is anyone's");
        assert!(may_take_over(Some(1000), 1000), "the same user");
        assert!(may_take_over(Some(1000), 0), "root");
        assert!(!may_take_over(Some(1000), 1001), "another user");
        assert!(!may_take_over(Some(0), 1001), "root's BO is root's");
    }
}
