//! System calls that write into or read from a tracked BO mapping: the
//! kernel, not the CPU in user mode, touches the page. With uffd-async the
//! kernel resolves the write-protect fault itself, so `read(2)` into a BO
//! works and the page is reported; `write(2)` from a BO works and reports
//! nothing.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

use cohmem_client::{Connection, Mechanism};
use cohmem_tests::spawn_daemon_for;
use cohmem_tools::verify_gpu_copy;

/// The daemon binary cargo builds with these tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-test-daemon");

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().expect("pipe")
}

cohmem_tests::test_each_mechanism!(
    read_into_and_write_from_a_tracked_mapping,
    read_into_and_write_from_a_tracked_mapping_with
);

fn read_into_and_write_from_a_tracked_mapping_with(mechanism: Mechanism) -> anyhow::Result<()> {
    let daemon = spawn_daemon_for(DAEMON, mechanism)?;
    let conn = Connection::connect(daemon.socket())?;
    let ps = cohmem_sys::page_size() as usize;
    let bo = conn.create_bo(64 * ps as u64)?;
    let map = bo.map()?;
    assert_eq!(bo.sync()?.pages, 0);

    // read(2) from a pipe into page 5: a kernel-mode write into a protected page.
    let (r, w) = pipe();
    let payload = vec![0x5au8; 3000];
    std::fs::File::from(w).write_all(&payload)?;
    // SAFETY: the destination is 3000 bytes inside our live mapping of the
    // BO (page 5 of 64); the kernel writes it, no Rust reference exists.
    let n = unsafe { libc::read(r.as_raw_fd(), map.as_ptr().add(5 * ps).cast(), payload.len()) };
    assert_eq!(
        n,
        payload.len() as isize,
        "read(2) into the BO failed: {}",
        std::io::Error::last_os_error()
    );
    let done = bo.sync_with_runs()?;
    assert_eq!(done.mechanism, mechanism);
    assert_eq!(done.pages_list(), vec![5], "the page read(2) wrote must be reported");
    assert!(verify_gpu_copy(&bo)?.is_empty());

    // write(2) from page 5 to a pipe: a kernel-mode read; nothing is dirty.
    let (r2, w2) = pipe();
    // SAFETY: the source is 3000 bytes inside our live mapping.
    let n = unsafe { libc::write(w2.as_raw_fd(), map.as_ptr().add(5 * ps).cast(), payload.len()) };
    assert_eq!(
        n,
        payload.len() as isize,
        "write(2) from the BO failed: {}",
        std::io::Error::last_os_error()
    );
    drop(w2);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(r2), &mut back)?;
    assert_eq!(back, payload);
    assert_eq!(bo.sync()?.pages, 0, "reading a page must not report it");
    Ok(())
}
