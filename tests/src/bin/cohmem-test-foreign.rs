//! Test helper for the access-control tests (tests/tests/access_control.rs):
//! run as another user, it tries every way this user could reach a BO of
//! the victim process and prints one `key=value` line per finding.
//!
//! usage: cohmem-test-foreign SOCKET VICTIM_PID[,PID...] BO_ID...

use std::os::fd::AsFd;

use cohmem_client::{ClientError, Connection};
use cohmem_proto::{Reply, Request, STATS_BOS, STATS_CONNECTIONS};
use cohmem_tests::RawClient;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, victim, ids @ ..] = args.as_slice() else {
        anyhow::bail!("usage: cohmem-test-foreign SOCKET VICTIM_PID BO_ID...");
    };
    println!("uid={}", nix::unistd::geteuid());
    let conn = match Connection::connect(socket) {
        Ok(c) => c,
        Err(ClientError::Daemon { code, message, .. }) => {
            println!("connect=refused:{code:?}:{message}");
            return Ok(());
        }
        Err(ClientError::Connect { source, .. }) => {
            println!("connect=failed:{source}");
            return Ok(());
        }
        Err(e) => {
            println!("connect=error:{e}");
            return Ok(());
        }
    };
    println!("connect=ok");
    // SNAPSHOT by the victim's (guessable) daemon-wide ids.
    for id in ids {
        let id: u64 = id.parse()?;
        match conn.snapshot(id) {
            Ok(_) => println!("snapshot.{id}=GRANTED"),
            Err(e) => println!("snapshot.{id}={:?}", e.code()),
        }
    }
    // Guessed handles: handles are per connection, so none is open here.
    let raw = RawClient::connect_hello(std::path::Path::new(socket))?;
    let mut granted = 0;
    for h in 0..64u32 {
        for req in [
            Request::Sync { bo: h, flags: 0 },
            Request::ExportResource { bo: h, index: 0 },
            Request::DirtyState { bo: h },
        ] {
            if !matches!(raw.call(100 + h, &req, &[])?.0, Reply::Error { .. }) {
                granted += 1;
            }
        }
    }
    println!("guessed_handles_granted={granted}");
    // STATS shows only this user's connections and BOs.
    let stats = conn.stats(STATS_CONNECTIONS | STATS_BOS)?;
    let me = nix::unistd::geteuid().as_raw();
    println!(
        "stats.foreign_connections={}",
        stats.connections.iter().filter(|c| c.uid != me).count()
    );
    println!("stats.bos={}", stats.bos.len());
    // The victim's memfds through /proc: the kernel refuses another user.
    let mut opened = 0;
    let mut imported = 0;
    let mut denied = 0;
    for pid in victim.split(',') {
        match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Err(e) => {
                println!("proc_fd_dir.{pid}={}", e.kind());
                denied += 1;
            }
            Ok(dir) => {
                for entry in dir.flatten() {
                    match std::fs::File::open(entry.path()) {
                        Ok(f) => {
                            opened += 1;
                            if conn.import_bo(f.as_fd().try_clone_to_owned()?).is_ok() {
                                imported += 1;
                            }
                        }
                        Err(_) => denied += 1,
                    }
                }
            }
        }
    }
    println!("proc_fd_opened={opened}");
    println!("proc_fd_denied={denied}");
    println!("imported={imported}");
    Ok(())
}
