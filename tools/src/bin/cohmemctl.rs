//! cohmemctl: inspect the kernel and a running cohmemd, or run a demo.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use cohmem_client::Connection;
use cohmem_proto::{BoPolicy, BoRow, DaemonStats, StatsReport, BO_ROW_PAUSED, STATS_BOS, STATS_CONNECTIONS};
use cohmem_sys::probe::{probe_all, KernelCaps, Probe};
use cohmem_tools::demo::Demo;
use cohmem_tools::image_demo::ImageDemo;
use cohmem_tools::DaemonProcess;
use serde_json::json;

/// Administer cohmem.
#[derive(Debug, Parser)]
#[command(name = "cohmemctl", version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Which write-tracking mechanisms this kernel offers, found by real probes.
    Caps {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Connections, BOs and dirty statistics of a running daemon.
    Status {
        /// Daemon socket (default: the daemon's default path or $COHMEM_SOCKET).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One line per BO: size, views, method, policy, dirty pages, uploads.
    List {
        /// Daemon socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The daemon's counters; with --watch, their rates every interval.
    Stats {
        /// Print again every --interval seconds, with rates since the last.
        #[arg(long)]
        watch: bool,
        /// Seconds between prints with --watch.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many prints with --watch (default: until killed).
        #[arg(long)]
        count: Option<u64>,
        /// Daemon socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON (one object per line with --watch).
        #[arg(long)]
        json: bool,
    },
    /// Pin how BO ID is tracked: `auto` (the daemon's choice), `mkwrite`,
    /// `pagetable` (that method, never switched or paused) or `full` (no
    /// tracking: every sync uploads the whole BO). No write is lost by a
    /// change: leaving `full` marks the whole BO dirty.
    SetPolicy {
        /// Daemon-wide BO id (from `list`).
        id: u64,
        /// auto, mkwrite, pagetable or full.
        #[arg(value_parser = parse_policy)]
        policy: BoPolicy,
        /// Daemon socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The daemon's Prometheus metrics (OpenMetrics text, as served on
    /// `cohmemd --metrics-listen`), read over the daemon's socket.
    Metrics {
        /// Daemon socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the samples as JSON instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// Write an exact copy of BO ID (from `status`) to FILE, taken with the
    /// BO's writers quiesced: its bytes, or for an image BO and a FILE
    /// ending in .png, its pixels as a PNG.
    Snapshot {
        /// Daemon-wide BO id.
        id: u64,
        /// Output file (raw bytes; a PNG if it ends in .png).
        file: PathBuf,
        /// Daemon socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a WIDTHxHEIGHT image BO and print the layout the daemon's GPU
    /// backend gave it (pitch, offset, size, fourcc, modifier). Nothing is
    /// kept: the BO dies with this command's connection.
    Image {
        /// WIDTHxHEIGHT in pixels, e.g. 1920x1080.
        #[arg(value_parser = cohmem_tools::image::parse_size)]
        size: (u32, u32),
        /// XR24 (XRGB8888), AR24 (ARGB8888) or RG16 (RGB565).
        #[arg(long, default_value = "XR24", value_parser = cohmem_tools::image::parse_format)]
        format: u32,
        /// Daemon socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put image BO ID on the daemon's display output (`cohmemd --display`)
    /// and print the connector, mode and damage path; every sync of the BO
    /// then sends its rectangles to the device. Root, or a holder of the BO.
    Show {
        /// Daemon-wide BO id (from `list`).
        id: u64,
        /// Take the BO off the display instead (after committing what is
        /// pending).
        #[arg(long)]
        hide: bool,
        /// Daemon socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay a vmwgfx trace (tools/TRACE_FORMAT.md) against the daemon with
    /// real client processes and against the reference model, step by step;
    /// print the first disagreement (exit status 1) or the number of steps.
    Replay {
        /// The trace file.
        file: PathBuf,
        /// Use this running daemon instead of starting a private one.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Internal: the writer client process the replayer spawns.
    #[command(hide = true)]
    WriterChild {
        /// SOCKET MEMFD_FD OFFSET LEN.
        args: Vec<String>,
    },
    /// Start a private daemon (`--gpu auto`), write into a BO, and show
    /// each sync uploading exactly the written pages; then animate an image
    /// BO and show each sync's rectangles (with --display, on a screen too).
    Demo {
        /// Use this running daemon instead of starting one.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// BO size in MiB.
        #[arg(long, default_value_t = 16)]
        size_mib: u64,
        /// Write/sync rounds of the byte BO.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Animation frames of the image BO (0: none).
        #[arg(long, default_value_t = 10)]
        frames: u32,
        /// Size of the image BO (default 640x360; with --display 1024x768,
        /// a mode nearly every connector has: give the mode's size for
        /// another).
        #[arg(long, value_parser = cohmem_tools::image::parse_size)]
        image_size: Option<(u32, u32)>,
        /// Show the image BO on the daemon's display output: the private
        /// daemon gets `--display auto` (a DRM device with KMS needed); a
        /// daemon without a display output fails the demo at once.
        #[arg(long)]
        display: bool,
        /// Least milliseconds per animation frame (default 0; 40 with
        /// --display, so that it can be watched).
        #[arg(long)]
        frame_ms: Option<u64>,
        /// Save the image's last frame as a PNG in this directory.
        #[arg(long)]
        png: Option<PathBuf>,
        /// RNG seed (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Print one JSON object per round (and a final one) instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn parse_policy(s: &str) -> Result<BoPolicy, String> {
    BoPolicy::from_name(s).ok_or_else(|| format!("unknown policy {s:?} (auto, mkwrite, pagetable, full, shadow)"))
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Caps { json } => caps(json),
        Cmd::Status { socket, json } => status(socket, json),
        Cmd::List { socket, json } => list(socket, json),
        Cmd::Stats {
            watch,
            interval,
            count,
            socket,
            json,
        } => stats(socket, watch, interval, count, json),
        Cmd::SetPolicy {
            id,
            policy,
            socket,
            json,
        } => set_policy(socket, id, policy, json),
        Cmd::Metrics { socket, json } => metrics(socket, json),
        Cmd::Demo {
            socket,
            size_mib,
            rounds,
            frames,
            image_size,
            display,
            frame_ms,
            png: png_dir,
            seed,
            json,
        } => {
            let (width, height) = image_size.unwrap_or(if display {
                cohmem_tools::display::DEFAULT_DISPLAY_SIZE
            } else {
                (640, 360)
            });
            let frame_ms = frame_ms.unwrap_or(if display { 40 } else { 0 });
            Demo {
                socket,
                size_mib,
                rounds,
                seed,
                image: ImageDemo {
                    width,
                    height,
                    frames,
                    png_dir,
                    json,
                    display,
                    frame_interval: (frame_ms > 0).then(|| std::time::Duration::from_millis(frame_ms)),
                },
                json,
            }
            .run(print_status, stats_json)
        }
        Cmd::Image {
            size: (w, h),
            format,
            socket,
            json,
        } => cohmem_tools::image::describe_new_image(&connect(socket)?, w, h, format, json),
        Cmd::Show { id, hide, socket, json } => cohmem_tools::display::show_command(&connect(socket)?, id, hide, json),
        Cmd::Replay { file, socket, json } => replay_trace(&file, socket, json),
        Cmd::Snapshot { id, file, socket, json } => snapshot(id, &file, socket, json),
        Cmd::WriterChild { args } => cohmem_tools::writer::child_main(&args),
    }
}

fn mark(p: &Probe) -> &'static str {
    if p.ok {
        "yes"
    } else {
        "no "
    }
}

fn caps(as_json: bool) -> anyhow::Result<()> {
    let k: KernelCaps = probe_all();
    if as_json {
        let mechanisms = json!({
            "uffd-async": k.uffd_async.ok && k.pagemap_scan.ok,
            "uffd-sync": k.uffd_sync.ok,
            "soft-dirty": k.soft_dirty.ok,
            "full": true,
            "explicit": true,
        });
        let out = json!({ "kernel": k, "mechanisms": mechanisms, "soft_dirty_quiesce": k.soft_dirty_quiesce() });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("kernel {}  page size {}", k.kernel, k.page_size);
    println!(
        "userfaultfd features {:#x}: {}",
        k.uffd_features,
        k.uffd_feature_names.join(" ")
    );
    println!();
    println!("mechanism     available  probe");
    println!("uffd-async    {}        {}", mark(&k.uffd_async), k.uffd_async.detail);
    println!("uffd-sync     {}        {}", mark(&k.uffd_sync), k.uffd_sync.detail);
    println!("soft-dirty    {}        {}", mark(&k.soft_dirty), k.soft_dirty.detail);
    println!(
        "  after unprotect {}    {}",
        mark(&k.soft_dirty_after_unprotect),
        k.soft_dirty_after_unprotect.detail
    );
    let quiesce = k.soft_dirty_quiesce();
    println!("  quiesced    {}        {}", mark(&quiesce), quiesce.detail);
    println!("full          yes        no tracking: every sync copies the whole BO");
    println!("explicit      yes        client-reported damage, no tracking");
    println!();
    println!(
        "PAGEMAP_SCAN  {}        {}",
        mark(&k.pagemap_scan),
        k.pagemap_scan.detail
    );
    println!(
        "kernel faults {}        {}",
        mark(&k.uffd_all_faults),
        k.uffd_all_faults.detail
    );
    println!(
        "fd writes     {}        {}",
        mark(&k.memfd_modify_events),
        k.memfd_modify_events.detail
    );
    println!("view checks   {}        {}", mark(&k.view_checks), k.view_checks.detail);
    println!("map events    {}        {}", mark(&k.map_events), k.map_events.detail);
    Ok(())
}

fn connect(socket: Option<PathBuf>) -> anyhow::Result<Connection> {
    let path = socket.unwrap_or_else(cohmem_client::default_socket_path);
    Connection::connect(&path).with_context(|| format!("is cohmemd running on {}?", path.display()))
}

fn print_status(s: &StatsReport) {
    let d = &s.daemon;
    println!(
        "cohmemd up {:.1} s, backend {}: {} connections, {} client processes, {} BOs, {} views",
        d.uptime_ms as f64 / 1000.0,
        d.backend,
        d.connections,
        d.mm_subscriptions,
        d.bos,
        d.views
    );
    println!(
        "syncs {}  pages uploaded {}  bytes uploaded {}  upload failures {}  error replies {}",
        d.syncs, d.pages_uploaded, d.bytes_uploaded, d.upload_failures, d.errors
    );
    println!(
        "method switches {}  extra pages {}  sync retries {}  exclusive syncs {}  uffd-sync faults {}",
        d.method_switches, d.extra_pages, d.sync_retries, d.sync_exclusive, d.faults
    );
    if s.connections.is_empty() && s.bos.is_empty() {
        return;
    }
    println!("\nconnection      pid    uid   BOs  views  requests");
    for c in &s.connections {
        println!(
            "{:>10} {:>8} {:>6} {:>5} {:>6} {:>9}",
            c.id, c.pid, c.uid, c.bos, c.views, c.requests
        );
    }
    if s.bos.is_empty() {
        return;
    }
    println!("\n      BO         size  views  method     policy     dirty pages  syncs  pages uploaded  bytes uploaded  retries  exclusive");
    for b in &s.bos {
        println!(
            "{:>8} {:>12} {:>6}  {:<9}  {:<9} {:>12} {:>6} {:>15} {:>15} {:>8} {:>10}",
            b.id,
            b.size,
            b.views,
            method_name(b.method),
            policy_name(b.policy),
            b.dirty_pages,
            b.syncs,
            b.pages_uploaded,
            b.bytes_uploaded,
            b.sync_retries,
            b.sync_exclusive
        );
    }
    if s.truncated {
        println!("(lists truncated)");
    }
}

fn daemon_json(d: &DaemonStats) -> serde_json::Value {
    json!({
        "uptime_ms": d.uptime_ms, "backend": d.backend, "connections": d.connections,
        "mm_subscriptions": d.mm_subscriptions, "bos": d.bos, "views": d.views,
        "syncs": d.syncs, "pages_uploaded": d.pages_uploaded, "bytes_uploaded": d.bytes_uploaded,
        "upload_failures": d.upload_failures, "errors": d.errors,
        "method_switches": d.method_switches, "extra_pages": d.extra_pages,
        "sync_retries": d.sync_retries, "sync_exclusive": d.sync_exclusive, "faults": d.faults,
    })
}

fn method_name(wire: u16) -> &'static str {
    cohmem_proto::Method::from_wire(wire).map_or("?", |m| m.name())
}

fn policy_name(wire: u16) -> &'static str {
    BoPolicy::from_wire(wire).map_or("?", BoPolicy::name)
}

fn bo_json(b: &BoRow) -> serde_json::Value {
    json!({
        "id": b.id, "size": b.size, "views": b.views, "dirty_pages": b.dirty_pages, "syncs": b.syncs,
        "pages_uploaded": b.pages_uploaded, "bytes_uploaded": b.bytes_uploaded,
        "method": method_name(b.method), "policy": policy_name(b.policy),
        "paused": b.flags & BO_ROW_PAUSED != 0,
        "sync_retries": b.sync_retries, "sync_exclusive": b.sync_exclusive,
    })
}

fn stats_json(s: &StatsReport) -> serde_json::Value {
    json!({
        "daemon": daemon_json(&s.daemon),
        "connections": s.connections.iter().map(|c| json!({
            "id": c.id, "pid": c.pid, "uid": c.uid, "bos": c.bos, "views": c.views, "requests": c.requests,
        })).collect::<Vec<_>>(),
        "bos": s.bos.iter().map(bo_json).collect::<Vec<_>>(),
        "truncated": s.truncated,
    })
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn list(socket: Option<PathBuf>, as_json: bool) -> anyhow::Result<()> {
    let s = connect(socket)?.stats(STATS_BOS)?;
    if as_json {
        return print_json(&json!({
            "bos": s.bos.iter().map(bo_json).collect::<Vec<_>>(),
            "truncated": s.truncated,
        }));
    }
    println!("      BO         size  views  method     policy     paused  dirty pages  syncs  pages uploaded");
    for b in &s.bos {
        println!(
            "{:>8} {:>12} {:>6}  {:<9}  {:<9}  {:<6} {:>12} {:>6} {:>15}",
            b.id,
            b.size,
            b.views,
            method_name(b.method),
            policy_name(b.policy),
            if b.flags & BO_ROW_PAUSED != 0 { "yes" } else { "no" },
            b.dirty_pages,
            b.syncs,
            b.pages_uploaded
        );
    }
    println!(
        "{} BOs{}",
        s.bos.len(),
        if s.truncated { " (list truncated)" } else { "" }
    );
    Ok(())
}

/// Rates of the daemon's counters between two reports.
fn rates(prev: &DaemonStats, now: &DaemonStats) -> serde_json::Value {
    let secs = (now.uptime_ms.saturating_sub(prev.uptime_ms) as f64 / 1000.0).max(1e-3);
    let per_s = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
    json!({
        "seconds": secs,
        "syncs_per_s": per_s(prev.syncs, now.syncs),
        "pages_per_s": per_s(prev.pages_uploaded, now.pages_uploaded),
        "bytes_per_s": per_s(prev.bytes_uploaded, now.bytes_uploaded),
        "faults_per_s": per_s(prev.faults, now.faults),
        "errors_per_s": per_s(prev.errors, now.errors),
        "method_switches": now.method_switches.saturating_sub(prev.method_switches),
    })
}

fn stats(socket: Option<PathBuf>, watch: bool, interval: f64, count: Option<u64>, as_json: bool) -> anyhow::Result<()> {
    if !(interval.is_finite() && interval > 0.0) {
        bail!("--interval must be a positive number of seconds, not {interval}");
    }
    let conn = connect(socket)?;
    let mut prev = conn.stats(0)?.daemon;
    if !watch {
        if as_json {
            return print_json(&daemon_json(&prev));
        }
        print_status(&StatsReport {
            daemon: prev,
            ..StatsReport::default()
        });
        return Ok(());
    }
    if !as_json {
        println!("  uptime s  conns  BOs  syncs/s   pages/s       MiB/s   faults/s  errors/s  switches");
    }
    let mut printed = 0u64;
    while count.is_none_or(|c| printed < c) {
        std::thread::sleep(std::time::Duration::from_secs_f64(interval));
        let now = conn.stats(0)?.daemon;
        let r = rates(&prev, &now);
        if as_json {
            println!("{}", json!({ "daemon": daemon_json(&now), "rates": r }));
        } else {
            let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
            println!(
                "{:>10.1} {:>6} {:>4} {:>8.1} {:>9.1} {:>11.2} {:>10.1} {:>9.1} {:>9}",
                now.uptime_ms as f64 / 1000.0,
                now.connections,
                now.bos,
                f("syncs_per_s"),
                f("pages_per_s"),
                f("bytes_per_s") / (1 << 20) as f64,
                f("faults_per_s"),
                f("errors_per_s"),
                r["method_switches"]
            );
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        prev = now;
        printed += 1;
    }
    Ok(())
}

fn set_policy(socket: Option<PathBuf>, id: u64, policy: BoPolicy, as_json: bool) -> anyhow::Result<()> {
    let (previous, method) = connect(socket)?
        .set_policy(id, policy)
        .with_context(|| format!("setting the policy of BO {id}"))?;
    if as_json {
        return print_json(&json!({
            "bo": id, "policy": policy.name(), "previous": previous.name(), "method": method.name(),
        }));
    }
    println!("BO {id}: policy {previous} → {policy} (method now {method})");
    Ok(())
}

/// One sample of the exposition text: `name{labels} value`.
fn parse_sample(line: &str) -> Option<serde_json::Value> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i..]),
        None => line.split_at(line.find(' ')?),
    };
    let mut labels = serde_json::Map::new();
    let mut rest = rest;
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value.into());
                }
                other => key.push(other),
            }
        };
        rest = &body[end + 1..];
    }
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(json!({ "name": name, "labels": labels, "value": value }))
}

fn metrics(socket: Option<PathBuf>, as_json: bool) -> anyhow::Result<()> {
    let text = connect(socket)?.metrics()?;
    if !as_json {
        print!("{text}");
        return Ok(());
    }
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        samples.push(parse_sample(line).with_context(|| format!("unparsable metrics line {line:?}"))?);
    }
    print_json(&json!({ "samples": samples }))
}

fn status(socket: Option<PathBuf>, as_json: bool) -> anyhow::Result<()> {
    let conn = connect(socket)?;
    let s = conn.stats(STATS_CONNECTIONS | STATS_BOS)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&stats_json(&s))?);
    } else {
        print_status(&s);
    }
    Ok(())
}

fn replay_trace(file: &std::path::Path, socket: Option<PathBuf>, as_json: bool) -> anyhow::Result<()> {
    use cohmem_tools::vmwgfx::replay::{replay, WriterCommand};
    use cohmem_tools::vmwgfx::trace::parse_trace;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let events = parse_trace(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut daemon = None;
    let socket = match socket {
        Some(s) => s,
        None => {
            // vmwgfx's behaviour exactly, to compare with the reference model.
            let d = DaemonProcess::spawn(&["--log", "warn", "--methods", "vmwgfx", "--dense-percent", "0"])
                .context("starting cohmemd")?;
            let s = d.socket().to_owned();
            daemon = Some(d);
            s
        }
    };
    let writer = WriterCommand {
        program: std::env::current_exe().context("locating cohmemctl")?,
        pre_args: vec!["writer-child".into()],
    };
    let outcome = replay(&socket, &writer, &events)?;
    drop(daemon);
    match outcome {
        Ok(steps) if as_json => {
            print_json(&json!({ "trace": file.display().to_string(), "agree": true, "steps": steps }))
        }
        Ok(steps) => {
            println!("daemon and model agree on all {steps} steps of {}", file.display());
            Ok(())
        }
        Err(d) => {
            if as_json {
                print_json(
                    &json!({ "trace": file.display().to_string(), "agree": false, "disagreement": d.to_string() }),
                )?;
            } else {
                println!("first disagreement: {d}");
            }
            std::process::exit(1);
        }
    }
}

fn snapshot(id: u64, file: &std::path::Path, socket: Option<PathBuf>, as_json: bool) -> anyhow::Result<()> {
    let conn = connect(socket)?;
    let (fd, report) = conn.snapshot(id)?;
    let mut src = std::fs::File::from(fd);
    let png = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let (copied, what) = if png {
        let Some(info) = report.image else {
            bail!("BO {id} is not an image BO; snapshot to a raw file instead");
        };
        cohmem_tools::image::snapshot_to_png(&src, &info, file)?;
        let what = format!(
            "{}x{} {} as PNG",
            info.width,
            info.height,
            cohmem_tools::image::format_name(info.fourcc)
        );
        (std::fs::metadata(file)?.len(), what)
    } else {
        let mut dst = std::fs::File::create(file).with_context(|| format!("creating {}", file.display()))?;
        let copied = std::io::copy(&mut src, &mut dst).context("writing the snapshot")?;
        (copied, format!("{copied} bytes"))
    };
    if as_json {
        let out = json!({
            "bo": id, "file": file.display().to_string(), "bytes": copied, "exact": report.exact,
            "attempts": report.attempts, "blocked_views": report.blocked_views,
            "unblocked_views": report.unblocked_views, "png": png,
            "image": report.image.as_ref().map(cohmem_tools::image::info_json),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "BO {id}: {what} to {} ({}; {} attempt(s), {} view(s) blocked, {} checked only)",
            file.display(),
            if report.exact {
                "exact"
            } else {
                "NOT exact: writers could not be held still"
            },
            report.attempts,
            report.blocked_views,
            report.unblocked_views
        );
    }
    Ok(())
}
