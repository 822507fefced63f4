//! Issue 15, item 4: access follows the fd. A process holding only a
//! read-only (`O_RDONLY`) fd of a BO gets a read-only handle: it can read
//! and upload (SYNC, SCAN, DIRTY_STATE, EXPORT_RESOURCE, SNAPSHOT) but
//! cannot change the BO's bytes or the tracking state the owner depends on
//! (MAP, ADD/RELEASE_RESOURCE, TRANSFER, CLEAR_RESOURCE, CLEAR_ALL, DAMAGE,
//! READBACK, SET_POLICY); an `O_PATH` fd imports nothing. Before, an
//! `O_RDONLY` or `O_PATH` fd could CLEAR_ALL, and the owner's next write
//! never reached the GPU.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use cohmem_client::{BoPolicy, ClientError, Connection, ErrorCode};
use cohmem_proto::{Reply, Request};
use cohmem_tests::RawClient;
use cohmem_tools::verify::verify_gpu_copy;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

/// The BO's memfd opened again through /proc with `flags`.
fn reopen(fd: std::os::fd::BorrowedFd<'_>, read: bool, flags: i32) -> anyhow::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(std::fs::OpenOptions::new()
        .read(read)
        .custom_flags(flags)
        .open(path)?
        .into())
}

fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) -> anyhow::Result<()> {
    match r {
        Err(ClientError::Daemon {
            code: ErrorCode::PermissionDenied,
            message,
            ..
        }) => {
            anyhow::ensure!(message.contains("read-only"), "{what}: {message}");
            Ok(())
        }
        other => anyhow::bail!("{what} with a read-only handle: expected PermissionDenied, got {other:?}"),
    }
}

#[test]
fn a_read_only_handle_reads_and_uploads_but_changes_nothing() -> anyhow::Result<()> {
    // Exact page counts of a tracked BO are checked: the small BO is not
    // left to `auto`'s shadow compare, whose views are unprotected, so the
    // snapshot's harvest would find all 16 pages written.
    let daemon = cohmem_tests::spawn_daemon_with(DAEMON, &["--auto-shadow-max-bytes", "0"])?;
    let owner = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = owner.create_bo(16 * ps as u64)?;
    let map = bo.map()?;
    map.write_u64(ps, 0x11)?;
    bo.sync()?;

    let reader = Connection::connect(daemon.socket())?;
    let ro = reader.import_bo(reopen(bo.memfd(), true, 0)?)?;
    // The owner writes; nothing the reader does may make that write miss
    // the GPU copy.
    map.write_u64(2 * ps, 0x22)?;
    denied("CLEAR_ALL", ro.clear_all())?;
    denied("CLEAR_RESOURCE", ro.clear_resource(0))?;
    denied("TRANSFER", ro.transfer(0))?;
    denied("DAMAGE", ro.damage(0, ps as u64))?;
    denied("READBACK", ro.readback())?;
    denied("ADD_RESOURCE", ro.add_resource(0, ps as u64))?;
    denied("RELEASE_RESOURCE", ro.release_resource(0))?;
    denied("SET_POLICY", reader.set_policy(ro.id(), BoPolicy::Full))?;
    // MAP through the protocol (the library cannot even mmap the fd
    // writable).
    let raw = RawClient::connect_hello(daemon.socket())?;
    let ro_fd = reopen(bo.memfd(), true, 0)?;
    let handle = match raw.call(2, &Request::ImportBo, &[ro_fd.as_fd()])? {
        (Reply::Bo { bo, .. }, _) => bo,
        other => anyhow::bail!("IMPORT_BO of a read-only fd: {other:?}"),
    };
    match raw.call(
        3,
        &Request::Map {
            bo: handle,
            addr: 0x7f00_0000_0000,
            len: ps as u64,
            offset: 0,
        },
        &[],
    )? {
        (
            Reply::Error {
                code: ErrorCode::PermissionDenied,
                message,
            },
            _,
        ) if message.contains("read-only") => {}
        other => anyhow::bail!("MAP with a read-only handle: {other:?}"),
    }
    // Reading and uploading are allowed.
    let state = ro.dirty_state()?;
    let exported = ro.export_resource(0)?;
    let (_copy, snap) = reader.snapshot(ro.id())?;
    let synced = ro.sync()?;
    anyhow::ensure!(exported.size == 16 * ps as u64 && snap.size == 16 * ps as u64);
    anyhow::ensure!(
        synced.pages == 1,
        "the reader's SYNC uploads the owner's write: {synced:?}"
    );
    map.write_u64(3 * ps, 0x33)?;
    let done = bo.sync_with_runs()?;
    anyhow::ensure!(
        done.pages_list() == [3],
        "the owner's next sync: {:?}",
        done.pages_list()
    );
    anyhow::ensure!(verify_gpu_copy(&bo)?.is_empty(), "the GPU copy differs from the BO");

    // O_PATH and write-only fds import nothing.
    for (what, fd) in [
        ("O_PATH", reopen(bo.memfd(), true, libc::O_PATH)?),
        ("O_WRONLY", {
            let path = format!("/proc/self/fd/{}", bo.memfd().as_raw_fd());
            std::fs::OpenOptions::new().write(true).open(path)?.into()
        }),
    ] {
        match reader.import_bo(fd) {
            Err(ClientError::Daemon {
                code: ErrorCode::PermissionDenied,
                ..
            }) => {}
            other => anyhow::bail!("IMPORT_BO of an {what} fd: expected PermissionDenied, got {other:?}"),
        }
    }
    eprintln!(
        "read-only handle: 9 changing requests refused, DIRTY_STATE ({} dirty pages), EXPORT, SNAPSHOT and SYNC \
         allowed; O_PATH and O_WRONLY imports refused; the owner's writes all reached the GPU",
        state.dirty_pages
    );
    Ok(())
}
