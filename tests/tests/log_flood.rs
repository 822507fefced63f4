//! Issue 15, item 6: a client cannot flood the daemon's log. Events a
//! client triggers (SET_POLICY, connections, mechanism switches, ...) log a
//! few lines per kind and scope per window, and count the rest
//! (`daemon/src/ratelimit.rs`); before, each SET_POLICY wrote one line
//! (28 MB in 6.5 s).

use cohmem_client::{BoPolicy, Connection};
use cohmem_tools::DaemonProcess;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

#[test]
fn a_set_policy_and_connection_flood_leaves_the_log_small() -> anyhow::Result<()> {
    let mut daemon = DaemonProcess::spawn_logged(DAEMON.as_ref(), &["--log", "info"], "daemon.log")?;
    let conn = Connection::connect(daemon.socket())?;
    let bo = conn.create_bo(1 << 20)?;
    let policies = [BoPolicy::Full, BoPolicy::Auto, BoPolicy::MkWrite, BoPolicy::PageTable];
    const REQUESTS: usize = 5000;
    for i in 0..REQUESTS {
        conn.set_policy(bo.id(), policies[i % policies.len()])?;
    }
    const CONNECTIONS: usize = 300;
    for _ in 0..CONNECTIONS {
        drop(Connection::connect(daemon.socket())?);
    }
    drop(bo);
    drop(conn);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log_path = daemon.log().map(std::path::Path::to_path_buf).expect("a logged daemon");
    daemon.stop()?;
    let log = std::fs::read_to_string(&log_path)?;
    let policy_lines = log.lines().filter(|l| l.contains("tracking policy set")).count();
    let connect_lines = log.lines().filter(|l| l.contains("client connected")).count();
    eprintln!(
        "{REQUESTS} SET_POLICY and {CONNECTIONS} connections: {} log bytes, {policy_lines} policy lines, \
         {connect_lines} connection lines",
        log.len()
    );
    anyhow::ensure!(policy_lines >= 1, "the first policy change is logged");
    anyhow::ensure!(policy_lines <= 10, "{policy_lines} lines for {REQUESTS} SET_POLICY");
    anyhow::ensure!(
        connect_lines <= 60,
        "{connect_lines} lines for {CONNECTIONS} connections"
    );
    anyhow::ensure!(log.len() < 64 << 10, "the log grew to {} bytes", log.len());
    Ok(())
}
