//! The GL side of checking an image BO (issue 16): its dma-buf imported as
//! the client's image (`EGL_LINUX_DMA_BUF_EXT` with the image's own width,
//! height, fourcc, pitch, offset and, where EGL takes one, modifier), or,
//! where nothing can be imported, its bytes uploaded with the image's pitch
//! (`GL_UNPACK_ROW_LENGTH`) and swizzled to read as an import of that
//! fourcc does; the CPU's expectation as an integer texture; and
//! `shaders/image_compare.comp` comparing the two.

use std::os::fd::{AsRawFd, BorrowedFd};

use cohmem_client::{fourcc, ImageInfo};
use glow::HasContext;
use khronos_egl as egl;

use super::egl::{
    has, step, EGL_DMA_BUF_PLANE0_FD_EXT, EGL_DMA_BUF_PLANE0_OFFSET_EXT, EGL_DMA_BUF_PLANE0_PITCH_EXT,
    EGL_LINUX_DRM_FOURCC_EXT,
};
use super::{Gles, GlesError};

const EGL_DMA_BUF_PLANE0_MODIFIER_LO_EXT: egl::Attrib = 0x3443;
const EGL_DMA_BUF_PLANE0_MODIFIER_HI_EXT: egl::Attrib = 0x3444;

/// The compare shader (GLSL ES 3.10 compute), as shipped in `shaders/`.
pub const IMAGE_COMPARE_SHADER: &str = include_str!("../../../shaders/image_compare.comp");

/// Pixels per row segment of the compare shader (and tile side).
pub const SEGMENT: u32 = 64;

/// What one invocation of the compare shader found in its row segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Pixels that differ from the expectation.
    pub differing: u32,
    /// First differing column (`u32::MAX` when none).
    pub first: u32,
    /// Last differing column.
    pub last: u32,
    /// FNV-1a over the observed texels.
    pub checksum: u32,
}

impl Gles {
    /// Why a dma-buf cannot be imported with an explicit modifier on this
    /// display (`None`: it can).
    pub fn modifiers_unavailable(&self) -> Option<String> {
        (!has(&self.display_extensions, "EGL_EXT_image_dma_buf_import_modifiers")).then(|| {
            format!(
                "EGL_EXT_image_dma_buf_import_modifiers is not offered on the {} display (a linear buffer is \
                 imported without naming its modifier)",
                self.platform
            )
        })
    }

    /// Imports an image BO's dma-buf as the image `info` describes: its
    /// width, height, fourcc, pitch and offset, and its modifier when
    /// `with_modifier` (EGL_EXT_image_dma_buf_import_modifiers). The texture
    /// is sampled, never bound as an image unit (see the shader).
    pub fn import_image(
        &self,
        fd: BorrowedFd<'_>,
        info: &ImageInfo,
        with_modifier: bool,
    ) -> Result<glow::Texture, GlesError> {
        if let Some(why) = self.dmabuf_import_unavailable() {
            return Err(step("importing the dma-buf", why));
        }
        let mut attrs = vec![
            egl::WIDTH as egl::Attrib,
            info.width as egl::Attrib,
            egl::HEIGHT as egl::Attrib,
            info.height as egl::Attrib,
            EGL_LINUX_DRM_FOURCC_EXT,
            info.fourcc as egl::Attrib,
            EGL_DMA_BUF_PLANE0_FD_EXT,
            fd.as_raw_fd() as egl::Attrib,
            EGL_DMA_BUF_PLANE0_OFFSET_EXT,
            info.offset as egl::Attrib,
            EGL_DMA_BUF_PLANE0_PITCH_EXT,
            info.pitch as egl::Attrib,
        ];
        if with_modifier {
            attrs.extend([
                EGL_DMA_BUF_PLANE0_MODIFIER_LO_EXT,
                (info.modifier & 0xffff_ffff) as egl::Attrib,
                EGL_DMA_BUF_PLANE0_MODIFIER_HI_EXT,
                (info.modifier >> 32) as egl::Attrib,
            ]);
        }
        attrs.push(egl::ATTRIB_NONE);
        let what = if with_modifier {
            "eglCreateImage (EGL_LINUX_DMA_BUF_EXT, the image's fourcc, pitch, offset and modifier)"
        } else {
            "eglCreateImage (EGL_LINUX_DMA_BUF_EXT, the image's fourcc, pitch and offset)"
        };
        let tex = self.texture_from_dmabuf(&attrs, what)?;
        self.nearest(tex)
    }

    /// Uploads the bytes of an image laid out as `info` describes (`bytes`
    /// from the buffer's start, rows `pitch` apart from `offset`) into an
    /// RGBA8 texture that samples as an import of its fourcc does: `.r` is
    /// byte 2 of a pixel, `.b` byte 0, and XRGB8888's `.a` reads 1.0.
    pub fn upload_image(&self, bytes: &[u8], info: &ImageInfo) -> Result<glow::Texture, GlesError> {
        let alpha = match info.fourcc {
            fourcc::XRGB8888 => glow::ONE,
            fourcc::ARGB8888 => glow::ALPHA,
            other => {
                return Err(step(
                    "uploading the image",
                    format!("format {} is not checked (XR24 and AR24 are)", fourcc::name(other)),
                ))
            }
        };
        if info.pitch % 4 != 0 || info.pitch < info.width * 4 || (bytes.len() as u64) < info.end() {
            return Err(step(
                "uploading the image",
                format!("{} bytes cannot hold {info:?}", bytes.len()),
            ));
        }
        self.current()?;
        let gl = &self.gl;
        let (w, h) = (info.width as i32, info.height as i32);
        // SAFETY: a current context; `bytes` holds every row read (checked
        // above: the last row ends at `info.end()`).
        unsafe {
            let tex = gl.create_texture().map_err(|e| step("glGenTextures", e))?;
            gl.bind_texture(glow::TEXTURE_2D, Some(tex));
            gl.tex_storage_2d(glow::TEXTURE_2D, 1, glow::RGBA8, w, h);
            gl.pixel_store_i32(glow::UNPACK_ROW_LENGTH, (info.pitch / 4) as i32);
            gl.pixel_store_i32(glow::UNPACK_ALIGNMENT, 4);
            gl.tex_sub_image_2d(
                glow::TEXTURE_2D,
                0,
                0,
                0,
                w,
                h,
                glow::RGBA,
                glow::UNSIGNED_BYTE,
                glow::PixelUnpackData::Slice(Some(&bytes[info.offset as usize..info.end() as usize])),
            );
            gl.pixel_store_i32(glow::UNPACK_ROW_LENGTH, 0);
            gl.tex_parameter_i32(glow::TEXTURE_2D, glow::TEXTURE_SWIZZLE_R, glow::BLUE as i32);
            gl.tex_parameter_i32(glow::TEXTURE_2D, glow::TEXTURE_SWIZZLE_B, glow::RED as i32);
            gl.tex_parameter_i32(glow::TEXTURE_2D, glow::TEXTURE_SWIZZLE_A, alpha as i32);
            if let Err(e) = self.gl_ok("glTexSubImage2D (the image, GL_UNPACK_ROW_LENGTH = pitch / 4)") {
                gl.delete_texture(tex);
                return Err(e);
            }
            self.nearest(tex)
        }
    }

    /// Uploads `width` × `height` tightly packed RGBA texels (what the CPU
    /// expects the GPU to read) into an RGBA8UI texture.
    pub fn upload_expected(&self, texels: &[u8], width: u32, height: u32) -> Result<glow::Texture, GlesError> {
        if texels.len() as u64 != u64::from(width) * u64::from(height) * 4 {
            return Err(step(
                "uploading the expectation",
                format!("{} bytes for {width}x{height}", texels.len()),
            ));
        }
        self.current()?;
        let gl = &self.gl;
        // SAFETY: a current context; `texels` holds the whole image (checked).
        unsafe {
            let tex = gl.create_texture().map_err(|e| step("glGenTextures", e))?;
            gl.bind_texture(glow::TEXTURE_2D, Some(tex));
            gl.tex_storage_2d(glow::TEXTURE_2D, 1, glow::RGBA8UI, width as i32, height as i32);
            gl.pixel_store_i32(glow::UNPACK_ROW_LENGTH, 0);
            gl.pixel_store_i32(glow::UNPACK_ALIGNMENT, 4);
            gl.tex_sub_image_2d(
                glow::TEXTURE_2D,
                0,
                0,
                0,
                width as i32,
                height as i32,
                glow::RGBA_INTEGER,
                glow::UNSIGNED_BYTE,
                glow::PixelUnpackData::Slice(Some(texels)),
            );
            if let Err(e) = self.gl_ok("glTexSubImage2D (the expectation, RGBA8UI)") {
                gl.delete_texture(tex);
                return Err(e);
            }
            self.nearest(tex)
        }
    }

    /// Runs `shaders/image_compare.comp` over the `width` × `height` image
    /// `observed` against `expected` (with `.r` and `.b` of the expectation
    /// swapped when `swap_rb`): one [`Segment`] per 64-pixel row segment,
    /// row-major.
    pub fn compare_image(
        &self,
        observed: glow::Texture,
        expected: glow::Texture,
        width: u32,
        height: u32,
        swap_rb: bool,
    ) -> Result<Vec<Segment>, GlesError> {
        self.current()?;
        let gl = &self.gl;
        let program = self.compute_program(IMAGE_COMPARE_SHADER, "image_compare.comp")?;
        let segments = width.div_ceil(SEGMENT);
        let n = segments as usize * height as usize;
        // SAFETY: a current context; the program and both textures are ours
        // (the samplers' units are fixed by their layout bindings).
        let out = unsafe {
            gl.use_program(Some(program));
            gl.active_texture(glow::TEXTURE0);
            gl.bind_texture(glow::TEXTURE_2D, Some(observed));
            gl.active_texture(glow::TEXTURE1);
            gl.bind_texture(glow::TEXTURE_2D, Some(expected));
            gl.active_texture(glow::TEXTURE0);
            let groups = (n as u64).div_ceil(64);
            let out = match u32::try_from(groups) {
                Ok(g) if g <= 65535 => self.dispatch(
                    &[width, height, segments, u32::from(swap_rb)],
                    n * 16,
                    g,
                    "image_compare.comp",
                ),
                _ => Err(step(
                    "image_compare.comp",
                    format!("{width}x{height} needs {groups} work groups, more than 65535"),
                )),
            };
            gl.active_texture(glow::TEXTURE1);
            gl.bind_texture(glow::TEXTURE_2D, None);
            gl.active_texture(glow::TEXTURE0);
            gl.bind_texture(glow::TEXTURE_2D, None);
            gl.delete_program(program);
            out
        }?;
        Ok(out
            .chunks_exact(4)
            .map(|c| Segment {
                differing: c[0],
                first: c[1],
                last: c[2],
                checksum: c[3],
            })
            .collect())
    }

    /// Nearest filtering, no mipmaps (texelFetch ignores filters, but an
    /// integer texture is incomplete without NEAREST).
    fn nearest(&self, tex: glow::Texture) -> Result<glow::Texture, GlesError> {
        // SAFETY: a current context; `tex` is ours and bound to TEXTURE_2D.
        unsafe {
            self.gl.bind_texture(glow::TEXTURE_2D, Some(tex));
            self.gl
                .tex_parameter_i32(glow::TEXTURE_2D, glow::TEXTURE_MIN_FILTER, glow::NEAREST as i32);
            self.gl
                .tex_parameter_i32(glow::TEXTURE_2D, glow::TEXTURE_MAG_FILTER, glow::NEAREST as i32);
            match self.gl_ok("glTexParameteri (NEAREST)") {
                Ok(()) => Ok(tex),
                Err(e) => {
                    self.gl.delete_texture(tex);
                    Err(e)
                }
            }
        }
    }
}
