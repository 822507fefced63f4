//! GBM (Mesa's libgbm, through gbm-sys; cargo feature `gbm`): a device on a
//! DRM node, linear buffers (byte buffers of ARGB8888 page rows, and images
//! in a caller's format with the driver's stride and offset), `gbm_bo_map`
//! for CPU access, and dma-buf export.
//!
//! libgbm objects are not thread-safe, so a [`GbmDevice`] serialises every
//! call on it and its buffers behind one mutex. Mapped buffer memory is only
//! ever reached as a [`VolatileSlice`] (an importer of the dma-buf, or the
//! GPU, may access it at the same time), never as a Rust slice.
//!
//! Smithay's `gbm` crate (0.18, without its default features: no drm 0.14
//! beside our drm 0.15, no wayland) owns the device and the buffers: it
//! creates them (`Device::new` on our `Arc<DrmDevice>`, any `AsFd`;
//! `create_buffer_object` with `LINEAR | RENDERING` and a typed fourcc),
//! destroys them (each buffer keeps the device alive), answers the stride,
//! offset, bpp, modifier and plane queries and exports the dma-buf (`fd`).
//! Two things stay ours. First, the mutex: the crate declares its objects
//! `Send + Sync` on the assumption that libgbm is thread-safe; we do not
//! rely on it. Second, `gbm_bo_map`, called through gbm-sys on the crate's
//! raw pointer: the crate's `BufferObject::map`/`map_mut` hand the closure
//! a `MappedBufferObject` whose `buffer()`/`buffer_mut()` are a `&[u8]`/
//! `&mut [u8]` built with `slice::from_raw_parts_mut` (even for the read
//! map taken through `&self`) over `height × stride` bytes: a reference
//! into memory that the GPU and every importer of the exported dma-buf may
//! write meanwhile (DESIGN.md §4 forbids exactly that), and a length that
//! runs past the last row's pixels, which is all `gbm_bo_map` promises
//! (the product is also a `u32` that overflows for buffers near 4 GiB).
//! `map_mut` also takes `&mut BufferObject`, where our uploads run through
//! `&self`. The crate's `import_buffer_object_from_dma_buf` is there if an
//! import is ever needed; none is today. One more caveat, harmless here:
//! its `Device<T>` drops `T` (the DRM fd) when the `Device` drops even if
//! buffers still hold the `gbm_device`; our buffers hold an `Arc` of the
//! whole [`GbmDevice`], so the fd outlives them.

use std::mem::ManuallyDrop;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use gbm::{AsRaw, BufferObject, BufferObjectFlags, Format};
use vm_memory::VolatileSlice;

use crate::drm::DrmDevice;
use crate::mapping::SharedMapping;
use crate::{Result, SysError};

mod layout;
use layout::RowLayout;

/// `GBM_FORMAT_ARGB8888` (fourcc `AR24`).
const FORMAT_ARGB8888: u32 = Format::Argb8888 as u32;

/// `DRM_FORMAT_MOD_LINEAR`.
pub const MODIFIER_LINEAR: u64 = 0;

/// `DRM_FORMAT_MOD_INVALID`: what `gbm_bo_get_modifier` says for a buffer
/// created without an explicit modifier list on drivers that do not track
/// one (with `GBM_BO_USE_LINEAR`, the layout is linear all the same).
const MODIFIER_INVALID: u64 = 0x00ff_ffff_ffff_ffff;

/// The gbm crate's device on our DRM node.
type Device = gbm::Device<Arc<DrmDevice>>;

/// A GBM device on an open DRM node.
pub struct GbmDevice {
    /// Held for every libgbm call on the device or its buffers.
    device: Mutex<Device>,
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
        // The device keeps its own Arc of the node: the fd stays open for
        // as long as libgbm uses it.
        let device = Device::new(drm.clone()).map_err(|_| {
            SysError::Invalid(format!(
                "gbm_create_device failed on {} (Mesa found no DRI driver for it)",
                path.display()
            ))
        })?;
        let backend = device.backend_name().to_string();
        Ok(Arc::new(Self {
            device: Mutex::new(device),
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

    fn lock(&self) -> MutexGuard<'_, Device> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
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
        let failed = |why: String| {
            SysError::Invalid(format!(
                "gbm_bo_create({width}x{height}, {}, LINEAR) failed: {why}",
                format_name(format)
            ))
        };
        let fourcc = Format::try_from(format).map_err(|e| failed(e.to_string()))?;
        let dev = self.lock();
        let bo = dev
            .create_buffer_object::<()>(
                width,
                height,
                fourcc,
                BufferObjectFlags::LINEAR | BufferObjectFlags::RENDERING,
            )
            .map_err(|errno| failed(errno.to_string()))?;
        // Plane 0 exists in every buffer.
        let (stride, offset, bpp, modifier, planes) = (
            bo.stride(),
            bo.offset(0),
            bo.bpp(),
            u64::from(bo.modifier()),
            bo.plane_count(),
        );
        drop(dev);
        Ok(GbmBuffer {
            bo: ManuallyDrop::new(bo),
            device: self.clone(),
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

/// A GBM buffer; destroyed when dropped.
pub struct GbmBuffer {
    /// Destroyed in [`Drop`] with the device mutex held.
    bo: ManuallyDrop<BufferObject<()>>,
    /// Keeps the device (and so its DRM fd) alive for the buffer.
    device: Arc<GbmDevice>,
    width: u32,
    height: u32,
    stride: u32,
    offset: u32,
    bytes_per_pixel: u32,
    modifier: u64,
    planes: u32,
}

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
        self.with_map(first, count, self.width, dir, |map, map_stride| {
            // A piece lies within the map's rows (RowLayout::pieces: with the
            // buffer's own stride the bytes between rows are its row padding,
            // else a piece is one row's pixels); `copy` checks both ends.
            for (bytes, at) in layout.pieces(&range, &rows, u64::from(map_stride)) {
                let n = (bytes.end - bytes.start) as usize;
                let mem_at = mem_offset + (bytes.start - range.start) as usize;
                copy(&mem.volatile(), mem_at, &map, at as usize, n, dir)?;
            }
            Ok(())
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
        let width = row_bytes.div_ceil(self.bytes_per_pixel.max(1));
        self.with_map(first_row, rows, width, dir, |map, stride| {
            let n = row_bytes as usize;
            for r in 0..rows as usize {
                copy(&mem.volatile(), offset + r * n, &map, r * stride as usize, n, dir)?;
            }
            Ok(())
        })
    }

    /// Maps rows `first_row .. first_row + rows`, columns `0 .. width` with
    /// `gbm_bo_map` (read-write for an upload, read for a download), calls
    /// `copy(map, map_stride)` with the mapped rectangle (from pixel (0,
    /// `first_row`) to the last row's last mapped pixel) and the map's
    /// stride (which may differ from the buffer's), and unmaps. Checks the
    /// rectangle.
    fn with_map(
        &self,
        first_row: u32,
        rows: u32,
        width: u32,
        dir: Direction,
        copy: impl for<'m> FnOnce(VolatileSlice<'m>, u32) -> Result<()>,
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
        if rows == 0 {
            return Ok(());
        }
        let bo = self.bo.as_raw().cast_mut();
        let _dev = self.device.lock();
        let mut stride = 0u32;
        let mut map_data = std::ptr::null_mut();
        // SAFETY: a live buffer (the gbm crate's, destroyed only in Drop),
        // its device mutex held; the rectangle was checked against the
        // buffer's width and height.
        let base = unsafe { gbm_sys::gbm_bo_map(bo, 0, first_row, width, rows, flags, &mut stride, &mut map_data) };
        if base.is_null() {
            let errno = std::io::Error::last_os_error();
            return Err(SysError::Invalid(format!(
                "gbm_bo_map of rows {first_row}+{rows} failed: {errno}"
            )));
        }
        // The rows are `stride` bytes apart, each `width` pixels long.
        let extent = u64::from(stride) * u64::from(rows - 1) + u64::from(width) * u64::from(self.bytes_per_pixel);
        let copied = match usize::try_from(extent) {
            // gbm_bo_map gave access to `rows` rows of `width` pixels every
            // `stride` bytes from `base` until gbm_bo_unmap below; nothing
            // in this process holds a reference into the map, and other
            // users (the GPU, importers of the dma-buf) are outside it.
            // SAFETY: `extent` bytes at `base` stay mapped while `copy` runs.
            Ok(len) => copy(unsafe { VolatileSlice::new(base.cast::<u8>(), len) }, stride),
            Err(_) => Err(SysError::Invalid(format!("a map of {extent} bytes"))),
        };
        // SAFETY: unmapping what gbm_bo_map mapped, with the same bo, once.
        unsafe { gbm_sys::gbm_bo_unmap(bo, map_data) };
        copied
    }

    /// Exports the buffer as a dma-buf.
    pub fn export_fd(&self) -> Result<OwnedFd> {
        let _dev = self.device.lock();
        self.bo
            .fd()
            .map_err(|_| SysError::Invalid(format!("gbm_bo_get_fd failed: {}", std::io::Error::last_os_error())))
    }
}

/// Copies `n` bytes between `mem` at `mem_at` and the buffer map at
/// `map_at`, the way `dir` says; both ranges are bounds-checked.
fn copy(
    mem: &VolatileSlice<'_>,
    mem_at: usize,
    map: &VolatileSlice<'_>,
    map_at: usize,
    n: usize,
    dir: Direction,
) -> Result<()> {
    let out_of = |what: &str, at: usize, len: usize| {
        SysError::Invalid(format!("{n} bytes at {at}: outside the {what} of {len} bytes"))
    };
    let m = mem
        .subslice(mem_at, n)
        .map_err(|_| out_of("mapping", mem_at, mem.len()))?;
    let b = map
        .subslice(map_at, n)
        .map_err(|_| out_of("buffer map", map_at, map.len()))?;
    match dir {
        Direction::Upload => m.copy_to_volatile_slice(b),
        Direction::Download => b.copy_to_volatile_slice(m),
    }
    Ok(())
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
        // SAFETY: `bo` is dropped (gbm_bo_destroy) once, here, with the
        // device mutex held, and not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.bo) };
    }
}
