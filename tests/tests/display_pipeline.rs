//! The display readback pipeline shows the truth, without cohmem (issue 17):
//! a known picture written straight into each display device's fbdev
//! (/dev/fbN, the DRM driver's fbdev emulation: bochs-drm, virtio-gpu)
//! must come back pixel for pixel in QEMU's own screendump of that device,
//! taken on the host by tests/vm/screendump; a different picture after it
//! must too (no stale image), and a small change, and the other device's
//! image must not equal it (the device id selects the device).
//!
//! The fbdev emulation of both drivers copies written pixels to the device
//! in a worker (bochs: shadow buffer to VRAM; virtio-gpu: transfer and
//! flush), so each check asks again, a bounded number of times, until the
//! image matches; it prints how many screendumps that took.
//!
//! Runs in the VM tier's 6.12 guest (tests/vm/run), which sets
//! `COHMEM_REQUIRE_DISPLAY=1` so it cannot skip; elsewhere it says why it
//! did not run and passes.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use cohmem_tests::screendump::{self, Comparison, Ppm};
use cohmem_tools::SplitMix64;

/// Screendumps per check before it fails (the fbdev worker runs within
/// milliseconds; TCG and 9p make it slower).
const ATTEMPTS: u32 = 40;
const RETRY: Duration = Duration::from_millis(250);

/// One fbdev: its node and layout.
struct Fb {
    node: PathBuf,
    name: String,
    width: u32,
    height: u32,
    stride: u32,
}

fn sysfs(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// The fbdev of the DRM driver `driver` (the DRM fbdev emulation names it
/// `<driver>drmfb`).
fn fb_of(driver: &str) -> anyhow::Result<Option<Fb>> {
    for entry in std::fs::read_dir("/sys/class/graphics")? {
        let dir = entry?.path();
        let Some(n) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("fb"))
        else {
            continue;
        };
        if n.parse::<u32>().is_err() {
            continue;
        }
        let name = sysfs(&dir.join("name"))?;
        if name != format!("{driver}drmfb") {
            continue;
        }
        let bpp: u32 = sysfs(&dir.join("bits_per_pixel"))?.parse()?;
        ensure!(bpp == 32, "{name}: {bpp} bits per pixel, expected 32 (XRGB8888)");
        let size = sysfs(&dir.join("virtual_size"))?;
        let (w, h) = size.split_once(',').context("virtual_size")?;
        return Ok(Some(Fb {
            node: PathBuf::from(format!("/dev/fb{n}")),
            name,
            width: w.parse()?,
            height: h.parse()?,
            stride: sysfs(&dir.join("stride"))?.parse()?,
        }));
    }
    Ok(None)
}

/// Holds the foreground console in KD_GRAPHICS mode, so fbcon (its text and
/// blinking cursor) does not draw into the framebuffers under test.
struct GraphicsMode(Option<File>);

const KDSETMODE: libc::c_ulong = 0x4B3A;
const KD_TEXT: libc::c_ulong = 0;
const KD_GRAPHICS: libc::c_ulong = 1;

impl GraphicsMode {
    fn enter() -> Self {
        let tty = match OpenOptions::new().read(true).write(true).open("/dev/tty0") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("   /dev/tty0: {e}: fbcon may draw over the pattern");
                return Self(None);
            }
        };
        // SAFETY: KDSETMODE takes an integer argument.
        if unsafe { libc::ioctl(tty.as_raw_fd(), KDSETMODE as _, KD_GRAPHICS) } != 0 {
            eprintln!("   KDSETMODE KD_GRAPHICS: {}", std::io::Error::last_os_error());
            return Self(None);
        }
        Self(Some(tty))
    }
}

impl Drop for GraphicsMode {
    fn drop(&mut self) {
        if let Some(tty) = &self.0 {
            // SAFETY: as above.
            unsafe { libc::ioctl(tty.as_raw_fd(), KDSETMODE as _, KD_TEXT) };
        }
    }
}

/// Screendumps `device` until it equals `frame` (XRGB8888, the fb's
/// layout) or the attempts run out; returns the last comparison, the
/// screendumps taken and the first one's differing pixels.
fn wait_for_match(device: &str, fb: &Fb, frame: &[u8]) -> anyhow::Result<(Comparison, u32, u64, Ppm)> {
    let mut first = None;
    for attempt in 1..=ATTEMPTS {
        let ppm = screendump::request(device)?;
        ensure!(
            (ppm.width, ppm.height) == (fb.width, fb.height),
            "{device} shows {}x{}, {} is {}x{}",
            ppm.width,
            ppm.height,
            fb.name,
            fb.width,
            fb.height
        );
        let c = ppm.compare_xrgb8888(frame, fb.width, fb.height, fb.stride)?;
        let first_diff = *first.get_or_insert(c.differing);
        if c.differing == 0 || attempt == ATTEMPTS {
            return Ok((c, attempt, first_diff, ppm));
        }
        std::thread::sleep(RETRY);
    }
    unreachable!()
}

#[test]
fn what_is_written_to_each_display_is_what_qemus_screendump_of_it_shows() -> anyhow::Result<()> {
    if let Some(why) = screendump::unavailable_reason() {
        ensure!(!screendump::required(), "{} is set, but {why}", screendump::REQUIRE_ENV);
        eprintln!("display pipeline not checked: {why}");
        return Ok(());
    }
    let devices = screendump::devices();
    ensure!(
        !devices.is_empty(),
        "{} names no display device",
        screendump::DEVICES_ENV
    );
    let _console = GraphicsMode::enter();
    let mut rng = SplitMix64::new(0x1717_1717);
    let (mut frames, mut pixels, mut differing) = (0u64, 0u64, 0u64);
    let mut last_frames: Vec<(Fb, Vec<u8>)> = Vec::new();
    for (index, (driver, device)) in devices.iter().enumerate() {
        let fb = fb_of(driver)?.with_context(|| format!("no fbdev of {driver} in /sys/class/graphics"))?;
        eprintln!(
            "   {driver} = QEMU {device}: {} ({}) {}x{} stride {}",
            fb.node.display(),
            fb.name,
            fb.width,
            fb.height,
            fb.stride
        );
        // A console idle for its blank timeout (10 minutes by default: a long
        // VM run gets there) has blanked the output, and virtio-gpu then
        // shows QEMU's empty 640x480 surface: unblank it (FB_BLANK_UNBLANK).
        let blank = fb.node.to_string_lossy().replace("/dev/", "/sys/class/graphics/") + "/blank";
        if let Err(e) = std::fs::write(&blank, "0") {
            eprintln!("   unblanking through {blank}: {e}");
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fb.node)
            .with_context(|| format!("opening {}", fb.node.display()))?;
        let len = fb.stride as usize * fb.height as usize;
        let mut frame = vec![0u8; len];
        let steps = [
            "random pixels",
            "gradient",
            "a 64x32 rectangle changed",
            "one pixel changed",
        ];
        for step in steps {
            // The byte range written: whole frames, or the changed rows.
            let (from, to) = match step {
                "random pixels" => {
                    rng.fill(&mut frame);
                    (0, len)
                }
                "gradient" => {
                    // Each device's gradient differs from the other's in
                    // every pixel (its blue), for the control below.
                    let salt = 0x11 + 0x55 * index as u8;
                    for y in 0..fb.height as usize {
                        for x in 0..fb.width as usize {
                            let o = y * fb.stride as usize + x * 4;
                            frame[o..o + 4].copy_from_slice(&[
                                (x * 255 / fb.width as usize) as u8 ^ salt,
                                (y & 0xff) as u8,
                                ((x ^ y) & 0xff) as u8,
                                0,
                            ]);
                        }
                    }
                    (0, len)
                }
                "a 64x32 rectangle changed" => {
                    let (x0, y0) = (
                        rng.below(u64::from(fb.width - 64)) as usize,
                        rng.below(u64::from(fb.height - 32)) as usize,
                    );
                    for y in y0..y0 + 32 {
                        rng.fill(&mut frame[y * fb.stride as usize + x0 * 4..][..64 * 4]);
                    }
                    (y0 * fb.stride as usize, (y0 + 32) * fb.stride as usize)
                }
                _ => {
                    let (x, y) = (
                        rng.below(u64::from(fb.width)) as usize,
                        rng.below(u64::from(fb.height)) as usize,
                    );
                    let o = y * fb.stride as usize + x * 4;
                    for b in &mut frame[o..o + 3] {
                        *b ^= 0xff;
                    }
                    // Only the pixel's 4 bytes: on 6.12 a write of exactly
                    // one whole row through fbdev was never shown (its damage
                    // clip came out empty; found by this test's first run).
                    (o, o + 4)
                }
            };
            let t0 = Instant::now();
            file.write_all_at(&frame[from..to], from as u64)
                .with_context(|| format!("writing {}", fb.node.display()))?;
            let (c, attempts, first_diff, _) = wait_for_match(device, &fb, &frame)?;
            eprintln!(
                "   {step}: {} (screendumps: {attempts}, the first with {first_diff} differing; {:.0} ms)",
                c,
                t0.elapsed().as_secs_f64() * 1000.0
            );
            frames += 1;
            pixels += c.compared;
            differing += c.differing;
            ensure!(
                c.differing == 0,
                "{device} ({driver}) does not show what {} holds: {c}",
                fb.node.display()
            );
        }
        last_frames.push((fb, frame));
    }
    // The control: at the end each device still shows its own last picture
    // (writing one display did not touch the other) and not the other's
    // (the device id selects the device).
    if devices.len() > 1 {
        for (i, (driver, device)) in devices.iter().enumerate() {
            let j = (i + 1) % devices.len();
            let (own, other) = (&last_frames[i], &last_frames[j]);
            let ppm = screendump::request(device)?;
            let c = ppm.compare_xrgb8888(&own.1, own.0.width, own.0.height, own.0.stride)?;
            let o = ppm.compare_xrgb8888(&other.1, other.0.width, other.0.height, other.0.stride)?;
            eprintln!(
                "   control: {device} at the end: {} differing from its own last picture, {} from {}'s",
                c.differing, o.differing, devices[j].1
            );
            frames += 1;
            pixels += c.compared;
            differing += c.differing;
            ensure!(c.differing == 0, "{device} ({driver}) no longer shows its picture: {c}");
            ensure!(
                o.differing > o.compared / 2,
                "{device}'s screendump shows {}'s picture",
                devices[j].1
            );
        }
    }
    eprintln!(
        "   display pipeline: {frames} frames compared on {} devices, {pixels} pixels, {differing} differing",
        devices.len()
    );
    Ok(())
}
