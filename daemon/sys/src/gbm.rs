//! GBM (Mesa's libgbm, through gbm-sys; cargo feature `gbm`): a device on a
//! DRM node, linear buffers, `gbm_bo_map` for CPU access, and dma-buf export.
//!
//! libgbm objects are not thread-safe, so a [`GbmDevice`] serialises every
//! call on it and its buffers behind one mutex. Mapped buffer memory is only
//! ever reached through raw pointers (an importer of the dma-buf may access
//! it at the same time), never as a Rust slice.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::drm::DrmDevice;
use crate::mapping::SharedMapping;
use crate::{Result, SysError};

/// `GBM_FORMAT_ARGB8888` (fourcc `AR24`).
const FORMAT_ARGB8888: u32 = u32::from_le_bytes(*b"AR24");

struct RawDevice(*mut gbm_sys::gbm_device);

// SAFETY: the pointer is only used with the device mutex held, so libgbm
// never sees two threads at once.
unsafe impl Send for RawDevice {}

/// A GBM device on an open DRM node.
pub struct GbmDevice {
    raw: Mutex<RawDevice>,
    backend: String,
    /// Kept open for as long as the GBM device uses its fd.
    drm: Arc<DrmDevice>,
}

impl std::fmt::Debug for GbmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GbmDevice")
            .field("backend", &self.backend)
            .field("node", &self.drm.path())
            .finish()
    }
}

impl GbmDevice {
    /// Creates a GBM device on the DRM node at `path`.
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        let drm = DrmDevice::open(path)?;
        // SAFETY: the fd is a valid open DRM node that `drm` keeps open for
        // the device's whole life (the field is dropped after `raw` is
        // destroyed in Drop).
        let raw = unsafe { gbm_sys::gbm_create_device(drm.as_fd().as_raw_fd()) };
        if raw.is_null() {
            return Err(SysError::Invalid(format!(
                "gbm_create_device failed on {} (Mesa found no DRI driver for it)",
                path.display()
            )));
        }
        // SAFETY: `raw` is a live device; the returned string is static in
        // libgbm (or null).
        let name = unsafe { gbm_sys::gbm_device_get_backend_name(raw) };
        let backend = if name.is_null() {
            "unknown".to_string()
        } else {
            // SAFETY: non-null, NUL-terminated, static.
            unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
        };
        Ok(Arc::new(Self {
            raw: Mutex::new(RawDevice(raw)),
            backend,
            drm,
        }))
    }

    /// libgbm's backend name (`drm` for Mesa's DRI backend).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The DRM node.
    pub fn drm(&self) -> &Arc<DrmDevice> {
        &self.drm
    }

    fn lock(&self) -> MutexGuard<'_, RawDevice> {
        self.raw.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a linear ARGB8888 buffer of `width` × `height` pixels.
    pub fn create_linear(self: &Arc<Self>, width: u32, height: u32) -> Result<GbmBuffer> {
        let dev = self.lock();
        let flags = gbm_sys::gbm_bo_flags::GBM_BO_USE_LINEAR | gbm_sys::gbm_bo_flags::GBM_BO_USE_RENDERING;
        // SAFETY: a live device, used with its mutex held.
        let bo = unsafe { gbm_sys::gbm_bo_create(dev.0, width, height, FORMAT_ARGB8888, flags) };
        if bo.is_null() {
            let errno = std::io::Error::last_os_error();
            return Err(SysError::Invalid(format!(
                "gbm_bo_create({width}x{height}, ARGB8888, LINEAR) failed: {errno}"
            )));
        }
        // SAFETY: `bo` is a live buffer of this device.
        let stride = unsafe { gbm_sys::gbm_bo_get_stride(bo) };
        Ok(GbmBuffer {
            device: self.clone(),
            bo,
            height,
            stride,
        })
    }
}

impl Drop for GbmDevice {
    fn drop(&mut self) {
        let dev = self.lock();
        // SAFETY: every buffer holds an Arc of the device, so none is left.
        unsafe { gbm_sys::gbm_device_destroy(dev.0) };
    }
}

/// A GBM buffer; destroyed when dropped.
pub struct GbmBuffer {
    device: Arc<GbmDevice>,
    bo: *mut gbm_sys::gbm_bo,
    height: u32,
    stride: u32,
}

// SAFETY: the buffer pointer is only used with its device's mutex held.
unsafe impl Send for GbmBuffer {}
// SAFETY: as above; `&self` methods take the device mutex.
unsafe impl Sync for GbmBuffer {}

/// Which way a row copy goes.
#[derive(Clone, Copy)]
enum Direction {
    /// Mapping → buffer.
    Upload,
    /// Buffer → mapping.
    Download,
}

impl GbmBuffer {
    /// Bytes between the starts of two rows.
    pub fn stride(&self) -> u32 {
        self.stride
    }

    /// Rows in the buffer.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Copies `rows` rows of `row_bytes` bytes each, starting at row
    /// `first_row`, from `src` at `src_offset` (rows packed one after
    /// another there) into the buffer, through `gbm_bo_map`.
    pub fn write_rows(
        &self,
        first_row: u32,
        rows: u32,
        row_bytes: u32,
        src: &SharedMapping,
        src_offset: usize,
    ) -> Result<()> {
        self.copy_rows(first_row, rows, row_bytes, src, src_offset, Direction::Upload)
    }

    /// The reverse of [`GbmBuffer::write_rows`] (into a writable mapping).
    pub fn read_rows(
        &self,
        first_row: u32,
        rows: u32,
        row_bytes: u32,
        dst: &SharedMapping,
        dst_offset: usize,
    ) -> Result<()> {
        self.copy_rows(first_row, rows, row_bytes, dst, dst_offset, Direction::Download)
    }

    fn copy_rows(
        &self,
        first_row: u32,
        rows: u32,
        row_bytes: u32,
        mem: &SharedMapping,
        offset: usize,
        dir: Direction,
    ) -> Result<()> {
        let width = row_bytes / 4;
        let total = rows as usize * row_bytes as usize;
        if rows == 0 {
            return Ok(());
        }
        if first_row.checked_add(rows).is_none_or(|end| end > self.height)
            || row_bytes > self.stride
            || offset.checked_add(total).is_none_or(|end| end > mem.len())
        {
            return Err(SysError::Invalid(format!(
                "rows {first_row}+{rows} of {row_bytes} bytes: outside the buffer or the mapping"
            )));
        }
        if matches!(dir, Direction::Download) && !mem.is_writable() {
            return Err(SysError::Invalid("destination mapping is read-only".into()));
        }
        let flags = match dir {
            Direction::Upload => gbm_sys::gbm_bo_transfer_flags::GBM_BO_TRANSFER_READ_WRITE,
            Direction::Download => gbm_sys::gbm_bo_transfer_flags::GBM_BO_TRANSFER_READ,
        };
        let _dev = self.device.lock();
        let mut stride = 0u32;
        let mut map_data = std::ptr::null_mut();
        // SAFETY: a live buffer, its device mutex held; the rectangle was
        // checked against the buffer's height and stride.
        let base =
            unsafe { gbm_sys::gbm_bo_map(self.bo, 0, first_row, width, rows, flags, &mut stride, &mut map_data) };
        if base.is_null() {
            let errno = std::io::Error::last_os_error();
            return Err(SysError::Invalid(format!(
                "gbm_bo_map of rows {first_row}+{rows} failed: {errno}"
            )));
        }
        let base = base.cast::<u8>();
        for r in 0..rows as usize {
            let mem_ptr = mem.as_ptr().wrapping_add(offset + r * row_bytes as usize);
            // SAFETY: gbm_bo_map returned a mapping of `rows` rows of at
            // least `row_bytes` bytes every `stride` bytes; the mapping range
            // was bounds-checked above; the two are distinct mappings.
            unsafe {
                let buf_ptr = base.add(r * stride as usize);
                match dir {
                    Direction::Upload => std::ptr::copy_nonoverlapping(mem_ptr, buf_ptr, row_bytes as usize),
                    Direction::Download => std::ptr::copy_nonoverlapping(buf_ptr, mem_ptr, row_bytes as usize),
                }
            }
        }
        // SAFETY: unmapping what gbm_bo_map mapped, with the same bo.
        unsafe { gbm_sys::gbm_bo_unmap(self.bo, map_data) };
        Ok(())
    }

    /// Exports the buffer as a dma-buf.
    pub fn export_fd(&self) -> Result<OwnedFd> {
        let _dev = self.device.lock();
        // SAFETY: a live buffer, its device mutex held.
        let fd = unsafe { gbm_sys::gbm_bo_get_fd(self.bo) };
        if fd < 0 {
            return Err(SysError::Invalid(format!(
                "gbm_bo_get_fd failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: libgbm returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl Drop for GbmBuffer {
    fn drop(&mut self) {
        let _dev = self.device.lock();
        // SAFETY: a live buffer destroyed once, its device mutex held.
        unsafe { gbm_sys::gbm_bo_destroy(self.bo) };
    }
}
