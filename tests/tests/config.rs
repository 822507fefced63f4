//! Issue 7 "configuration" and "logging", through the real daemon binary:
//! a TOML file sets options, the command line wins over it, a typo or a bad
//! value is an error naming the key, a missing `--config` file is an error
//! (not a silent default), and `--log-format json` writes one JSON object a
//! line with one line per client attach and detach.

use std::process::Command;
use std::time::{Duration, Instant};

use cohmem_client::{ClientError, Connection, ErrorCode};
use cohmem_tools::DaemonProcess;

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// Runs the daemon with `args` until it exits (it must: the configuration
/// is refused); returns its exit status and stderr.
fn refused(args: &[&str]) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let mut child = Command::new(DAEMON)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut s) = child.stderr.take() {
                s.read_to_string(&mut err)?;
            }
            return Ok((status, err));
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the daemon started with {args:?} instead of refusing them");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn max_bo_size_refusal(socket: &std::path::Path) -> anyhow::Result<String> {
    let conn = Connection::connect(socket)?;
    match conn.create_bo(1 << 20) {
        Err(ClientError::Daemon {
            code: ErrorCode::TooLarge,
            message,
            ..
        }) => Ok(message),
        other => anyhow::bail!("a 1 MiB BO was not refused as too large: {other:?}"),
    }
}

#[test]
fn the_config_file_sets_options_and_the_command_line_wins() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cohmemd.toml");
    std::fs::write(
        &file,
        "# cohmemd.toml\ngpu = \"soft\"\nmax-bo-size = 65536\nmechanism = \"full\"\nmax-connections-per-user = 64\n",
    )?;
    let config = file.to_str().unwrap_or_default();
    let from_file = DaemonProcess::spawn_bin(DAEMON.as_ref(), &["--config", config])?;
    let message = max_bo_size_refusal(from_file.socket())?;
    assert!(message.contains("max_bo_size = 65536"), "{message}");
    drop(from_file);
    let overridden = DaemonProcess::spawn_bin(DAEMON.as_ref(), &["--config", config, "--max-bo-size", "131072"])?;
    let message = max_bo_size_refusal(overridden.socket())?;
    assert!(message.contains("max_bo_size = 131072"), "{message}");
    Ok(())
}

#[test]
fn a_typo_or_a_bad_value_names_the_key_and_a_missing_file_is_an_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cohmemd.toml");
    let config = file.to_str().unwrap_or_default().to_string();
    std::fs::write(&file, "gpu = \"soft\"\nmax-bo-szie = 65536\n")?;
    let (status, err) = refused(&["--config", &config])?;
    assert!(!status.success());
    assert!(
        err.contains("unknown key `max-bo-szie`") && err.contains(&config),
        "{err}"
    );

    std::fs::write(&file, "mechanism = \"uffd-fast\"\n")?;
    let (status, err) = refused(&["--config", &config])?;
    assert!(!status.success());
    assert!(err.contains("key `mechanism`") && err.contains("uffd-fast"), "{err}");

    let missing = dir.path().join("absent.toml");
    let (status, err) = refused(&["--config", missing.to_str().unwrap_or_default()])?;
    assert!(!status.success());
    assert!(err.contains("absent.toml"), "{err}");
    eprintln!("refusals name the key and the file, e.g.: {}", err.trim());
    Ok(())
}

#[test]
fn json_logs_have_one_object_per_line_and_a_line_per_attach() -> anyhow::Result<()> {
    let mut daemon = DaemonProcess::spawn_logged(
        DAEMON.as_ref(),
        &["--log-format", "json", "--log", "info"],
        "daemon.log",
    )?;
    {
        let conn = Connection::connect(daemon.socket())?;
        let bo = conn.create_bo(64 * 4096)?;
        let map = bo.map()?;
        for round in 0..50u64 {
            for p in 0..64 {
                map.write_u64(p * 4096, round)?;
            }
            bo.sync()?;
        }
    }
    // The disconnect is logged when the daemon sees the hang-up.
    let log = daemon
        .log()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("no log"))?;
    let t0 = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log)?;
        let connected = text.matches("\"client connected\"").count();
        let gone = text.matches("\"client disconnected\"").count();
        if (connected > 0 && connected == gone) || t0.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    daemon.kill9()?;
    let mut events = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("not a JSON line ({e}): {line}"))?;
        events.push(v);
    }
    let count = |msg: &str| events.iter().filter(|e| e["message"] == msg).count();
    // The client library opens a short-lived probe connection too.
    assert!(count("client connected") >= 1, "{text}");
    assert_eq!(count("client connected"), count("client disconnected"), "{text}");
    assert_eq!(count("client process attached"), 1, "{text}");
    assert!(events
        .iter()
        .all(|e| e["level"].is_string() && e["timestamp"].is_string()));
    // 50 rounds of 64 first writes: no line per fault or per sync at info.
    assert!(
        events.len() < 20,
        "{} lines for one client's 50 syncs:\n{text}",
        events.len()
    );
    eprintln!(
        "{} JSON log lines, e.g. {}",
        events.len(),
        text.lines().next().unwrap_or("")
    );
    Ok(())
}

/// The example configuration installed as /etc/cohmem/cohmemd.toml lists
/// valid keys with their defaults: with every one of them uncommented the
/// daemon starts and serves.
#[test]
fn the_shipped_example_configuration_is_valid() -> anyhow::Result<()> {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/cohmemd.toml");
    let text = std::fs::read_to_string(&example)?;
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.contains(" = ") && !l.contains(':') || l.starts_with("allow-uid"))
        .map(|l| format!("{l}\n"))
        .collect();
    let keys = uncommented.lines().count();
    assert!(
        keys >= 18,
        "only {keys} keys found in {}:\n{uncommented}",
        example.display()
    );
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cohmemd.toml");
    std::fs::write(&file, &uncommented)?;
    let daemon = DaemonProcess::spawn_bin(
        DAEMON.as_ref(),
        &["--config", file.to_str().unwrap_or_default(), "--log-format", "text"],
    )?;
    let conn = Connection::connect(daemon.socket())?;
    let bo = conn.create_bo(4 * 4096)?;
    bo.map()?.write_u64(0, 7)?;
    assert!(bo.sync()?.pages >= 1);
    eprintln!("{keys} example keys accepted");
    Ok(())
}
