//! Test helper: a writer client process (see `cohmem_tools::writer`).
//!
//! usage: cohmem-test-writer SOCKET MEMFD_FD OFFSET LEN

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    cohmem_tools::writer::child_main(&args)
}
