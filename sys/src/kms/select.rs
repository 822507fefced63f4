//! The pure decisions behind [`super::Kms`]: connector names, which mode to
//! drive, how large the plane is, which clips may be sent, what a refused
//! `SET_MASTER` means. No system calls, so they are tested on any host.

use std::path::Path;

use nix::errno::Errno;

use super::ClipRect;
use crate::{Result, SysError};

/// `DRM_MODE_FB_DIRTY_MAX_CLIPS`: the most clips DIRTYFB takes; the same cap
/// is kept for `FB_DAMAGE_CLIPS` so both paths see the same damage.
pub const MAX_CLIPS: usize = 256;

/// The kernel's connector name: type name, `-`, type id (`Virtual-1`,
/// `VGA-1`, `HDMI-A-2`), as in `/sys/class/drm/cardN-<name>`.
pub(super) fn connector_name(type_name: &str, type_id: u32) -> String {
    format!("{type_name}-{type_id}")
}

/// Index of the mode to drive an image of `width` × `height` with, among
/// `modes` given as `(width, height, preferred)` in the kernel's order
/// (preferred first, then larger first). The image is shown unscaled at
/// 0,0, and the primary planes of bochs-drm and virtio-gpu (and many
/// others) must cover the whole mode, so a mode larger than the image is
/// the last resort:
///
/// 1. a mode of exactly the image's size (the preferred one among equals);
/// 2. else the preferred mode if it fits inside the image (the image's
///    top-left mode-sized part is shown);
/// 3. else the largest mode that fits inside the image;
/// 4. else (the image is smaller than every mode) the smallest mode: the
///    plane then covers only the image, which drivers that let a primary
///    plane be smaller than the CRTC accept and the others refuse.
///
/// `None` when there are no modes.
pub(super) fn choose_mode(modes: &[(u32, u32, bool)], width: u32, height: u32) -> Option<usize> {
    let area = |i: usize| u64::from(modes[i].0) * u64::from(modes[i].1);
    let exact = |i: &usize| modes[*i].0 == width && modes[*i].1 == height;
    let fits = |i: &usize| modes[*i].0 <= width && modes[*i].1 <= height;
    let all = || 0..modes.len();
    all()
        .filter(exact)
        .find(|&i| modes[i].2)
        .or_else(|| all().find(exact))
        .or_else(|| all().find(|&i| modes[i].2 && fits(&i)))
        // max_by_key keeps the last maximum: reverse so the first listed wins.
        .or_else(|| all().rev().filter(fits).max_by_key(|&i| area(i)))
        .or_else(|| all().rev().min_by_key(|&i| area(i)))
}

/// Size of the plane (SRC and CRTC rectangles, both at 0,0, no scaling) that
/// shows an image of `image` size on a mode of `mode` size.
pub(super) fn plane_size(mode: (u32, u32), image: (u32, u32)) -> (u32, u32) {
    (mode.0.min(image.0), mode.1.min(image.1))
}

/// Checks what the caller sends as damage: at most [`MAX_CLIPS`], each
/// non-empty and inside the `fb_width` × `fb_height` framebuffer.
pub(super) fn validate_clips(clips: &[ClipRect], fb_width: u32, fb_height: u32) -> Result<()> {
    if clips.len() > MAX_CLIPS {
        return Err(SysError::Invalid(format!(
            "{} damage clips: the device takes at most {MAX_CLIPS} (DRM_MODE_FB_DIRTY_MAX_CLIPS); merge them first",
            clips.len()
        )));
    }
    for c in clips {
        let inside = c.x.checked_add(c.w).is_some_and(|x2| x2 <= fb_width)
            && c.y.checked_add(c.h).is_some_and(|y2| y2 <= fb_height);
        if c.w == 0 || c.h == 0 || !inside {
            return Err(SysError::Invalid(format!(
                "damage clip {}x{}+{}+{} is empty or outside the {fb_width}x{fb_height} framebuffer",
                c.w, c.h, c.x, c.y
            )));
        }
    }
    Ok(())
}

/// The message for a refused `DRM_IOCTL_SET_MASTER` on `path`.
pub(super) fn master_error(path: &Path, errno: Errno) -> String {
    let path = path.display();
    match errno {
        // Another file is master (kernels before 5.10 said EINVAL here too).
        Errno::EBUSY => format!(
            "DRM_IOCTL_SET_MASTER: EBUSY: another process (a compositor or display server) is DRM master of \
             {path}; cohmem cannot drive its display"
        ),
        Errno::EACCES | Errno::EPERM => format!(
            "DRM_IOCTL_SET_MASTER: {errno}: cohmem is not DRM master of {path} and may not take it (it lacks \
             CAP_SYS_ADMIN and was not master when it opened the node); another process (a compositor or display \
             server) probably holds it; cohmem cannot drive its display"
        ),
        Errno::EINVAL => format!(
            "DRM_IOCTL_SET_MASTER: EINVAL: {path} cannot make cohmem DRM master (a render node, a DRM lease, or, \
             before Linux 5.10, another process (a compositor or display server) is master); cohmem cannot drive \
             its display"
        ),
        e => format!(
            "DRM_IOCTL_SET_MASTER on {path}: {e} ({}); cohmem cannot drive its display",
            e.desc()
        ),
    }
}

/// The opaque twin of a format with alpha (same bytes, alpha ignored):
/// virtio-gpu's primary plane takes XRGB8888 only, so an ARGB8888 image is
/// scanned out as XRGB8888.
pub(super) fn opaque_twin(fourcc: u32) -> Option<u32> {
    use drm::buffer::DrmFourcc as F;
    let pairs = [
        (F::Argb8888, F::Xrgb8888),
        (F::Abgr8888, F::Xbgr8888),
        (F::Rgba8888, F::Rgbx8888),
        (F::Bgra8888, F::Bgrx8888),
        (F::Argb2101010, F::Xrgb2101010),
        (F::Abgr2101010, F::Xbgr2101010),
    ];
    pairs.iter().find(|(a, _)| *a as u32 == fourcc).map(|(_, x)| *x as u32)
}

/// A fourcc as its four characters (`XR24`), or hex when not printable.
pub(super) fn fourcc_name(fourcc: u32) -> String {
    let b = fourcc.to_le_bytes();
    if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        b.iter().map(|&c| c as char).collect::<String>().trim_end().to_string()
    } else {
        format!("{fourcc:#010x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connector_names_follow_the_kernel() {
        assert_eq!(connector_name("Virtual", 1), "Virtual-1");
        assert_eq!(connector_name("VGA", 1), "VGA-1");
        assert_eq!(connector_name("HDMI-A", 2), "HDMI-A-2");
        let iface = drm::control::connector::Interface::from(drm_ffi::DRM_MODE_CONNECTOR_DisplayPort);
        assert_eq!(connector_name(iface.as_str(), 3), "DP-3");
    }

    // bochs-drm without EDID: the DMT list, 1024x768 preferred (defx/defy).
    const BOCHS: &[(u32, u32, bool)] = &[
        (1024, 768, true),
        (1920, 1080, false),
        (1280, 800, false),
        (1280, 720, false),
        (1024, 768, false),
        (800, 600, false),
        (640, 480, false),
    ];

    #[test]
    fn an_image_of_a_mode_s_size_gets_that_mode() {
        assert_eq!(choose_mode(BOCHS, 1024, 768), Some(0), "the preferred one among equals");
        assert_eq!(choose_mode(BOCHS, 1280, 720), Some(3));
        assert_eq!(choose_mode(BOCHS, 640, 480), Some(6));
        let later_preferred = [(800, 600, false), (800, 600, true)];
        assert_eq!(choose_mode(&later_preferred, 800, 600), Some(1));
    }

    #[test]
    fn a_larger_image_gets_the_preferred_mode_if_it_fits_else_the_largest_that_fits() {
        assert_eq!(choose_mode(BOCHS, 1920, 1200), Some(0), "preferred 1024x768 fits");
        assert_eq!(choose_mode(BOCHS, 1000, 700), Some(5), "800x600: largest inside");
        assert_eq!(choose_mode(BOCHS, 1280, 760), Some(3), "1024x768 is 8 rows too tall");
        let no_pref = [(640, 480, false), (800, 600, false), (800, 600, false)];
        assert_eq!(choose_mode(&no_pref, 900, 900), Some(1), "first of equal areas");
    }

    #[test]
    fn a_smaller_image_than_every_mode_gets_the_smallest_mode() {
        assert_eq!(choose_mode(BOCHS, 320, 200), Some(6));
        assert_eq!(choose_mode(BOCHS, 2000, 100), Some(6), "fits no mode in height");
        assert_eq!(choose_mode(&[], 640, 480), None);
    }

    #[test]
    fn the_plane_is_the_smaller_of_mode_and_image() {
        assert_eq!(plane_size((1024, 768), (1920, 1080)), (1024, 768));
        assert_eq!(plane_size((1024, 768), (640, 480)), (640, 480));
        assert_eq!(plane_size((1024, 768), (2000, 100)), (1024, 100));
    }

    fn clip(x: u32, y: u32, w: u32, h: u32) -> ClipRect {
        ClipRect { x, y, w, h }
    }

    #[test]
    fn clips_must_be_few_non_empty_and_inside() {
        assert!(validate_clips(&[], 10, 10).is_ok());
        assert!(validate_clips(&[clip(0, 0, 10, 10), clip(9, 9, 1, 1)], 10, 10).is_ok());
        assert!(validate_clips(&[clip(0, 0, 0, 1)], 10, 10).is_err());
        assert!(validate_clips(&[clip(0, 0, 1, 0)], 10, 10).is_err());
        assert!(validate_clips(&[clip(5, 0, 6, 1)], 10, 10).is_err());
        assert!(validate_clips(&[clip(0, 10, 1, 1)], 10, 10).is_err());
        assert!(
            validate_clips(&[clip(u32::MAX, 0, 2, 1)], 10, 10).is_err(),
            "no overflow"
        );
        let many = vec![clip(0, 0, 1, 1); MAX_CLIPS];
        assert!(validate_clips(&many, 10, 10).is_ok());
        let too_many = vec![clip(0, 0, 1, 1); MAX_CLIPS + 1];
        let e = validate_clips(&too_many, 10, 10).unwrap_err().to_string();
        assert!(e.contains("257") && e.contains("256"), "{e}");
    }

    #[test]
    fn a_refused_master_says_who_holds_the_device() {
        let p = Path::new("/dev/dri/card0");
        let busy = master_error(p, Errno::EBUSY);
        assert!(busy.contains("another process (a compositor or display server) is DRM master of /dev/dri/card0"));
        assert!(busy.contains("cohmem cannot drive its display"));
        for e in [Errno::EACCES, Errno::EPERM] {
            let m = master_error(p, e);
            assert!(m.contains("CAP_SYS_ADMIN") && m.contains("/dev/dri/card0"), "{m}");
        }
        assert!(master_error(p, Errno::EINVAL).contains("render node"));
        assert!(master_error(p, Errno::ENODEV).contains("ENODEV"));
    }

    #[test]
    fn formats_with_alpha_have_opaque_twins() {
        use drm::buffer::DrmFourcc as F;
        assert_eq!(opaque_twin(F::Argb8888 as u32), Some(F::Xrgb8888 as u32));
        assert_eq!(opaque_twin(F::Xrgb8888 as u32), None);
        assert_eq!(fourcc_name(F::Xrgb8888 as u32), "XR24");
        assert_eq!(fourcc_name(F::Rgb565 as u32), "RG16");
        assert_eq!(fourcc_name(1), "0x00000001");
    }
}
