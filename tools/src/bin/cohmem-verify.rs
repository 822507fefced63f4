//! cohmem-verify: proves that the GPU sees what a client wrote (issue 8).
//!
//! Writes cohmem-stress's random patterns into a BO and syncs after each
//! round, then reads the BO's resource *through the GPU*: the dma-buf is
//! imported into EGL on the daemon's DRM device and `shaders/
//! page_checksum.comp` checksums every page, which is compared with the same
//! checksum of the BO's bytes on the CPU. Where no import is possible it
//! says exactly why, and checks an upload of the resource's bytes instead.
//! `--corrupt-page P` then writes into the resource behind the daemon's
//! back and requires the check to find page P, and only it.
//!
//! `--image WIDTHxHEIGHT` (issue 16) checks an image BO instead: random
//! rectangles, lines, pixels and bands drawn over several rounds (each sync's
//! rectangles must contain every pixel that changed), then the resource's
//! dma-buf imported into EGL *as the client's image* (its width, height,
//! fourcc, pitch, offset and modifier) and compared texel by texel on the
//! GPU by `shaders/image_compare.comp`; `--corrupt [X,Y,W,H]` then writes
//! different bytes into that rectangle of the GPU buffer behind the
//! daemon's back and requires the check to find exactly that rectangle.
//!
//! Exit status: 0 when the GPU agrees (and a requested corruption was
//! found), 1 on any mismatch, 2 when no GPU path could run at all.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use cohmem_client::{fourcc, Bo, Connection, Rect};
use cohmem_tools::gpu_check::behind::{corrupt_rect_behind, map_behind};
use cohmem_tools::gpu_check::draw::{draw_rounds, DrawStats};
use cohmem_tools::gpu_check::image::{default_corrupt_rect, parse_rect};
use cohmem_tools::gpu_check::{card_node_of, GpuCheck, GpuCheckError, GpuChecker, ImageCheck, ReadPath};
use cohmem_tools::image::{check_image_gpu_copy, format_name, info_json, parse_format, parse_size};
use cohmem_tools::stress::patterns::{generate, pick_kind, OpData};
use cohmem_tools::{verify_gpu_copy, DaemonProcess, SplitMix64};
use serde_json::json;

/// Check a BO's GPU copy through the GPU.
#[derive(Debug, Parser)]
#[command(name = "cohmem-verify", version)]
struct Args {
    /// Use this running daemon (default: start a private one).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// GPU backend of the private daemon (`auto`, `soft`, `drm:/dev/dri/cardN`, `gbm:…`).
    #[arg(long, default_value = "auto")]
    gpu: String,
    /// The DRM card node to import on (default: the one in the daemon's
    /// backend description).
    #[arg(long)]
    device: Option<PathBuf>,
    /// BO size in MiB.
    #[arg(long, default_value_t = 4)]
    size_mib: u64,
    /// Write/sync rounds of cohmem-stress patterns before the check.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// RNG seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// After the check, write into page P of the resource behind the
    /// daemon's back and require the check to find exactly that page.
    #[arg(long, value_name = "P")]
    corrupt_page: Option<u64>,
    /// Check an image BO of this size instead of a byte BO (`1000x300`).
    #[arg(long, value_name = "WIDTHxHEIGHT", value_parser = parse_size)]
    image: Option<(u32, u32)>,
    /// Pixel format of `--image`: XR24 (XRGB8888) or AR24 (ARGB8888).
    #[arg(long, default_value = "XR24", value_parser = parse_format)]
    format: u32,
    /// With `--image`: after the check, write different bytes into this
    /// rectangle of the GPU buffer behind the daemon's back and require the
    /// check to find exactly it (default: about a tenth of each side, a
    /// third of the way in). Where the resource cannot be written (the
    /// software backend), the uploaded copy is corrupted instead, and the
    /// report says so.
    #[arg(long, value_name = "X,Y,W,H", num_args = 0..=1, default_missing_value = "")]
    corrupt: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn check_json(c: &GpuCheck) -> serde_json::Value {
    let (path, why) = match &c.path {
        ReadPath::DmaBufImport => ("dma-buf import", None),
        ReadPath::Upload { why_not_imported } => ("upload", Some(why_not_imported.clone())),
    };
    json!({
        "platform": c.platform, "renderer": c.renderer, "path": path, "why_not_imported": why,
        "channel_order": format!("{:?}", c.order), "pages": c.pages, "mismatched_pages": c.mismatched,
        "notes": c.notes,
    })
}

fn say_check(what: &str, c: &GpuCheck) {
    println!(
        "{what}: {} of {} pages differ on the GPU ({}, {} via {})",
        c.mismatched.len(),
        c.pages,
        match &c.path {
            ReadPath::DmaBufImport => "dma-buf imported into EGL".to_string(),
            ReadPath::Upload { why_not_imported } => format!("bytes uploaded, not imported: {why_not_imported}"),
        },
        c.renderer,
        c.platform
    );
    if !c.mismatched.is_empty() {
        println!("  mismatching pages: {:?}", c.mismatched);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => match e.downcast_ref::<GpuCheckError>() {
            Some(GpuCheckError::NoGpu(_)) => {
                if args.json {
                    println!("{}", json!({ "available": false, "why": e.to_string() }));
                } else {
                    println!("GPU check unavailable: {e}");
                }
                std::process::exit(2);
            }
            _ => Err(e),
        },
    }
}

fn run(args: &Args) -> anyhow::Result<i32> {
    anyhow::ensure!(
        args.image.is_some() || args.corrupt.is_none(),
        "--corrupt needs --image (a byte BO takes --corrupt-page)"
    );
    anyhow::ensure!(
        args.image.is_none() || args.corrupt_page.is_none(),
        "--corrupt-page is for byte BOs (an image BO takes --corrupt X,Y,W,H)"
    );
    let mut _daemon = None;
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => {
            let d = DaemonProcess::spawn(&["--gpu", &args.gpu, "--log", "warn"]).context("starting cohmemd")?;
            let s = d.socket().to_owned();
            _daemon = Some(d);
            s
        }
    };
    let conn = Connection::connect(&socket)?;
    let backend = conn.stats(0)?.daemon.backend;
    let card = args.device.clone().or_else(|| card_node_of(&backend));
    let seed = args.seed.unwrap_or_else(SplitMix64::seed_from_time);
    if let Some((width, height)) = args.image {
        return run_image(args, &conn, &backend, card, seed, width, height);
    }
    let ps = cohmem_sys::page_size();
    let size = args.size_mib.max(1) << 20;
    let bo = conn.create_bo(size)?;
    let map = bo.map()?;
    let mut rng = SplitMix64::new(seed);
    let mut shadow = vec![0u8; size as usize];
    let mut synced_pages = 0;
    for _ in 0..args.rounds {
        let kind = pick_kind(&mut rng);
        for op in generate(&mut rng, kind, size, ps, &shadow) {
            match &op.data {
                OpData::Bytes(b) => map.write(op.offset as usize, b)?,
                OpData::Fill { len, byte } => map.fill(op.offset as usize, *len as usize, *byte)?,
            }
            op.apply(&mut shadow);
        }
        synced_pages += bo.sync()?.pages;
    }
    let mut bytes = vec![0u8; size as usize];
    bo.read_at(0, &mut bytes)?;
    anyhow::ensure!(bytes == shadow, "the BO does not hold what was written (seed {seed})");
    let cpu_mismatches = verify_gpu_copy(&bo)?.len();
    let text = !args.json;
    if text {
        println!(
            "BO {}: {} MiB, {} rounds of cohmem-stress patterns (seed {seed}), {synced_pages} pages synced; \
             backend {backend}",
            bo.id(),
            args.size_mib,
            args.rounds
        );
        println!("CPU readback of the resource: {cpu_mismatches} pages differ");
    }
    let mut gpu = GpuChecker::new(card.clone());
    gpu.verbose = !args.quiet;
    let check = gpu.check(&bo)?;
    if text {
        say_check("GPU checksum", &check);
    }
    let mut ok = check.mismatched.is_empty() && cpu_mismatches == 0;
    let mut corrupted = None;
    if let Some(page) = args.corrupt_page {
        anyhow::ensure!(
            page < size / ps,
            "--corrupt-page {page} is outside the BO's {} pages",
            size / ps
        );
        corrupt(&bo, card.as_deref(), page)?;
        let after = gpu.check(&bo)?;
        if text {
            say_check(
                &format!("after corrupting page {page} behind the daemon's back"),
                &after,
            );
        }
        let found = after.mismatched == vec![page];
        ok &= found;
        if text {
            println!(
                "corrupted page {page} {}",
                if found {
                    "found, and only it"
                } else {
                    "NOT found exactly"
                }
            );
        }
        // The daemon repairs it at the next sync that uploads the page.
        map.write_u64(
            (page * ps) as usize,
            u64::from_le_bytes(shadow[(page * ps) as usize..][..8].try_into()?),
        )?;
        bo.sync()?;
        let repaired = gpu.check(&bo)?;
        ok &= repaired.mismatched.is_empty();
        if text {
            say_check("after writing the page again and syncing", &repaired);
        }
        corrupted = Some(json!({ "page": page, "found": found, "after": check_json(&after),
                                 "repaired": check_json(&repaired) }));
    }
    if args.json {
        println!(
            "{}",
            json!({
                "available": true, "ok": ok, "bo": bo.id(), "seed": seed, "backend": backend,
                "rounds": args.rounds, "synced_pages": synced_pages, "cpu_mismatched_pages": cpu_mismatches,
                "check": check_json(&check), "corruption": corrupted,
            })
        );
    } else {
        println!(
            "{}",
            if ok {
                "verified: the GPU sees what the client wrote"
            } else {
                "FAILED"
            }
        );
    }
    Ok(if ok { 0 } else { 1 })
}

/// Writes garbage into page `page` of the BO's resource without telling the
/// daemon.
fn corrupt(bo: &Bo, card: Option<&Path>, page: u64) -> anyhow::Result<()> {
    let res = bo.export_resource(0)?;
    let ps = cohmem_sys::page_size();
    let len = (res.size / ps).saturating_sub(1) * res.pitch + ps;
    let at = (page * res.pitch) as usize;
    let garbage: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let behind = map_behind(&res, card, len)?;
    let mut old = vec![0u8; garbage.len()];
    behind.map.read_at(at, &mut old)?;
    let new: Vec<u8> = old.iter().zip(&garbage).map(|(o, g)| o ^ g | 1).collect();
    behind.map.write_at(at, &new)?;
    Ok(())
}

fn rect_json(r: &Rect) -> serde_json::Value {
    json!({ "x": r.x, "y": r.y, "w": r.w, "h": r.h })
}

fn rect_text(r: &Rect) -> String {
    format!("{},{} {}x{}", r.x, r.y, r.w, r.h)
}

fn image_check_json(c: &ImageCheck) -> serde_json::Value {
    let (path, why) = match &c.path {
        ReadPath::DmaBufImport => ("dma-buf import", None),
        ReadPath::Upload { why_not_imported } => ("upload", Some(why_not_imported.clone())),
    };
    json!({
        "platform": c.platform, "renderer": c.renderer, "path": path, "why_not_imported": why,
        "image": info_json(&c.info), "modifier_passed": c.modifier_passed,
        "channel_order": format!("{:?}", c.order), "pixels": c.pixels, "tiles": c.tiles,
        "differing_pixels": c.differing_pixels,
        "differing_tiles": c.differing_tiles.iter().map(|(t, n)| json!([t.0, t.1, n])).collect::<Vec<_>>(),
        "pixel_bbox": c.pixel_bbox.as_ref().map(rect_json),
        "checksum_tiles": c.checksum_tiles.iter().map(|t| json!([t.0, t.1])).collect::<Vec<_>>(),
        "checksum_bbox": c.checksum_bbox.as_ref().map(rect_json),
        "notes": c.notes,
    })
}

fn say_image_check(what: &str, c: &ImageCheck) {
    println!(
        "{what}: {} of {} pixels differ on the GPU, checksums differ in {} of {} 64x64 tiles ({}, {} via {})",
        c.differing_pixels,
        c.pixels,
        c.checksum_tiles.len(),
        c.tiles,
        match &c.path {
            ReadPath::DmaBufImport => format!(
                "dma-buf imported into EGL as the {}x{} {} image, pitch {}, offset {}, modifier {}",
                c.info.width,
                c.info.height,
                fourcc::name(c.info.fourcc),
                c.info.pitch,
                c.info.offset,
                if c.modifier_passed { "passed" } else { "not passed" }
            ),
            ReadPath::Upload { why_not_imported } => {
                format!("bytes uploaded with the image's pitch, not imported: {why_not_imported}")
            }
        },
        c.renderer,
        c.platform
    );
    if let Some(b) = &c.pixel_bbox {
        println!(
            "  differing pixels: bounding box {} in {} tiles",
            rect_text(b),
            c.differing_tiles.len()
        );
    }
    if let Some(b) = &c.checksum_bbox {
        println!("  differing checksums: tiles bounding {}", rect_text(b));
    }
}

fn drawing_json(d: &DrawStats) -> serde_json::Value {
    json!({
        "shapes": d.shapes, "synced_pages": d.synced_pages, "changed_pixels": d.changed_pixels,
        "rects": d.rects, "covered_pixels": d.covered_pixels, "merged_syncs": d.merged_syncs,
        "uncovered_pixels": d.uncovered_pixels, "first_uncovered": d.first_uncovered,
    })
}

/// `--image`: draws into an image BO, checks its GPU copy as the image,
/// and finds a corrupted rectangle.
fn run_image(
    args: &Args,
    conn: &Connection,
    backend: &str,
    card: Option<PathBuf>,
    seed: u64,
    width: u32,
    height: u32,
) -> anyhow::Result<i32> {
    anyhow::ensure!(
        matches!(args.format, fourcc::XRGB8888 | fourcc::ARGB8888),
        "--format {}: the image check takes XR24 and AR24",
        fourcc::name(args.format)
    );
    let bo = conn
        .create_image(width, height, args.format)
        .with_context(|| format!("creating a {width}x{height} {} image BO", format_name(args.format)))?;
    let info = bo
        .image()
        .context("the daemon answered CREATE_IMAGE without an image layout")?;
    let corrupted = match args.corrupt.as_deref() {
        None => None,
        Some("") => Some(default_corrupt_rect(width, height)),
        Some(s) => {
            let r = parse_rect(s).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                r.x < width && r.y < height && r.w <= width - r.x && r.h <= height - r.y,
                "--corrupt {} is not inside the {width}x{height} image",
                rect_text(&r)
            );
            Some(r)
        }
    };
    let map = bo.map()?;
    let mut rng = SplitMix64::new(seed);
    let mut shadow = vec![0u8; bo.size() as usize];
    let drawing = draw_rounds(&bo, &map, &info, &mut shadow, &mut rng, args.rounds)?;
    let mut bytes = vec![0u8; bo.size() as usize];
    bo.read_at(0, &mut bytes)?;
    anyhow::ensure!(bytes == shadow, "the BO does not hold what was drawn (seed {seed})");
    let cpu = check_image_gpu_copy(&bo)?;
    let text = !args.json;
    if text {
        println!(
            "image BO {}: {width}x{height} {}, pitch {}, offset {}, modifier {:#x}; backend {backend}",
            bo.id(),
            format_name(info.fourcc),
            info.pitch,
            info.offset,
            info.modifier
        );
        println!(
            "{} rounds (seed {seed}): {} shapes, {} pixels changed, {} rectangles reported covering {} pixels \
             ({} syncs merged), {} changed pixels outside them, {} pages synced",
            args.rounds,
            drawing.shapes,
            drawing.changed_pixels,
            drawing.rects,
            drawing.covered_pixels,
            drawing.merged_syncs,
            drawing.uncovered_pixels,
            drawing.synced_pages
        );
        if let Some((round, x, y)) = drawing.first_uncovered {
            println!("  the first: pixel ({x}, {y}) in round {round}");
        }
        println!(
            "CPU readback of the resource: {}{}",
            cpu.word(),
            cpu.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        );
    }
    let mut gpu = GpuChecker::new(card.clone());
    gpu.verbose = !args.quiet;
    let check = gpu.check_image(&bo, None)?;
    if text {
        say_image_check("GPU compare", &check);
    }
    let cpu_ok = !matches!(cpu, cohmem_tools::image::GpuCheck::Differs(_));
    let mut ok = check.finds(None) && drawing.uncovered_pixels == 0 && cpu_ok;
    let mut corruption = None;
    if let Some(r) = corrupted {
        let res = bo.export_resource(0)?;
        let layout = res.image.unwrap_or(info);
        // Into the GPU buffer itself where it can be written; else into
        // the copy the check uploads (and the report says so).
        let (written, how) = match map_behind(&res, card.as_deref(), layout.end()) {
            Ok(behind) => {
                corrupt_rect_behind(&behind, &layout, &r)?;
                (true, behind.how.to_string())
            }
            Err(e) => (false, format!("{e:#}")),
        };
        let after = gpu.check_image(&bo, (!written).then_some(&r))?;
        // Where the buffer could not be written, only an upload can carry
        // the corruption (an import reads the untouched buffer).
        let how = match (written, &after.path) {
            (true, _) => how,
            (false, ReadPath::Upload { .. }) => format!("in the uploaded copy ({how})"),
            (false, ReadPath::DmaBufImport) => format!("NOWHERE: the imported buffer could not be written ({how})"),
        };
        let found = after.finds(Some(&r));
        ok &= found;
        if text {
            say_image_check(&format!("after corrupting {} {how}", rect_text(&r)), &after);
            println!(
                "corrupted rectangle {} {}",
                rect_text(&r),
                if found { "found exactly" } else { "NOT found exactly" }
            );
        }
        // The daemon repairs it at the next sync that uploads those rows.
        for y in r.y..r.y + r.h {
            let at = info.pixel_offset(r.x, y) as usize;
            map.write(at, &shadow[at..at + (r.w * info.bytes_per_pixel()) as usize])?;
        }
        bo.sync()?;
        let repaired = gpu.check_image(&bo, None)?;
        ok &= repaired.finds(None);
        if text {
            say_image_check("after writing the rectangle again and syncing", &repaired);
        }
        corruption = Some(json!({
            "rect": rect_json(&r), "in_resource": written, "how": how, "found": found,
            "after": image_check_json(&after), "repaired": image_check_json(&repaired),
        }));
    }
    if args.json {
        println!(
            "{}",
            json!({
                "available": true, "ok": ok, "mode": "image", "bo": bo.id(), "seed": seed, "backend": backend,
                "image": info_json(&info), "rounds": args.rounds, "drawing": drawing_json(&drawing),
                "cpu_check": cpu.word(), "cpu_check_detail": cpu.detail(),
                "check": image_check_json(&check), "corruption": corruption,
            })
        );
    } else {
        println!(
            "{}",
            if ok {
                "verified: the GPU sees the client's image as it drew it"
            } else {
                "FAILED"
            }
        );
    }
    Ok(if ok { 0 } else { 1 })
}
