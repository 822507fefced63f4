//! Reading a BO's GPU resource back *through the GPU* (issue 8): the
//! resource is imported into EGL as a dma-buf (or, where it cannot be,
//! uploaded as a texture, which says why), `shaders/page_checksum.comp`
//! folds each page into one FNV-1a checksum on the GPU, and the same
//! checksums are computed from the BO's bytes on the CPU. A page whose sums
//! differ is a page the GPU does not see as the client wrote it.
//!
//! An image BO (issue 16) is checked as the image itself ([`image`]): its
//! dma-buf imported with its own width, height, fourcc, pitch, offset and
//! modifier, compared pixel by pixel on the GPU; [`draw`] is what
//! `cohmem-verify --image` draws, [`behind`] how it corrupts the buffer
//! behind the daemon's back.

pub mod behind;
mod compute;
pub mod draw;
pub mod egl;
pub mod image;
mod image_gl;
mod pixels;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use cohmem_client::{Bo, ClientError};
use cohmem_sys::mapping::SharedMapping;

pub use egl::{Gles, GlesError, Platform};
pub use image::{ImageCheck, TexelOrder};
pub use image_gl::{Segment, IMAGE_COMPARE_SHADER, SEGMENT};

/// The checksum shader (GLSL ES 3.10 compute), as shipped in `shaders/`.
pub const PAGE_CHECKSUM_SHADER: &str = include_str!("../../../shaders/page_checksum.comp");

const FNV_OFFSET: u32 = 2_166_136_261;
const FNV_PRIME: u32 = 16_777_619;

/// How 4 bytes of the resource reach the shader as one texel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    /// `.r .g .b .a` are the bytes in memory order (what the shader assumes).
    Memory,
    /// `.r` and `.b` swapped (a driver that presents ARGB8888 as BGRA).
    SwappedRb,
}

/// FNV-1a over the little-endian 32-bit words of `page`, as the shader
/// computes it for a texel order of `order`.
pub fn page_checksum(page: &[u8], order: ChannelOrder) -> u32 {
    page.chunks_exact(4).fold(FNV_OFFSET, |h, b| {
        let w = match order {
            ChannelOrder::Memory => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            ChannelOrder::SwappedRb => u32::from_le_bytes([b[2], b[1], b[0], b[3]]),
        };
        (h ^ w).wrapping_mul(FNV_PRIME)
    })
}

/// How the GPU got the resource's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPath {
    /// The resource's dma-buf imported with `EGL_EXT_image_dma_buf_import`:
    /// the GPU reads the very buffer the daemon uploads into.
    DmaBufImport,
    /// The bytes copied from a mapping of the resource into a texture
    /// (the shader still reads them on the GPU), because no import was
    /// possible, for this reason.
    Upload {
        /// Why the resource could not be imported.
        why_not_imported: String,
    },
}

/// What [`GpuChecker::check`] found.
#[derive(Debug, Clone)]
pub struct GpuCheck {
    /// The EGL platform used.
    pub platform: String,
    /// `GL_RENDERER (GL_VERSION)`.
    pub renderer: String,
    /// Import or upload.
    pub path: ReadPath,
    /// The channel order under which the GPU's sums agree with the CPU's.
    pub order: ChannelOrder,
    /// Pages checked.
    pub pages: u64,
    /// Pages whose GPU checksum differs from the BO's bytes.
    pub mismatched: Vec<u64>,
    /// Import attempts that failed before the path that worked.
    pub notes: Vec<String>,
}

/// Why a GPU check could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum GpuCheckError {
    /// Talking to the daemon failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Mapping the resource failed.
    #[error("mapping the resource: {0}")]
    Map(#[from] cohmem_sys::SysError),
    /// No EGL/GLES path works here; every attempt and why.
    #[error("no GPU path: {}", .0.join("; "))]
    NoGpu(Vec<String>),
    /// The image is larger than one texture can be.
    #[error("a {width}x{height} image does not fit one texture (GL_MAX_TEXTURE_SIZE {max})")]
    ImageTooLarge {
        /// Width of the image.
        width: u32,
        /// Height of the image.
        height: u32,
        /// The limit.
        max: u32,
    },
    /// The resource is larger than one texture can be.
    #[error("{pages} pages do not fit one texture (GL_MAX_TEXTURE_SIZE {max} rows)")]
    TooLarge {
        /// Pages of the resource.
        pages: u64,
        /// The limit.
        max: u32,
    },
}

/// True when `fd` is a dma-buf (the kernel names its file `/dmabuf:…` or
/// `anon_inode:dmabuf`).
pub fn is_dmabuf(fd: BorrowedFd<'_>) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| {
            let p = p.to_string_lossy();
            p.starts_with("/dmabuf:") || p.starts_with("anon_inode:dmabuf")
        })
        .unwrap_or(false)
}

/// The DRM card node of the device named in a daemon's backend
/// description (`drm:/dev/dri/card1 …`, or `gbm:/dev/dri/renderD128 …`,
/// whose card node sysfs names), for the GBM platform: Mesa's kms_swrast
/// maps imported dumb buffers only through the card node of their device.
pub fn card_node_of(backend: &str) -> Option<PathBuf> {
    let start = backend.find("/dev/dri/")?;
    let rest = &backend[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '/'))
        .unwrap_or(rest.len());
    let node = &rest[..end];
    let name = node.strip_prefix("/dev/dri/")?;
    if name.starts_with("card") {
        return Some(PathBuf::from(node));
    }
    // A render node: its device's card node, from sysfs.
    let mut cards: Vec<String> = std::fs::read_dir(format!("/sys/class/drm/{name}/device/drm"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("card"))
        .collect();
    cards.sort();
    cards.first().map(|c| PathBuf::from(format!("/dev/dri/{c}")))
}

/// Checks BOs' resources through the GPU, keeping its EGL contexts open
/// between checks (creating one costs seconds on an emulated machine).
pub struct GpuChecker {
    card: Option<PathBuf>,
    import: Option<Result<Gles, String>>,
    upload: Option<Result<Gles, String>>,
    /// Progress lines go to stderr.
    pub verbose: bool,
}

impl GpuChecker {
    /// A checker that imports on `card`, the DRM card node of the daemon's
    /// device (GBM platform); without one, or where its import fails, the
    /// surfaceless platform and an upload are used, and the report says why.
    pub fn new(card: Option<PathBuf>) -> Self {
        Self {
            card,
            import: None,
            upload: None,
            verbose: false,
        }
    }

    /// Opens the EGL context on the GBM platform of `card` unless it was
    /// opened (or failed) before.
    fn open_import(&mut self, card: &Path) {
        if self.import.is_none() {
            self.say(&format!("opening EGL on GBM {}", card.display()));
            let t0 = std::time::Instant::now();
            self.import = Some(Gles::open(Platform::Gbm(card.to_owned())).map_err(|e| e.to_string()));
            self.say(&format!("EGL ready after {:.1?}", t0.elapsed()));
        }
    }

    /// Opens the surfaceless EGL context for uploads unless it was opened
    /// (or failed) before.
    fn open_upload(&mut self) {
        if self.upload.is_none() {
            self.say("opening EGL (surfaceless)");
            let t0 = std::time::Instant::now();
            self.upload = Some(Gles::open(Platform::Surfaceless).map_err(|e| e.to_string()));
            self.say(&format!("EGL ready after {:.1?}", t0.elapsed()));
        }
    }

    fn say(&self, what: &str) {
        if self.verbose {
            eprintln!("cohmem-verify: {what}");
        }
    }

    /// Checks resource 0 of `bo` through the GPU against the BO's bytes.
    pub fn check(&mut self, bo: &Bo) -> Result<GpuCheck, GpuCheckError> {
        // A backend that cannot export its buffers leaves nothing to import
        // or map (bochs-drm on Linux 6.1 has no PRIME export).
        let res = bo
            .export_resource(0)
            .map_err(|e| GpuCheckError::NoGpu(vec![format!("the daemon cannot export the resource: {e}")]))?;
        let ps = cohmem_sys::page_size();
        let pages = res.size / ps;
        let width = (ps / 4) as u32;
        let pitch = res.pitch as u32;
        let mut bo_bytes = vec![0u8; (pages * ps) as usize];
        bo.read_at(res.offset, &mut bo_bytes)?;
        let mut notes = Vec::new();
        let dmabuf = is_dmabuf(res.fd.as_fd());
        if !dmabuf {
            notes.push("the resource is not a dma-buf (the software backend exports a sealed memfd)".to_string());
        }
        // 1. The dma-buf itself, imported on the daemon's device.
        match (dmabuf, self.card.clone()) {
            (true, None) => notes.push("no DRM card node known for the daemon's device (--device)".to_string()),
            (true, Some(card)) => {
                self.open_import(&card);
                match self.import.as_ref() {
                    Some(Ok(gles)) => match gles.dmabuf_import_unavailable() {
                        Some(why) => notes.push(why),
                        None => {
                            self.say("importing the dma-buf and running page_checksum.comp");
                            let tex = gles.import_dmabuf(res.fd.as_fd(), width, pages as u32, pitch);
                            match run(gles, tex, pages, width) {
                                Ok(sums) => {
                                    return Ok(compare(gles, ReadPath::DmaBufImport, &sums, &bo_bytes, ps, notes))
                                }
                                Err(e) => notes.push(format!("dma-buf import on {}: {e}", gles.platform)),
                            }
                        }
                    },
                    Some(Err(e)) => notes.push(format!("EGL on GBM {}: {e}", card.display())),
                    None => {}
                }
            }
            (false, _) => {}
        }
        // 2. An upload on whatever GPU EGL offers.
        self.open_upload();
        match self.upload.as_ref() {
            Some(Ok(gles)) => {
                self.say("uploading the resource's bytes and running page_checksum.comp");
                let map = SharedMapping::map(res.fd.as_fd(), pages.saturating_sub(1) * res.pitch + ps, 0, false)?;
                let mut bytes = vec![0u8; map.len()];
                map.read_at(0, &mut bytes)?;
                bytes.resize((pages * res.pitch) as usize, 0);
                let tex = gles.upload(&bytes, width, pages as u32, pitch);
                match run(gles, tex, pages, width) {
                    Ok(sums) => {
                        let why_not_imported = notes.join("; ");
                        return Ok(compare(
                            gles,
                            ReadPath::Upload { why_not_imported },
                            &sums,
                            &bo_bytes,
                            ps,
                            Vec::new(),
                        ));
                    }
                    Err(e) => notes.push(format!("upload on {}: {e}", gles.platform)),
                }
            }
            Some(Err(e)) => notes.push(format!("EGL (surfaceless): {e}")),
            None => {}
        }
        Err(GpuCheckError::NoGpu(notes))
    }
}

/// Runs the checksum shader over an imported or uploaded texture.
fn run(gles: &Gles, tex: Result<glow::Texture, GlesError>, pages: u64, width: u32) -> Result<Vec<u32>, GpuCheckError> {
    let max = gles.max_texture_size();
    if pages > u64::from(max) {
        return Err(GpuCheckError::TooLarge { pages, max });
    }
    let tex = tex.map_err(|e| GpuCheckError::NoGpu(vec![e.to_string()]))?;
    let sums = gles.page_checksums(tex, pages as u32, width);
    gles.delete_texture(tex);
    sums.map_err(|e| GpuCheckError::NoGpu(vec![e.to_string()]))
}

/// Compares the GPU's sums with the CPU's under the channel order that
/// agrees on more pages (a driver may present ARGB8888 as BGRA; a
/// corrupted page differs under both).
fn compare(gles: &Gles, path: ReadPath, gpu: &[u32], bo: &[u8], ps: u64, notes: Vec<String>) -> GpuCheck {
    let differing = |order| -> Vec<u64> {
        bo.chunks_exact(ps as usize)
            .zip(gpu)
            .enumerate()
            .filter(|(_, (page, &sum))| page_checksum(page, order) != sum)
            .map(|(i, _)| i as u64)
            .collect()
    };
    let memory = differing(ChannelOrder::Memory);
    let swapped = differing(ChannelOrder::SwappedRb);
    let (order, mismatched) = if swapped.len() < memory.len() {
        (ChannelOrder::SwappedRb, swapped)
    } else {
        (ChannelOrder::Memory, memory)
    };
    GpuCheck {
        platform: gles.platform.to_string(),
        renderer: gles.renderer.clone(),
        path,
        order,
        pages: gpu.len() as u64,
        mismatched,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_checksum_is_fnv1a_over_little_endian_words() {
        // Two words: 0x04030201, 0x08070605.
        let page = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let h = ((FNV_OFFSET ^ 0x0403_0201).wrapping_mul(FNV_PRIME) ^ 0x0807_0605).wrapping_mul(FNV_PRIME);
        assert_eq!(page_checksum(&page, ChannelOrder::Memory), h);
        let h = ((FNV_OFFSET ^ 0x0401_0203).wrapping_mul(FNV_PRIME) ^ 0x0805_0607).wrapping_mul(FNV_PRIME);
        assert_eq!(page_checksum(&page, ChannelOrder::SwappedRb), h);
        // One byte changed anywhere changes the sum.
        let mut other = page;
        other[6] ^= 1;
        assert_ne!(
            page_checksum(&other, ChannelOrder::Memory),
            page_checksum(&page, ChannelOrder::Memory)
        );
    }

    #[test]
    fn card_nodes_are_found_in_backend_descriptions() {
        assert_eq!(
            card_node_of("drm:/dev/dri/card1 (vgem) [requested with --gpu drm:/dev/dri/card1]"),
            Some(PathBuf::from("/dev/dri/card1"))
        );
        assert_eq!(card_node_of("soft [no DRM device]"), None);
    }
}
