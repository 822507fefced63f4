//! The realistic workload (issue 19, item 3): a 1920x1080 XRGB8888 image
//! BO animated as a compositor client or a game's HUD would, a 64x64
//! sprite moving and a 200x20 ticker strip redrawn every frame, written
//! through the tracked mapping row by row and synced once per frame. Every
//! mechanism runs it; the `explicit` baseline reports the frame's three
//! rectangles (the sprite's old and new place, the ticker) with the sync in
//! one round trip (`Bo::sync_damaged_rects`), as a Wayland client's
//! `damage_buffer` + `commit` would. After the last frame the GPU copy must
//! equal the BO byte for byte.

use std::time::Instant;

use anyhow::bail;
use cohmem_client::{fourcc, Bo, Mapping, Rect};
use serde::Serialize;

use super::stats::Summary;
use super::sync::Session;
use crate::image::{check_image_gpu_copy, GpuCheck};

/// Image size.
pub const WIDTH: u32 = 1920;
/// Image height.
pub const HEIGHT: u32 = 1080;
/// Sprite side.
const SPRITE: u32 = 64;
/// Ticker strip.
const TICKER: Rect = Rect {
    x: 1680,
    y: 1040,
    w: 200,
    h: 20,
};
/// Background colour.
const BACKGROUND: u32 = 0x0020_3040;

/// One mechanism's run.
#[derive(Debug, Clone, Serialize)]
pub struct AnimationCell {
    /// Mechanism asked of the daemon.
    pub mechanism: String,
    /// Frames measured (after 10 warm-up frames).
    pub frames: usize,
    /// Drawing the frame into the mapping.
    pub write: Summary,
    /// The sync round trip (with the damage, for explicit).
    pub sync: Summary,
    /// The time the daemon reports for the sync.
    pub daemon: Summary,
    /// Write + sync.
    pub total: Summary,
    /// Median pages uploaded per frame.
    pub pages_median: u64,
}

/// The sprite's place in frame `f`: a diagonal bounce over the image.
fn sprite_at(f: u32) -> Rect {
    let bounce = |t: u32, span: u32| {
        let p = t % (2 * span);
        if p <= span {
            p
        } else {
            2 * span - p
        }
    };
    Rect {
        x: bounce(7 * f, WIDTH - SPRITE),
        y: bounce(5 * f, HEIGHT - SPRITE),
        w: SPRITE,
        h: SPRITE,
    }
}

/// Fills rectangle `r` with the pixels `pixel(x, y)` gives, a row at a time.
fn fill_rect(map: &Mapping, pitch: u64, r: &Rect, pixel: impl Fn(u32, u32) -> u32) -> anyhow::Result<()> {
    let mut row = Vec::with_capacity(r.w as usize * 4);
    for y in r.y..r.y + r.h {
        row.clear();
        row.extend((r.x..r.x + r.w).flat_map(|x| pixel(x, y).to_le_bytes()));
        map.write((u64::from(y) * pitch + u64::from(r.x) * 4) as usize, &row)?;
    }
    Ok(())
}

/// Draws frame `f` over frame `f - 1`; returns the rectangles it changed.
fn draw(map: &Mapping, pitch: u64, f: u32) -> anyhow::Result<[Rect; 3]> {
    let (old, new) = (sprite_at(f.saturating_sub(1)), sprite_at(f));
    fill_rect(map, pitch, &old, |_, _| BACKGROUND)?;
    fill_rect(map, pitch, &new, |x, y| 0x00ff_0000 | ((x - new.x) << 10) | (y - new.y))?;
    fill_rect(map, pitch, &TICKER, |x, y| {
        if ((x + 3 * f) / 8 + y / 5) % 3 == 0 {
            0x00ff_d040
        } else {
            0x0010_1418
        }
    })?;
    Ok([old, new, TICKER])
}

/// Runs `frames` measured frames (after 10 warm-up ones) on a new image BO.
pub fn measure(session: &Session, frames: usize) -> anyhow::Result<AnimationCell> {
    let bo: Bo = session.conn.create_image(WIDTH, HEIGHT, fourcc::XRGB8888)?;
    let Some(info) = bo.image() else {
        bail!("CREATE_IMAGE gave no image description");
    };
    anyhow::ensure!(info.offset == 0, "image offset {} (expected 0)", info.offset);
    session.prepare(&bo)?;
    let pitch = u64::from(info.pitch);
    let map = bo.map()?;
    fill_rect(
        &map,
        pitch,
        &Rect {
            x: 0,
            y: 0,
            w: WIDTH,
            h: HEIGHT,
        },
        |_, _| BACKGROUND,
    )?;
    if session.explicit() {
        bo.damage(0, bo.size())?;
    }
    bo.sync()?;
    let (mut write, mut sync, mut daemon, mut total, mut pages) = (vec![], vec![], vec![], vec![], vec![]);
    let warmup = 10;
    for f in 1..=(warmup + frames) as u32 {
        let t = Instant::now();
        let rects = draw(&map, pitch, f)?;
        let w = t.elapsed();
        let t = Instant::now();
        let r = if session.explicit() {
            bo.sync_damaged_rects(&rects)?
        } else {
            bo.sync()?
        };
        let s = t.elapsed();
        if f as usize > warmup {
            write.push(w);
            sync.push(s);
            daemon.push(r.duration);
            total.push(w + s);
            pages.push(r.pages);
        }
    }
    match check_image_gpu_copy(&bo)? {
        GpuCheck::Identical => {}
        GpuCheck::Differs(why) => bail!(
            "{}: the GPU copy differs from the BO after the animation: {why}",
            session.mechanism
        ),
        GpuCheck::NotChecked(why) => bail!("{}: the GPU copy could not be checked: {why}", session.mechanism),
    }
    pages.sort_unstable();
    Ok(AnimationCell {
        mechanism: session.mechanism.clone(),
        frames,
        write: Summary::of(&write),
        sync: Summary::of(&sync),
        daemon: Summary::of(&daemon),
        total: Summary::of(&total),
        pages_median: pages.get(pages.len() / 2).copied().unwrap_or(0),
    })
}

/// Frames measured per mechanism.
pub fn frames(quick: bool) -> usize {
    if quick {
        120
    } else {
        300
    }
}
