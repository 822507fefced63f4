//! cohmemd: the cohmem daemon (see `cohmem_daemon::cli`).

fn main() -> anyhow::Result<()> {
    cohmem_daemon::cli::main()
}
