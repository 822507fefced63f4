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
//! Exit status: 0 when the GPU agrees (and a requested corruption was
//! found), 1 on any mismatch, 2 when no GPU path could run at all.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use cohmem_client::Connection;
use cohmem_tools::gpu_check::{card_node_of, is_dmabuf, GpuCheck, GpuCheckError, GpuChecker, ReadPath};
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
    let ps = cohmem_sys::page_size();
    let size = args.size_mib.max(1) << 20;
    let bo = conn.create_bo(size)?;
    let map = bo.map()?;
    let seed = args.seed.unwrap_or_else(SplitMix64::seed_from_time);
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
/// daemon: through the DRM device (PRIME import of the resource's dma-buf,
/// mapped writable), or a writable mapping of the resource's fd.
fn corrupt(bo: &cohmem_client::Bo, card: Option<&std::path::Path>, page: u64) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let res = bo.export_resource(0)?;
    let ps = cohmem_sys::page_size();
    let len = (res.size / ps).saturating_sub(1) * res.pitch + ps;
    let at = (page * res.pitch) as usize;
    let garbage: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    if let (true, Some(card)) = (is_dmabuf(res.fd.as_fd()), card) {
        let dev = cohmem_sys::drm::DrmDevice::open(card).with_context(|| format!("opening {}", card.display()))?;
        let gem = dev
            .import_prime(res.fd.as_fd())
            .context("PRIME import of the resource")?;
        let map = gem.map_writable(len).context("mapping the resource writable")?;
        let mut old = vec![0u8; garbage.len()];
        map.read_at(at, &mut old)?;
        let new: Vec<u8> = old.iter().zip(&garbage).map(|(o, g)| o ^ g | 1).collect();
        map.write_at(at, &new)?;
        return Ok(());
    }
    let map = cohmem_sys::mapping::SharedMapping::map(res.fd.as_fd(), len, 0, true).context(
        "the resource cannot be written behind the daemon's back (the software backend's memfd is sealed \
         read-only, and no DRM device is known)",
    )?;
    map.write_at(at, &garbage)?;
    Ok(())
}
