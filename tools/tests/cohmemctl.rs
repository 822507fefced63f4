//! cohmemctl and the metrics endpoint against a live daemon (issue 7):
//! `curl` scrapes `--metrics-listen`, Debian's Prometheus client library
//! parses the text (OpenMetrics parser, strict), and the values must agree
//! with what the test's client did; every cohmemctl command runs as a real
//! process and its `--json` output is parsed.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use cohmem_client::Connection;
use cohmem_tools::{verify_gpu_copy, DaemonProcess};
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

    // demo --json against this daemon: JSON lines only, every round exact.
    let out = ctl(
        socket,
        &["demo", "--rounds", "3", "--size-mib", "1", "--seed", "7", "--json"],
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
