//! Image BOs for the tools (DESIGN.md §8): naming formats and sizes on the
//! command line, `cohmemctl image`, writing an image's pixels as a PNG, and
//! checking that an image BO's GPU copy holds exactly the BO's pixels.

use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsFd;

use anyhow::{bail, Context};
use cohmem_client::{fourcc, Bo, ClientError, Connection, ImageInfo};
use cohmem_sys::mapping::SharedMapping;

/// The formats an image BO may have, as `(short name, long name, fourcc)`.
pub const FORMATS: [(&str, &str, u32); 3] = [
    ("XR24", "XRGB8888", fourcc::XRGB8888),
    ("AR24", "ARGB8888", fourcc::ARGB8888),
    ("RG16", "RGB565", fourcc::RGB565),
];

/// Parses a format: its fourcc (`XR24`, `AR24`, `RG16`) or its DRM name
/// (`XRGB8888`, `ARGB8888`, `RGB565`), in any case.
pub fn parse_format(s: &str) -> Result<u32, String> {
    FORMATS
        .iter()
        .find(|(short, long, _)| s.eq_ignore_ascii_case(short) || s.eq_ignore_ascii_case(long))
        .map(|f| f.2)
        .ok_or_else(|| format!("unknown format {s:?} (XR24 = XRGB8888, AR24 = ARGB8888, RG16 = RGB565)"))
}

/// The DRM name of a format (`XRGB8888`), or its fourcc where unknown.
pub fn format_name(code: u32) -> String {
    FORMATS
        .iter()
        .find(|f| f.2 == code)
        .map_or_else(|| fourcc::name(code), |f| f.1.to_string())
}

/// Parses `WIDTHxHEIGHT` (`640x360`), both at least 1.
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("size {s:?} is not WIDTHxHEIGHT (e.g. 640x360)");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let w: u32 = w.trim().parse().map_err(|_| bad())?;
    let h: u32 = h.trim().parse().map_err(|_| bad())?;
    if w == 0 || h == 0 {
        return Err(format!("size {s:?}: width and height must be at least 1"));
    }
    Ok((w, h))
}

/// The image's layout as JSON (for `--json` outputs).
pub fn info_json(i: &ImageInfo) -> serde_json::Value {
    serde_json::json!({
        "width": i.width, "height": i.height, "fourcc": fourcc::name(i.fourcc),
        "format": format_name(i.fourcc), "bytes_per_pixel": i.bytes_per_pixel(),
        "pitch": i.pitch, "offset": i.offset, "modifier": i.modifier, "end": i.end(),
    })
}

/// The PNG colour type a format is written as, and its bytes per PNG pixel.
fn png_color(code: u32) -> anyhow::Result<(png::ColorType, usize)> {
    Ok(match code {
        fourcc::XRGB8888 | fourcc::RGB565 => (png::ColorType::Rgb, 3),
        fourcc::ARGB8888 => (png::ColorType::Rgba, 4),
        other => bail!("format {} cannot be written as PNG", fourcc::name(other)),
    })
}

/// Converts one row of device pixels (`src`, little endian as in
/// `drm_fourcc.h`) to 8-bit RGB or RGBA (`dst`).
fn convert_row(code: u32, src: &[u8], dst: &mut Vec<u8>) {
    dst.clear();
    match code {
        // B, G, R, X in memory: X is ignored.
        fourcc::XRGB8888 => {
            for p in src.chunks_exact(4) {
                dst.extend_from_slice(&[p[2], p[1], p[0]]);
            }
        }
        // B, G, R, A in memory.
        fourcc::ARGB8888 => {
            for p in src.chunks_exact(4) {
                dst.extend_from_slice(&[p[2], p[1], p[0], p[3]]);
            }
        }
        // A little-endian u16, R:G:B 5:6:5 from the top bit; each channel
        // expanded by repeating its high bits at the bottom, as pixman does
        // (0x1f → 0xff, 0x10 → 0x84).
        fourcc::RGB565 => {
            for p in src.chunks_exact(2) {
                let v = u16::from_le_bytes([p[0], p[1]]);
                let (r, g, b) = ((v >> 11) as u8, ((v >> 5) & 0x3f) as u8, (v & 0x1f) as u8);
                dst.extend_from_slice(&[(r << 3) | (r >> 2), (g << 2) | (g >> 4), (b << 3) | (b >> 2)]);
            }
        }
        _ => {}
    }
}

/// Writes the image laid out as `info` describes as an 8-bit PNG to `out`
/// (XRGB8888 → RGB, ARGB8888 → RGBA, RGB565 → RGB expanded). `read_at`
/// reads bytes at an offset of the BO's layout (a `pread` of a snapshot's
/// memfd); each row is read at `offset + y * pitch`.
pub fn write_png(
    info: &ImageInfo,
    mut read_at: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    out: impl Write,
) -> anyhow::Result<()> {
    let (color, png_bpp) = png_color(info.fourcc)?;
    let row_bytes = info.width as usize * info.bytes_per_pixel() as usize;
    let mut encoder = png::Encoder::new(out, info.width, info.height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("writing the PNG header")?;
    let mut stream = writer.stream_writer().context("starting the PNG image data")?;
    let mut row = vec![0u8; row_bytes];
    let mut rgb = Vec::with_capacity(info.width as usize * png_bpp);
    for y in 0..info.height {
        let at = info.pixel_offset(0, y);
        read_at(at, &mut row).with_context(|| format!("reading row {y} at byte {at}"))?;
        convert_row(info.fourcc, &row, &mut rgb);
        stream.write_all(&rgb).context("writing the PNG image data")?;
    }
    stream.finish().context("finishing the PNG")?;
    Ok(())
}

/// Writes a snapshot's memfd (`SNAPSHOT` of an image BO, whose report
/// gave `info`) to the file `path` as a PNG, reading each row with `pread`.
pub fn snapshot_to_png(memfd: &std::fs::File, info: &ImageInfo, path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let out = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(out);
    write_png(info, |at, buf| memfd.read_exact_at(buf, at), &mut out)
        .with_context(|| format!("writing {}", path.display()))?;
    out.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A modifier's name (`linear`) or its hex value.
fn modifier_name(m: u64) -> String {
    if m == cohmem_client::MODIFIER_LINEAR {
        "linear".into()
    } else {
        format!("{m:#018x}")
    }
}

/// `cohmemctl image`: creates a `width` × `height` image BO in `code` on
/// the daemon of `conn` and prints the layout its GPU backend chose, and
/// what an export of it states. The BO dies with the connection.
pub fn describe_new_image(conn: &Connection, width: u32, height: u32, code: u32, as_json: bool) -> anyhow::Result<()> {
    let backend = conn.stats(0)?.daemon.backend;
    let bo = conn
        .create_image(width, height, code)
        .with_context(|| format!("creating a {width}x{height} {} image BO", format_name(code)))?;
    let info = bo
        .image()
        .context("the daemon answered CREATE_IMAGE without an image layout")?;
    let export = bo.export_resource(0);
    let ps = cohmem_sys::page_size();
    if as_json {
        let export = match &export {
            Ok(r) => serde_json::json!({
                "size": r.size, "offset": r.offset, "pitch": r.pitch,
                "image": r.image.as_ref().map(info_json),
            }),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        let out = serde_json::json!({
            "bo": bo.id(), "backend": backend, "size": bo.size(), "pages": bo.size().div_ceil(ps),
            "image": info_json(&info), "export": export, "kept": false,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let row = u64::from(info.width) * u64::from(info.bytes_per_pixel());
    println!(
        "image BO {}: {}x{} {} ('{}', {} bytes/pixel) on the {backend} backend",
        bo.id(),
        info.width,
        info.height,
        format_name(info.fourcc),
        fourcc::name(info.fourcc),
        info.bytes_per_pixel()
    );
    println!(
        "  pitch     {} bytes (a row's pixels take {row}, {} bytes of padding)",
        info.pitch,
        u64::from(info.pitch).saturating_sub(row)
    );
    println!("  offset    {} (first row)", info.offset);
    println!(
        "  size      {} bytes to the last pixel; the BO has {} bytes ({} pages)",
        info.end(),
        bo.size(),
        bo.size().div_ceil(ps)
    );
    println!("  modifier  {}", modifier_name(info.modifier));
    match &export {
        Ok(r) => println!(
            "  export    {} bytes, pitch {}, {}",
            r.size,
            r.pitch,
            match &r.image {
                Some(i) if *i == info => "describes the same image".to_string(),
                Some(i) => format!("describes another layout: {i:?}"),
                None => "without an image description".to_string(),
            }
        ),
        Err(e) => println!("  export    not available: {e}"),
    }
    println!("Nothing is kept: the BO is released when this command's connection closes.");
    Ok(())
}

/// What comparing an image BO with its GPU copy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuCheck {
    /// Every pixel byte of the GPU copy equals the BO's.
    Identical,
    /// They differ (what and where).
    Differs(String),
    /// The GPU copy could not be read here (why); nothing was claimed.
    NotChecked(String),
}

impl GpuCheck {
    /// One word for outputs: `identical`, `DIFFERS` or `not checked`.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Identical => "identical",
            Self::Differs(_) => "DIFFERS",
            Self::NotChecked(_) => "not checked",
        }
    }

    /// The detail of a difference or of why nothing was checked.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Identical => None,
            Self::Differs(d) | Self::NotChecked(d) => Some(d),
        }
    }
}

/// Compares the pixels of image BO `bo` (read with `pread` on its memfd)
/// with its exported GPU resource 0, mapped read-only (the software
/// backend's sealed memfd, a DRM or GBM dma-buf) and read with the layout
/// the export states. Padding between rows is not compared.
pub fn check_image_gpu_copy(bo: &Bo) -> Result<GpuCheck, ClientError> {
    let Some(info) = bo.image() else {
        return Err(ClientError::Protocol(format!("BO {} is not an image BO", bo.id())));
    };
    let res = match bo.export_resource(0) {
        Ok(r) => r,
        Err(e) => return Ok(GpuCheck::NotChecked(format!("the resource could not be exported: {e}"))),
    };
    let layout = res.image.unwrap_or(info);
    if (layout.width, layout.height, layout.fourcc, layout.pitch, layout.offset)
        != (info.width, info.height, info.fourcc, info.pitch, info.offset)
    {
        return Ok(GpuCheck::Differs(format!(
            "the export describes another layout than the BO: {layout:?} vs {info:?}"
        )));
    }
    // A memfd's or a dma-buf's size, whichever it is.
    let size = res
        .fd
        .try_clone()
        .map(std::fs::File::from)
        .and_then(|mut f| f.seek(SeekFrom::End(0)));
    let size = match size {
        Ok(s) if s >= info.end() => s,
        Ok(s) => {
            return Ok(GpuCheck::Differs(format!(
                "the exported buffer has {s} bytes, the image needs {}",
                info.end()
            )))
        }
        Err(e) => return Ok(GpuCheck::NotChecked(format!("the export's size is unknown: {e}"))),
    };
    let gpu = match SharedMapping::map(res.fd.as_fd(), size, 0, false) {
        Ok(m) => m,
        Err(e) => return Ok(GpuCheck::NotChecked(format!("the export cannot be mapped here: {e}"))),
    };
    let row_bytes = info.width as usize * info.bytes_per_pixel() as usize;
    let (mut want, mut got) = (vec![0u8; row_bytes], vec![0u8; row_bytes]);
    let (mut rows, mut first) = (0u32, None);
    for y in 0..info.height {
        let at = info.pixel_offset(0, y);
        bo.read_at(at, &mut want)?;
        gpu.read_at(at as usize, &mut got)?;
        if want != got {
            rows += 1;
            if first.is_none() {
                let byte = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(0);
                first = Some((byte as u32 / info.bytes_per_pixel().max(1), y));
            }
        }
    }
    Ok(match first {
        None => GpuCheck::Identical,
        Some((x, y)) => GpuCheck::Differs(format!(
            "{rows} {} differ, the first at pixel ({x}, {y})",
            if rows == 1 { "row" } else { "rows" }
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_sizes_parse() {
        assert_eq!(parse_format("xr24"), Ok(fourcc::XRGB8888));
        assert_eq!(parse_format("ARGB8888"), Ok(fourcc::ARGB8888));
        assert_eq!(parse_format("RG16"), Ok(fourcc::RGB565));
        assert!(parse_format("NV12").is_err());
        assert_eq!(parse_size("640x360"), Ok((640, 360)));
        assert!(parse_size("640").is_err());
        assert!(parse_size("0x3").is_err());
    }

    #[test]
    fn rows_convert_to_8_bit_rgb() {
        let mut out = Vec::new();
        convert_row(fourcc::XRGB8888, &0x00a1b2c3u32.to_le_bytes(), &mut out);
        assert_eq!(out, [0xa1, 0xb2, 0xc3]);
        convert_row(fourcc::ARGB8888, &0x80a1b2c3u32.to_le_bytes(), &mut out);
        assert_eq!(out, [0xa1, 0xb2, 0xc3, 0x80]);
        convert_row(fourcc::RGB565, &0xf81fu16.to_le_bytes(), &mut out);
        assert_eq!(out, [0xff, 0x00, 0xff]);
        convert_row(fourcc::RGB565, &0x07e0u16.to_le_bytes(), &mut out);
        assert_eq!(out, [0x00, 0xff, 0x00]);
    }
}
