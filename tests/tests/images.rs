//! Image BOs (DESIGN.md §8, issue 16): the rectangles a SYNC reports are
//! exact, the GPU copy is the client's image byte for byte, and requests
//! the device cannot serve are typed errors that say why.
//!
//! Every frame is checked against what the test itself knows: the pixels
//! it changed (the BO compared with the previous frame's copy, read with
//! pread, not through the tracked mapping), the pixels the reported page
//! runs cover and the rectangles the stated rules make of them (an
//! independent reference in `cohmem_tests::image`), and the GPU copy read
//! through the exported resource.
//!
//! `COHMEM_IMAGE_SEED=N` replays the random frames of a run (the seed is
//! printed; the default is fixed).

use std::time::Instant;

use cohmem_client::{fourcc, Bo, Connection, ErrorCode, ImageInfo, Mapping, Mechanism, Rect, MODIFIER_LINEAR};
use cohmem_tests::image::{
    bo_image_bytes, changed_pixels, check_rects, draw_random, fill_rect, fill_span, image_difference, pixels_of_runs,
    GpuImage, PixelSet,
};
use cohmem_tests::{spawn_daemon, spawn_daemon_with};
use cohmem_tools::SplitMix64;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// The random frames' seed: `COHMEM_IMAGE_SEED`, or a fixed one.
fn seed() -> u64 {
    let seed = std::env::var("COHMEM_IMAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1616_1616);
    eprintln!("image seed {seed} (COHMEM_IMAGE_SEED={seed} replays it)");
    seed
}

/// One image under test: the BO, a mapping of all of it, its exported GPU
/// copy, and the previous frame's bytes.
struct Subject {
    bo: Bo,
    map: Mapping<'static>,
    gpu: GpuImage,
    info: ImageInfo,
    prev: Vec<u8>,
    name: String,
}

impl Subject {
    /// Creates a `width` × `height` image in `format` whose soft-backend
    /// pitch must be `pitch`.
    fn create(conn: &Connection, width: u32, height: u32, format: u32, pitch: u32) -> anyhow::Result<Self> {
        let bo = conn.create_image(width, height, format)?;
        let info = bo
            .image()
            .ok_or_else(|| anyhow::anyhow!("an image BO without an image layout"))?;
        let name = format!("{width}x{height} {} pitch {}", fourcc::name(format), info.pitch);
        assert_eq!(
            info,
            ImageInfo {
                width,
                height,
                fourcc: format,
                pitch,
                offset: 0,
                modifier: MODIFIER_LINEAR,
            },
            "{name}: layout"
        );
        let ps = cohmem_sys::page_size();
        assert_eq!(
            bo.size(),
            info.end().div_ceil(ps) * ps,
            "{name}: BO size is the image's, in pages"
        );
        let res = bo.export_resource(0)?;
        assert_eq!(res.image, Some(info), "{name}: the export describes the BO's image");
        // The resource's page stride: an image resource has exactly the
        // BO's byte layout, so its pages are contiguous (every backend says
        // so); the row pitch is the image description's.
        assert_eq!(res.pitch, ps, "{name}: the export's page stride");
        let gpu = GpuImage::map(&res)?;
        let map = bo.map_detached()?;
        let prev = bo_image_bytes(&bo, &info)?;
        Ok(Self {
            bo,
            map,
            gpu,
            info,
            prev,
            name,
        })
    }

    /// Syncs and checks the frame `what`: rects against the changes and the
    /// runs, the GPU copy against the BO. Returns the sync's result.
    fn check_frame(&mut self, what: &str) -> anyhow::Result<cohmem_client::SyncResult> {
        let done = self.bo.sync_with_runs()?;
        let what = format!("{} {what}", self.name);
        let now = bo_image_bytes(&self.bo, &self.info)?;
        let changed = changed_pixels(&self.info, &self.prev, &now);
        check_rects(&self.info, &done, &changed, cohmem_sys::page_size(), &what)?;
        let gpu = self.gpu.bytes()?;
        if let Some(diff) = image_difference(&self.info, &now, &gpu) {
            anyhow::bail!("{what}: GPU copy differs from the BO: {diff}");
        }
        self.prev = now;
        Ok(done)
    }

    /// A sync with nothing written: no page, no rect.
    fn check_idle(&mut self, what: &str) -> anyhow::Result<()> {
        let done = self.check_frame(what)?;
        assert_eq!(
            (done.pages, done.rects.len(), done.rects_merged),
            (0, 0, false),
            "{} {what}: a sync without writes reported {:?} / {:?}",
            self.name,
            done.runs,
            done.rects
        );
        Ok(())
    }

    /// One new colour in one pixel of every other page (the first whole
    /// pixel that page holds): scattered single pixels, each its own page
    /// run, so the rects of a large image pass the cap. Returns the pixels.
    fn draw_scattered(&self, rng: &mut SplitMix64) -> anyhow::Result<u64> {
        let ps = cohmem_sys::page_size();
        let cpp = u64::from(self.info.bytes_per_pixel());
        let pitch = u64::from(self.info.pitch);
        let row_bytes = u64::from(self.info.width) * cpp;
        let mut n = 0;
        for page in (0..self.bo.size() / ps).step_by(2) {
            let start = page * ps;
            let (mut y, col) = (start / pitch, start % pitch);
            let mut x = col.div_ceil(cpp);
            if x * cpp >= row_bytes {
                (y, x) = (y + 1, 0);
            }
            if y >= u64::from(self.info.height) || self.info.pixel_offset(x as u32, y as u32) + cpp > start + ps {
                continue;
            }
            fill_span(&self.map, &self.info, x as u32, y as u32, 1, rng.next_u64() as u32 | 1)?;
            n += 1;
        }
        Ok(n)
    }

    /// Writes one byte into the padding of a few rows (no pixel changes).
    fn draw_padding(&self, rng: &mut SplitMix64) -> anyhow::Result<bool> {
        let row_bytes = u64::from(self.info.width) * u64::from(self.info.bytes_per_pixel());
        let pad = u64::from(self.info.pitch) - row_bytes;
        if pad == 0 {
            return Ok(false);
        }
        for _ in 0..3 {
            let y = rng.below(u64::from(self.info.height - 1));
            let at = self.info.pixel_offset(0, y as u32) + row_bytes + rng.below(pad);
            self.map.write(at as usize, &[0xa5 ^ rng.next_u64() as u8 | 1])?;
        }
        Ok(true)
    }
}

cohmem_tests::test_each_mechanism!(rectangles_are_exact, rectangles_are_exact_with);

fn rectangles_are_exact_with(mechanism: Mechanism) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let seed = seed();
    let mut rng = SplitMix64::new(seed);
    // Random frames rewrite half of a small image's pages now and then: the
    // default dense-write policy would pause tracking and upload whole
    // BOs, which is correct (and its rects are checked like any) but
    // leaves no sync idle. Exactness is the subject here: never pause.
    let daemon = spawn_daemon_with(DAEMON, &["--mechanism", mechanism.name(), "--dense-percent", "0"])?;
    let conn = Connection::connect(daemon.socket())?;
    // Soft-backend pitches: width × bytes per pixel rounded up to 64.
    let images = [
        (1920, 300, fourcc::XRGB8888, 7680), // no page multiple, unpadded
        (1000, 200, fourcc::XRGB8888, 4032), // padded 32 bytes a row
        (333, 257, fourcc::RGB565, 704),     // 2 bytes a pixel, padded 38
        (333, 150, fourcc::ARGB8888, 1344),  // padded 12
        (1024, 300, fourcc::XRGB8888, 4096), // one page a row
    ];
    let mut merged_frames = 0;
    for (width, height, format, pitch) in images {
        let mut s = Subject::create(&conn, width, height, format, pitch)?;
        s.check_idle("before any write")?;
        for frame in 0..12 {
            let drawn = draw_random(&s.map, &s.info, &mut rng)?;
            let done = s.check_frame(&format!("frame {frame} (seed {seed}: {drawn:?})"))?;
            merged_frames += usize::from(done.rects_merged);
        }
        if s.draw_padding(&mut rng)? {
            let done = s.check_frame("padding-only frame")?;
            assert!(done.pages > 0, "{}: a padding write was not uploaded", s.name);
        }
        s.check_idle("after the padding frame")?;
        let pixels = s.draw_scattered(&mut rng)?;
        let done = s.check_frame(&format!("{pixels} scattered pixels (seed {seed})"))?;
        eprintln!(
            "{}: {pixels} scattered pixels: {} runs, {} rects, merged {}",
            s.name,
            done.run_count,
            done.rects.len(),
            done.rects_merged
        );
        if width == 1920 {
            // 282 pages, each alone: its pixels are at least one rect, so
            // the reply must have merged (check_rects checked the rules
            // give more than the cap).
            assert!(
                done.rects_merged,
                "{}: {pixels} scattered pixels were not merged",
                s.name
            );
        }
        merged_frames += usize::from(done.rects_merged);
        s.check_idle("after the scattered frame")?;
    }
    assert!(merged_frames > 0, "no frame passed the rect cap");
    eprintln!(
        "{}: {} images, {merged_frames} merged frames, {:?}",
        mechanism.name(),
        images.len(),
        t0.elapsed()
    );
    Ok(())
}

/// Median of `v` (sorted in place); 0 for none.
fn median<T: Copy + PartialOrd + Default>(v: &mut [T]) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// What one animation frame cost.
#[derive(Debug, Default, Clone, Copy)]
struct FrameStats {
    changed: u64,
    rects: usize,
    covered: u64,
    bytes: u64,
    merged: bool,
}

/// A 1920×1080 XRGB8888 animation: a 64×64 sprite moving (old position
/// erased, new drawn) and a 200×20 ticker strip redrawn every frame, 300
/// frames. Every frame's rects are checked as in `rectangles_are_exact`;
/// the summary gives what page granularity costs in covered pixels.
#[test]
fn animation_1080p_summary() -> anyhow::Result<()> {
    const W: u32 = 1920;
    const H: u32 = 1080;
    const FRAMES: u32 = 300;
    const SPRITE: u32 = 64;
    let t0 = Instant::now();
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let bo = conn.create_image(W, H, fourcc::XRGB8888)?;
    let info = bo.image().expect("image layout");
    assert_eq!(info.pitch, W * 4);
    let map = bo.map()?;
    let gpu = GpuImage::map(&bo.export_resource(0)?)?;
    let ps = cohmem_sys::page_size();
    // The test's model of the image, one u32 a pixel.
    let mut model = vec![0u32; (W * H) as usize];
    let ticker = Rect {
        x: 860,
        y: 1040,
        w: 200,
        h: 20,
    };
    let (mut sx, mut sy, mut vx, mut vy) = (100i64, 80i64, 13i64, 7i64);
    let mut old: Option<Rect> = None;
    let mut stats = Vec::with_capacity(FRAMES as usize);
    let (mut extra_frames, mut mechanism) = (0, None);
    let first = bo.sync_with_runs()?;
    assert!(first.rects.is_empty() && first.pages == 0, "{first:?}");

    for frame in 0..FRAMES {
        let sprite = Rect {
            x: sx as u32,
            y: sy as u32,
            w: SPRITE,
            h: SPRITE,
        };
        let mut touched = PixelSet::new(W, H);
        for r in old.iter().chain([&sprite, &ticker]) {
            touched.add_rect(r);
        }
        let before: Vec<(u32, u32, Vec<u32>)> = touched
            .spans()
            .map(|(y, a, b)| (y, a, model[(y * W + a) as usize..(y * W + b) as usize].to_vec()))
            .collect();
        // Erase the old sprite, draw the new one (its colours change with
        // the frame), redraw the ticker (a scrolling stripe pattern).
        if let Some(o) = old {
            for y in o.y..o.y + o.h {
                model[(y * W + o.x) as usize..(y * W + o.x + o.w) as usize].fill(0);
            }
        }
        for j in 0..SPRITE {
            for i in 0..SPRITE {
                let ring = (i.abs_diff(32).max(j.abs_diff(32)) + frame) % 16;
                model[((sprite.y + j) * W + sprite.x + i) as usize] = 0x00ff_0000 | (ring << 12) | (i * 4);
            }
        }
        for j in 0..ticker.h {
            for i in 0..ticker.w {
                let lit = ((i + 3 * frame) / 8 + j / 5) % 3 == 0;
                model[((ticker.y + j) * W + ticker.x + i) as usize] = if lit { 0x00ff_ffff } else { 0x0000_0040 };
            }
        }
        // Write the touched spans to the BO as the app would (erase and
        // draw land in the same pages) and count the pixels that changed.
        let mut changed = PixelSet::new(W, H);
        let mut written = std::collections::BTreeSet::new();
        for (y, a, old_px) in &before {
            let now = &model[(y * W + a) as usize..(y * W + a) as usize + old_px.len()];
            let bytes: Vec<u8> = now.iter().flat_map(|p| p.to_le_bytes()).collect();
            let at = info.pixel_offset(*a, *y);
            map.write(at as usize, &bytes)?;
            written.extend(at / ps..(at + bytes.len() as u64).div_ceil(ps));
            for (k, (o, n)) in old_px.iter().zip(now).enumerate() {
                if o != n {
                    changed.add_span(*y, a + k as u32, a + k as u32 + 1);
                }
            }
        }
        let done = bo.sync_with_runs()?;
        let covered = check_rects(&info, &done, &changed, ps, &format!("frame {frame}"))?;
        // The pages uploaded are those written, plus (on a MKWRITE →
        // PAGETABLE switch, never with uffd-async) the switch's extra pages.
        let uploaded: std::collections::BTreeSet<u64> = done.pages_list().into_iter().collect();
        assert!(
            uploaded.is_superset(&written),
            "frame {frame}: written pages {:?} not uploaded",
            written.difference(&uploaded).collect::<Vec<_>>()
        );
        let extra = uploaded.len() > written.len();
        assert!(
            !extra || done.mechanism != Mechanism::UffdAsync,
            "frame {frame}: uffd-async uploaded pages nobody wrote: {:?}",
            uploaded.difference(&written).collect::<Vec<_>>()
        );
        // The floor page granularity sets: the pixels of the written pages.
        // The rects cover exactly that, unless merged or extra pages went up.
        let runs: Vec<cohmem_client::Run> = written
            .iter()
            .map(|&p| cohmem_client::Run {
                first_page: p as u32,
                pages: 1,
            })
            .collect();
        let floor = pixels_of_runs(&info, &runs, ps).count();
        assert!(
            done.rects_merged || extra || covered.count() == floor,
            "frame {frame}: rects cover {} pixels, the written pages hold {floor}",
            covered.count()
        );
        extra_frames += usize::from(extra);
        mechanism = Some(done.mechanism);
        stats.push(FrameStats {
            changed: changed.count(),
            rects: done.rects.len(),
            covered: covered.count(),
            bytes: done.bytes,
            merged: done.rects_merged,
        });
        if frame % 75 == 0 || frame == FRAMES - 1 {
            // The whole image: the BO is the model (so `changed` was the
            // whole change), and the GPU copy is the BO.
            let bo_bytes = bo_image_bytes(&bo, &info)?;
            let want: Vec<u8> = model.iter().flat_map(|p| p.to_le_bytes()).collect();
            if let Some(d) = image_difference(&info, &want, &bo_bytes) {
                anyhow::bail!("frame {frame}: the BO is not what the test drew: {d}");
            }
            if let Some(d) = image_difference(&info, &bo_bytes, &gpu.bytes()?) {
                anyhow::bail!("frame {frame}: GPU copy differs from the BO: {d}");
            }
        }
        old = Some(sprite);
        sx += vx;
        sy += vy;
        if sx < 0 || sx + i64::from(SPRITE) > i64::from(W) {
            vx = -vx;
            sx += 2 * vx;
        }
        if sy < 0 || sy + i64::from(SPRITE) > i64::from(ticker.y) {
            vy = -vy;
            sy += 2 * vy;
        }
    }

    let mut ratios: Vec<f64> = stats
        .iter()
        .filter(|s| s.changed > 0)
        .map(|s| s.covered as f64 / s.changed as f64)
        .collect();
    let worst = ratios.iter().copied().fold(0.0, f64::max);
    let best = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let median_ratio = median(&mut ratios);
    let median_changed = median(&mut stats.iter().map(|s| s.changed).collect::<Vec<_>>());
    let median_covered = median(&mut stats.iter().map(|s| s.covered).collect::<Vec<_>>());
    let median_rects = median(&mut stats.iter().map(|s| s.rects).collect::<Vec<_>>());
    let max_rects = stats.iter().map(|s| s.rects).max().unwrap_or(0);
    let median_bytes = median(&mut stats.iter().map(|s| s.bytes).collect::<Vec<_>>());
    let merged = stats.iter().filter(|s| s.merged).count();
    let elapsed = t0.elapsed();
    eprintln!(
        "animation 1920x1080 XRGB8888, {FRAMES} frames in {elapsed:?}:\n  \
         changed pixels median {median_changed}, covered median {median_covered}\n  \
         covered/changed median {median_ratio:.2}, best {best:.2}, worst {worst:.2}\n  \
         rects median {median_rects}, max {max_rects}; {merged} frames merged\n  \
         bytes uploaded median {median_bytes} ({} pages); {extra_frames} frames with pages nobody wrote ({mechanism:?})",
        median_bytes / ps
    );
    assert_eq!(ratios.len(), FRAMES as usize, "every frame changed pixels");
    // Bounds, from the geometry (4 KiB pages, 7680-byte rows: a page holds
    // 1024 pixels of one or two rows). Each of the ~71 rows the old and new
    // sprite span dirties the page(s) under its 77 touched pixels, and each
    // of the ticker's 20 rows those under its 200: ~104 pages, ~106k
    // pixels, for ~6.3k changed (4096 sprite pixels, ~1.2k erased, ~1k of
    // the ticker). Measured (uffd-async and uffd-sync, every frame unmerged
    // and exact): covered/changed median 16.93, best 12.27, worst 17.13;
    // rects median 114, max 144; 104 pages a frame. Each frame above
    // already checked the rects against the written pages' pixels; these
    // bounds catch a regression that keeps them consistent but uploads
    // more (whole rows, neighbour pages) or merges below the cap.
    assert!(median_ratio <= 18.0, "median covered/changed {median_ratio:.2}");
    assert!(
        merged == 0,
        "{merged} frames merged: no frame needs more than 144 rects"
    );
    assert!(median_rects <= 130, "median rects {median_rects}");
    assert!(median_bytes <= 110 * ps, "median bytes uploaded {median_bytes}");
    if mechanism == Some(Mechanism::UffdAsync) {
        assert!(worst <= 18.0, "worst covered/changed {worst:.2}");
    }
    Ok(())
}

/// The typed refusals of CREATE_IMAGE, byte BOs unchanged, and an import
/// of an image BO by another connection.
#[test]
fn errors_byte_bos_and_imports() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;

    let e = conn
        .create_image(64, 64, 0x1234_5678)
        .expect_err("fourcc 0x12345678 accepted");
    assert_eq!(e.code(), Some(ErrorCode::Unsupported), "{e}");
    assert!(
        e.to_string().contains("0x12345678"),
        "the refusal does not name the format: {e}"
    );
    eprintln!("unknown fourcc: {e}");

    for (w, h) in [(0, 64), (64, 0)] {
        let e = conn
            .create_image(w, h, fourcc::XRGB8888)
            .expect_err("empty image accepted");
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{w}x{h}: {e}");
        eprintln!("{w}x{h}: {e}");
    }

    let e = conn
        .create_image(70000, 70000, fourcc::XRGB8888)
        .expect_err("a 70000x70000 image was created");
    assert!(
        matches!(e.code(), Some(ErrorCode::TooLarge | ErrorCode::Unsupported)),
        "{e}"
    );
    assert!(e.to_string().contains("limit"), "the refusal names no limit: {e}");
    eprintln!("70000x70000: {e}");
    // Small enough for max_bo_size, too wide for the device.
    let e = conn
        .create_image(70000, 4, fourcc::XRGB8888)
        .expect_err("a 70000-pixel-wide image was created");
    assert_eq!(e.code(), Some(ErrorCode::Unsupported), "{e}");
    assert!(
        e.to_string().contains("70000") && e.to_string().contains("16384"),
        "the refusal does not name the width and the limit: {e}"
    );
    eprintln!("70000x4: {e}");

    // A byte BO: runs, no rects, no image.
    let ps = cohmem_sys::page_size();
    let byte_bo = conn.create_bo(16 * ps)?;
    assert_eq!(byte_bo.image(), None);
    byte_bo.map()?.write((3 * ps) as usize, b"bytes")?;
    let done = byte_bo.sync_with_runs()?;
    assert_eq!(done.pages_list(), vec![3]);
    assert!(done.rects.is_empty() && !done.rects_merged, "{done:?}");
    let res = byte_bo.export_resource(0)?;
    assert_eq!(res.image, None, "a byte BO's export describes an image");
    assert!(cohmem_tools::verify_gpu_copy(&byte_bo)?.is_empty());

    // An image BO imported by a second connection: same layout; the
    // importer's writes sync through its handle with their rects, onto
    // the same GPU copy.
    let bo = conn.create_image(500, 40, fourcc::ARGB8888)?;
    let info = bo.image().expect("image layout");
    let other = Connection::connect(daemon.socket())?;
    let imported = other.import_bo(bo.memfd().try_clone_to_owned()?)?;
    assert_eq!(imported.image(), Some(info), "the import sees another layout");
    assert_eq!(imported.export_resource(0)?.image, Some(info));
    let before = bo_image_bytes(&bo, &info)?;
    let spot = Rect { x: 7, y: 9, w: 3, h: 2 };
    fill_rect(&imported.map()?, &info, &spot, 0x80ff_8000)?;
    let done = imported.sync_with_runs()?;
    let after = bo_image_bytes(&bo, &info)?;
    let changed = changed_pixels(&info, &before, &after);
    assert_eq!(changed, PixelSet::from_rects(info.width, info.height, &[spot]));
    check_rects(&info, &done, &changed, ps, "imported BO")?;
    let gpu = GpuImage::map(&bo.export_resource(0)?)?;
    assert_eq!(image_difference(&info, &after, &gpu.bytes()?), None);
    // The creator's next sync has nothing left.
    let idle = bo.sync_with_runs()?;
    assert_eq!((idle.pages, idle.rects.len()), (0, 0), "{idle:?}");
    Ok(())
}

/// The reference, by hand: page runs of three layouts turned into pixel
/// spans and rects computed on paper (row padding, bytes past the last
/// row, runs across rows, adjacent runs).
#[test]
fn the_reference_matches_rects_computed_by_hand() {
    use cohmem_client::Run;
    use cohmem_tests::image::reference_rects;
    let image = |width, height, format, pitch| ImageInfo {
        width,
        height,
        fourcc: format,
        pitch,
        offset: 0,
        modifier: MODIFIER_LINEAR,
    };
    let run = |first_page, pages| Run { first_page, pages };
    let r = |x, y, w, h| Rect { x, y, w, h };
    let sorted = |mut v: Vec<Rect>| {
        v.sort_by_key(|r| (r.y, r.x));
        v
    };
    let ps = 4096;
    // 1000x200 XRGB8888, pitch 4032. Page 1 = bytes 4096..8192: row 1
    // (4032..8032) from byte 64 = column 16; row 2 (8064..) to byte 128 =
    // column 32.
    let padded = image(1000, 200, fourcc::XRGB8888, 4032);
    assert_eq!(
        sorted(reference_rects(&padded, &[run(1, 1)], ps)),
        vec![r(16, 1, 984, 1), r(0, 2, 32, 1)]
    );
    // 16-byte "pages": bytes 4000..4016 are row 0's padding; 806368.. is
    // past the last row (199 * 4032 + 4000).
    assert!(pixels_of_runs(&padded, &[run(250, 1)], 16).is_empty());
    assert!(pixels_of_runs(&padded, &[run(806_368 / 16, 1)], 16).is_empty());
    assert_eq!(
        pixels_of_runs(&padded, &[run(249, 1)], 16).count(),
        4,
        "bytes 3984..4000: 4 pixels"
    );
    // 1024x300, one page a row: separate runs stay apart, touching ones join.
    let paged = image(1024, 300, fourcc::XRGB8888, 4096);
    assert_eq!(reference_rects(&paged, &[run(3, 3)], ps), vec![r(0, 3, 1024, 3)]);
    assert_eq!(
        sorted(reference_rects(&paged, &[run(3, 1), run(5, 1)], ps)),
        vec![r(0, 3, 1024, 1), r(0, 5, 1024, 1)]
    );
    assert_eq!(
        reference_rects(&paged, &[run(3, 2), run(5, 1)], ps),
        vec![r(0, 3, 1024, 3)]
    );
    // 333x257 RGB565, pitch 704 (666 bytes of pixels). Page 0: rows 0..5
    // whole, row 5 (3520..) to byte 4096 = column 288. Page 1 alone: row 5
    // from column 288, rows 6..11 whole, row 11 (7744..) to column 224.
    let small = image(333, 257, fourcc::RGB565, 704);
    assert_eq!(
        sorted(reference_rects(&small, &[run(0, 1)], ps)),
        vec![r(0, 0, 333, 5), r(0, 5, 288, 1)]
    );
    assert_eq!(
        sorted(reference_rects(&small, &[run(1, 1)], ps)),
        vec![r(288, 5, 45, 1), r(0, 6, 333, 5), r(0, 11, 224, 1)]
    );
    assert_eq!(
        sorted(reference_rects(&small, &[run(0, 2)], ps)),
        vec![r(0, 0, 333, 11), r(0, 11, 224, 1)]
    );
}

/// A real sync's rects equal rects computed by hand, and `check_rects`
/// rejects every way a reply could be wrong (a rect missing, overlapping,
/// split, a false `merged`, a page missing from the runs).
#[test]
fn the_checks_reject_wrong_replies() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    anyhow::ensure!(ps == 4096, "hand-computed for 4 KiB pages");
    let bo = conn.create_image(1000, 200, fourcc::XRGB8888)?;
    let info = bo.image().expect("image layout");
    let map = bo.map()?;
    let before = bo_image_bytes(&bo, &info)?;
    // Columns 10..15 of rows 1..4: bytes 4072, 8104 and 12136 onwards, in
    // pages 0, 1 and 2. Bytes 0..12288 hold rows 0..3 whole and row 3
    // (12096..) up to column 48.
    fill_rect(
        &map,
        &info,
        &Rect {
            x: 10,
            y: 1,
            w: 5,
            h: 3,
        },
        0x00c0_ffee,
    )?;
    let done = bo.sync_with_runs()?;
    let changed = changed_pixels(&info, &before, &bo_image_bytes(&bo, &info)?);
    assert_eq!(changed.count(), 15);
    assert_eq!(done.pages_list(), vec![0, 1, 2]);
    let mut got = done.rects.clone();
    got.sort_by_key(|r| (r.y, r.x));
    assert_eq!(
        got,
        vec![
            Rect {
                x: 0,
                y: 0,
                w: 1000,
                h: 3
            },
            Rect {
                x: 0,
                y: 3,
                w: 48,
                h: 1
            }
        ]
    );
    assert!(!done.rects_merged);
    check_rects(&info, &done, &changed, ps, "as replied")?;

    let wrong = |what: &str, edit: &dyn Fn(&mut cohmem_client::SyncResult)| {
        let mut d = done.clone();
        edit(&mut d);
        match check_rects(&info, &d, &changed, ps, what) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => eprintln!("rejected: {e:#}"),
        }
    };
    wrong("a rect missing", &|d| d.rects.retain(|r| r.h != 1));
    wrong("a rect too tall", &|d| {
        d.rects.iter_mut().for_each(|r| r.h += u32::from(r.w == 1000));
    });
    wrong("a rect split", &|d| {
        d.rects = vec![
            Rect {
                x: 0,
                y: 0,
                w: 1000,
                h: 2,
            },
            Rect {
                x: 0,
                y: 2,
                w: 1000,
                h: 1,
            },
            Rect {
                x: 0,
                y: 3,
                w: 48,
                h: 1,
            },
        ];
    });
    wrong("merged without need", &|d| d.rects_merged = true);
    wrong("a page missing from the runs", &|d| {
        d.runs = vec![cohmem_client::Run {
            first_page: 0,
            pages: 2,
        }];
    });
    wrong("a rect outside the image", &|d| {
        d.rects.push(Rect {
            x: 990,
            y: 199,
            w: 20,
            h: 1,
        })
    });
    Ok(())
}
