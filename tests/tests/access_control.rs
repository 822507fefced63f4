//! Issue 5 "access control": a second user (this test runs as root and
//! starts a helper process with another uid) cannot connect where the
//! socket's mode or the daemon's `--allow-uid` list forbids it, and where it
//! can connect, cannot reach the first user's BOs: not by their guessable
//! daemon-wide ids (SNAPSHOT), not by guessing connection-local handles, not
//! through STATS, and not by opening the victim's or the daemon's memfds
//! through /proc (the kernel refuses). A BO reaches another process only by
//! explicit fd passing.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::Command;

use cohmem_client::Connection;
use cohmem_tests::spawn_daemon_with;
use cohmem_tools::verify_gpu_copy;

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");
const FOREIGN: &str = env!("CARGO_BIN_EXE_cohmem-test-foreign");
/// `nobody` on Debian.
const OTHER_UID: u32 = 65534;

/// Runs the probe as [`OTHER_UID`]; returns its `key=value` findings.
fn probe_as_other_user(socket: &std::path::Path, pids: &str, ids: &[u64]) -> anyhow::Result<HashMap<String, String>> {
    let out = Command::new(FOREIGN)
        .arg(socket)
        .arg(pids)
        .args(ids.iter().map(u64::to_string))
        .uid(OTHER_UID)
        .gid(OTHER_UID)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "probe failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{stdout}");
    Ok(stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn a_socket_without_permission_for_others_keeps_them_out() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root to start a process as another user");
        return Ok(());
    }
    let daemon = spawn_daemon_with(DAEMON, &["--socket-mode", "600"])?;
    let found = probe_as_other_user(daemon.socket(), "1", &[])?;
    assert_eq!(found["uid"], OTHER_UID.to_string());
    let connect = &found["connect"];
    assert!(
        connect.starts_with("failed:") && connect.contains("EACCES"),
        "another user connected through a mode-600 socket: {connect}"
    );
    Ok(())
}

#[test]
fn a_uid_outside_the_allow_list_is_refused_with_a_typed_error() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root to start a process as another user");
        return Ok(());
    }
    let daemon = spawn_daemon_with(DAEMON, &["--socket-mode", "666", "--allow-uid", "4242"])?;
    let found = probe_as_other_user(daemon.socket(), "1", &[])?;
    let connect = &found["connect"];
    assert!(
        connect.starts_with("refused:PermissionDenied:") && connect.contains("uid 65534 is not allowed"),
        "{connect}"
    );
    // Root (this test) is still let in.
    Connection::connect(daemon.socket())?;
    Ok(())
}

#[test]
fn another_user_cannot_reach_a_users_bos() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root to start a process as another user");
        return Ok(());
    }
    let daemon = spawn_daemon_with(DAEMON, &["--socket-mode", "666"])?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo(8 * ps as u64)?;
    let map = bo.map()?;
    for p in 0..8 {
        map.write_u64(p * ps, 0x5ec2_e700_0000 + p as u64)?;
    }
    bo.sync()?;
    let pids = format!("{},{}", std::process::id(), daemon.pid());
    let found = probe_as_other_user(daemon.socket(), &pids, &[bo.id(), 1, 2, 3])?;
    assert_eq!(found["connect"], "ok", "mode 666 lets the other user connect");
    for id in [bo.id(), 1, 2, 3] {
        assert_eq!(
            found[&format!("snapshot.{id}")],
            "Some(NoSuchBo)",
            "SNAPSHOT of BO {id}"
        );
    }
    assert_eq!(found["guessed_handles_granted"], "0");
    assert_eq!(
        found["stats.foreign_connections"], "0",
        "STATS shows another user's connections"
    );
    assert_eq!(found["stats.bos"], "0", "STATS shows another user's BOs");
    assert_eq!(found["proc_fd_opened"], "0", "the other user opened fds through /proc");
    assert_ne!(found["proc_fd_denied"], "0", "the /proc check was refused nothing");
    assert_eq!(found["imported"], "0");
    // The first user's data is untouched.
    assert_eq!(verify_gpu_copy(&bo)?, vec![]);
    assert_eq!(map.read_u64(3 * ps)?, 0x5ec2_e700_0003);
    Ok(())
}
