//! EGL + GLES 3.1 behind a safe wrapper, for reading a BO's resource through
//! the GPU (issue 8): a headless context on Mesa's GBM platform (a DRM card
//! node: Mesa's `kms_swrast` counts) or its surfaceless platform, the import
//! of a dma-buf as a texture (`EGL_EXT_image_dma_buf_import`); the compute
//! passes are in `compute.rs` and `image_gl.rs`.
//!
//! libEGL and libgbm are opened at run time (khronos-egl's `dynamic`
//! feature, libloading), so the tools build and run where they are missing
//! and say so. Every `unsafe` block here is an FFI call into them.

use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use glow::HasContext;
use khronos_egl as egl;

type Egl = egl::DynamicInstance<egl::EGL1_5>;

const EGL_PLATFORM_GBM_KHR: egl::Enum = 0x31D7;
const EGL_PLATFORM_SURFACELESS_MESA: egl::Enum = 0x31DD;
const EGL_LINUX_DMA_BUF_EXT: egl::Enum = 0x3270;
pub(super) const EGL_LINUX_DRM_FOURCC_EXT: egl::Attrib = 0x3271;
pub(super) const EGL_DMA_BUF_PLANE0_FD_EXT: egl::Attrib = 0x3272;
pub(super) const EGL_DMA_BUF_PLANE0_OFFSET_EXT: egl::Attrib = 0x3273;
pub(super) const EGL_DMA_BUF_PLANE0_PITCH_EXT: egl::Attrib = 0x3274;
/// `DRM_FORMAT_ARGB8888`: 4 bytes a texel, all four kept (XRGB would make
/// the fourth byte read as 0xff).
pub const DRM_FORMAT_ARGB8888: u32 = u32::from_le_bytes(*b"AR24");

/// `glEGLImageTargetTexStorageEXT` (GL_EXT_EGL_image_storage): an
/// immutable texture, which GLES 3.1 requires for `glBindImageTexture`.
type ImageTargetTexStorage = unsafe extern "system" fn(u32, *const c_void, *const i32);

/// Why the GPU path is not available, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum GlesError {
    /// libEGL or libgbm could not be opened.
    #[error("{0}")]
    Library(String),
    /// An EGL or GL step failed.
    #[error("{step}: {detail}")]
    Step {
        /// The call that failed.
        step: &'static str,
        /// What it said.
        detail: String,
    },
    /// A needed extension is missing.
    #[error("{0} is not offered by this EGL/GL implementation")]
    Missing(&'static str),
}

pub(super) fn step(step: &'static str, detail: impl ToString) -> GlesError {
    GlesError::Step {
        step,
        detail: detail.to_string(),
    }
}

/// Where the EGL display comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platform {
    /// `EGL_PLATFORM_GBM_KHR` on a DRM card node (the node of the device
    /// that allocated the buffers to import: Mesa's `kms_swrast` maps
    /// imported dumb buffers through it).
    Gbm(PathBuf),
    /// `EGL_PLATFORM_SURFACELESS_MESA`: Mesa picks the device (llvmpipe
    /// where there is none).
    Surfaceless,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gbm(p) => write!(f, "GBM on {}", p.display()),
            Self::Surfaceless => f.write_str("surfaceless"),
        }
    }
}

/// A `gbm_device` on an open card node, from libgbm opened at run time.
struct GbmDevice {
    device: *mut c_void,
    destroy: unsafe extern "C" fn(*mut c_void),
    _lib: libloading::Library,
    _fd: OwnedFd,
}

impl GbmDevice {
    fn open(node: &Path) -> Result<Self, GlesError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(node)
            .map_err(|e| step("opening the DRM node", format!("{}: {e}", node.display())))?;
        let fd = OwnedFd::from(file);
        // SAFETY: loading libgbm runs its initialisers, which have no
        // preconditions.
        let lib = unsafe { libloading::Library::new("libgbm.so.1") }
            .map_err(|e| GlesError::Library(format!("libgbm.so.1 (Debian: libgbm1): {e}")))?;
        // SAFETY: the symbols have these C signatures (gbm.h).
        let (create, destroy) = unsafe {
            let create = *lib
                .get::<unsafe extern "C" fn(c_int) -> *mut c_void>(b"gbm_create_device\0")
                .map_err(|e| GlesError::Library(e.to_string()))?;
            let destroy = *lib
                .get::<unsafe extern "C" fn(*mut c_void)>(b"gbm_device_destroy\0")
                .map_err(|e| GlesError::Library(e.to_string()))?;
            (create, destroy)
        };
        // SAFETY: `fd` is an open DRM node that outlives the device (both
        // are owned by the returned value, the device dropped first).
        let device = unsafe { create(fd.as_raw_fd()) };
        if device.is_null() {
            return Err(step("gbm_create_device", node.display()));
        }
        Ok(Self {
            device,
            destroy,
            _lib: lib,
            _fd: fd,
        })
    }
}

impl Drop for GbmDevice {
    fn drop(&mut self) {
        // SAFETY: created by gbm_create_device, destroyed once, before the
        // library and the fd go.
        unsafe { (self.destroy)(self.device) };
    }
}

/// A current GLES 3.1 context without a surface.
pub struct Gles {
    pub(super) egl: Egl,
    pub(super) display: egl::Display,
    context: egl::Context,
    pub(super) gl: glow::Context,
    pub(super) display_extensions: String,
    /// `GL_RENDERER`, `GL_VERSION`.
    pub renderer: String,
    /// Where the display came from.
    pub platform: Platform,
    // Dropped after the display is terminated (declared last).
    _gbm: Option<GbmDevice>,
}

impl Gles {
    /// Loads libEGL, opens a display on `platform`, and makes a GLES 3.1
    /// context current on this thread.
    pub fn open(platform: Platform) -> Result<Self, GlesError> {
        // SAFETY: loading libEGL runs its initialisers, which have no
        // preconditions.
        let egl = unsafe { Egl::load_required() }
            .map_err(|e| GlesError::Library(format!("libEGL.so.1 (Debian: libegl1, libegl-mesa0): {e}")))?;
        let client = egl
            .query_string(None, egl::EXTENSIONS)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let gbm = match &platform {
            Platform::Gbm(node) => {
                if !has(&client, "EGL_KHR_platform_gbm") && !has(&client, "EGL_MESA_platform_gbm") {
                    return Err(GlesError::Missing("EGL_KHR_platform_gbm"));
                }
                Some(GbmDevice::open(node)?)
            }
            Platform::Surfaceless => {
                if !has(&client, "EGL_MESA_platform_surfaceless") {
                    return Err(GlesError::Missing("EGL_MESA_platform_surfaceless"));
                }
                None
            }
        };
        let (kind, native) = match &gbm {
            Some(g) => (EGL_PLATFORM_GBM_KHR, g.device),
            None => (EGL_PLATFORM_SURFACELESS_MESA, egl::DEFAULT_DISPLAY),
        };
        // SAFETY: `native` is a live gbm_device (kept in `_gbm`) or
        // EGL_DEFAULT_DISPLAY, as the platform requires.
        let display = unsafe { egl.get_platform_display(kind, native, &[egl::ATTRIB_NONE]) }
            .map_err(|e| step("eglGetPlatformDisplay", e))?;
        egl.initialize(display).map_err(|e| step("eglInitialize", e))?;
        let display_extensions = egl
            .query_string(Some(display), egl::EXTENSIONS)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // From here on a failure terminates the display before the gbm
        // device (whose DRI screen the display uses) and libEGL go.
        let made = (|| -> Result<(egl::Context, glow::Context, String), GlesError> {
            if !has(&display_extensions, "EGL_KHR_surfaceless_context") {
                return Err(GlesError::Missing("EGL_KHR_surfaceless_context"));
            }
            egl.bind_api(egl::OPENGL_ES_API).map_err(|e| step("eglBindAPI", e))?;
            let config = if has(&display_extensions, "EGL_KHR_no_config_context") {
                // SAFETY: EGL_NO_CONFIG_KHR (a null config) is valid with
                // EGL_KHR_no_config_context.
                unsafe { egl::Config::from_ptr(std::ptr::null_mut()) }
            } else {
                egl.choose_first_config(display, &[egl::RENDERABLE_TYPE, egl::OPENGL_ES3_BIT, egl::NONE])
                    .map_err(|e| step("eglChooseConfig", e))?
                    .ok_or(GlesError::Missing("an EGL config for OpenGL ES 3"))?
            };
            let context = egl
                .create_context(
                    display,
                    config,
                    None,
                    &[egl::CONTEXT_MAJOR_VERSION, 3, egl::CONTEXT_MINOR_VERSION, 1, egl::NONE],
                )
                .map_err(|e| step("eglCreateContext (OpenGL ES 3.1)", e))?;
            if let Err(e) = egl.make_current(display, None, None, Some(context)) {
                let _ = egl.destroy_context(display, context);
                return Err(step("eglMakeCurrent", e));
            }
            // SAFETY: the context is current on this thread; the loader
            // returns entry points of that context (or null for missing ones).
            let gl = unsafe {
                glow::Context::from_loader_function(|s| {
                    egl.get_proc_address(s).map_or(std::ptr::null(), |f| f as *const c_void)
                })
            };
            // SAFETY: a current context; plain queries.
            let renderer = unsafe {
                format!(
                    "{} ({})",
                    gl.get_parameter_string(glow::RENDERER),
                    gl.get_parameter_string(glow::VERSION)
                )
            };
            Ok((context, gl, renderer))
        })();
        let (context, gl, renderer) = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = egl.make_current(display, None, None, None);
                let _ = egl.terminate(display);
                drop(gbm);
                return Err(e);
            }
        };
        Ok(Self {
            egl,
            display,
            context,
            gl,
            display_extensions,
            renderer,
            platform,
            _gbm: gbm,
        })
    }

    /// Makes this context current on the calling thread (a checker may hold
    /// two: GL calls must reach the one whose objects they name).
    pub(super) fn current(&self) -> Result<(), GlesError> {
        self.egl
            .make_current(self.display, None, None, Some(self.context))
            .map_err(|e| step("eglMakeCurrent", e))
    }

    /// Why a dma-buf cannot be imported on this display (`None`: it can).
    pub fn dmabuf_import_unavailable(&self) -> Option<String> {
        if !has(&self.display_extensions, "EGL_EXT_image_dma_buf_import") {
            return Some(format!(
                "EGL_EXT_image_dma_buf_import is not offered on the {} display ({})",
                self.platform, self.renderer
            ));
        }
        if !self.gl.supported_extensions().contains("GL_EXT_EGL_image_storage") {
            return Some(format!("GL_EXT_EGL_image_storage is not offered by {}", self.renderer));
        }
        None
    }

    /// Imports a linear single-plane dma-buf of `rows` rows of `width`
    /// 4-byte texels, `pitch` bytes apart, as an immutable texture.
    pub fn import_dmabuf(
        &self,
        fd: BorrowedFd<'_>,
        width: u32,
        rows: u32,
        pitch: u32,
    ) -> Result<glow::Texture, GlesError> {
        if let Some(why) = self.dmabuf_import_unavailable() {
            return Err(step("importing the dma-buf", why));
        }
        self.current()?;
        let attrs = [
            egl::WIDTH as egl::Attrib,
            width as egl::Attrib,
            egl::HEIGHT as egl::Attrib,
            rows as egl::Attrib,
            EGL_LINUX_DRM_FOURCC_EXT,
            DRM_FORMAT_ARGB8888 as egl::Attrib,
            EGL_DMA_BUF_PLANE0_FD_EXT,
            fd.as_raw_fd() as egl::Attrib,
            EGL_DMA_BUF_PLANE0_OFFSET_EXT,
            0,
            EGL_DMA_BUF_PLANE0_PITCH_EXT,
            pitch as egl::Attrib,
            egl::ATTRIB_NONE,
        ];
        let imported = self.texture_from_dmabuf(&attrs, "eglCreateImage (EGL_LINUX_DMA_BUF_EXT, ARGB8888)")?;
        // The shader reads a copy the GPU makes of the imported texture
        // (glCopyImageSubData): Mesa 22.3's kms_swrast keeps an imported
        // buffer as a display target, and binding that as a compute image
        // crashes llvmpipe at dispatch (SIGSEGV, seen on bochs-drm and vgem
        // in the VM tier); the copy reads every byte of the dma-buf.
        // SAFETY: a current context; both textures are ours, same size and
        // format class (RGBA8).
        unsafe {
            let copy = self.gl.create_texture().map_err(|e| step("glGenTextures", e))?;
            self.gl.bind_texture(glow::TEXTURE_2D, Some(copy));
            self.gl
                .tex_storage_2d(glow::TEXTURE_2D, 1, glow::RGBA8, width as i32, rows as i32);
            self.gl.copy_image_sub_data(
                imported,
                glow::TEXTURE_2D,
                0,
                0,
                0,
                0,
                copy,
                glow::TEXTURE_2D,
                0,
                0,
                0,
                0,
                width as i32,
                rows as i32,
                1,
            );
            self.gl.delete_texture(imported);
            trace("glCopyImageSubData done");
            self.gl_ok("glCopyImageSubData (imported → texture)").map(|()| copy)
        }
    }

    /// Creates an EGLImage of a dma-buf from `attrs` (EGL_LINUX_DMA_BUF_EXT
    /// attributes, `EGL_NONE`-terminated) and makes it the storage of a new
    /// immutable texture (`glEGLImageTargetTexStorageEXT`); the image itself
    /// is destroyed again (the texture keeps the buffer). `what` names the
    /// eglCreateImage call in errors.
    pub(super) fn texture_from_dmabuf(
        &self,
        attrs: &[egl::Attrib],
        what: &'static str,
    ) -> Result<glow::Texture, GlesError> {
        self.current()?;
        let storage: ImageTargetTexStorage = self.proc("glEGLImageTargetTexStorageEXT")?;
        // SAFETY: EGL_NO_CONTEXT and a null client buffer are what
        // EGL_LINUX_DMA_BUF_EXT requires; the fd is only read during the call.
        let image = unsafe {
            self.egl.create_image(
                self.display,
                egl::Context::from_ptr(egl::NO_CONTEXT),
                EGL_LINUX_DMA_BUF_EXT,
                egl::ClientBuffer::from_ptr(std::ptr::null_mut()),
                attrs,
            )
        }
        .map_err(|e| step(what, e))?;
        trace("eglCreateImage done");
        // SAFETY: a current context; `image` is a live EGLImage; the texture
        // keeps the buffer referenced after the image is destroyed.
        let imported = unsafe {
            let tex = self.gl.create_texture().map_err(|e| step("glGenTextures", e));
            if let Ok(tex) = tex {
                self.gl.bind_texture(glow::TEXTURE_2D, Some(tex));
                storage(glow::TEXTURE_2D, image.as_ptr(), std::ptr::null());
            }
            tex.and_then(|t| self.gl_ok("glEGLImageTargetTexStorageEXT").map(|()| t))
        };
        let _ = self.egl.destroy_image(self.display, image);
        trace("glEGLImageTargetTexStorageEXT done");
        imported
    }

    /// Uploads `bytes` (`rows` rows of `pitch` bytes, `width` texels used
    /// of each) into an immutable RGBA8 texture: the path where no dma-buf
    /// can be imported (the shader still reads every byte on the GPU).
    pub fn upload(&self, bytes: &[u8], width: u32, rows: u32, pitch: u32) -> Result<glow::Texture, GlesError> {
        if pitch % 4 != 0 || (rows as usize) * (pitch as usize) > bytes.len() || width * 4 > pitch {
            return Err(step(
                "uploading",
                format!("{} bytes cannot hold {rows} rows of pitch {pitch}", bytes.len()),
            ));
        }
        self.current()?;
        // SAFETY: a current context; `bytes` holds every row read (checked above).
        unsafe {
            let tex = self.gl.create_texture().map_err(|e| step("glGenTextures", e))?;
            self.gl.bind_texture(glow::TEXTURE_2D, Some(tex));
            self.gl
                .tex_storage_2d(glow::TEXTURE_2D, 1, glow::RGBA8, width as i32, rows as i32);
            self.gl.pixel_store_i32(glow::UNPACK_ROW_LENGTH, (pitch / 4) as i32);
            self.gl.pixel_store_i32(glow::UNPACK_ALIGNMENT, 4);
            self.gl.tex_sub_image_2d(
                glow::TEXTURE_2D,
                0,
                0,
                0,
                width as i32,
                rows as i32,
                glow::RGBA,
                glow::UNSIGNED_BYTE,
                glow::PixelUnpackData::Slice(Some(bytes)),
            );
            self.gl.pixel_store_i32(glow::UNPACK_ROW_LENGTH, 0);
            self.gl_ok("glTexSubImage2D").map(|()| tex)
        }
    }

    /// Deletes a texture made by [`Gles::import_dmabuf`] or [`Gles::upload`].
    pub fn delete_texture(&self, tex: glow::Texture) {
        if self.current().is_ok() {
            // SAFETY: our context is current; `tex` is one of ours.
            unsafe { self.gl.delete_texture(tex) };
        }
    }

    /// The largest texture side (rows per import).
    pub fn max_texture_size(&self) -> u32 {
        if self.current().is_err() {
            return 0;
        }
        // SAFETY: our context is current; a plain query.
        unsafe { self.gl.get_parameter_i32(glow::MAX_TEXTURE_SIZE) }.max(0) as u32
    }

    pub(super) fn gl_ok(&self, what: &'static str) -> Result<(), GlesError> {
        // SAFETY: a current context; a plain query.
        match unsafe { self.gl.get_error() } {
            glow::NO_ERROR => Ok(()),
            e => Err(step(what, format!("GL error {e:#x}"))),
        }
    }

    /// An extension entry point, as the function type `T`.
    fn proc<T: Copy>(&self, name: &'static str) -> Result<T, GlesError> {
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<fn()>());
        let f = self.egl.get_proc_address(name).ok_or(GlesError::Missing(name))?;
        // SAFETY: `T` is the function pointer type of `name` (the callers'
        // aliases are the Khronos prototypes), the same size as `f`.
        Ok(unsafe { std::mem::transmute_copy::<extern "system" fn(), T>(&f) })
    }
}

impl Drop for Gles {
    fn drop(&mut self) {
        let _ = self.egl.make_current(self.display, None, None, None);
        let _ = self.egl.destroy_context(self.display, self.context);
        let _ = self.egl.terminate(self.display);
    }
}

/// Progress of the GPU steps on stderr with `COHMEM_VERIFY_TRACE` set (a
/// driver that crashes takes the process with it; this shows where).
pub(super) fn trace(what: &str) {
    if std::env::var_os("COHMEM_VERIFY_TRACE").is_some() {
        eprintln!("cohmem-verify: {what}");
    }
}

pub(super) fn has(list: &str, name: &str) -> bool {
    list.split_ascii_whitespace().any(|e| e == name)
}
