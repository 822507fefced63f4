//! Checking an image BO's GPU copy *as the client's image* (issue 16): the
//! resource's dma-buf is imported into EGL with the image's own width,
//! height, fourcc, pitch, offset and modifier, `shaders/image_compare.comp`
//! compares every texel with what the CPU expects from the BO's bytes (in
//! the channel order the GPU returns for that fourcc) and checksums each
//! 64-pixel row segment, and the CPU sums the differing pixels per 64x64
//! tile, takes their bounding box, and compares each segment's checksum
//! with its own. Where no import is possible, the resource's bytes are
//! uploaded with the image's pitch instead, and the report says why.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;

use cohmem_client::{fourcc, Bo, ImageInfo, Rect};
use cohmem_sys::mapping::SharedMapping;

use super::image_gl::{Segment, SEGMENT};
pub use super::pixels::*;
use super::{is_dmabuf, Gles, GpuCheckError, GpuChecker, ReadPath};

/// What [`GpuChecker::check_image`] found.
#[derive(Debug, Clone)]
pub struct ImageCheck {
    /// The EGL platform used.
    pub platform: String,
    /// `GL_RENDERER (GL_VERSION)`.
    pub renderer: String,
    /// Import or upload.
    pub path: ReadPath,
    /// The layout the GPU was given (the export's).
    pub info: ImageInfo,
    /// Whether the modifier was passed to EGL (`false`: the reason is in
    /// `notes`).
    pub modifier_passed: bool,
    /// The channel order under which the GPU's checksums agree with the
    /// CPU's.
    pub order: TexelOrder,
    /// Pixels compared.
    pub pixels: u64,
    /// 64x64 tiles (the last ones cut at the image's edges).
    pub tiles: u64,
    /// Pixels that differ from the CPU's expectation.
    pub differing_pixels: u64,
    /// Differing pixels per tile `(column, row)` (tiles with none left out).
    pub differing_tiles: BTreeMap<(u32, u32), u64>,
    /// The bounding box of the differing pixels.
    pub pixel_bbox: Option<Rect>,
    /// Tiles with a row segment whose GPU checksum differs from the CPU's.
    pub checksum_tiles: BTreeSet<(u32, u32)>,
    /// The bounding box of those tiles, clipped to the image.
    pub checksum_bbox: Option<Rect>,
    /// How the check got here (import attempts that failed, the modifier).
    pub notes: Vec<String>,
}

impl ImageCheck {
    /// True when the GPU sees exactly the BO's pixels but for `corrupted`:
    /// every pixel in it differs and none outside, the differing pixels'
    /// bounding box is `corrupted`, and the checksums differ in exactly
    /// its tiles. With `None`: nothing differs at all.
    pub fn finds(&self, corrupted: Option<&Rect>) -> bool {
        let Some(r) = corrupted else {
            return self.differing_pixels == 0 && self.checksum_tiles.is_empty();
        };
        let tiles = tiles_of(r);
        self.differing_pixels == r.area()
            && self.pixel_bbox.as_ref() == Some(r)
            && self.differing_tiles.keys().copied().collect::<BTreeSet<_>>() == tiles
            && self.checksum_tiles == tiles
            && self.checksum_bbox == Some(tile_aligned(r, self.info.width, self.info.height))
    }
}

/// Sums what the shader found per tile: (differing pixels per tile, their
/// bounding box, tiles whose checksums differ from `cpu_sums`).
type Summary = (BTreeMap<(u32, u32), u64>, Option<Rect>, BTreeSet<(u32, u32)>);

fn summarise(segments: &[Segment], cpu_sums: &[u32], width: u32) -> Summary {
    let per_row = width.div_ceil(SEGMENT) as usize;
    let (mut tiles, mut bbox, mut sums) = (BTreeMap::new(), None::<Rect>, BTreeSet::new());
    for (i, (seg, &cpu)) in segments.iter().zip(cpu_sums).enumerate() {
        let (y, s) = ((i / per_row) as u32, (i % per_row) as u32);
        let tile = (s, y / TILE);
        if seg.checksum != cpu {
            sums.insert(tile);
        }
        if seg.differing > 0 {
            *tiles.entry(tile).or_insert(0) += u64::from(seg.differing);
            let r = Rect {
                x: seg.first,
                y,
                w: seg.last.saturating_sub(seg.first) + 1,
                h: 1,
            };
            bbox = Some(bbox.map_or(r, |b| b.union(&r)));
        }
    }
    (tiles, bbox, sums)
}

/// The texture the GPU reads: an import, or an upload of these bytes.
enum Observed<'a> {
    Import(std::os::fd::BorrowedFd<'a>, bool),
    Upload(&'a [u8]),
}

/// Compares `observed` with the CPU's expectation from `bo_bytes` on `gles`.
fn compare(
    gles: &Gles,
    observed: Observed<'_>,
    info: &ImageInfo,
    bo_bytes: &[u8],
    path: ReadPath,
    notes: Vec<String>,
) -> Result<ImageCheck, GpuCheckError> {
    let max = gles.max_texture_size();
    if info.width > max || info.height > max {
        return Err(GpuCheckError::ImageTooLarge {
            width: info.width,
            height: info.height,
            max,
        });
    }
    let gl_err =
        |e: super::GlesError| GpuCheckError::NoGpu(vec![format!("{} on {}: {e}", path_word(&path), gles.platform)]);
    let (tex, modifier_passed) = match observed {
        Observed::Import(fd, with_modifier) => (gles.import_image(fd, info, with_modifier), with_modifier),
        Observed::Upload(bytes) => (gles.upload_image(bytes, info), false),
    };
    let tex = tex.map_err(gl_err)?;
    let want = expected_texels(bo_bytes, info, TexelOrder::Format);
    let run = |order: TexelOrder| -> Result<(Vec<Segment>, Vec<u32>), super::GlesError> {
        let texels = match order {
            TexelOrder::Format => want.clone(),
            TexelOrder::SwappedRb => expected_texels(bo_bytes, info, order),
        };
        // The expectation is uploaded in the fourcc's order; the shader
        // swaps it for the other.
        let expected = gles.upload_expected(&want, info.width, info.height)?;
        let segments = gles.compare_image(tex, expected, info.width, info.height, order == TexelOrder::SwappedRb);
        gles.delete_texture(expected);
        Ok((segments?, segment_checksums(&texels, info.width)))
    };
    let mut order = TexelOrder::Format;
    let mut found = run(order);
    // A driver that returns .r and .b swapped: every segment's checksum
    // differs; take the order under which fewer do.
    if let Ok((segments, sums)) = &found {
        let bad = segments.iter().zip(sums).filter(|(s, c)| s.checksum != **c).count();
        if bad > 0 {
            let swapped = run(TexelOrder::SwappedRb);
            if let Ok((s2, c2)) = &swapped {
                if s2.iter().zip(c2).filter(|(s, c)| s.checksum != **c).count() < bad {
                    order = TexelOrder::SwappedRb;
                    found = swapped;
                }
            }
        }
    }
    gles.delete_texture(tex);
    let (segments, sums) = found.map_err(gl_err)?;
    let (differing_tiles, pixel_bbox, checksum_tiles) = summarise(&segments, &sums, info.width);
    let checksum_bbox = checksum_tiles
        .iter()
        .map(|&(tx, ty)| {
            tile_aligned(
                &Rect {
                    x: tx * TILE,
                    y: ty * TILE,
                    w: 1,
                    h: 1,
                },
                info.width,
                info.height,
            )
        })
        .reduce(|a, b| a.union(&b));
    Ok(ImageCheck {
        platform: gles.platform.to_string(),
        renderer: gles.renderer.clone(),
        path,
        info: *info,
        modifier_passed,
        order,
        pixels: u64::from(info.width) * u64::from(info.height),
        tiles: u64::from(info.width.div_ceil(TILE)) * u64::from(info.height.div_ceil(TILE)),
        differing_pixels: differing_tiles.values().sum(),
        differing_tiles,
        pixel_bbox,
        checksum_tiles,
        checksum_bbox,
        notes,
    })
}

/// Compares `observed` (the bytes a GPU buffer holds, laid out as `info`
/// describes from byte 0), uploaded with the image's pitch, with what the
/// CPU expects from `bo_bytes` (the same layout), on `gles`: the check of
/// [`GpuChecker::check_image`] where no dma-buf is imported.
pub fn compare_upload(
    gles: &Gles,
    observed: &[u8],
    info: &ImageInfo,
    bo_bytes: &[u8],
) -> Result<ImageCheck, GpuCheckError> {
    let path = ReadPath::Upload {
        why_not_imported: "bytes given".into(),
    };
    compare(gles, Observed::Upload(observed), info, bo_bytes, path, Vec::new())
}

fn path_word(path: &ReadPath) -> &'static str {
    match path {
        ReadPath::DmaBufImport => "dma-buf import",
        ReadPath::Upload { .. } => "upload",
    }
}

impl GpuChecker {
    /// Checks resource 0 of image BO `bo` through the GPU against the BO's
    /// pixels: its dma-buf imported as the image on the daemon's card node,
    /// or else its bytes uploaded with the image's pitch (then, with
    /// `corrupt_upload`, that rectangle of the uploaded copy is corrupted
    /// first: a resource that cannot be written behind the daemon's back
    /// still proves that the check finds it).
    pub fn check_image(&mut self, bo: &Bo, corrupt_upload: Option<&Rect>) -> Result<ImageCheck, GpuCheckError> {
        let res = bo
            .export_resource(0)
            .map_err(|e| GpuCheckError::NoGpu(vec![format!("the daemon cannot export the resource: {e}")]))?;
        let info = res
            .image
            .or_else(|| bo.image())
            .ok_or_else(|| GpuCheckError::NoGpu(vec![format!("BO {} is not an image BO", bo.id())]))?;
        if !matches!(info.fourcc, fourcc::XRGB8888 | fourcc::ARGB8888) {
            return Err(GpuCheckError::NoGpu(vec![format!(
                "format {} is not checked (XR24 and AR24 are)",
                fourcc::name(info.fourcc)
            )]));
        }
        let mut bo_bytes = vec![0u8; info.end() as usize];
        bo.read_at(0, &mut bo_bytes)?;
        let mut notes = Vec::new();
        let dmabuf = is_dmabuf(res.fd.as_fd());
        if !dmabuf {
            notes.push("the resource is not a dma-buf (the software backend exports a sealed memfd)".to_string());
        }
        // 1. The dma-buf itself, imported as the image on the daemon's device.
        match (dmabuf, self.card.clone()) {
            (true, None) => notes.push("no DRM card node known for the daemon's device (--device)".to_string()),
            (true, Some(card)) => {
                self.open_import(&card);
                match self.import.as_ref() {
                    Some(Ok(gles)) => match gles.dmabuf_import_unavailable() {
                        Some(why) => notes.push(why),
                        None => {
                            self.say("importing the dma-buf as the image and running image_compare.comp");
                            // With the modifier where EGL takes one; without
                            // it (linear is what an import assumes) where
                            // that fails or EGL takes none.
                            let mut tries = vec![false];
                            match gles.modifiers_unavailable() {
                                Some(why) => notes.push(why),
                                None => tries.insert(0, true),
                            }
                            for with_modifier in tries {
                                let observed = Observed::Import(res.fd.as_fd(), with_modifier);
                                match compare(gles, observed, &info, &bo_bytes, ReadPath::DmaBufImport, notes.clone()) {
                                    Ok(check) => return Ok(check),
                                    Err(GpuCheckError::NoGpu(e)) => notes.extend(e),
                                    Err(e) => return Err(e),
                                }
                            }
                        }
                    },
                    Some(Err(e)) => notes.push(format!("EGL on GBM {}: {e}", card.display())),
                    None => {}
                }
            }
            (false, _) => {}
        }
        // 2. An upload of the resource's bytes on whatever GPU EGL offers.
        self.open_upload();
        let gles = match self.upload.as_ref() {
            Some(Ok(g)) => g,
            Some(Err(e)) => {
                notes.push(format!("EGL (surfaceless): {e}"));
                return Err(GpuCheckError::NoGpu(notes));
            }
            None => return Err(GpuCheckError::NoGpu(notes)),
        };
        self.say("uploading the resource's bytes with the image's pitch and running image_compare.comp");
        let map = SharedMapping::map(res.fd.as_fd(), info.end(), 0, false)?;
        let mut bytes = vec![0u8; map.len()];
        map.read_at(0, &mut bytes)?;
        let why_not_imported = notes.join("; ");
        if let Some(r) = corrupt_upload {
            corrupt_rect(&mut bytes, &info, r);
            notes.push(format!(
                "rectangle {},{} {}x{} corrupted in the uploaded copy (the resource itself cannot be written)",
                r.x, r.y, r.w, r.h
            ));
        }
        compare(
            gles,
            Observed::Upload(&bytes),
            &info,
            &bo_bytes,
            ReadPath::Upload { why_not_imported },
            notes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupted_rectangle_is_summarised_exactly() {
        let i = ImageInfo {
            width: 200,
            height: 100,
            fourcc: fourcc::XRGB8888,
            pitch: 800,
            offset: 0,
            modifier: 0,
        };
        let clean: Vec<u8> = (0..i.end()).map(|b| (b * 7 % 251) as u8).collect();
        let mut bad = clean.clone();
        let r = Rect {
            x: 60,
            y: 10,
            w: 10,
            h: 60,
        };
        corrupt_rect(&mut bad, &i, &r);
        let (want, got) = (
            expected_texels(&clean, &i, TexelOrder::Format),
            expected_texels(&bad, &i, TexelOrder::Format),
        );
        // What the shader would report, computed on the CPU.
        let segments: Vec<Segment> = got
            .chunks(4 * 200)
            .zip(want.chunks(4 * 200))
            .flat_map(|(g, w)| g.chunks(4 * 64).zip(w.chunks(4 * 64)).enumerate().collect::<Vec<_>>())
            .map(|(s, (g, w))| {
                let diff: Vec<u32> = (0..g.len() as u32 / 4)
                    .filter(|&k| g[k as usize * 4..][..4] != w[k as usize * 4..][..4])
                    .map(|k| s as u32 * 64 + k)
                    .collect();
                Segment {
                    differing: diff.len() as u32,
                    first: diff.first().copied().unwrap_or(u32::MAX),
                    last: diff.last().copied().unwrap_or(0),
                    checksum: segment_checksums(g, g.len() as u32 / 4)[0],
                }
            })
            .collect();
        let (tiles, bbox, sums) = summarise(&segments, &segment_checksums(&want, 200), 200);
        assert_eq!(bbox, Some(r));
        assert_eq!(tiles.values().sum::<u64>(), r.area());
        assert_eq!(sums, tiles_of(&r));
        assert_eq!(tiles.keys().copied().collect::<BTreeSet<_>>(), tiles_of(&r));
    }
}
