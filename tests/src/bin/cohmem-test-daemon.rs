//! The daemon as the test suite runs it: the same `cohmem_daemon::cli::main`
//! as `cohmemd`, built as part of this package so `cargo test` can never run
//! a stale daemon binary.

fn main() -> anyhow::Result<()> {
    cohmem_daemon::cli::main()
}
