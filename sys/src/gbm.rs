//! GBM (Mesa's libgbm, through gbm-sys; cargo feature `gbm`): a device on a
//! DRM node, linear buffers (byte buffers of ARGB8888 page rows, and images
//! in a caller's format with the driver's stride and offset), `gbm_bo_map`
//! for CPU access, and dma-buf export.
//!
//! libgbm objects are not thread-safe, so a [`GbmDevice`] serialises every
//! call on it and its buffers behind one mutex. Mapped buffer memory is only
//! ever reached through raw pointers (an importer of the dma-buf may access
//! it at the same time), never as a Rust slice.

use std::ffi::CStr;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::drm::DrmDevice;
use crate::mapping::SharedMapping;
use crate::{Result, SysError};

mod layout;
use layout::RowLayout;

/// `GBM_FORMAT_ARGB8888` (fourcc `AR24`).
const FORMAT_ARGB8888: u32 = u32::from_le_bytes(*b"AR24");

/// `DRM_FORMAT_MOD_LINEAR`.
pub const MODIFIER_LINEAR: u64 = 0;

/// `DRM_FORMAT_MOD_INVALID`: what `gbm_bo_get_modifier` says for a buffer
/// created without an explicit modifier list on drivers that do not track
/// one (with `GBM_BO_USE_LINEAR`, the layout is linear all the same).
const MODIFIER_INVALID: u64 = 0x00ff_ffff_ffff_ffff;

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
        self.create(width, height, FORMAT_ARGB8888)
    }

    /// Creates a linear image of `width` × `height` pixels in GBM format
    /// `format` (a DRM fourcc), laid out as the driver chooses: its stride,
    /// plane offset and modifier are the buffer's [`GbmBuffer::stride`],
    /// [`GbmBuffer::offset`] and [`GbmBuffer::modifier`]. Refuses a buffer
    /// the driver lays out in more than one plane, with a modifier other
    /// than linear, or with rows shorter than their pixels.
    pub fn create_image(self: &Arc<Self>, width: u32, height: u32, format: u32) -> Result<GbmBuffer> {
        let b = self.create(width, height, format)?;
        let what = if b.planes != 1 {
            format!("{} planes, not one", b.planes)
        } else if b.modifier != MODIFIER_LINEAR {
            format!("modifier {:#x}, not linear", b.modifier)
        } else if b.bytes_per_pixel == 0 || u64::from(b.stride) < b.row_bytes() {
            format!("{} bits a pixel in rows of {} bytes", b.bytes_per_pixel * 8, b.stride)
        } else {
            return Ok(b);
        };
        Err(SysError::Invalid(format!(
            "gbm_bo_create({width}x{height}, LINEAR) gave {what}"
        )))
    }

    fn create(self: &Arc<Self>, width: u32, height: u32, format: u32) -> Result<GbmBuffer> {
        let dev = self.lock();
        let flags = gbm_sys::gbm_bo_flags::GBM_BO_USE_LINEAR | gbm_sys::gbm_bo_flags::GBM_BO_USE_RENDERING;
        // SAFETY: a live device, used with its mutex held.
        let bo = unsafe { gbm_sys::gbm_bo_create(dev.0, width, height, format, flags) };
        if bo.is_null() {
            let errno = std::io::Error::last_os_error();
            return Err(SysError::Invalid(format!(
                "gbm_bo_create({width}x{height}, {}, LINEAR) failed: {errno}",
                format_name(format)
            )));
        }
        // SAFETY (the five calls): `bo` is a live buffer of this device,
        // its device mutex held; plane 0 exists in every buffer.
        let (stride, offset, bpp, modifier, planes) = unsafe {
            (
                gbm_sys::gbm_bo_get_stride(bo),
                gbm_sys::gbm_bo_get_offset(bo, 0),
                gbm_sys::gbm_bo_get_bpp(bo),
                gbm_sys::gbm_bo_get_modifier(bo),
                gbm_sys::gbm_bo_get_plane_count(bo),
            )
        };
        Ok(GbmBuffer {
            device: self.clone(),
            bo,
            width,
            height,
            stride,
            offset,
            bytes_per_pixel: bpp / 8,
            modifier: if modifier == MODIFIER_INVALID {
                MODIFIER_LINEAR
            } else {
                modifier
            },
            planes,
        })
    }
}

/// A fourcc as its four characters (`AR24`).
fn format_name(format: u32) -> String {
    String::from_utf8_lossy(&format.to_le_bytes()).into_owned()
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
    width: u32,
    height: u32,
    stride: u32,
    offset: u32,
    bytes_per_pixel: u32,
    modifier: u64,
    planes: i32,
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

    /// Byte offset of the first row in the buffer (`gbm_bo_get_offset`
    /// of plane 0).
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// Bytes per pixel (`gbm_bo_get_bpp` / 8).
    pub fn bytes_per_pixel(&self) -> u32 {
        self.bytes_per_pixel
    }

    /// The format modifier ([`MODIFIER_LINEAR`] for every buffer this
    /// module creates; `DRM_FORMAT_MOD_INVALID` is reported as linear).
    pub fn modifier(&self) -> u64 {
        self.modifier
    }

    /// Bytes from the start of the buffer to the end of the last row's
    /// pixels: `offset + stride × (height − 1) + width × bytes per pixel`.
    pub fn image_end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.stride) * u64::from(self.height.saturating_sub(1)) + self.row_bytes()
    }

    fn row_bytes(&self) -> u64 {
        u64::from(self.width) * u64::from(self.bytes_per_pixel)
    }

    /// Copies the pixel bytes among the buffer bytes `range` (offsets in
    /// the buffer's own layout: row `y` starts at `offset + y × stride`)
    /// from `src` at `src_offset` (the byte of `range.start`; `src` holds
    /// the same layout) into the buffer, through one `gbm_bo_map` of the
    /// full-width rows the range touches. Where the map's stride is the
    /// buffer's, the range is one straight copy (padding included); where
    /// it differs, one copy per row of that row's pixels. Bytes that are
    /// no pixel's (before the first row, the padding after a row) are
    /// then not copied: they are outside what `gbm_bo_map` gives access to.
    pub fn write_image_bytes(&self, range: Range<u64>, src: &SharedMapping, src_offset: usize) -> Result<()> {
        self.copy_image_bytes(range, src, src_offset, Direction::Upload)
    }

    /// The reverse of [`GbmBuffer::write_image_bytes`] (into a writable
    /// mapping).
    pub fn read_image_bytes(&self, range: Range<u64>, dst: &SharedMapping, dst_offset: usize) -> Result<()> {
        self.copy_image_bytes(range, dst, dst_offset, Direction::Download)
    }

    fn copy_image_bytes(
        &self,
        range: Range<u64>,
        mem: &SharedMapping,
        mem_offset: usize,
        dir: Direction,
    ) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let len = usize::try_from(range.end - range.start)
            .map_err(|_| SysError::Invalid(format!("bytes {range:?}: too many")))?;
        if range.end > self.image_end() {
            return Err(SysError::Invalid(format!(
                "bytes {range:?}: past the image's end {}",
                self.image_end()
            )));
        }
        check_mem(mem, mem_offset, len, dir)?;
        let layout = RowLayout {
            offset: u64::from(self.offset),
            stride: u64::from(self.stride),
            row_bytes: self.row_bytes(),
        };
        let Some(rows) = layout.rows(&range) else {
            return Ok(());
        };
        let (first, count) = (rows.start as u32, (rows.end - rows.start) as u32);
        self.with_map(first, count, self.width, dir, |base, map_stride| {
            for (bytes, at) in layout.pieces(&range, &rows, u64::from(map_stride)) {
                let n = (bytes.end - bytes.start) as usize;
                let mem_ptr = mem
                    .as_ptr()
                    .wrapping_add(mem_offset + (bytes.start - range.start) as usize);
                // gbm_bo_map gave `count` rows of `width` pixels every
                // `map_stride` bytes, and a piece lies within them
                // (RowLayout::pieces: with the buffer's own stride the bytes
                // between rows are its row padding, else a piece is one
                // row's pixels).
                // SAFETY: both ranges are in bounds (above; check_mem) and
                // lie in distinct mappings.
                unsafe {
                    let buf_ptr = base.add(at as usize);
                    match dir {
                        Direction::Upload => std::ptr::copy_nonoverlapping(mem_ptr, buf_ptr, n),
                        Direction::Download => std::ptr::copy_nonoverlapping(buf_ptr, mem_ptr, n),
                    }
                }
            }
        })
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
        let total = rows as usize * row_bytes as usize;
        if rows == 0 {
            return Ok(());
        }
        if row_bytes > self.stride {
            return Err(SysError::Invalid(format!(
                "rows of {row_bytes} bytes: longer than the stride {}",
                self.stride
            )));
        }
        check_mem(mem, offset, total, dir)?;
        self.with_map(first_row, rows, row_bytes / 4, dir, |base, stride| {
            for r in 0..rows as usize {
                let mem_ptr = mem.as_ptr().wrapping_add(offset + r * row_bytes as usize);
                // gbm_bo_map returned `rows` rows of at least `row_bytes`
                // bytes every `stride` bytes.
                // SAFETY: both ranges are in bounds (above) and lie in
                // distinct mappings.
                unsafe {
                    let buf_ptr = base.add(r * stride as usize);
                    match dir {
                        Direction::Upload => std::ptr::copy_nonoverlapping(mem_ptr, buf_ptr, row_bytes as usize),
                        Direction::Download => std::ptr::copy_nonoverlapping(buf_ptr, mem_ptr, row_bytes as usize),
                    }
                }
            }
        })
    }

    /// Maps rows `first_row .. first_row + rows`, columns `0 .. width` with
    /// `gbm_bo_map` (read-write for an upload, read for a download), calls
    /// `copy(base, map_stride)` with the address of pixel (0, `first_row`)
    /// and the map's stride (which may differ from the buffer's), and
    /// unmaps. Checks the rectangle and, for a download, that `mem` is
    /// writable.
    fn with_map(
        &self,
        first_row: u32,
        rows: u32,
        width: u32,
        dir: Direction,
        copy: impl FnOnce(*mut u8, u32),
    ) -> Result<()> {
        if first_row.checked_add(rows).is_none_or(|end| end > self.height) || width > self.width {
            return Err(SysError::Invalid(format!(
                "rows {first_row}+{rows} of {width} pixels: outside the {}x{} buffer",
                self.width, self.height
            )));
        }
        let flags = match dir {
            Direction::Upload => gbm_sys::gbm_bo_transfer_flags::GBM_BO_TRANSFER_READ_WRITE,
            Direction::Download => gbm_sys::gbm_bo_transfer_flags::GBM_BO_TRANSFER_READ,
        };
        let _dev = self.device.lock();
        let mut stride = 0u32;
        let mut map_data = std::ptr::null_mut();
        // SAFETY: a live buffer, its device mutex held; the rectangle was
        // checked against the buffer's width and height.
        let base =
            unsafe { gbm_sys::gbm_bo_map(self.bo, 0, first_row, width, rows, flags, &mut stride, &mut map_data) };
        if base.is_null() {
            let errno = std::io::Error::last_os_error();
            return Err(SysError::Invalid(format!(
                "gbm_bo_map of rows {first_row}+{rows} failed: {errno}"
            )));
        }
        copy(base.cast::<u8>(), stride);
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

/// Checks that `len` bytes at `offset` lie in `mem`, and that `mem` is
/// writable when a download goes into it.
fn check_mem(mem: &SharedMapping, offset: usize, len: usize, dir: Direction) -> Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > mem.len()) {
        return Err(SysError::Invalid(format!(
            "{len} bytes at {offset}: outside the mapping of {} bytes",
            mem.len()
        )));
    }
    if matches!(dir, Direction::Download) && !mem.is_writable() {
        return Err(SysError::Invalid("destination mapping is read-only".into()));
    }
    Ok(())
}

impl Drop for GbmBuffer {
    fn drop(&mut self) {
        let _dev = self.device.lock();
        // SAFETY: a live buffer destroyed once, its device mutex held.
        unsafe { gbm_sys::gbm_bo_destroy(self.bo) };
    }
}
