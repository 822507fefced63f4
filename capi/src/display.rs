//! The daemon's display output: putting an image BO on screen
//! (`cohmem_bo_show`, `cohmem_bo_hide`) and where it went
//! (`cohmem_shown`, `cohmem_damage_path`).

use std::ffi::{c_char, c_int};

use crate::bo::cohmem_bo;
use crate::error::{fail, invalid, COHMEM_OK};

/// How each sync's rectangles reach the display device.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cohmem_damage_path {
    /// Not shown.
    COHMEM_DAMAGE_PATH_NONE = 0,
    /// Atomic commits with FB_DAMAGE_CLIPS.
    COHMEM_DAMAGE_PATH_ATOMIC = 1,
    /// The DIRTYFB ioctl.
    COHMEM_DAMAGE_PATH_DIRTYFB = 2,
}

const _: () = {
    assert!(cohmem_damage_path::COHMEM_DAMAGE_PATH_NONE as u16 == cohmem_client::DAMAGE_PATH_NONE);
    assert!(cohmem_damage_path::COHMEM_DAMAGE_PATH_ATOMIC as u16 == cohmem_client::DAMAGE_PATH_ATOMIC);
    assert!(cohmem_damage_path::COHMEM_DAMAGE_PATH_DIRTYFB as u16 == cohmem_client::DAMAGE_PATH_DIRTYFB);
};

/// Where `cohmem_bo_show` put the image.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_shown {
    /// The connector ("Virtual-1", "VGA-1"), NUL-terminated (cut to 31
    /// bytes).
    pub connector: [c_char; 32],
    /// Width of the mode set on it.
    pub mode_width: u32,
    /// Height of the mode set on it.
    pub mode_height: u32,
    /// How each sync's rectangles reach the device.
    pub damage_path: cohmem_damage_path,
}

/// Puts image BO `bo` on the daemon's display output (`cohmemd --display
/// CONNECTOR|auto` on a DRM device): its GPU image becomes the scanout
/// framebuffer, and after every sync the rectangles it changed are
/// committed to the device as damage. Make the image the mode's size
/// (`out->mode_width` × `out->mode_height`); a larger one shows its
/// top-left part. `out` is NULL or receives where it went.
///
/// Errors: `COHMEM_E_DAEMON` with `COHMEM_DAEMON_E_UNSUPPORTED` when the
/// daemon has no display output, `COHMEM_DAEMON_E_PERMISSION_DENIED` when
/// another process (a compositor) is DRM master of the device,
/// `COHMEM_DAEMON_E_INVALID_ARGUMENT` for a byte BO.
///
/// # Safety
/// `bo` is NULL or a live BO; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_show(bo: *const cohmem_bo, out: *mut cohmem_shown) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_show: bo is NULL");
    };
    match bo.0.show() {
        Ok(s) => {
            let mut connector = [0 as c_char; 32];
            for (slot, byte) in connector.iter_mut().zip(s.connector.bytes().take(31)) {
                *slot = byte as c_char;
            }
            let damage_path = match s.damage_path {
                cohmem_client::DAMAGE_PATH_ATOMIC => cohmem_damage_path::COHMEM_DAMAGE_PATH_ATOMIC,
                cohmem_client::DAMAGE_PATH_DIRTYFB => cohmem_damage_path::COHMEM_DAMAGE_PATH_DIRTYFB,
                _ => cohmem_damage_path::COHMEM_DAMAGE_PATH_NONE,
            };
            // SAFETY: `out` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { out.as_mut() } {
                *slot = cohmem_shown {
                    connector,
                    mode_width: s.mode.0,
                    mode_height: s.mode.1,
                    damage_path,
                };
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// Takes `bo` off the display output after committing what is pending.
///
/// # Safety
/// `bo` is NULL or a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_hide(bo: *const cohmem_bo) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_hide: bo is NULL");
    };
    match bo.0.hide() {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}
