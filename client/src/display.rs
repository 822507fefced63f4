//! The daemon's display output: putting an image BO on screen
//! ([`Bo::show`], [`Bo::hide`], and [`Connection::show`] for operators)
//! and what a SHOW did ([`Shown`]).

use cohmem_proto::{Reply, Request};

use crate::bo::Bo;
use crate::connection::Connection;
use crate::error::{unexpected, ClientError};
use crate::handle::BoInner;

/// What [`Bo::show`] did: where the image is on screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The connector (`Virtual-1`, `VGA-1`); empty after [`Bo::hide`].
    pub connector: String,
    /// The mode set on it, width and height.
    pub mode: (u32, u32),
    /// How each sync's rectangles reach the device: atomic commits with
    /// FB_DAMAGE_CLIPS ([`DAMAGE_PATH_ATOMIC`](cohmem_proto::DAMAGE_PATH_ATOMIC))
    /// or DIRTYFB ([`DAMAGE_PATH_DIRTYFB`](cohmem_proto::DAMAGE_PATH_DIRTYFB)).
    pub damage_path: u16,
}

/// The [`Shown`] of a SHOW reply.
fn shown(reply: Reply) -> Result<Shown, ClientError> {
    match reply {
        Reply::Shown {
            connector,
            mode_width,
            mode_height,
            damage_path,
        } => Ok(Shown {
            connector,
            mode: (mode_width, mode_height),
            damage_path,
        }),
        other => Err(unexpected("SHOW", &other)),
    }
}

/// SHOW of `bo` by its id on the current session (a reconnect renumbers
/// ids).
fn show_bo(bo: &BoInner, hide: bool) -> Result<Shown, ClientError> {
    let flags = if hide { cohmem_proto::SHOW_HIDE } else { 0 };
    let build = || Request::Show { id: bo.id(), flags };
    shown(bo.conn.call_with(build, &[])?.0)
}

impl Bo {
    /// Puts this image BO on the daemon's display output (`cohmemd
    /// --display CONNECTOR|auto` on a DRM device): its GPU image becomes the
    /// scanout framebuffer, and after every [`Bo::sync`] the rectangles it
    /// changed are committed to the device as damage (FB_DAMAGE_CLIPS or
    /// DIRTYFB), so what the app writes appears on displays that keep
    /// their own copy (virtio-gpu, USB and BMC displays). Make the image
    /// the mode's size ([`Shown::mode`]); a larger one shows its top-left
    /// part.
    ///
    /// # Errors
    ///
    /// `Unsupported` when the daemon has no display output,
    /// `PermissionDenied` when another process (a compositor) is DRM master
    /// of the device, `InvalidArgument` for a byte BO.
    pub fn show(&self) -> Result<Shown, ClientError> {
        show_bo(&self.inner, false)
    }

    /// Takes this BO off the display after committing what is pending.
    ///
    /// # Errors
    ///
    /// As [`Bo::show`].
    pub fn hide(&self) -> Result<(), ClientError> {
        show_bo(&self.inner, true).map(|_| ())
    }
}

impl Connection {
    /// Puts image BO `id` (daemon-wide, as in STATS) on the daemon's
    /// display output (`cohmemd --display`), or takes it off with `hide`;
    /// see [`Bo::show`]. For operators (`cohmemctl show`): root, or a
    /// connection holding the BO, may do this. Ids are renumbered when the
    /// daemon restarts: an app uses [`Bo::show`] and [`Bo::hide`].
    ///
    /// # Errors
    ///
    /// `NoSuchBo` for an unknown id, `PermissionDenied` for a BO this
    /// connection does not hold (unless root); as [`Bo::show`].
    pub fn show(&self, id: u64, hide: bool) -> Result<Shown, ClientError> {
        let flags = if hide { cohmem_proto::SHOW_HIDE } else { 0 };
        shown(self.inner.call(&Request::Show { id, flags }, &[])?.0)
    }
}
