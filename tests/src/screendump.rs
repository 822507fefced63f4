//! What a display device shows, read back by QEMU itself (issue 17): the
//! guest side of `tests/vm/screendump`. A VM tier guest asks the host for a
//! QMP `screendump` of one display device through a directory both share
//! read-write (`COHMEM_SCREENDUMP_DIR`, set by tests/vm/run and
//! tests/vm/guest); the host writes the image as a binary PPM next to it.
//!
//! `COHMEM_SCREENDUMP_DEVICES` says which QEMU device id shows which guest
//! DRM driver (`bochs-drm=vga0,virtio_gpu=virtio0`);
//! `COHMEM_REQUIRE_DISPLAY=1` (set by the VM guest) makes a test that finds
//! no screendump fail instead of skipping.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

/// The shared directory's environment variable.
pub const DIR_ENV: &str = "COHMEM_SCREENDUMP_DIR";
/// The driver → QEMU device id map's environment variable.
pub const DEVICES_ENV: &str = "COHMEM_SCREENDUMP_DEVICES";
/// Set (to anything but empty) where display tests must not skip.
pub const REQUIRE_ENV: &str = "COHMEM_REQUIRE_DISPLAY";

/// How long a request waits for the host by default: QEMU answers in
/// milliseconds; the guest's clock runs under TCG and 9p polls.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the host takes screendumps for this process.
pub fn available() -> bool {
    dir().is_some()
}

/// Whether display tests must run here (the VM guest says so).
pub fn required() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty())
}

/// Why no screendump is available, for a test to print (`None` if one is).
pub fn unavailable_reason() -> Option<String> {
    match std::env::var_os(DIR_ENV) {
        None => Some(format!(
            "{DIR_ENV} is not set: screendumps exist only in the VM tier (tests/vm/run 6.12)"
        )),
        Some(d) if !PathBuf::from(&d).is_dir() => {
            Some(format!("{DIR_ENV}={} is not a directory", PathBuf::from(d).display()))
        }
        Some(_) => None,
    }
}

fn dir() -> Option<PathBuf> {
    let d = PathBuf::from(std::env::var_os(DIR_ENV)?);
    d.is_dir().then_some(d)
}

/// The QEMU device id that shows the guest's DRM driver `driver` (as
/// DRM_IOCTL_VERSION names it: `bochs-drm`, `virtio_gpu`).
pub fn device_for_driver(driver: &str) -> Option<String> {
    devices().into_iter().find(|(d, _)| d == driver).map(|(_, id)| id)
}

/// Every (driver, QEMU device id) pair the host set up.
pub fn devices() -> Vec<(String, String)> {
    std::env::var(DEVICES_ENV)
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(d, id)| (d.trim().to_string(), id.trim().to_string()))
        .collect()
}

/// A screendump of `device` (a QEMU device id), head 0.
pub fn request(device: &str) -> anyhow::Result<Ppm> {
    request_head(device, 0, DEFAULT_TIMEOUT)
}

/// A screendump of one head of `device`, waiting at most `timeout`.
pub fn request_head(device: &str, head: u32, timeout: Duration) -> anyhow::Result<Ppm> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = dir().with_context(|| unavailable_reason().unwrap_or_default())?;
    ensure!(
        !device.is_empty() && device.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "bad device id {device:?}"
    );
    let id = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let req = dir.join(format!("req-{id}"));
    let tmp = dir.join(format!("req-{id}.tmp"));
    let done = dir.join(format!("done-{id}"));
    let dump = dir.join(format!("dump-{id}.ppm"));
    std::fs::write(&tmp, format!("{device} {head}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &req).with_context(|| format!("renaming to {}", req.display()))?;
    let start = Instant::now();
    let status = loop {
        match std::fs::read_to_string(&done) {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", done.display())),
        }
        if start.elapsed() > timeout {
            let _ = std::fs::remove_file(&req);
            bail!("no screendump of {device} after {timeout:?}: is tests/vm/screendump running? (see its log)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = std::fs::remove_file(&done);
    let status = status.trim();
    if status != "ok" {
        bail!("screendump of {device} head {head}: {status}");
    }
    let bytes = std::fs::read(&dump).with_context(|| format!("reading {}", dump.display()))?;
    let _ = std::fs::remove_file(&dump);
    Ppm::parse(&bytes).with_context(|| format!("screendump of {device}"))
}

/// A binary (P6) PPM image with maxval 255: what QEMU's screendump writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ppm {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// RGB bytes, row by row, 3 a pixel, no padding.
    pub rgb: Vec<u8>,
}

impl Ppm {
    /// Parses a binary PPM (comments in the header allowed).
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let mut pos = 0;
        let mut fields = [0u32; 3];
        ensure!(bytes.starts_with(b"P6"), "not a binary PPM (P6)");
        pos += 2;
        for field in &mut fields {
            // Whitespace and comments before each number.
            loop {
                match bytes.get(pos) {
                    Some(b) if b.is_ascii_whitespace() => pos += 1,
                    Some(b'#') => {
                        while bytes.get(pos).is_some_and(|&b| b != b'\n') {
                            pos += 1;
                        }
                    }
                    _ => break,
                }
            }
            let start = pos;
            while bytes.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            ensure!(pos > start, "PPM header: a number expected at byte {start}");
            *field = std::str::from_utf8(&bytes[start..pos])?.parse()?;
        }
        // Exactly one whitespace byte ends the header.
        ensure!(
            bytes.get(pos).is_some_and(u8::is_ascii_whitespace),
            "PPM header not ended by whitespace"
        );
        pos += 1;
        let [width, height, maxval] = fields;
        ensure!(maxval == 255, "PPM maxval {maxval}, expected 255");
        let len = width as usize * height as usize * 3;
        ensure!(
            bytes.len() - pos == len,
            "PPM {width}x{height}: {} pixel bytes, expected {len}",
            bytes.len() - pos
        );
        Ok(Self {
            width,
            height,
            rgb: bytes[pos..].to_vec(),
        })
    }

    /// The pixel at (x, y) as [r, g, b].
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        assert!(
            x < self.width && y < self.height,
            "({x}, {y}) outside {}x{}",
            self.width,
            self.height
        );
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// Compares the top-left `width` x `height` pixels of this image with an
    /// XRGB8888 buffer (DRM_FORMAT_XRGB8888: little-endian B, G, R, X bytes;
    /// rows `pitch` bytes apart), as a BO or a framebuffer holds it. The X
    /// byte is ignored. Fails if the image is smaller than the buffer.
    pub fn compare_xrgb8888(&self, buf: &[u8], width: u32, height: u32, pitch: u32) -> anyhow::Result<Comparison> {
        ensure!(
            self.width >= width && self.height >= height,
            "the screendump ({}x{}) is smaller than the buffer ({width}x{height})",
            self.width,
            self.height
        );
        ensure!(pitch >= width * 4, "pitch {pitch} < 4 x width {width}");
        let need = (height as usize).saturating_sub(1) * pitch as usize + width as usize * 4;
        ensure!(
            buf.len() >= need,
            "buffer of {} bytes, {width}x{height} pitch {pitch} needs {need}",
            buf.len()
        );
        let mut c = Comparison {
            compared: u64::from(width) * u64::from(height),
            ..Comparison::default()
        };
        for y in 0..height {
            let row = &buf[y as usize * pitch as usize..][..width as usize * 4];
            let shown = &self.rgb[y as usize * self.width as usize * 3..][..width as usize * 3];
            for x in 0..width as usize {
                let want = [row[x * 4 + 2], row[x * 4 + 1], row[x * 4]];
                let got = [shown[x * 3], shown[x * 3 + 1], shown[x * 3 + 2]];
                if want != got {
                    let (x, y) = (x as u32, y);
                    c.differing += 1;
                    c.first.get_or_insert(Difference { x, y, want, got });
                    c.bbox = Some(match c.bbox {
                        None => [x, y, x, y],
                        Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
                    });
                }
            }
        }
        Ok(c)
    }
}

/// The result of [`Ppm::compare_xrgb8888`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Pixels compared.
    pub compared: u64,
    /// Pixels that differ.
    pub differing: u64,
    /// The first differing pixel in row order.
    pub first: Option<Difference>,
    /// The differing pixels' bounding box, inclusive: [x0, y0, x1, y1].
    pub bbox: Option<[u32; 4]>,
}

/// One differing pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Difference {
    /// Column.
    pub x: u32,
    /// Row.
    pub y: u32,
    /// The buffer's [r, g, b].
    pub want: [u8; 3],
    /// The screendump's [r, g, b].
    pub got: [u8; 3],
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} pixels differ", self.differing, self.compared)?;
        if let (Some(d), Some([x0, y0, x1, y1])) = (self.first, self.bbox) {
            write!(
                f,
                " (first at {},{}: buffer {:02x?}, shown {:02x?}; bounding box {x0},{y0}..={x1},{y1})",
                d.x, d.y, d.want, d.got
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ppm_with_comments_and_compares_in_xrgb8888() {
        let mut bytes = b"P6\n# made by a test\n2 2\n255\n".to_vec();
        bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let p = Ppm::parse(&bytes).unwrap();
        assert_eq!((p.width, p.height), (2, 2));
        assert_eq!(p.pixel(1, 1), [10, 11, 12]);
        // XRGB8888 rows with a padded pitch: B, G, R, X.
        let mut buf = vec![0xeeu8; 2 * 12];
        for (i, px) in [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]].iter().enumerate() {
            let off = (i / 2) * 12 + (i % 2) * 4;
            buf[off..off + 4].copy_from_slice(&[px[2], px[1], px[0], 0x55]);
        }
        let c = p.compare_xrgb8888(&buf, 2, 2, 12).unwrap();
        assert_eq!((c.compared, c.differing), (4, 0));
        buf[12 + 4] ^= 1; // pixel (1, 1), blue
        let c = p.compare_xrgb8888(&buf, 2, 2, 12).unwrap();
        assert_eq!(c.differing, 1);
        assert_eq!(c.bbox, Some([1, 1, 1, 1]));
        assert_eq!(c.first.unwrap().want, [10, 11, 13]);
        assert!(p.compare_xrgb8888(&buf, 3, 2, 12).is_err());
        assert!(Ppm::parse(b"P6 2 2 65535\n").is_err());
        assert!(Ppm::parse(&bytes[..bytes.len() - 1]).is_err());
    }
}
