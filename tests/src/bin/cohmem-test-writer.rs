//! Test helper: a client process that imports a BO by its inherited memfd,
//! maps part of it, and writes pages on command (one command per stdin line).
//!
//! usage: cohmem-test-writer SOCKET MEMFD_FD OFFSET LEN
//! commands: `write SEED PAGE…` (prints `ok`), `sync` (prints `synced N`),
//! `syncloop` (syncs until killed), `writeloop` (writes until killed), `quit`.

use std::io::{BufRead, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{bail, Context};
use cohmem_client::Connection;
use cohmem_tests::page_pattern;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        bail!("usage: cohmem-test-writer SOCKET MEMFD_FD OFFSET LEN");
    }
    let fd: i32 = args[2].parse().context("MEMFD_FD")?;
    let offset: u64 = args[3].parse().context("OFFSET")?;
    let len: u64 = args[4].parse().context("LEN")?;
    // SAFETY: the parent made this fd inheritable for us and passed its
    // number; nothing else in this process owns it.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let conn = Connection::connect(&args[1])?;
    let bo = conn.import_bo(memfd)?;
    let len = if len == 0 { bo.size() - offset } else { len };
    let map = bo.map_range(offset, len)?;
    let ps = cohmem_sys::page_size();
    let mut page = vec![0u8; ps as usize];
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("write") => {
                let seed: u64 = words.next().context("seed")?.parse()?;
                for p in words {
                    let p: u64 = p.parse()?;
                    let at = (p * ps)
                        .checked_sub(offset)
                        .filter(|a| a + ps <= len)
                        .with_context(|| format!("page {p} is outside this view"))?;
                    page_pattern(seed, p, &mut page);
                    map.write(at as usize, &page)?;
                }
                writeln!(out, "ok")?;
            }
            Some("sync") => writeln!(out, "synced {}", bo.sync()?.pages)?,
            Some("syncloop") => loop {
                bo.sync()?;
            },
            Some("writeloop") => {
                let mut v = 0u64;
                loop {
                    v += 1;
                    map.write_u64(((v % (len / ps)) * ps) as usize, v)?;
                }
            }
            Some("quit") | None => break,
            Some(other) => writeln!(out, "unknown command {other}")?,
        }
        out.flush()?;
    }
    drop(map);
    Ok(())
}
