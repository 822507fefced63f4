//! Issue 15 (protocol documentation, from an independent client): a
//! datagram one byte over `MAX_FRAME` is reported as too long (it was
//! reported as "trailing bytes" of a cut frame), and STATS refuses unknown
//! flag bits like every other request (it accepted them).

use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{ErrorCode, Reply, Request};
use cohmem_tests::{spawn_daemon, RawClient, RawOutcome};

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

#[test]
fn an_oversize_frame_is_too_long_and_unknown_stats_flags_are_refused() -> anyhow::Result<()> {
    let daemon = spawn_daemon(DAEMON)?;
    let raw = RawClient::connect_hello(daemon.socket())?;
    for len in [MAX_FRAME + 1, MAX_FRAME + 100] {
        // A valid header (STATS, id 5) and then too many bytes.
        let mut frame = Request::Stats { flags: 0 }.encode(5);
        frame.resize(len, 0);
        match raw.send(&frame, &[])? {
            RawOutcome::Reply(
                5,
                Reply::Error {
                    code: ErrorCode::BadFrame,
                    message,
                },
                _,
            ) if message.contains("exceeds")
                || message.contains("too long")
                || message.contains(&MAX_FRAME.to_string()) =>
            {
                eprintln!("{len}-byte frame: {message}");
            }
            other => anyhow::bail!("a {len}-byte frame: {other:?}"),
        }
    }
    match raw.call(6, &Request::Stats { flags: 4 }, &[])? {
        (
            Reply::Error {
                code: ErrorCode::InvalidArgument,
                message,
            },
            _,
        ) if message.contains("STATS flags") => {}
        other => anyhow::bail!("STATS with an unknown flag: {other:?}"),
    }
    let (reply, _) = raw.call(7, &Request::Stats { flags: 3 }, &[])?;
    anyhow::ensure!(
        matches!(reply, Reply::Stats(_)),
        "STATS with both known flags: {reply:?}"
    );
    Ok(())
}
