//! cohmemctl and the metrics endpoint against a live daemon (issue 7):
//! `curl` scrapes `--metrics-listen`, Debian's Prometheus client library
//! parses the text (OpenMetrics parser, strict), and the values must agree
//! with what the test's client did; every cohmemctl command runs as a real
//! process and its `--json` output is parsed. Image BOs (issue 16): the
//! demo's animation, `snapshot ID FILE.png` decoded pixel by pixel, and
//! `cohmemctl image`. The display output (issue 17): `cohmemctl show` and
//! `demo --display` refused as the daemon says where there is none (no DRM
//! on this host; the VM tier shows BOs on real devices).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use cohmem_client::{fourcc, Connection, ImageInfo};
use cohmem_tools::{verify_gpu_copy, DaemonProcess, SplitMix64};
use serde_json::Value;

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-tools-test-daemon");
const CTL: &str = env!("CARGO_BIN_EXE_cohmemctl");

/// A TCP port nothing listens on right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs cohmemctl against the daemon on `socket` (`caps` asks the kernel,
/// not a daemon).
fn ctl(socket: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = Command::new(CTL);
    cmd.args(args);
    if args.first() != Some(&"caps") {
        cmd.arg("--socket").arg(socket);
    }
    Ok(cmd.output()?)
}

/// Runs cohmemctl with `--json`; its stdout must be one JSON document.
fn ctl_json(socket: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let out = ctl(socket, &[args, &["--json"]].concat())?;
    anyhow::ensure!(
        out.status.success(),
        "cohmemctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// curl's output for `url`: (HTTP status, content type, body).
fn curl(url: &str, extra: &[&str]) -> anyhow::Result<(u16, String, String)> {
    let out = Command::new("curl")
        .args(["-s", "-S", "-o", "-", "-w", "\n%{http_code} %{content_type}"])
        .args(extra)
        .arg(url)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (body, tail) = text
        .rsplit_once('\n')
        .ok_or_else(|| anyhow::anyhow!("no status line from curl"))?;
    let (code, ctype) = tail.split_once(' ').unwrap_or((tail, ""));
    Ok((code.parse()?, ctype.to_string(), body.to_string()))
}

/// Parses OpenMetrics text with the Prometheus client library's parser
/// (which rejects malformed text: missing `# EOF`, bad histograms, counters
/// without `_total`, …) and returns its samples as (name, labels, value).
fn parse_with_prometheus_client(text: &str) -> anyhow::Result<Vec<(String, Value, f64)>> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "the OpenMetrics parser rejected the text: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout)?;
    Ok(samples)
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(samples: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|s| s.2)
}

#[test]
fn the_metrics_endpoint_serves_valid_openmetrics_that_agrees_with_the_clients() -> anyhow::Result<()> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let daemon = DaemonProcess::spawn_bin(DAEMON.as_ref(), &["--gpu", "soft", "--metrics-listen", &listen])?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size();
    let bo = conn.create_bo(64 * ps)?;
    let map = bo.map()?;
    const SYNCS: u64 = 25;
    let mut pages = 0;
    for i in 0..SYNCS {
        map.write_u64(((i % 64) * ps) as usize, i)?;
        pages += bo.sync()?.pages;
    }
    assert!(verify_gpu_copy(&bo)?.is_empty());

    let url = format!("http://{listen}/metrics");
    let (code, ctype, text) = curl(&url, &[])?;
    assert_eq!(code, 200, "{text}");
    assert!(
        ctype.starts_with("application/openmetrics-text"),
        "content type {ctype}"
    );
    assert!(text.ends_with("# EOF\n"), "no # EOF terminator");
    let samples = parse_with_prometheus_client(&text)?;
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&samples, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{text}"))
    };
    let mechanism = conn.mechanism()?.name();
    eprintln!(
        "{} samples; {SYNCS} syncs under {mechanism}, {pages} pages",
        samples.len()
    );
    assert_eq!(get("cohmem_syncs_total", &[]), SYNCS as f64);
    assert_eq!(get("cohmem_pages_uploaded_total", &[]), pages as f64);
    assert_eq!(get("cohmem_uploaded_bytes_total", &[]), (pages * ps) as f64);
    assert_eq!(
        get("cohmem_sync_duration_seconds_count", &[("mechanism", mechanism)]),
        SYNCS as f64
    );
    assert_eq!(
        get(
            "cohmem_sync_duration_seconds_bucket",
            &[("mechanism", mechanism), ("le", "+Inf")]
        ),
        SYNCS as f64
    );
    assert!(get("cohmem_sync_duration_seconds_sum", &[("mechanism", mechanism)]) > 0.0);
    assert_eq!(
        get("cohmem_request_duration_seconds_count", &[("request", "SYNC")]),
        SYNCS as f64
    );
    assert_eq!(get("cohmem_bos", &[]), 1.0);
    assert_eq!(get("cohmem_bo_bytes", &[]), (64 * ps) as f64);
    assert_eq!(get("cohmem_connections", &[]), 1.0);
    assert_eq!(get("cohmem_views", &[]), 1.0);
    assert_eq!(get("cohmem_dirty_pages", &[]), 0.0);
    assert_eq!(get("cohmem_bos_by_policy", &[("policy", "auto")]), 1.0);
    for name in [
        "cohmem_method_switches_total",
        "cohmem_faults_total",
        "cohmem_error_replies_total",
    ] {
        assert!(sample(&samples, name, &[]).is_some(), "no {name}");
    }

    // The same registry through the daemon's socket (cohmemctl metrics).
    let out = ctl(daemon.socket(), &["metrics"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let over_socket = parse_with_prometheus_client(std::str::from_utf8(&out.stdout)?)?;
    assert_eq!(sample(&over_socket, "cohmem_syncs_total", &[]), Some(SYNCS as f64));
    let json = ctl_json(daemon.socket(), &["metrics"])?;
    let syncs = json["samples"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "cohmem_syncs_total"))
        .map(|s| s["value"].as_f64());
    assert_eq!(syncs, Some(Some(SYNCS as f64)), "{json}");

    // Anything else gets a clear HTTP error, and garbage costs nothing.
    let (code, _, body) = curl(&format!("http://{listen}/nope"), &[])?;
    assert_eq!(code, 404, "{body}");
    let (code, _, _) = curl(&url, &["-X", "POST"])?;
    assert_eq!(code, 405);
    {
        use std::io::Write;
        let mut junk = std::net::TcpStream::connect(&listen)?;
        junk.write_all(&[0xffu8; 9000])?;
    }
    let _idle = std::net::TcpStream::connect(&listen)?;
    let (code, _, _) = curl(&url, &[])?;
    assert_eq!(code, 200, "the endpoint stopped serving after garbage");
    map.write_u64(0, 99)?;
    assert_eq!(bo.sync()?.pages, 1, "the daemon's clients noticed the garbage");
    Ok(())
}

#[test]
fn metrics_listen_is_a_config_key_and_a_busy_address_is_an_error() -> anyhow::Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cohmemd.toml");
    std::fs::write(&file, format!("gpu = \"soft\"\nmetrics-listen = \"{addr}\"\n"))?;
    let out = Command::new(DAEMON)
        .args(["--socket"])
        .arg(dir.path().join("s.sock"))
        .arg("--config")
        .arg(&file)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a busy metrics address");
    assert!(
        err.contains(&format!("--metrics-listen {addr}")),
        "unclear error: {err}"
    );
    drop(taken);
    let daemon = DaemonProcess::spawn_bin(DAEMON.as_ref(), &["--config", file.to_str().unwrap_or_default()])?;
    Connection::connect(daemon.socket())?;
    let (code, _, text) = curl(&format!("http://{addr}/metrics"), &[])?;
    assert_eq!(code, 200);
    parse_with_prometheus_client(&text)?;
    Ok(())
}

#[test]
fn cohmemctl_commands_answer_in_json_and_set_policy_changes_tracking() -> anyhow::Result<()> {
    let daemon = DaemonProcess::spawn_bin(DAEMON.as_ref(), &["--gpu", "soft"])?;
    let socket = daemon.socket();
    let conn = Connection::connect(socket)?;
    let ps = cohmem_sys::page_size();
    let pages = 32u64;
    let bo = conn.create_bo(pages * ps)?;
    let map = bo.map()?;
    map.write_u64(0, 1)?;
    bo.sync()?;

    let caps = ctl_json(socket, &["caps"])?;
    assert_eq!(caps["mechanisms"]["full"], true, "{caps}");
    let status = ctl_json(socket, &["status"])?;
    assert_eq!(status["daemon"]["bos"], 1, "{status}");

    let list = ctl_json(socket, &["list"])?;
    let row = &list["bos"][0];
    assert_eq!(
        (row["id"].as_u64(), row["policy"].as_str(), row["paused"].as_bool()),
        (Some(bo.id()), Some("auto"), Some(false)),
        "{list}"
    );

    // set-policy full: every sync now uploads the whole BO.
    let id = bo.id().to_string();
    let set = ctl_json(socket, &["set-policy", &id, "full"])?;
    assert_eq!(
        (set["previous"].as_str(), set["policy"].as_str()),
        (Some("auto"), Some("full")),
        "{set}"
    );
    let list = ctl_json(socket, &["list"])?;
    assert_eq!(list["bos"][0]["policy"], "full", "{list}");
    assert_eq!(list["bos"][0]["paused"], true, "{list}");
    map.write_u64(3 * ps as usize, 3)?;
    assert_eq!(bo.sync()?.pages, pages);
    assert_eq!(
        bo.sync()?.pages,
        pages,
        "full uploads the whole BO even when nothing was written"
    );
    assert!(verify_gpu_copy(&bo)?.is_empty());
    // Back to auto: one whole upload (writes under `full` were not
    // tracked), then exactly the written pages.
    ctl_json(socket, &["set-policy", &id, "auto"])?;
    assert_eq!(bo.sync()?.pages, pages);
    map.write_u64(5 * ps as usize, 5)?;
    assert_eq!(bo.sync_with_runs()?.pages_list(), vec![5]);
    assert!(verify_gpu_copy(&bo)?.is_empty());

    // Refusals: clear messages, non-zero exit status.
    let out = ctl(socket, &["set-policy", &id, "sometimes"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown policy \"sometimes\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(socket, &["set-policy", "987654", "full"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no BO 987654"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // stats --watch: one JSON object per interval, with rates that see a
    // client syncing meanwhile.
    let (started_tx, started) = std::sync::mpsc::channel();
    let syncer = {
        let socket = socket.to_owned();
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let conn = Connection::connect(&socket)?;
            let bo = conn.create_bo(4 * 4096)?;
            let map = bo.map()?;
            let t0 = std::time::Instant::now();
            let mut n = 0;
            while t0.elapsed() < std::time::Duration::from_millis(2000) {
                map.write_u64(0, n)?;
                bo.sync()?;
                if n == 0 {
                    let _ = started_tx.send(());
                }
                n += 1;
            }
            Ok(n)
        })
    };
    // cohmemctl starts once the client syncs.
    started.recv_timeout(std::time::Duration::from_secs(20))?;
    let out = ctl(
        socket,
        &["stats", "--watch", "--interval", "0.3", "--count", "3", "--json"],
    )?;
    let syncs = syncer.join().map_err(|_| anyhow::anyhow!("syncer panicked"))??;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = std::str::from_utf8(&out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let rate = lines
        .iter()
        .filter_map(|l| l["rates"]["syncs_per_s"].as_f64())
        .fold(0.0, f64::max);
    eprintln!("stats --watch: up to {rate:.0} syncs/s over 3 intervals ({syncs} syncs by the client)");
    assert!(rate > 0.0, "{lines:?}");
    let text = ctl(socket, &["stats", "--watch", "--interval", "0.1", "--count", "2"])?;
    let text = String::from_utf8(text.stdout)?;
    assert_eq!(text.lines().count(), 3, "header and two rows:\n{text}");
    let stats = ctl_json(socket, &["stats"])?;
    assert!(stats["syncs"].as_u64().unwrap_or(0) >= 5 + syncs, "{stats}");

    // snapshot --json: the exact bytes of the BO.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bo.bin");
    let snap = ctl_json(socket, &["snapshot", &id, file.to_str().unwrap_or_default()])?;
    assert_eq!(snap["bytes"].as_u64(), Some(pages * ps), "{snap}");
    let bytes = std::fs::read(&file)?;
    assert_eq!(u64::from_ne_bytes(bytes[5 * ps as usize..][..8].try_into()?), 5);

    // demo --json against this daemon: JSON lines only, every round exact
    // (the image part is checked by its own test).
    let out = ctl(
        socket,
        &[
            "demo",
            "--rounds",
            "3",
            "--size-mib",
            "1",
            "--seed",
            "7",
            "--frames",
            "0",
            "--json",
        ],
    )?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rounds: Vec<Value> = std::str::from_utf8(&out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(rounds.len(), 4, "3 rounds and a summary: {rounds:?}");
    for r in &rounds[..3] {
        assert_eq!(r["written_pages"], r["synced_pages"], "{r}");
        assert_eq!(r["gpu_copy_mismatched_pages"], 0, "{r}");
    }
    Ok(())
}

/// The demo's stdout, which must have succeeded.
fn demo_stdout(socket: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = ctl(socket, &[&["demo", "--size-mib", "1", "--seed", "11"], args].concat())?;
    let stdout = String::from_utf8(out.stdout)?;
    anyhow::ensure!(
        out.status.success(),
        "demo {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// Decodes a PNG file: (width, height, colour type, 8-bit samples).
fn decode_png(path: &Path) -> anyhow::Result<(u32, u32, png::ColorType, Vec<u8>)> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut reader = png::Decoder::new(file).read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let frame = reader.next_frame(&mut buf)?;
    anyhow::ensure!(frame.bit_depth == png::BitDepth::Eight, "{:?}", frame.bit_depth);
    buf.truncate(frame.buffer_size());
    Ok((frame.width, frame.height, frame.color_type, buf))
}

#[test]
fn the_demo_animates_an_image_bo_with_each_syncs_rects_and_an_identical_gpu_copy() -> anyhow::Result<()> {
    let daemon = DaemonProcess::spawn_bin(DAEMON.as_ref(), &["--gpu", "soft"])?;
    let dir = tempfile::tempdir()?;
    const FRAMES: u32 = 8;
    let frames = FRAMES.to_string();
    let png_dir = dir.path().join("png");
    let text = demo_stdout(
        daemon.socket(),
        &[
            "--rounds",
            "1",
            "--frames",
            &frames,
            "--png",
            png_dir.to_str().unwrap_or_default(),
        ],
    )?;
    eprintln!("{text}");
    // One line per frame (0 is the first full draw), each with its
    // rectangles and a GPU copy equal to the BO; the demo itself fails when
    // a frame's copy differs or a changed pixel lies outside every rect.
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("frame ")).collect();
    for f in 0..=FRAMES {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("frame {f:>2}")))
            .ok_or_else(|| anyhow::anyhow!("no line for frame {f}:\n{text}"))?;
        assert!(line.contains(" rect"), "{line}");
        assert!(line.contains("px changed"), "{line}");
        assert!(line.ends_with("GPU copy identical"), "{line}");
    }
    assert!(
        text.contains("\nimage: 8 frames, covered/changed pixels median "),
        "{text}"
    );
    assert!(text.contains("GPU copy identical after every frame"), "{text}");
    // The last frame, saved through SNAPSHOT.
    let (w, h, color, _) = decode_png(&png_dir.join("cohmem-demo-frame-8.png"))?;
    assert_eq!((w, h, color), (640, 360, png::ColorType::Rgb));

    // --json: the same frames as objects, with the rectangles themselves.
    let json = demo_stdout(daemon.socket(), &["--rounds", "0", "--frames", "5", "--json"])?;
    let objects: Vec<Value> = json.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let frames: Vec<&Value> = objects.iter().filter(|o| o.get("image_frame").is_some()).collect();
    assert_eq!(frames.len(), 6, "{json}");
    for f in &frames {
        assert_eq!(f["gpu_copy"], "identical", "{f}");
        assert_eq!(f["changed_pixels_outside_rects"], 0, "{f}");
        let rects = f["rects"].as_array().map_or(0, Vec::len);
        assert!(rects > 0, "{f}");
        assert!(f["covered_pixels"].as_u64() >= f["changed_pixels"].as_u64(), "{f}");
        assert!(f["changed_pixels"].as_u64() > Some(0), "{f}");
    }
    let summary = objects
        .iter()
        .find(|o| o.get("image_frames").is_some())
        .ok_or_else(|| anyhow::anyhow!("no image summary in {json}"))?;
    assert_eq!(summary["gpu_copy_unchecked_frames"], 0, "{summary}");
    assert!(summary["worst_covered_per_changed"].as_f64() >= Some(1.0), "{summary}");
    Ok(())
}

/// What `pixel` (the format's bytes, little endian) is in an 8-bit PNG,
/// computed here independently of cohmemctl's conversion.
fn expected_png_pixel(format: u32, pixel: &[u8]) -> Vec<u8> {
    match format {
        fourcc::XRGB8888 => vec![pixel[2], pixel[1], pixel[0]],
        fourcc::ARGB8888 => vec![pixel[2], pixel[1], pixel[0], pixel[3]],
        _ => {
            // RGB565 expands each channel by repeating its high bits at the
            // bottom (as pixman does: 0x1f → 0xff, 0x10 → 0x84).
            let v = u16::from_le_bytes([pixel[0], pixel[1]]);
            let scale = |c: u16, bits: u32| ((c << (8 - bits)) | (c >> (2 * bits - 8))) as u8;
            vec![scale(v >> 11, 5), scale((v >> 5) & 0x3f, 6), scale(v & 0x1f, 5)]
        }
    }
}

/// Draws random rectangles (and single pixels) of random colours into an
/// image BO; returns the image's pixels as the format's bytes, row by row.
fn draw_random(map: &cohmem_client::Mapping, info: &ImageInfo, rng: &mut SplitMix64) -> anyhow::Result<Vec<u8>> {
    let cpp = info.bytes_per_pixel() as usize;
    let (w, h) = (info.width as usize, info.height as usize);
    let mut pixels = vec![0u8; w * h * cpp];
    let mut color = vec![0u8; cpp];
    for i in 0..40 {
        rng.fill(&mut color);
        let (x0, y0) = (rng.below(w as u64) as usize, rng.below(h as u64) as usize);
        let (rw, rh) = if i % 4 == 0 {
            (1, 1)
        } else {
            (
                1 + rng.below((w - x0) as u64) as usize,
                1 + rng.below((h - y0) as u64) as usize,
            )
        };
        for y in y0..y0 + rh {
            let row = &mut pixels[(y * w + x0) * cpp..(y * w + x0 + rw) * cpp];
            row.chunks_exact_mut(cpp).for_each(|p| p.copy_from_slice(&color));
            map.write(info.pixel_offset(x0 as u32, y as u32) as usize, row)?;
        }
    }
    Ok(pixels)
}

#[test]
fn snapshot_of_an_image_bo_to_png_decodes_to_exactly_the_drawn_pixels() -> anyhow::Result<()> {
    let daemon = DaemonProcess::spawn_bin(DAEMON.as_ref(), &["--gpu", "soft"])?;
    let socket = daemon.socket();
    let conn = Connection::connect(socket)?;
    let dir = tempfile::tempdir()?;
    let mut rng = SplitMix64::new(16);
    // A padded pitch (1000 * 4 → 4032), an odd width, and 16 bpp.
    for (format, w, h, color) in [
        (fourcc::XRGB8888, 1000, 10, png::ColorType::Rgb),
        (fourcc::ARGB8888, 77, 33, png::ColorType::Rgba),
        (fourcc::RGB565, 131, 21, png::ColorType::Rgb),
    ] {
        let name = fourcc::name(format);
        let bo = conn.create_image(w, h, format)?;
        let info = bo.image().ok_or_else(|| anyhow::anyhow!("no image layout"))?;
        let map = bo.map()?;
        let drawn = draw_random(&map, &info, &mut rng)?;
        bo.sync()?;
        let file = dir.path().join(format!("{name}.png"));
        let snap = ctl_json(
            socket,
            &["snapshot", &bo.id().to_string(), file.to_str().unwrap_or_default()],
        )?;
        assert_eq!(snap["png"], true, "{snap}");
        assert_eq!(snap["image"]["pitch"].as_u64(), Some(u64::from(info.pitch)), "{snap}");
        let (pw, ph, pcolor, samples) = decode_png(&file)?;
        assert_eq!((pw, ph, pcolor), (w, h, color), "{name}");
        let cpp = info.bytes_per_pixel() as usize;
        let out_cpp = samples.len() / (w * h) as usize;
        let mut wrong = 0;
        for (i, (want, got)) in drawn.chunks_exact(cpp).zip(samples.chunks_exact(out_cpp)).enumerate() {
            let want = expected_png_pixel(format, want);
            if want != got {
                if wrong == 0 {
                    eprintln!(
                        "{name}: pixel ({}, {}) is {got:?}, drew {want:?}",
                        i % w as usize,
                        i / w as usize
                    );
                }
                wrong += 1;
            }
        }
        assert_eq!(samples.len(), (w * h) as usize * out_cpp);
        assert_eq!(wrong, 0, "{name}: {wrong} pixels of {w}x{h} differ");
        eprintln!("{name} {w}x{h} pitch {}: every pixel of the PNG as drawn", info.pitch);
    }

    // A byte BO has no pixels: a clear error, and no file.
    let bo = conn.create_bo(4 * cohmem_sys::page_size())?;
    let file = dir.path().join("bytes.png");
    let out = ctl(
        socket,
        &["snapshot", &bo.id().to_string(), file.to_str().unwrap_or_default()],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a byte BO was written as PNG");
    assert!(
        err.contains(&format!(
            "BO {} is not an image BO; snapshot to a raw file instead",
            bo.id()
        )),
        "{err}"
    );
    assert!(!file.exists());
    Ok(())
}

#[test]
fn cohmemctl_image_shows_the_backends_pitch_and_keeps_nothing() -> anyhow::Result<()> {
    let daemon = DaemonProcess::spawn_bin(DAEMON.as_ref(), &["--gpu", "soft"])?;
    let socket = daemon.socket();
    // The soft backend pads a row to 64 bytes: 1000 * 4 = 4000 → 4032.
    let out = ctl(socket, &["image", "1000x10"])?;
    let text = String::from_utf8(out.stdout)?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(text.contains("1000x10 XRGB8888"), "{text}");
    assert!(text.contains("pitch     4032 bytes"), "{text}");
    assert!(text.contains("Nothing is kept"), "{text}");
    let json = ctl_json(socket, &["image", "1000x10", "--format", "RG16"])?;
    assert_eq!(
        (json["image"]["pitch"].as_u64(), json["image"]["fourcc"].as_str()),
        (Some(2048), Some("RG16")),
        "{json}"
    );
    let out = ctl(socket, &["image", "10x10", "--format", "NV12"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown format \"NV12\""));
    // The BOs died with cohmemctl's connections.
    let t0 = std::time::Instant::now();
    loop {
        let bos = ctl_json(socket, &["status"])?["daemon"]["bos"].as_u64();
        if bos == Some(0) {
            break;
        }
        assert!(t0.elapsed().as_secs() < 10, "cohmemctl image left {bos:?} BOs");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Runs `cmd` with its output in files, killed after `limit`: (exit status,
/// stdout, stderr, whether it finished in time).
fn run_within(
    mut cmd: Command,
    limit: std::time::Duration,
) -> anyhow::Result<(std::process::ExitStatus, String, String, bool)> {
    let dir = tempfile::tempdir()?;
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?)
        .spawn()?;
    let deadline = std::time::Instant::now() + limit;
    let (status, in_time) = loop {
        if let Some(status) = child.try_wait()? {
            break (status, true);
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            break (child.wait()?, false);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Ok((
        status,
        std::fs::read_to_string(out)?,
        std::fs::read_to_string(err)?,
        in_time,
    ))
}

/// `cohmemctl show ID` against a daemon without `--display`: the daemon's
/// refusal (which names --display), a non-zero exit status, and with
/// `--json` nothing on stdout (errors go to stderr, as for every command);
/// the BO goes on syncing.
#[test]
fn cohmemctl_show_without_a_display_output_says_what_the_daemon_says() -> anyhow::Result<()> {
    const NO_DISPLAY: &str =
        "this daemon has no display output (start cohmemd with --display CONNECTOR|auto on a DRM device)";
    let daemon = DaemonProcess::spawn_bin(DAEMON.as_ref(), &["--gpu", "soft"])?;
    let socket = daemon.socket();
    let conn = Connection::connect(socket)?;
    let bo = conn.create_image(64, 32, fourcc::XRGB8888)?;
    let id = bo.id().to_string();
    for args in [
        vec!["show", &id],
        vec!["show", &id, "--json"],
        vec!["show", &id, "--hide"],
    ] {
        let out = ctl(socket, &args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("cohmemctl {args:?}: {err}");
        assert!(!out.status.success(), "cohmemctl {args:?} succeeded");
        assert!(err.contains(NO_DISPLAY), "{err}");
        assert!(err.contains(&format!("BO {id}")), "{err}");
        assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    // An id no BO has: the daemon's NoSuchBo.
    let out = ctl(socket, &["show", "987654"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no BO 987654 that this connection may show"), "{err}");
    // Syncing goes on.
    let map = bo.map()?;
    map.write(0, &[1, 2, 3, 4])?;
    assert_eq!(bo.sync()?.rects.len(), 1);
    Ok(())
}

/// `demo --display` fails before drawing anything where no display output
/// can be had: against a running daemon without one (its message), with a
/// private daemon on this host without DRM (cohmemd refuses to start, and
/// both its message and the demo's say why), and with no frames to show;
/// never a hang or a panic.
#[test]
fn demo_display_fails_early_and_clearly_without_a_display_output() -> anyhow::Result<()> {
    let limit = std::time::Duration::from_secs(90);
    let daemon = DaemonProcess::spawn_bin(DAEMON.as_ref(), &["--gpu", "soft"])?;
    let mut cmd = Command::new(CTL);
    cmd.args(["demo", "--display", "--size-mib", "1", "--socket"])
        .arg(daemon.socket());
    let (status, stdout, stderr, in_time) = run_within(cmd, limit)?;
    eprintln!("demo --display --socket:\n{stdout}\n{stderr}");
    assert!(in_time && !status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("--display: showing image BO") && stderr.contains("this daemon has no display output"),
        "{stderr}"
    );
    // Early: before the byte BO's rounds.
    assert!(!stdout.contains("round 1:"), "{stdout}");

    // A private daemon (cohmemd --gpu auto --display auto; this host has no
    // KMS device, so the daemon refuses to start).
    if std::path::Path::new("/dev/dri").exists() {
        eprintln!("skipping the private-daemon case: this host has /dev/dri");
    } else {
        let mut cmd = Command::new(CTL);
        cmd.args(["demo", "--display", "--size-mib", "1"])
            .env("COHMEMD_BIN", DAEMON)
            .env("RUST_BACKTRACE", "0");
        let (status, stdout, stderr, in_time) = run_within(cmd, limit)?;
        eprintln!("demo --display:\n{stdout}\n{stderr}");
        assert!(in_time && !status.success(), "{status}\n{stdout}\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stdout.contains("--gpu auto --display auto"), "{stdout}");
        assert!(
            stderr.contains("starting cohmemd --gpu auto --display auto (--display needs a DRM device with KMS"),
            "{stderr}"
        );
        // The daemon's own reason.
        assert!(
            stderr.contains("--display: the display output needs the DRM backend"),
            "{stderr}"
        );
        assert!(!stdout.contains("round 1:"), "{stdout}");
    }

    // Nothing to show.
    let out = ctl(daemon.socket(), &["demo", "--display", "--frames", "0"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--display shows the image animation"), "{err}");
    Ok(())
}
