//! Test helper for tests/tests/client_death.rs: one client life that ends in
//! SIGKILL at the point STAGE names (nothing is cleaned up by the client).
//!
//! usage: cohmem-test-churn SOCKET STAGE
//!   connected   after HELLO
//!   created     after CREATE_BO
//!   mapped      after MAP
//!   written     after writing every page (dirty, never synced)
//!   in-request  while a SYNC is in flight
//!   in-fault    while writer threads run into write-protect faults

use std::sync::Arc;
use std::time::Duration;

use cohmem_client::Connection;
use nix::sys::signal::{raise, Signal};

fn die() -> ! {
    let _ = raise(Signal::SIGKILL);
    std::process::abort()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, stage] = args.as_slice() else {
        anyhow::bail!("usage: cohmem-test-churn SOCKET STAGE");
    };
    let conn = Connection::connect(socket)?;
    if stage == "connected" {
        die();
    }
    let ps = cohmem_sys::page_size() as usize;
    let bo = Arc::new(conn.create_bo(16 * ps as u64)?);
    if stage == "created" {
        die();
    }
    let map = Arc::new(bo.map_detached()?);
    if stage == "mapped" {
        die();
    }
    match stage.as_str() {
        "written" => {
            for p in 0..16 {
                map.write_u64(p * ps, p as u64 + 1)?;
            }
            die();
        }
        "in-request" => {
            map.write_u64(0, 1)?;
            let b = bo.clone();
            std::thread::spawn(move || b.sync());
            std::thread::sleep(Duration::from_micros(50));
            die();
        }
        "in-fault" => {
            bo.sync()?;
            for t in 0..4 {
                let m = map.clone();
                std::thread::spawn(move || {
                    for round in 0u64.. {
                        for p in (t..16).step_by(4) {
                            let _ = m.write_u64(p * ps, round);
                        }
                    }
                });
            }
            let b = bo.clone();
            std::thread::spawn(move || loop {
                let _ = b.sync();
            });
            std::thread::sleep(Duration::from_micros(200));
            die();
        }
        other => anyhow::bail!("unknown stage {other:?}"),
    }
}
