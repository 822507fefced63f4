//! BOs kept across a daemon restart in the service manager's file
//! descriptor store (issue 5 "restart without data loss"; DESIGN.md §5.5).
//!
//! Under systemd (`$NOTIFY_SOCKET` set, `FileDescriptorStoreMax=` in the
//! unit) every BO's memfd is handed to the store as `cohmem-bo.<id>.<uid>`
//! when the BO is created or adopted — and its GPU buffer as
//! `cohmem-gpu.<id>.<pitch>` where the backend can take one back (DRM dumb
//! buffers, as dma-bufs) — and removed from it when the BO dies. After a
//! restart (crash included) systemd passes the stored fds back
//! (`$LISTEN_FDS`, `$LISTEN_FDNAMES`); the daemon adopts each BO as BO `<id>`
//! charged to `<uid>`, with its stored GPU buffer (so whoever imported that
//! buffer keeps seeing it updated) or a new one, and every page dirty
//! (nobody tracked the writes made while it was down). A client that
//! re-imports its memfd then finds the same BO — same id, shared with every
//! other process that imported it — instead of a new one. Adopted BOs that
//! no client re-imports within the grace period are released.
//!
//! An image BO's memfd is stored as
//! `cohmem-img.<id>.<uid>.<width>.<height>.<fourcc>.<pitch>.<offset>` and
//! adopted as that image (a new device image, which must come out with the
//! same layout; else the BO is adopted as a byte BO and the refusal logged).

use std::os::fd::AsFd;
use std::sync::Arc;

use cohmem_sys::memfd::Memfd;
use cohmem_sys::sdnotify;

use crate::bo::Bo;
use crate::server::Daemon;

const PREFIX: &str = "cohmem-bo";
const GPU_PREFIX: &str = "cohmem-gpu";
const IMAGE_PREFIX: &str = "cohmem-img";

/// A BO's entries in the fd store; removed from the store on drop.
#[derive(Debug)]
pub struct StoredBo {
    names: Vec<String>,
}

impl Drop for StoredBo {
    fn drop(&mut self) {
        for name in &self.names {
            if let Err(e) = sdnotify::remove_stored(name) {
                tracing::warn!(%name, error = %e, "could not remove a BO from the fd store");
            }
        }
    }
}

fn name(id: u64, uid: u32) -> String {
    format!("{PREFIX}.{id}.{uid}")
}

/// Hands BO `bo`'s memfd to the fd store (when there is one and the
/// daemon is configured to use it); the BO holds the entry for its life.
pub fn store(daemon: &Daemon, bo: &Bo, uid: u32) {
    if !daemon.config.fdstore || !sdnotify::available() {
        return;
    }
    let name = match bo.image {
        Some(i) => image_name(bo.id, uid, &i),
        None => name(bo.id, uid),
    };
    if let Err(e) = sdnotify::store_fds(&name, &[bo.memfd().as_fd()]) {
        tracing::warn!(bo = bo.id, error = %e, "could not store a BO in the fd store");
        return;
    }
    let mut names = vec![name];
    let kept = bo.state().resources.first().cloned().flatten();
    if let Some(res) = kept.filter(|r| r.window.start == 0) {
        if let Some(fd) = res.gpu.keep_fd() {
            let gpu_name = format!("{GPU_PREFIX}.{}.{}", bo.id, res.gpu.pitch());
            match sdnotify::store_fds(&gpu_name, &[fd.as_fd()]) {
                Ok(()) => names.push(gpu_name),
                Err(e) => tracing::warn!(bo = bo.id, error = %e, "could not store a GPU buffer in the fd store"),
            }
        }
    }
    bo.hold_stored(Box::new(StoredBo { names }));
}

fn image_name(id: u64, uid: u32, i: &cohmem_proto::ImageInfo) -> String {
    format!(
        "{IMAGE_PREFIX}.{id}.{uid}.{}.{}.{}.{}.{}",
        i.width, i.height, i.fourcc, i.pitch, i.offset
    )
}

/// Parses what [`image_name`] wrote.
fn parse_image(name: &str) -> Option<(u64, u32, cohmem_proto::ImageInfo)> {
    let rest = name.strip_prefix(IMAGE_PREFIX)?.strip_prefix('.')?;
    let f: Vec<&str> = rest.split('.').collect();
    let [id, uid, width, height, fourcc, pitch, offset] = f.as_slice() else {
        return None;
    };
    let image = cohmem_proto::ImageInfo {
        width: width.parse().ok()?,
        height: height.parse().ok()?,
        fourcc: fourcc.parse().ok()?,
        pitch: pitch.parse().ok()?,
        offset: offset.parse().ok()?,
        modifier: cohmem_proto::MODIFIER_LINEAR,
    };
    Some((id.parse().ok()?, uid.parse().ok()?, image))
}

/// Parses `PREFIX.<id>.<n>`.
fn parse_with(prefix: &str, name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
    let (id, n) = rest.split_once('.')?;
    Some((id.parse().ok()?, n.parse().ok()?))
}

/// Parses `cohmem-bo.<id>.<uid>`.
fn parse(name: &str) -> Option<(u64, u32)> {
    let (id, uid) = parse_with(PREFIX, name)?;
    Some((id, u32::try_from(uid).ok()?))
}

/// Adopts the BOs among the fds the service manager passed at start
/// (`passed`: fd and name, the listening socket already taken out).
/// Returns them: the caller keeps them alive for the grace period.
pub fn adopt_stored(daemon: &Daemon, passed: Vec<(std::os::fd::OwnedFd, String)>) -> Vec<Arc<Bo>> {
    let mut gpus = std::collections::HashMap::new();
    let mut bos = Vec::new();
    for (fd, fd_name) in passed {
        if let Some((id, pitch)) = parse_with(GPU_PREFIX, &fd_name) {
            gpus.insert(id, (fd, pitch, fd_name));
        } else if let Some((id, uid)) = parse(&fd_name) {
            bos.push((id, uid, fd, fd_name, None));
        } else if let Some((id, uid, image)) = parse_image(&fd_name) {
            bos.push((id, uid, fd, fd_name, Some(image)));
        } else {
            tracing::warn!(name = %fd_name, "closing a passed fd that is no stored BO");
        }
    }
    let mut adopted = Vec::new();
    for (id, uid, fd, fd_name, image) in bos {
        let memfd = match Memfd::from_fd(fd) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(name = %fd_name, error = %e, "stored fd is no memfd");
                continue;
            }
        };
        let size = memfd.size();
        let gpu = gpus.remove(&id);
        let mut names = vec![fd_name];
        let stored = gpu.map(|(fd, pitch, name)| {
            names.push(name);
            (fd, pitch)
        });
        let with_gpu = stored.is_some();
        let adopted_bo = match image {
            // A new device image of the same layout: the stored buffer (a
            // dumb buffer's dma-buf) is dropped, so its importers keep the
            // last picture; the new one gets the whole BO at the first sync.
            Some(image) => match memfd
                .try_clone_fd()
                .and_then(Memfd::from_fd)
                .map_err(crate::bo::AdoptError::from)
                .and_then(|copy| Bo::adopt_image(id, copy, daemon.gpu.as_ref(), image))
            {
                Ok(bo) => Ok(bo),
                Err(e) => {
                    tracing::warn!(bo = id, error = %e, "stored image BO adopted as a byte BO");
                    Bo::adopt(id, memfd, daemon.gpu.as_ref(), stored)
                }
            },
            None => Bo::adopt(id, memfd, daemon.gpu.as_ref(), stored),
        };
        let bo = match adopted_bo {
            Ok(bo) => bo,
            Err(e) => {
                tracing::warn!(bo = id, error = %e, "could not adopt a stored BO");
                continue;
            }
        };
        match daemon.quotas.charge_bo(uid, size) {
            Ok(charge) => bo.hold_charge(charge),
            Err(e) => tracing::warn!(bo = id, error = %e, "adopted BO is over its user's quota"),
        }
        // Still in the store under the same names: only the guard is new.
        bo.hold_stored(Box::new(StoredBo { names }));
        let bo = Arc::new(bo);
        daemon.bos.reserve_id(id);
        daemon.bos.insert(&bo);
        daemon.bypass.add(&bo);
        tracing::info!(bo = id, uid, size, with_gpu, "BO adopted from the fd store");
        adopted.push(bo);
    }
    for (id, (_, _, name)) in gpus {
        tracing::warn!(bo = id, %name, "stored GPU buffer without its BO; released");
        let _ = sdnotify::remove_stored(&name);
    }
    adopted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_rejected() {
        assert_eq!(parse(&name(42, 1000)), Some((42, 1000)));
        assert_eq!(parse("cohmem-bo.1"), None);
        assert_eq!(parse("cohmem-bo.x.1"), None);
        assert_eq!(parse("cohmem.sock"), None);
        assert_eq!(parse("other-bo.1.2"), None);
        assert_eq!(parse_with(GPU_PREFIX, "cohmem-gpu.7.4096"), Some((7, 4096)));
        assert_eq!(parse("cohmem-gpu.7.4096"), None);
        let image = cohmem_proto::ImageInfo {
            width: 1000,
            height: 10,
            fourcc: cohmem_proto::fourcc::XRGB8888,
            pitch: 4032,
            offset: 0,
            modifier: 0,
        };
        assert_eq!(parse_image(&image_name(3, 1000, &image)), Some((3, 1000, image)));
        assert_eq!(parse(&image_name(3, 1000, &image)), None);
        assert_eq!(
            parse_image("cohmem-img.3.1000.1000.10.875713112.4032"),
            None,
            "a field missing"
        );
    }
}
