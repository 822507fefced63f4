//! `cohmemctl demo`, the README's first command: a private daemon (or a
//! running one), a byte BO whose syncs upload exactly the written pages,
//! then an image BO animation whose syncs report rectangles
//! ([`crate::image_demo`]), shown on the daemon's display output with
//! `image.display`, then the daemon's status.

use std::path::PathBuf;

use anyhow::{bail, Context};
use cohmem_client::Connection;
use cohmem_proto::{StatsReport, STATS_BOS, STATS_CONNECTIONS};
use serde_json::json;

use crate::image_demo::ImageDemo;
use crate::{verify_gpu_copy, DaemonProcess, SplitMix64};

/// What to run.
#[derive(Debug, Clone)]
pub struct Demo {
    /// A running daemon's socket (default: start a private one).
    pub socket: Option<PathBuf>,
    /// Byte BO size in MiB.
    pub size_mib: u64,
    /// Write/sync rounds of the byte BO.
    pub rounds: u32,
    /// RNG seed (default: from the clock).
    pub seed: Option<u64>,
    /// The image part (`frames` 0: none).
    pub image: ImageDemo,
    /// One JSON object per round, frame and summary instead of text.
    pub json: bool,
}

fn short_list(pages: &[u64]) -> String {
    const SHOW: usize = 12;
    let head: Vec<String> = pages.iter().take(SHOW).map(u64::to_string).collect();
    if pages.len() > SHOW {
        format!("[{} … +{}]", head.join(","), pages.len() - SHOW)
    } else {
        format!("[{}]", head.join(","))
    }
}

impl Demo {
    /// Runs it; `print_status` prints the daemon's status at the end (text),
    /// `status_json` gives it as JSON (with `json`).
    pub fn run(
        &self,
        print_status: impl Fn(&StatsReport),
        status_json: impl Fn(&StatsReport) -> serde_json::Value,
    ) -> anyhow::Result<()> {
        let (size_mib, rounds, image, as_json) = (self.size_mib, self.rounds, &self.image, self.json);
        // Text goes to stdout, or nowhere with --json (stdout is then JSON only).
        let say = |line: String| {
            if !as_json {
                println!("{line}");
            }
        };
        if image.display && image.frames == 0 {
            bail!("--display shows the image animation: give it frames (--frames N, N > 0)");
        }
        let mut daemon = None;
        let socket = match self.socket.clone() {
            Some(s) => s,
            None => {
                let (args, what): (&[&str], _) = if image.display {
                    (
                        &["--gpu", "auto", "--display", "auto"],
                        "--gpu auto --display auto: a DRM device with dumb buffers, its first connected connector",
                    )
                } else {
                    (
                        &["--gpu", "auto"],
                        "--gpu auto: a DRM device with dumb buffers, else the software GPU",
                    )
                };
                say(format!("starting a private cohmemd ({what}) …"));
                // Without a KMS device a daemon with --display refuses to
                // start and says why on stderr (ours), just before this error.
                let d = DaemonProcess::spawn(args).with_context(|| {
                    if image.display {
                        "starting cohmemd --gpu auto --display auto (--display needs a DRM device with KMS; \
                         cohmemd's own message is above)"
                    } else {
                        "starting cohmemd"
                    }
                })?;
                let s = d.socket().to_owned();
                say(format!("cohmemd pid {} listening on {}", d.pid(), s.display()));
                daemon = Some(d);
                s
            }
        };
        let seed = self.seed.unwrap_or_else(SplitMix64::seed_from_time);
        let mut rng = SplitMix64::new(seed);
        let conn = Connection::connect(&socket)?;
        let backend = conn.stats(0)?.daemon.backend;
        say(format!("GPU backend: {backend}"));
        // With --display the image BO is shown first: a daemon without a
        // display output fails the demo here, with its message.
        let shown_image = if image.display {
            Some(image.prepare(&conn)?)
        } else {
            None
        };
        let bo = conn.create_bo(size_mib << 20)?;
        let map = bo.map()?;
        let ps = cohmem_sys::page_size();
        let pages = bo.size() / ps;
        say(format!(
            "\nBO {}: {} MiB = {} pages, mapped at {:p} and write-protected (seed {seed})",
            bo.id(),
            size_mib,
            pages,
            map.as_ptr()
        ));
        let mut page_buf = vec![0u8; ps as usize];
        for round in 1..=rounds {
            let count = 1 + rng.below(8) as usize;
            let written = rng.distinct(pages, count);
            for &p in &written {
                rng.fill(&mut page_buf);
                map.write((p * ps) as usize, &page_buf)?;
            }
            let done = bo.sync_with_runs()?;
            let synced = done.pages_list();
            let mismatches = verify_gpu_copy(&bo)?;
            if as_json {
                println!(
                    "{}",
                    json!({
                        "round": round, "bo": bo.id(), "seed": seed, "backend": backend,
                        "written_pages": written, "synced_pages": synced,
                        "mechanism": done.mechanism.name(), "duration_us": done.duration.as_micros() as u64,
                        "gpu_copy_mismatched_pages": mismatches.len(),
                    })
                );
            } else {
                println!(
                    "round {round}: wrote pages {} → sync uploaded {} pages {} by {} in {} µs; GPU copy {}",
                    short_list(&written),
                    done.pages,
                    short_list(&synced),
                    done.mechanism,
                    done.duration.as_micros(),
                    if mismatches.is_empty() {
                        "identical to the BO".to_string()
                    } else {
                        format!("DIFFERS on {} pages", mismatches.len())
                    }
                );
            }
            if synced != written || !mismatches.is_empty() {
                bail!("round {round}: tracking or upload was wrong (seed {seed})");
            }
        }
        let done = bo.sync()?;
        say(format!("sync with no writes uploaded {} pages", done.pages));
        if let Some(prepared) = shown_image {
            image.animate(&conn, prepared)?;
        } else if image.frames > 0 {
            image.run(&conn)?;
        }
        let status = conn.stats(STATS_CONNECTIONS | STATS_BOS)?;
        if as_json {
            println!(
                "{}",
                json!({ "rounds": rounds, "quiet_sync_pages": done.pages, "status": status_json(&status) })
            );
        } else {
            println!();
            print_status(&status);
        }
        drop(map);
        drop(bo);
        drop(conn);
        if let Some(mut d) = daemon {
            let clean = d.stop()?;
            say(format!(
                "\ncohmemd stopped ({})",
                if clean { "clean exit" } else { "killed" }
            ));
        }
        Ok(())
    }
}
