//! The embedded software GPU: device memory emulated as a daemon-private
//! memfd per resource.
//!
//! Uploads copy from the BO's daemon mapping into the resource mapping, so
//! the "GPU copy" is a separate buffer that tests compare byte for byte with
//! the BO. [`GpuResource::export_fd`] hands out the memfd sealed with
//! `F_SEAL_FUTURE_WRITE`: an importer can map and read it but never write it.
//!
//! Images ([`GpuBackend::create_image`]) follow an emulated device pitch
//! rule, like a GPU's pitch alignment: a row is `width × bytes per pixel`
//! rounded up to [`PITCH_ALIGN`] (64) bytes, the first row at offset 0,
//! linear. A 1000-pixel XRGB8888 row is thus 4000 bytes of pixels in a
//! pitch of 4032: padded, and no page multiple, as on real devices. Width
//! and height are each at most [`MAX_IMAGE_DIMENSION`]; XRGB8888, ARGB8888
//! and RGB565 are accepted.
//!
//! This module also holds what every backend's images share:
//! `image_bytes_per_pixel` (the refusals before any device is asked) and
//! `clip` (runs cut at the image's end).

use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};

use cohmem_proto::{fourcc, ImageInfo};
use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::Memfd;

use super::{GpuBackend, GpuError, GpuResource};

/// The soft backend's row alignment in bytes (its "device pitch rule").
pub const PITCH_ALIGN: u64 = 64;

/// Most pixels in a row, and most rows, of a soft image.
pub const MAX_IMAGE_DIMENSION: u32 = 16384;

/// Bytes per pixel of an image request, or its refusal: a width or height
/// of 0, or a format the protocol does not know.
pub(super) fn image_bytes_per_pixel(width: u32, height: u32, format: u32) -> Result<u32, GpuError> {
    if width == 0 || height == 0 {
        return Err(GpuError::image_refused(
            width,
            height,
            format,
            "an image needs at least one pixel",
        ));
    }
    fourcc::bytes_per_pixel(format).ok_or_else(|| {
        GpuError::image_refused(
            width,
            height,
            format,
            "unknown format (known: XR24 XRGB8888, AR24 ARGB8888, RG16 RGB565)",
        )
    })
}

/// The part of `run` below `end` (an image resource's [`GpuResource::size`]:
/// runs reach to the BO's page end, past the last pixel).
pub(super) fn clip(run: &Range<u64>, end: u64) -> Option<Range<u64>> {
    let clipped = run.start..run.end.min(end);
    (!clipped.is_empty()).then_some(clipped)
}

/// The software backend.
#[derive(Debug, Default)]
pub struct SoftGpu;

impl SoftGpu {
    /// A new software backend.
    pub fn new() -> Self {
        Self
    }
}

impl GpuBackend for SoftGpu {
    fn name(&self) -> String {
        "soft".into()
    }

    fn create_resource(&self, size: u64) -> Result<Box<dyn GpuResource>, GpuError> {
        SoftResource::allocate(size, None)
    }

    fn create_image(&self, width: u32, height: u32, format: u32) -> Result<Box<dyn GpuResource>, GpuError> {
        let cpp = image_bytes_per_pixel(width, height, format)?;
        for (what, n) in [("width", width), ("height", height)] {
            if n > MAX_IMAGE_DIMENSION {
                return Err(GpuError::image_refused(
                    width,
                    height,
                    format,
                    format!("{what} {n} exceeds the soft backend's limit {MAX_IMAGE_DIMENSION}"),
                ));
            }
        }
        // At most 16384 × 4 bytes, rounded to 64: fits in u32.
        let pitch = (u64::from(width) * u64::from(cpp)).next_multiple_of(PITCH_ALIGN) as u32;
        let image = ImageInfo::linear(width, height, format, pitch);
        SoftResource::allocate(image.end(), Some(image))
    }
}

struct SoftResource {
    memfd: Memfd,
    mapping: SharedMapping,
    /// Bytes that hold data: the memfd's size for a byte resource, the end
    /// of the last row's pixels for an image (the memfd is that rounded up
    /// to pages).
    size: u64,
    image: Option<ImageInfo>,
}

impl SoftResource {
    /// A resource of `size` bytes in a memfd of `size` (a page multiple)
    /// or, for an image, `size` rounded up to pages.
    fn allocate(size: u64, image: Option<ImageInfo>) -> Result<Box<dyn GpuResource>, GpuError> {
        let ps = cohmem_sys::page_size();
        let len = if image.is_some() { size.div_ceil(ps) * ps } else { size };
        let memfd = Memfd::create("cohmem-soft-vram", len, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)?;
        let mapping = SharedMapping::map(memfd.as_fd(), len, 0, true)?;
        // Writable mapping first, then forbid any new write access.
        memfd.add_seals(libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL)?;
        Ok(Box::new(SoftResource {
            memfd,
            mapping,
            size,
            image,
        }))
    }

    /// `runs` as they are copied: whole for a byte resource (a run past
    /// its end is an error, as it always was), cut at the last pixel for
    /// an image.
    fn runs<'a>(&self, runs: &'a [Range<u64>]) -> impl Iterator<Item = Range<u64>> + 'a {
        let end = if self.image.is_some() { self.size } else { u64::MAX };
        runs.iter().filter_map(move |r| clip(r, end))
    }
}

impl GpuResource for SoftResource {
    fn size(&self) -> u64 {
        self.size
    }

    fn image(&self) -> Option<ImageInfo> {
        self.image
    }

    fn upload(&self, src: &SharedMapping, src_base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
        for r in self.runs(runs) {
            let len = (r.end - r.start) as usize;
            src.copy_to((src_base + r.start) as usize, &self.mapping, r.start as usize, len)?;
        }
        Ok(())
    }

    fn download(&self, dst: &SharedMapping, dst_base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
        for r in self.runs(runs) {
            let len = (r.end - r.start) as usize;
            self.mapping
                .copy_to(r.start as usize, dst, (dst_base + r.start) as usize, len)?;
        }
        Ok(())
    }

    fn export_fd(&self) -> Result<OwnedFd, GpuError> {
        Ok(self.memfd.try_clone_fd()?)
    }

    fn export_writable(&self) -> bool {
        // Sealed against writes (F_SEAL_FUTURE_WRITE): see the test below.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_copies_only_the_runs_and_export_is_read_only() {
        let ps = cohmem_sys::page_size();
        let bo = Memfd::create_sealed("bo", 4 * ps).unwrap();
        let src = SharedMapping::map(bo.as_fd(), 4 * ps, 0, true).unwrap();
        src.fill(0, (4 * ps) as usize, 0xaa).unwrap();
        let res = SoftGpu::new().create_resource(4 * ps).unwrap();
        let one_page_run = std::iter::once(ps..2 * ps).collect::<Vec<_>>();
        res.upload(&src, 0, &one_page_run).unwrap();
        let fd = res.export_fd().unwrap();
        let view = SharedMapping::map(fd.as_fd(), 4 * ps, 0, false).unwrap();
        let mut b = [0u8; 1];
        view.read_at(ps as usize, &mut b).unwrap();
        assert_eq!(b[0], 0xaa);
        view.read_at(0, &mut b).unwrap();
        assert_eq!(b[0], 0);
        assert!(
            SharedMapping::map(fd.as_fd(), 4 * ps, 0, true).is_err(),
            "export must not be writable"
        );
    }

    /// A BO of `size` rounded up to pages, every byte its offset's low 8
    /// bits plus `salt`, with its mapping.
    fn patterned_bo(size: u64, salt: u8) -> (Memfd, SharedMapping) {
        let ps = cohmem_sys::page_size();
        let len = size.div_ceil(ps) * ps;
        let bo = Memfd::create_sealed("bo", len).unwrap();
        let map = SharedMapping::map(bo.as_fd(), len, 0, true).unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(salt)).collect();
        map.write_at(0, &bytes).unwrap();
        (bo, map)
    }

    fn read_all(fd: &OwnedFd, len: u64) -> Vec<u8> {
        let view = SharedMapping::map(fd.as_fd(), len, 0, false).unwrap();
        let mut out = vec![0u8; len as usize];
        view.read_at(0, &mut out).unwrap();
        out
    }

    #[test]
    fn image_rows_are_padded_to_64_bytes_and_runs_copy_exactly_their_bytes() {
        let ps = cohmem_sys::page_size();
        let res = SoftGpu::new().create_image(1000, 3, fourcc::XRGB8888).unwrap();
        let info = res.image().expect("an image resource describes its layout");
        assert_eq!(
            info,
            ImageInfo {
                width: 1000,
                height: 3,
                fourcc: fourcc::XRGB8888,
                pitch: 4032,
                offset: 0,
                modifier: cohmem_proto::MODIFIER_LINEAR,
            }
        );
        assert_eq!(res.size(), 2 * 4032 + 4000);
        assert_eq!(res.pitch(), ps, "BO offset b is buffer offset b");
        let bo_len = res.size().div_ceil(ps) * ps;
        let (_bo, src) = patterned_bo(bo_len, 7);
        // Row 1 from column 10 into row 2's column 5, and one pixel of row 0.
        let runs = [4032 + 40..2 * 4032 + 24, 100..104];
        res.upload(&src, 0, &runs).unwrap();
        let got = read_all(&res.export_fd().unwrap(), bo_len);
        for (i, &b) in got.iter().enumerate() {
            let i = i as u64;
            let want = if runs.iter().any(|r| r.contains(&i)) {
                (i as u8).wrapping_add(7)
            } else {
                0
            };
            assert_eq!(b, want, "byte {i}");
        }
    }

    #[test]
    fn runs_past_the_last_pixel_are_clipped_both_ways() {
        let ps = cohmem_sys::page_size();
        let res = SoftGpu::new().create_image(1000, 3, fourcc::ARGB8888).unwrap();
        let size = res.size();
        let bo_len = size.div_ceil(ps) * ps;
        assert!(bo_len > size, "the test needs bytes past the image");
        let (_bo, src) = patterned_bo(bo_len, 1);
        // The whole BO up to its page end, and a run wholly past the image.
        res.upload(&src, 0, &[0..bo_len, size + 8..bo_len]).unwrap();
        let got = read_all(&res.export_fd().unwrap(), bo_len);
        assert!(got[..size as usize]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i as u8).wrapping_add(1)));
        assert!(got[size as usize..].iter().all(|&b| b == 0), "nothing past the image");
        // READBACK into a zeroed BO: the image's bytes come back, no more.
        let back = Memfd::create_sealed("back", bo_len).unwrap();
        let dst = SharedMapping::map(back.as_fd(), bo_len, 0, true).unwrap();
        res.download(&dst, 0, std::slice::from_ref(&(0..bo_len))).unwrap();
        let mut out = vec![0u8; bo_len as usize];
        dst.read_at(0, &mut out).unwrap();
        assert_eq!(&out[..size as usize], &got[..size as usize]);
        assert!(out[size as usize..].iter().all(|&b| b == 0));
    }

    #[test]
    fn rgb565_has_two_bytes_a_pixel() {
        let res = SoftGpu::new().create_image(1000, 2, fourcc::RGB565).unwrap();
        let info = res.image().unwrap();
        assert_eq!(info.bytes_per_pixel(), 2);
        assert_eq!(info.pitch, 2048, "2000 bytes rounded up to 64");
        assert_eq!(res.size(), 2048 + 2000);
        // 16384 is allowed on both axes.
        let big = SoftGpu::new().create_image(16384, 1, fourcc::XRGB8888).unwrap();
        assert_eq!(big.image().unwrap().pitch, 65536);
    }

    #[test]
    fn unknown_formats_and_sizes_outside_the_limits_are_refused() {
        let gpu = SoftGpu::new();
        let refusal = |w, h, f| match gpu.create_image(w, h, f) {
            Err(GpuError::ImageRefused { reason, .. }) => reason,
            Err(e) => panic!("{w}x{h}: not an ImageRefused: {e}"),
            Ok(_) => panic!("{w}x{h} was accepted"),
        };
        let nv12 = u32::from_le_bytes(*b"NV12");
        assert!(refusal(64, 64, nv12).contains("unknown format"));
        assert!(refusal(0, 64, fourcc::XRGB8888).contains("at least one pixel"));
        assert!(refusal(64, 0, fourcc::XRGB8888).contains("at least one pixel"));
        assert_eq!(
            refusal(70000, 64, fourcc::XRGB8888),
            "width 70000 exceeds the soft backend's limit 16384"
        );
        assert_eq!(
            refusal(64, 16385, fourcc::XRGB8888),
            "height 16385 exceeds the soft backend's limit 16384"
        );
        let text = gpu.create_image(64, 64, nv12).err().unwrap().to_string();
        assert!(text.starts_with("64x64 NV12 image refused: "), "{text}");
    }
}
