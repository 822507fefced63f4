//! Kernel modesetting through drm-rs: an image's dumb buffer shown on a
//! display, and the rectangles each sync changed sent to the device.
//!
//! [`Kms`] wraps an open [`DrmDevice`] (a primary node, `/dev/dri/cardN`):
//! it enables the universal-planes and atomic client caps where the driver
//! accepts them, takes DRM master ([`Kms::acquire_master`]) and finds an
//! [`Output`] (connector, CRTC, primary plane, mode). A [`Framebuffer`]
//! (`ADDFB2`, removed on drop) is put on the output by [`Kms::show`] (an
//! atomic modeset, or legacy `SETCRTC`), and after each change
//! [`Kms::damage`] tells the device which rectangles changed:
//!
//! - an atomic commit of the plane's `FB_ID` (the same framebuffer) with an
//!   `FB_DAMAGE_CLIPS` blob, where the plane has that property (virtio-gpu);
//! - else `DIRTYFB` with the clips;
//! - where `DIRTYFB` answers `ENOSYS` the framebuffer has no dirty hook: the
//!   display reads the buffer itself (bochs-drm scans out of VRAM), and
//!   nothing more is sent for that framebuffer.
//!
//! Every call is blocking: when it returns, the kernel has run the commit
//! (no `NONBLOCK`); virtio-gpu with `blob=false` queues the transfer and
//! flush to the host and notifies it without waiting for the host's answer.
//! Every modesetting call needs DRM master.

mod output;
mod select;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use drm::buffer::{DrmFourcc, DrmModifier, PlanarBuffer};
use drm::control::{
    self, atomic::AtomicModeReq, framebuffer, plane, property, AtomicCommitFlags, Device as ControlDevice, FbCmd2Flags,
};
use drm::{ClientCapability, Device as _};
use nix::errno::Errno;

use crate::drm::DrmDevice;
use crate::{Result, SysError};

pub use output::{ConnectorInfo, Output};
pub use select::MAX_CLIPS;

impl ControlDevice for DrmDevice {}

fn os(op: &'static str, e: io::Error) -> SysError {
    SysError::os(op, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Runs a DRM ioctl again while it is interrupted (`EINTR`, `EAGAIN`), as
/// libdrm's `drmIoctl` does.
fn retry<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => continue,
            other => return other,
        }
    }
}

/// A damaged rectangle in framebuffer pixels: `w` × `h` at `x`,`y` (the
/// daemon's `Rect`); non-empty and inside the framebuffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipRect {
    /// First column.
    pub x: u32,
    /// First row.
    pub y: u32,
    /// Width in pixels.
    pub w: u32,
    /// Height in rows.
    pub h: u32,
}

/// Which path [`Kms::damage`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// No clips: nothing was sent.
    Nothing,
    /// An atomic commit with `FB_DAMAGE_CLIPS` ran.
    DamageClips,
    /// `DIRTYFB` with the clips ran.
    DirtyFb,
    /// Nothing to send: the framebuffer has no dirty hook (`DIRTYFB` said
    /// `ENOSYS` once), the display reads the buffer directly.
    Direct,
}

/// A KMS framebuffer (`ADDFB2`); removed (`RMFB`) when dropped, which turns
/// off a plane still showing it.
#[derive(Debug)]
pub struct Framebuffer {
    device: Arc<DrmDevice>,
    handle: framebuffer::Handle,
    width: u32,
    height: u32,
    /// `DIRTYFB` said `ENOSYS`: no dirty hook, the display reads the buffer.
    direct: AtomicBool,
}

impl Framebuffer {
    /// The framebuffer id.
    pub fn id(&self) -> u32 {
        self.handle.into()
    }

    /// Width × height in pixels.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}

impl Drop for Framebuffer {
    fn drop(&mut self) {
        let _ = self.device.destroy_framebuffer(self.handle);
    }
}

/// One linear plane of a GEM object, as drm-rs's `add_planar_framebuffer`
/// wants it.
struct LinearImage {
    handle: drm::buffer::Handle,
    size: (u32, u32),
    format: DrmFourcc,
    pitch: u32,
    offset: u32,
}

impl PlanarBuffer for LinearImage {
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn format(&self) -> DrmFourcc {
        self.format
    }
    fn modifier(&self) -> Option<DrmModifier> {
        None
    }
    fn pitches(&self) -> [u32; 4] {
        [self.pitch, 0, 0, 0]
    }
    fn handles(&self) -> [Option<drm::buffer::Handle>; 4] {
        [Some(self.handle), None, None, None]
    }
    fn offsets(&self) -> [u32; 4] {
        [self.offset, 0, 0, 0]
    }
}

/// Modesetting on one DRM device.
#[derive(Debug)]
pub struct Kms {
    device: Arc<DrmDevice>,
    atomic: bool,
}

impl Kms {
    /// Enables universal planes and, where the driver accepts it, atomic
    /// modesetting on `device` (client caps of its file, shared with every
    /// user of the same [`DrmDevice`]); fails on a device without
    /// modesetting (a render node, vgem).
    pub fn new(device: Arc<DrmDevice>) -> Result<Self> {
        // Atomic implies universal planes; on its own it makes primary planes visible to legacy clients.
        let _ = device.set_client_capability(ClientCapability::UniversalPlanes, true);
        let atomic = device.set_client_capability(ClientCapability::Atomic, true).is_ok();
        device.resource_handles().map_err(|e| {
            SysError::Invalid(format!(
                "{} has no modesetting (DRM_IOCTL_MODE_GETRESOURCES: {e})",
                device.path().display()
            ))
        })?;
        Ok(Self { device, atomic })
    }

    /// Atomic modesetting is in use (else legacy `SETCRTC` and `DIRTYFB`).
    pub fn atomic(&self) -> bool {
        self.atomic
    }

    /// The device.
    pub fn device(&self) -> &Arc<DrmDevice> {
        &self.device
    }

    /// Becomes DRM master (`DRM_IOCTL_SET_MASTER`; a no-op when already
    /// master: the first opener of a node without master is made master).
    /// The error says plainly when another process, a compositor or display
    /// server, holds the device.
    pub fn acquire_master(&self) -> Result<()> {
        self.device.acquire_master_lock().map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            SysError::Invalid(select::master_error(self.device.path(), errno))
        })
    }

    /// Stops being DRM master (`DRM_IOCTL_DROP_MASTER`), so a compositor can
    /// take the device. Every modesetting call then fails with `EACCES` until
    /// [`Kms::acquire_master`].
    pub fn release_master(&self) -> Result<()> {
        self.device
            .release_master_lock()
            .map_err(|e| os("DRM_IOCTL_DROP_MASTER", e))
    }

    /// Adds a framebuffer (`ADDFB2`, linear, no modifier) over GEM object
    /// `gem_handle` (a dumb buffer of this device): `width` × `height` of
    /// `fourcc` (a DRM fourcc: see [`Output::scanout_format`]), rows `pitch`
    /// bytes apart from byte `offset`.
    pub fn add_framebuffer(
        &self,
        gem_handle: u32,
        width: u32,
        height: u32,
        fourcc: u32,
        pitch: u32,
        offset: u32,
    ) -> Result<Framebuffer> {
        let format = DrmFourcc::try_from(fourcc)
            .map_err(|_| SysError::Invalid(format!("unknown DRM fourcc {}", select::fourcc_name(fourcc))))?;
        let handle = control::from_u32(gem_handle).ok_or_else(|| SysError::Invalid("GEM handle 0".into()))?;
        let image = LinearImage {
            handle,
            size: (width, height),
            format,
            pitch,
            offset,
        };
        let fb = self
            .device
            .add_planar_framebuffer(&image, FbCmd2Flags::empty())
            .map_err(|e| os("DRM_IOCTL_MODE_ADDFB2", e))?;
        Ok(Framebuffer {
            device: self.device.clone(),
            handle: fb,
            width,
            height,
            direct: AtomicBool::new(false),
        })
    }

    /// An error of a modesetting ioctl; `EACCES` means this file is not (or
    /// no longer) DRM master.
    fn kms_error(&self, op: &'static str, e: io::Error) -> SysError {
        match e.raw_os_error() {
            Some(libc::EACCES) => SysError::Invalid(format!(
                "{op}: EACCES: cohmem is not DRM master of {} (another process, a compositor or display server, \
                 may hold it)",
                self.device.path().display()
            )),
            _ => os(op, e),
        }
    }

    /// Shows `fb` on `output` from 0,0, unscaled: an atomic modeset (CRTC
    /// `MODE_ID` + `ACTIVE`, connector `CRTC_ID`, plane `FB_ID`, `CRTC_ID`,
    /// SRC and CRTC rectangles of the smaller of mode and framebuffer,
    /// `ALLOW_MODESET`), or legacy `SETCRTC`, which needs a framebuffer at
    /// least the mode's size. Blocking; also uploads the whole framebuffer on
    /// drivers that keep a copy (a new framebuffer on a plane is a full
    /// update).
    pub fn show(&self, output: &Output, fb: &Framebuffer) -> Result<()> {
        let (mw, mh) = output.mode_size();
        let Some(p) = &output.props else {
            if fb.width < mw || fb.height < mh {
                return Err(SysError::Invalid(format!(
                    "a {}x{} image cannot be shown on {} with legacy modesetting: SETCRTC needs a framebuffer of \
                     at least the mode's {mw}x{mh}",
                    fb.width, fb.height, output.name
                )));
            }
            let set = || {
                self.device.set_crtc(
                    output.crtc,
                    Some(fb.handle),
                    (0, 0),
                    &[output.connector],
                    Some(output.mode),
                )
            };
            return retry(set).map_err(|e| self.kms_error("DRM_IOCTL_MODE_SETCRTC", e));
        };
        let (w, h) = select::plane_size((mw, mh), fb.size());
        let blob = self
            .device
            .create_property_blob(&output.mode)
            .map_err(|e| os("DRM_IOCTL_MODE_CREATEPROPBLOB", e))?;
        let mut req = AtomicModeReq::new();
        req.add_property(
            output.connector,
            p.conn_crtc_id,
            property::Value::CRTC(Some(output.crtc)),
        );
        req.add_property(output.crtc, p.mode_id, blob);
        req.add_property(output.crtc, p.active, property::Value::Boolean(true));
        let plane = output.plane.expect("atomic outputs have a plane");
        req.add_property(plane, p.fb_id, property::Value::Framebuffer(Some(fb.handle)));
        req.add_property(plane, p.crtc_id, property::Value::CRTC(Some(output.crtc)));
        for (prop, v) in p.src.iter().zip([0, 0, u64::from(w) << 16, u64::from(h) << 16]) {
            req.add_property(plane, *prop, property::Value::UnsignedRange(v));
        }
        for (prop, v) in p.dst.iter().zip([0, 0, u64::from(w), u64::from(h)]) {
            req.add_property(plane, *prop, property::Value::UnsignedRange(v));
        }
        let done = retry(|| self.device.atomic_commit(AtomicCommitFlags::ALLOW_MODESET, req.clone()));
        if let Some(id) = blob.as_blob() {
            // The CRTC state holds its own reference to the mode.
            let _ = self.device.destroy_property_blob(id);
        }
        done.map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) if (w, h) != (mw, mh) => SysError::Invalid(format!(
                "DRM_IOCTL_MODE_ATOMIC: EINVAL: {} refused a {w}x{h} plane on its {mw}x{mh} mode: its primary plane \
                 must cover the whole mode (bochs-drm, virtio-gpu); use an image of at least {mw}x{mh}",
                output.name
            )),
            _ => self.kms_error("DRM_IOCTL_MODE_ATOMIC", e),
        })
    }

    /// Tells the device that `clips` of `fb`, shown on `output` by
    /// [`Kms::show`], changed: an atomic commit of the plane's `FB_ID` (the
    /// same framebuffer) and an `FB_DAMAGE_CLIPS` blob (destroyed after the
    /// commit) where the plane has that property, else `DIRTYFB` with the
    /// clips; see [`DamageKind`]. An empty list sends nothing; more than
    /// [`MAX_CLIPS`], or a clip outside the framebuffer, is refused (merge
    /// first). Blocking, no `NONBLOCK`: when it returns, the kernel has run
    /// the plane update (on virtio-gpu the transfer and flush are queued to
    /// the host and the host notified).
    pub fn damage(&self, output: &Output, fb: &Framebuffer, clips: &[ClipRect]) -> Result<DamageKind> {
        select::validate_clips(clips, fb.width, fb.height)?;
        if clips.is_empty() {
            return Ok(DamageKind::Nothing);
        }
        if let (Some(p), Some(plane)) = (&output.props, output.plane) {
            if let Some(damage_clips) = p.damage_clips {
                self.damage_clips(plane, p.fb_id, damage_clips, fb, clips)?;
                return Ok(DamageKind::DamageClips);
            }
        }
        if fb.direct.load(Ordering::Relaxed) {
            return Ok(DamageKind::Direct);
        }
        let mut rects = Vec::with_capacity(clips.len());
        for c in clips {
            let v = [c.x, c.y, c.x + c.w, c.y + c.h].map(u16::try_from);
            let [Ok(x1), Ok(y1), Ok(x2), Ok(y2)] = v else {
                return Err(SysError::Invalid(format!(
                    "DIRTYFB clips are 16-bit: {c:?} does not fit"
                )));
            };
            rects.push(control::ClipRect::new(x1, y1, x2, y2));
        }
        match retry(|| self.device.dirty_framebuffer(fb.handle, &rects)) {
            Ok(()) => Ok(DamageKind::DirtyFb),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                fb.direct.store(true, Ordering::Relaxed);
                Ok(DamageKind::Direct)
            }
            Err(e) => Err(self.kms_error("DRM_IOCTL_MODE_DIRTYFB", e)),
        }
    }

    fn damage_clips(
        &self,
        plane: plane::Handle,
        fb_id: property::Handle,
        damage_clips: property::Handle,
        fb: &Framebuffer,
        clips: &[ClipRect],
    ) -> Result<()> {
        // Inside the framebuffer (validated), whose sides fit an i32.
        let rects: Vec<drm_ffi::drm_mode_rect> = clips
            .iter()
            .map(|c| drm_ffi::drm_mode_rect {
                x1: c.x as i32,
                y1: c.y as i32,
                x2: (c.x + c.w) as i32,
                y2: (c.y + c.h) as i32,
            })
            .collect();
        let blob = self
            .device
            .create_property_blob(rects.as_slice())
            .map_err(|e| os("DRM_IOCTL_MODE_CREATEPROPBLOB", e))?;
        let mut req = AtomicModeReq::new();
        req.add_property(plane, fb_id, property::Value::Framebuffer(Some(fb.handle)));
        req.add_property(plane, damage_clips, blob);
        let done = retry(|| self.device.atomic_commit(AtomicCommitFlags::empty(), req.clone()));
        if let Some(id) = blob.as_blob() {
            let _ = self.device.destroy_property_blob(id);
        }
        done.map_err(|e| self.kms_error("DRM_IOCTL_MODE_ATOMIC", e))
    }
}
