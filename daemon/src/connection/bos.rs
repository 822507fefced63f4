//! The BO family: CREATE_BO, CREATE_IMAGE (the backend lays the image out
//! first, DESIGN.md §8), IMPORT_BO / IMPORT_IMAGE (one more handle to a
//! known BO, or the adoption of a client's memfd from before a daemon
//! restart), DESTROY, and EXPORT_RESOURCE (the GPU copy as a dma-buf, the
//! vmwgfx resource a BO backs).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::{ErrorCode, Reply, CREATE_NO_RESOURCE};
use cohmem_sys::memfd::{fd_access, fd_identity, FdAccess, Memfd};

use super::failure::{fail, ok, Failure, Outcome};
use super::handles::release;
use super::Session;
use crate::bo::{AdoptError, Bo};
use crate::quota::BoCharge;

impl Session {
    pub(super) async fn create_bo(&mut self, size: u64, flags: u32) -> Outcome {
        if flags & !CREATE_NO_RESOURCE != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown CREATE_BO flags {flags:#x}"),
            ));
        }
        let max = self.daemon.config.max_bo_size;
        if size == 0 {
            return Err(fail(ErrorCode::InvalidArgument, "BO size must be at least 1 byte"));
        }
        if size > max {
            return Err(fail(
                ErrorCode::TooLarge,
                format!("BO size {size} exceeds the limit max_bo_size = {max}"),
            ));
        }
        let ps = cohmem_sys::page_size();
        let size = size.div_ceil(ps) * ps;
        self.check_handle_room()?;
        let charge = self.charge_bo(size)?;
        let daemon = self.daemon.clone();
        let id = daemon.bos.next_id();
        let default_resource = flags & CREATE_NO_RESOURCE == 0;
        let bo = tokio::task::spawn_blocking(move || Bo::create(id, size, daemon.gpu.as_ref(), default_resource))
            .await
            .map_err(|e| fail(ErrorCode::Internal, format!("BO creation task failed: {e}")))?
            .map_err(|e| fail(ErrorCode::Gpu, format!("creating a {size}-byte BO: {e}")))?;
        self.publish_new_bo(bo, charge)
    }

    /// CREATE_IMAGE: the backend allocates the image first, the BO takes its
    /// layout (DESIGN.md §8). The quota is charged for the BO's real size
    /// (known once the device has chosen its pitch); a refusal frees the
    /// image again.
    pub(super) async fn create_image(&mut self, width: u32, height: u32, fourcc: u32, flags: u32) -> Outcome {
        if flags != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown CREATE_IMAGE flags {flags:#x}"),
            ));
        }
        let Some(cpp) = cohmem_proto::fourcc::bytes_per_pixel(fourcc) else {
            return Err(fail(
                ErrorCode::Unsupported,
                format!(
                    "format {} is not one cohmem knows (XR24, AR24, RG16)",
                    cohmem_proto::fourcc::name(fourcc)
                ),
            ));
        };
        if width == 0 || height == 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("an image needs at least one pixel; width {width} and height {height} were asked for"),
            ));
        }
        let max = self.daemon.config.max_bo_size;
        let least = (u64::from(width) * u64::from(height)).saturating_mul(u64::from(cpp));
        if least > max {
            return Err(fail(
                ErrorCode::TooLarge,
                format!("a {width}x{height} image needs at least {least} bytes; the limit is max_bo_size = {max}"),
            ));
        }
        self.check_handle_room()?;
        let daemon = self.daemon.clone();
        let id = daemon.bos.next_id();
        let bo =
            tokio::task::spawn_blocking(move || Bo::create_image(id, width, height, fourcc, max, daemon.gpu.as_ref()))
                .await
                .map_err(|e| fail(ErrorCode::Internal, format!("image creation task failed: {e}")))?
                .map_err(|e| match e {
                    crate::gpu::GpuError::TooLarge { .. } => fail(ErrorCode::TooLarge, e.to_string()),
                    crate::gpu::GpuError::ImageRefused { .. } => fail(ErrorCode::Unsupported, e.to_string()),
                    e => fail(ErrorCode::Gpu, format!("creating a {width}x{height} image: {e}")),
                })?;
        let charge = self.charge_bo(bo.size)?;
        self.publish_new_bo(bo, charge)
    }

    /// Makes a new BO known (quota, fd store, BO table, bypass watch) and
    /// opens a handle to it: the reply of CREATE_BO and CREATE_IMAGE.
    fn publish_new_bo(&mut self, bo: Bo, charge: BoCharge) -> Outcome {
        let (id, size) = (bo.id, bo.size);
        bo.hold_charge(charge);
        crate::fdstore::store(&self.daemon, &bo, self.info.uid);
        let memfd = bo
            .memfd()
            .try_clone_fd()
            .map_err(|e| fail(ErrorCode::Kernel, e.to_string()))?;
        let bo = Arc::new(bo);
        self.daemon.bos.insert(&bo);
        self.daemon.bypass.add(&bo);
        let handle = self.new_handle(bo.clone())?;
        tracing::debug!(
            conn = self.info.id,
            bo = id,
            size,
            handle,
            image = bo.image.is_some(),
            "BO created"
        );
        Ok((
            Reply::Bo {
                bo: handle,
                size,
                id: bo.id,
                image: bo.image,
            },
            vec![memfd],
        ))
    }

    /// IMPORT_BO: a handle to the BO whose memfd came with the request. A
    /// sealed memfd this daemon does not know — a client's BO from before a
    /// daemon restart — is adopted as a new BO, charged to this uid, with a
    /// fresh resource and every page dirty.
    ///
    /// IMPORT_IMAGE (`image` given): the BO must have that image layout; an
    /// unknown memfd is adopted as an image BO of that layout if this
    /// daemon's backend lays it out the same way.
    pub(super) async fn import_bo(&mut self, fds: Vec<OwnedFd>, image: Option<cohmem_proto::ImageInfo>) -> Outcome {
        let fd = fds
            .into_iter()
            .next()
            .ok_or_else(|| fail(ErrorCode::BadFds, "IMPORT_BO needs the BO's memfd"))?;
        let read_only = import_access(&fd)?;
        let identity = fd_identity(fd.as_fd()).map_err(|e| fail(ErrorCode::BadFds, e.to_string()))?;
        if let Some(bo) = self.daemon.bos.find(identity) {
            return self.import_known(bo, image, read_only);
        }
        self.adopt(fd, image, read_only).await
    }

    /// IMPORT_BO of a BO this daemon knows: one more handle to it (IMPORT_IMAGE:
    /// if it has the image layout described).
    fn import_known(&mut self, bo: Arc<Bo>, image: Option<cohmem_proto::ImageInfo>, read_only: bool) -> Outcome {
        if image.is_some() && image != bo.image {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!(
                    "IMPORT_IMAGE: BO {} is {}, not the image described",
                    bo.id,
                    bo.image.map_or("a byte BO".to_string(), |i| format!(
                        "a {}x{} {} image with pitch {} at offset {}",
                        i.width,
                        i.height,
                        cohmem_proto::fourcc::name(i.fourcc),
                        i.pitch,
                        i.offset
                    ))
                ),
            ));
        }
        let (size, id, image) = (bo.size, bo.id, bo.image);
        let handle = self.new_handle_with(bo, read_only)?;
        ok(Reply::Bo {
            bo: handle,
            size,
            id,
            image,
        })
    }

    /// IMPORT_BO of a memfd this daemon does not know: adopted as a new BO
    /// (within the size limit, the handle limit and the uid's quota).
    async fn adopt(&mut self, fd: OwnedFd, image: Option<cohmem_proto::ImageInfo>, read_only: bool) -> Outcome {
        let memfd = Memfd::from_fd(fd).map_err(|e| fail(ErrorCode::BadFds, e.to_string()))?;
        let size = memfd.size();
        let max = self.daemon.config.max_bo_size;
        if size > max {
            return Err(fail(
                ErrorCode::TooLarge,
                format!("the passed memfd has {size} bytes, over the limit max_bo_size = {max}"),
            ));
        }
        self.check_handle_room()?;
        let charge = self.charge_bo(size)?;
        let daemon = self.daemon.clone();
        let id = daemon.bos.next_id();
        let bo = tokio::task::spawn_blocking(move || match image {
            Some(image) => Bo::adopt_image(id, memfd, daemon.gpu.as_ref(), image),
            None => Bo::adopt(id, memfd, daemon.gpu.as_ref(), None),
        })
        .await
        .map_err(|e| fail(ErrorCode::Internal, format!("BO adoption task failed: {e}")))?
        .map_err(|e| adopt_failure(e, size))?;
        bo.hold_charge(charge);
        crate::fdstore::store(&self.daemon, &bo, self.info.uid);
        let bo = Arc::new(bo);
        self.daemon.bos.insert(&bo);
        self.daemon.bypass.add(&bo);
        let handle = self.new_handle_with(bo.clone(), read_only)?;
        crate::limited!(
            info,
            "BO adopted",
            self.info.id,
            conn = self.info.id,
            bo = id,
            size,
            handle,
            "BO adopted from a client's memfd"
        );
        ok(Reply::Bo {
            bo: handle,
            size,
            id,
            image,
        })
    }

    pub(super) async fn destroy(&mut self, bo: u32) -> Outcome {
        let handle = self.handles.remove(&bo).ok_or_else(|| {
            fail(
                ErrorCode::NoSuchBo,
                format!("BO handle {bo} is not open on this connection"),
            )
        })?;
        self.info.bos.fetch_sub(1, Ordering::Relaxed);
        self.info.views.fetch_sub(handle.views.len() as u32, Ordering::Relaxed);
        let daemon = self.daemon.clone();
        self.blocking(move || release(&daemon, handle)).await?;
        ok(Reply::Ok)
    }

    pub(super) fn export_resource(&self, bo: u32, index: u32) -> Outcome {
        let bo = &self.handle(bo)?.bo;
        let res = bo.state().resources.get(index as usize).and_then(Option::clone);
        let res = res.ok_or_else(|| fail(ErrorCode::InvalidArgument, format!("the BO has no resource {index}")))?;
        let fd = res
            .gpu
            .export_fd()
            .map_err(|e| fail(ErrorCode::Gpu, format!("exporting the resource: {e}")))?;
        // Another process may now write the GPU copy: comparing with what the
        // daemon uploaded would no longer see every change to undo.
        if res.gpu.export_writable() && !bo.gpu_shared.swap(true, Ordering::AcqRel) {
            self.daemon.sync_engine().stop_comparing_shared(bo);
        }
        Ok((
            Reply::Resource {
                size: res.gpu.size(),
                offset: res.window.start,
                pitch: u32::try_from(res.gpu.pitch()).unwrap_or(u32::MAX),
                image: res.image(),
            },
            vec![fd],
        ))
    }
}

/// Whether IMPORT_BO's fd is read-only (a read-only handle), or refused: an
/// `O_PATH` or write-only fd gives no access to the BO's bytes.
fn import_access(fd: &OwnedFd) -> Result<bool, Failure> {
    match fd_access(fd.as_fd()).map_err(|e| fail(ErrorCode::BadFds, e.to_string()))? {
        FdAccess::ReadWrite => Ok(false),
        FdAccess::ReadOnly => Ok(true),
        FdAccess::Path => Err(fail(
            ErrorCode::PermissionDenied,
            "IMPORT_BO of an O_PATH fd: it gives no access to the BO's bytes; pass a read-write (or read-only) fd",
        )),
        FdAccess::WriteOnly => Err(fail(
            ErrorCode::PermissionDenied,
            "IMPORT_BO of a write-only fd: pass a read-write (or read-only) fd",
        )),
    }
}

/// The error reply for a memfd that could not be adopted as a `size`-byte BO.
fn adopt_failure(e: AdoptError, size: u64) -> Failure {
    match e {
        AdoptError::Gpu(g @ crate::gpu::GpuError::ImageRefused { .. })
        | AdoptError::Gpu(g @ crate::gpu::GpuError::TooLarge { .. }) => {
            fail(ErrorCode::Unsupported, format!("adopting a {size}-byte image BO: {g}"))
        }
        AdoptError::Layout(why) => fail(ErrorCode::Unsupported, format!("IMPORT_IMAGE: {why}")),
        AdoptError::Gpu(g) => fail(ErrorCode::Gpu, format!("adopting a {size}-byte BO: {g}")),
        other => fail(
            ErrorCode::BadFds,
            format!("the passed fd is not the memfd of a live cohmem BO, nor adoptable as one: {other}"),
        ),
    }
}
