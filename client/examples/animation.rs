//! A 1920x1080 XRGB8888 animation drawn through the safe mapping API: a
//! 64x64 sprite bouncing over the image and a 200x20 ticker strip
//! scrolling, one sync per frame. No `unsafe`: every pixel goes through
//! bounds-checked row accessors: `Row::write_pixels` (the sprite, one
//! `memcpy` per row), `Row::fill_pixels` (erasing it) and
//! `Row::write_pixels_with` (the ticker and whole frames, pixels computed
//! on the fly and stored by the library).
//!
//! ```sh
//! cohmemd --socket /tmp/cohmem.sock --gpu soft &
//! cargo run --release -p cohmem-client --example animation -- --socket /tmp/cohmem.sock
//! ```
//!
//! Prints, per frame, the time spent drawing, the time of the sync, the
//! pages it uploaded and the rectangles it reported; then the median
//! drawing time of a whole 1920x1080 frame through the same API. Without
//! `--socket` it connects to `$COHMEM_SOCKET` or the default socket.
//!
//! The comparison with raw pointer stores (the same frames drawn with
//! `unsafe` stores through `Mapping::as_ptr`) is in the test
//! `tests/tests/client_example.rs`, which runs this file's drawing code:
//! `cargo test --release -p cohmem-tests --test client_example -- --nocapture`.

use std::time::{Duration, Instant};

use cohmem_client::{fourcc, ClientError, Connection, Mapping, Rect};

/// Image width.
pub const WIDTH: u32 = 1920;
/// Image height.
pub const HEIGHT: u32 = 1080;
/// Sprite side.
pub const SPRITE: u32 = 64;
/// The ticker strip.
pub const TICKER: Rect = Rect {
    x: 1680,
    y: 1040,
    w: 200,
    h: 20,
};
/// Background colour.
pub const BACKGROUND: u32 = 0x0020_3040;

/// The sprite's place in frame `f`: a diagonal bounce over the image.
pub fn sprite_at(f: u32) -> Rect {
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

/// Sprite pixel (`dx`, `dy`): a red square shaded by position.
pub fn sprite_pixel(dx: u32, dy: u32) -> u32 {
    0x00ff_0000 | (dx << 10) | dy
}

/// Ticker pixel (`x`, `y`) in frame `f`: stripes that scroll left.
pub fn ticker_pixel(x: u32, y: u32, f: u32) -> u32 {
    if ((x + 3 * f) / 8 + y / 5) % 3 == 0 {
        0x00ff_d040
    } else {
        0x0010_1418
    }
}

/// Pixel (`x`, `y`) of full frame `f` (a moving gradient).
pub fn full_pixel(x: u32, y: u32, f: u32) -> u32 {
    ((x + f) & 0xff) << 16 | ((y + 2 * f) & 0xff) << 8 | ((x ^ y) & 0xff)
}

/// What the frames draw from, computed once: the sprite's pixels.
pub struct Painter {
    sprite: Vec<u32>,
}

impl Default for Painter {
    fn default() -> Self {
        Self::new()
    }
}

impl Painter {
    /// The sprite's pixels, computed once.
    pub fn new() -> Self {
        let sprite = (0..SPRITE)
            .flat_map(|dy| (0..SPRITE).map(move |dx| sprite_pixel(dx, dy)))
            .collect();
        Self { sprite }
    }

    /// Fills the image with the background.
    ///
    /// # Errors
    ///
    /// Those of [`Mapping::rows`] (a byte BO, a mapping of part of it).
    pub fn clear(&mut self, map: &Mapping<'_>) -> Result<(), ClientError> {
        for row in map.rows()? {
            row.fill_pixels(0, WIDTH as usize, BACKGROUND)?;
        }
        Ok(())
    }

    /// Draws animation frame `f` over frame `f - 1`: erases the sprite's
    /// old place, draws it at its new one, redraws the ticker. Returns the
    /// rectangles it changed.
    ///
    /// # Errors
    ///
    /// Those of [`Mapping::row`] (an image smaller than 1920x1080).
    pub fn draw_frame(&mut self, map: &Mapping<'_>, f: u32) -> Result<[Rect; 3], ClientError> {
        let (old, new) = (sprite_at(f.saturating_sub(1)), sprite_at(f));
        for y in old.y..old.y + old.h {
            map.row(y)?.fill_pixels(old.x, old.w as usize, BACKGROUND)?;
        }
        for (dy, pixels) in self.sprite.chunks(SPRITE as usize).enumerate() {
            map.row(new.y + dy as u32)?.write_pixels(new.x, pixels)?;
        }
        for y in TICKER.y..TICKER.y + TICKER.h {
            map.row(y)?
                .write_pixels_with(TICKER.x, TICKER.w as usize, |x| ticker_pixel(x, y, f))?;
        }
        Ok([old, new, TICKER])
    }

    /// Draws the whole of full frame `f` ([`full_pixel`]), a row at a time.
    ///
    /// # Errors
    ///
    /// Those of [`Mapping::rows`].
    pub fn draw_full(&mut self, map: &Mapping<'_>, f: u32) -> Result<(), ClientError> {
        for row in map.rows()? {
            let y = row.y();
            row.write_pixels_with(0, WIDTH as usize, |x| full_pixel(x, y, f))?;
        }
        Ok(())
    }
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut socket = None;
    let mut frames = 60u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => socket = args.next(),
            "--frames" => frames = args.next().and_then(|n| n.parse().ok()).ok_or("--frames N")?,
            "-h" | "--help" => {
                println!("usage: animation [--socket PATH] [--frames N]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other} (try --help)").into()),
        }
    }
    let conn = match socket {
        Some(path) => Connection::connect(path)?,
        None => Connection::connect_default()?,
    };
    let bo = conn.create_image(WIDTH, HEIGHT, fourcc::XRGB8888)?;
    let info = bo.image().ok_or("the daemon gave no image layout")?;
    println!(
        "image {}x{} {} pitch {} ({} bytes), mechanism {:?}",
        info.width,
        info.height,
        fourcc::name(info.fourcc),
        info.pitch,
        bo.size(),
        conn.mechanism()?
    );
    let map = bo.map()?;
    let mut painter = Painter::new();
    painter.clear(&map)?;
    bo.sync()?;

    let (mut draw, mut pages) = (Vec::new(), Vec::new());
    for f in 1..=frames {
        let t = Instant::now();
        let rects = painter.draw_frame(&map, f)?;
        let drawn = t.elapsed();
        let t = Instant::now();
        let done = map.sync()?;
        let synced = t.elapsed();
        let covered: u64 = done.rects.iter().map(|r| u64::from(r.w) * u64::from(r.h)).sum();
        let drew: u64 = rects.iter().map(|r| u64::from(r.w) * u64::from(r.h)).sum();
        println!(
            "frame {f:3}: draw {:6.1} us  sync {:6.1} us  pages {:3}  {} rectangles covering {covered} pixels \
             (drew {drew} pixels in 3 rectangles)",
            drawn.as_secs_f64() * 1e6,
            synced.as_secs_f64() * 1e6,
            done.pages,
            done.rects.len(),
        );
        draw.push(drawn);
        pages.push(done.pages);
    }
    pages.sort_unstable();
    println!(
        "animation: median draw {:.1} us per frame, median {} pages uploaded per frame",
        median(&mut draw).as_secs_f64() * 1e6,
        pages.get(pages.len() / 2).copied().unwrap_or(0)
    );

    // Whole frames through the same API: what the 1.2x target is about.
    let mut full = Vec::new();
    let mut full_pages = 0;
    for f in 0..10 {
        let t = Instant::now();
        painter.draw_full(&map, f)?;
        full.push(t.elapsed());
        full_pages = map.sync()?.pages;
    }
    println!(
        "full 1920x1080 frame: median draw {:.2} ms (safe row accessors), {full_pages} pages uploaded per frame",
        median(&mut full).as_secs_f64() * 1e3
    );
    println!(
        "(raw pointer stores, for comparison: cargo test --release -p cohmem-tests --test client_example -- --nocapture)"
    );
    Ok(())
}
