//! The image part of `cohmemctl demo`: a small animation drawn into an
//! XRGB8888 image BO through a tracked mapping (a sprite moving, a ticker
//! strip scrolling), one sync per frame, and for each frame the pixels that
//! changed, the rectangles the sync reported, the pixels they cover, and
//! whether the GPU copy equals the BO byte for byte. With `display` the
//! image BO is put on the daemon's display output (SHOW) before the first
//! frame, so every sync's rectangles also reach the screen.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cohmem_client::{fourcc, Bo, Connection, ImageInfo, Mapping, Rect, Shown};
use serde_json::json;

use crate::display::{describe, mode_note, shown_json};
use crate::image::{check_image_gpu_copy, info_json, snapshot_to_png, GpuCheck};

/// Side of the moving sprite, in pixels.
const SPRITE: u32 = 32;
/// Size of the ticker strip.
const TICKER_W: u32 = 200;
const TICKER_H: u32 = 20;
/// Rectangles listed per frame in the text output.
const SHOW_RECTS: usize = 4;

/// What to run.
#[derive(Debug, Clone)]
pub struct ImageDemo {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Animation frames after the first full draw.
    pub frames: u32,
    /// Save the last frame here as a PNG (through SNAPSHOT).
    pub png_dir: Option<PathBuf>,
    /// One JSON object per frame (and a summary) instead of text.
    pub json: bool,
    /// Show the image BO on the daemon's display output (`cohmemd
    /// --display`) before the first frame; a daemon without one fails
    /// [`ImageDemo::prepare`].
    pub display: bool,
    /// Least time from one frame's start to the next (`None`: as fast as
    /// it goes), so that an animation on a display can be watched.
    pub frame_interval: Option<Duration>,
}

/// The animation's image BO, created and mapped, and where it is shown.
pub struct Prepared {
    bo: Bo,
    info: ImageInfo,
    map: Mapping<'static>,
    shown: Option<Shown>,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Median ratio of covered to changed pixels over the animation frames.
    pub median_ratio: f64,
    /// Worst (largest) ratio of covered to changed pixels.
    pub worst_ratio: f64,
    /// Frames whose GPU copy could not be checked.
    pub unchecked: u32,
}

/// The animation: a gradient background, a ticker strip of scrolling
/// blocks near the bottom right, and a disc bouncing around.
struct Scene {
    w: u32,
    h: u32,
    background: Vec<u32>,
}

/// A triangle wave: 0 → span → 0 as `t` grows.
fn bounce(t: u32, span: u32) -> u32 {
    if span == 0 {
        return 0;
    }
    let p = t % (2 * span);
    if p <= span {
        p
    } else {
        2 * span - p
    }
}

/// A small integer hash (the ticker's "letters").
fn hash(v: u32) -> u32 {
    let mut x = v.wrapping_mul(0x9e37_79b9) ^ 0x5bd1_e995;
    x ^= x >> 15;
    x = x.wrapping_mul(0x2c1b_3c6d);
    x ^ (x >> 12)
}

impl Scene {
    fn new(w: u32, h: u32) -> Self {
        let mut background = Vec::with_capacity(w as usize * h as usize);
        for y in 0..h {
            for x in 0..w {
                let r = x * 255 / (w - 1).max(1);
                let g = y * 255 / (h - 1).max(1);
                background.push((r << 16) | (g << 8) | 0x60);
            }
        }
        Self { w, h, background }
    }

    fn sprite(&self) -> u32 {
        SPRITE.min(self.w).min(self.h)
    }

    fn ticker(&self) -> Rect {
        let (w, h) = (TICKER_W.min(self.w), TICKER_H.min(self.h));
        Rect {
            x: self.w.saturating_sub(w + 16).min(self.w - w),
            y: self.h.saturating_sub(h + 12).min(self.h - h),
            w,
            h,
        }
    }

    /// Frame `f` into `out` (`w * h` pixels, 0x00RRGGBB).
    fn render(&self, f: u32, out: &mut [u32]) {
        out.copy_from_slice(&self.background);
        let w = self.w as usize;
        let t = self.ticker();
        for y in 0..t.h {
            for x in 0..t.w {
                let block = hash(((x + 6 * f) / 4).wrapping_mul(7) + y / 4);
                let lit = y % 4 != 3 && block % 3 == 0;
                out[(t.y + y) as usize * w + (t.x + x) as usize] = if lit { 0x00ff_d040 } else { 0x0010_1418 };
            }
        }
        let s = self.sprite();
        let (sx, sy) = (bounce(20 + 29 * f, self.w - s), bounce(12 + 17 * f, self.h - s));
        let r = s as i64 / 2;
        for y in 0..s {
            for x in 0..s {
                let (dx, dy) = (x as i64 - r, y as i64 - r);
                if dx * dx + dy * dy > r * r {
                    continue;
                }
                let shine = (dx + r / 3) * (dx + r / 3) + (dy + r / 3) * (dy + r / 3) <= r * r / 9;
                out[(sy + y) as usize * w + (sx + x) as usize] = if shine { 0x00ff_ffff } else { 0x0040_c0ff };
            }
        }
    }
}

/// Writes the pixels of `next` that differ from `prev` into the mapping,
/// one write per run of changed pixels in a row; returns how many changed.
fn draw_changes(map: &Mapping, info: &ImageInfo, prev: &[u32], next: &[u32]) -> anyhow::Result<u64> {
    let w = info.width as usize;
    let mut changed = 0u64;
    let mut bytes = Vec::with_capacity(w * 4);
    for y in 0..info.height as usize {
        let (p, n) = (&prev[y * w..][..w], &next[y * w..][..w]);
        let mut x = 0;
        while x < w {
            if p[x] == n[x] {
                x += 1;
                continue;
            }
            let start = x;
            while x < w && p[x] != n[x] {
                x += 1;
            }
            bytes.clear();
            bytes.extend(n[start..x].iter().flat_map(|v| v.to_le_bytes()));
            map.write(info.pixel_offset(start as u32, y as u32) as usize, &bytes)?;
            changed += (x - start) as u64;
        }
    }
    Ok(changed)
}

/// Pixels covered by `rects` (overlaps counted once), and changed pixels
/// (where `prev` and `next` differ) outside every rectangle.
fn coverage(info: &ImageInfo, rects: &[Rect], prev: &[u32], next: &[u32]) -> (u64, u64) {
    let (w, h) = (info.width, info.height);
    let mut inside = vec![false; w as usize * h as usize];
    for r in rects {
        for y in r.y.min(h)..r.y.saturating_add(r.h).min(h) {
            let row = y as usize * w as usize;
            inside[row + r.x.min(w) as usize..row + r.x.saturating_add(r.w).min(w) as usize].fill(true);
        }
    }
    let covered = inside.iter().filter(|&&b| b).count() as u64;
    let missed = (0..inside.len()).filter(|&i| prev[i] != next[i] && !inside[i]).count() as u64;
    (covered, missed)
}

/// `[x,y WxH] …` for at most [`SHOW_RECTS`] rectangles.
fn rect_list(rects: &[Rect]) -> String {
    let mut s: Vec<String> = rects
        .iter()
        .take(SHOW_RECTS)
        .map(|r| format!("[{},{} {}x{}]", r.x, r.y, r.w, r.h))
        .collect();
    if rects.len() > SHOW_RECTS {
        s.push(format!("+{} more", rects.len() - SHOW_RECTS));
    }
    s.join(" ")
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl ImageDemo {
    /// Runs the animation on a new image BO of `conn` (released at the
    /// end); fails when a changed pixel lies outside every reported
    /// rectangle or the GPU copy differs from the BO.
    pub fn run(&self, conn: &Connection) -> anyhow::Result<Summary> {
        let prepared = self.prepare(conn)?;
        self.animate(conn, prepared)
    }

    /// Creates and maps the image BO, and with `display` puts it on the
    /// daemon's display output: a daemon without one (or whose device has
    /// another DRM master) fails here, with the daemon's message, before
    /// anything is drawn.
    pub fn prepare(&self, conn: &Connection) -> anyhow::Result<Prepared> {
        let bo = conn
            .create_image(self.width, self.height, fourcc::XRGB8888)
            .with_context(|| format!("creating a {}x{} XRGB8888 image BO", self.width, self.height))?;
        let info = bo
            .image()
            .context("the daemon answered CREATE_IMAGE without an image layout")?;
        let map = bo.map_detached()?;
        let what = || format!("--display: showing image BO {} on the daemon's display output", bo.id());
        let shown = if self.display {
            Some(bo.show().with_context(what)?)
        } else {
            None
        };
        Ok(Prepared { bo, info, map, shown })
    }

    /// Runs the animation on a [`ImageDemo::prepare`]d image BO (released
    /// at the end, which takes it off the display).
    pub fn animate(&self, conn: &Connection, prepared: Prepared) -> anyhow::Result<Summary> {
        let say = |line: String| {
            if !self.json {
                println!("{line}");
            }
        };
        let Prepared { bo, info, map, shown } = prepared;
        let ps = cohmem_sys::page_size();
        say(format!(
            "\nimage BO {}: {}x{} XRGB8888, pitch {} bytes, first row at byte {}, {} bytes = {} pages, mapped at {:p}",
            bo.id(),
            info.width,
            info.height,
            info.pitch,
            info.offset,
            bo.size(),
            bo.size().div_ceil(ps),
            map.as_ptr()
        ));
        let rows_per_page = if u64::from(info.pitch) < ps {
            format!(
                " (a {ps}-byte page holds {:.1} rows: a written page damages whole rows)",
                ps as f64 / f64::from(info.pitch)
            )
        } else {
            String::new()
        };
        say(format!(
            "each frame: a {s}x{s} sprite moves and a {}x{} ticker strip scrolls, then one sync{rows_per_page}",
            TICKER_W.min(info.width),
            TICKER_H.min(info.height),
            s = SPRITE.min(info.width).min(info.height)
        ));
        if let Some(shown) = &shown {
            if self.json {
                println!("{}", json!({ "display": shown_json(bo.id(), shown) }));
            }
            say(format!(
                "on display {}: each sync's rectangles go to the device{}",
                describe(shown),
                self.frame_interval
                    .map(|t| format!(", a frame every {} ms", t.as_millis()))
                    .unwrap_or_default()
            ));
            if let Some(note) = mode_note(shown, (info.width, info.height)) {
                say(format!("  ({note})"));
            }
        }
        let scene = Scene::new(info.width, info.height);
        let pixels = info.width as usize * info.height as usize;
        // A new BO is zero-filled.
        let (mut prev, mut next) = (vec![0u32; pixels], vec![0u32; pixels]);
        let (mut ratios, mut unchecked) = (Vec::new(), 0u32);
        for frame in 0..=self.frames {
            let started = Instant::now();
            scene.render(frame, &mut next);
            let changed = draw_changes(&map, &info, &prev, &next)?;
            let done = bo.sync()?;
            let (covered, missed) = coverage(&info, &done.rects, &prev, &next);
            let gpu = check_image_gpu_copy(&bo)?;
            if frame > 0 && changed > 0 {
                ratios.push(covered as f64 / changed as f64);
            }
            if let GpuCheck::NotChecked(_) = gpu {
                unchecked += 1;
            }
            if self.json {
                let rects: Vec<_> = done
                    .rects
                    .iter()
                    .map(|r| json!({ "x": r.x, "y": r.y, "w": r.w, "h": r.h }))
                    .collect();
                println!(
                    "{}",
                    json!({
                        "image_frame": frame, "bo": bo.id(), "image": info_json(&info),
                        "changed_pixels": changed, "pages": done.pages, "bytes": done.bytes,
                        "rects": rects, "rects_merged": done.rects_merged, "covered_pixels": covered,
                        "changed_pixels_outside_rects": missed,
                        "gpu_copy": gpu.word(), "gpu_copy_detail": gpu.detail(),
                        "display": shown.as_ref().map(|s| s.connector.clone()),
                    })
                );
            } else {
                let what = if frame == 0 { " (first draw)" } else { "" };
                let ratio = if changed > 0 {
                    format!(" ({:.1}x)", covered as f64 / changed as f64)
                } else {
                    String::new()
                };
                println!(
                    "frame {frame:>2}{what}: {changed} px changed → sync uploaded {} → {}{} {} covering {covered} px{ratio}; GPU copy {}{}",
                    plural(done.pages as usize, "page", "pages"),
                    plural(done.rects.len(), "rect", "rects"),
                    if done.rects_merged { " (merged under the cap)" } else { "" },
                    rect_list(&done.rects),
                    gpu.word(),
                    gpu.detail().map(|d| format!(": {d}")).unwrap_or_default()
                );
            }
            if missed > 0 {
                bail!("frame {frame}: {missed} changed pixels lie outside every reported rectangle");
            }
            if let GpuCheck::Differs(d) = &gpu {
                bail!("frame {frame}: the GPU copy differs from the BO: {d}");
            }
            std::mem::swap(&mut prev, &mut next);
            if let Some(t) = self.frame_interval.filter(|_| frame < self.frames) {
                std::thread::sleep(t.saturating_sub(started.elapsed()));
            }
        }
        let png = match &self.png_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                let path = dir.join(format!("cohmem-demo-frame-{}.png", self.frames));
                let (fd, report) = conn.snapshot(bo.id()).context("taking a snapshot of the image BO")?;
                let layout = report
                    .image
                    .context("the snapshot of an image BO gave no image layout")?;
                snapshot_to_png(&std::fs::File::from(fd), &layout, &path)?;
                say(format!(
                    "frame {} saved as {} (SNAPSHOT, {})",
                    self.frames,
                    path.display(),
                    if report.exact { "exact" } else { "not exact" }
                ));
                Some(path)
            }
            None => None,
        };
        ratios.sort_by(f64::total_cmp);
        let median_ratio = match ratios.len() {
            0 => 0.0,
            n if n % 2 == 1 => ratios[n / 2],
            n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
        };
        let worst_ratio = ratios.last().copied().unwrap_or(0.0);
        let gpu = if unchecked == 0 {
            "identical after every frame".to_string()
        } else {
            format!("not checked on {unchecked} of {} frames", self.frames + 1)
        };
        if self.json {
            println!(
                "{}",
                json!({
                    "image_frames": self.frames, "median_covered_per_changed": median_ratio,
                    "worst_covered_per_changed": worst_ratio, "gpu_copy_unchecked_frames": unchecked,
                    "png": png.map(|p| p.display().to_string()),
                })
            );
        } else {
            println!(
                "image: {} frames, covered/changed pixels median {median_ratio:.1}x, worst {worst_ratio:.1}x; \
                 every changed pixel inside a rect; GPU copy {gpu}",
                self.frames
            );
        }
        Ok(Summary {
            median_ratio,
            worst_ratio,
            unchecked,
        })
    }
}
