//! The daemon as this package's tests run it: the same
//! `cohmem_daemon::cli::main` as `cohmemd`, built with the package so that
//! `cargo test` never runs a stale or missing daemon binary.

fn main() -> anyhow::Result<()> {
    cohmem_daemon::cli::main()
}
