//! The daemon the C API tests run: the same `cohmem_daemon::cli::main` as
//! `cohmemd`, built as part of this package so that `cargo test` always has
//! a current daemon binary (`CARGO_BIN_EXE_cohmem-capi-test-daemon`).

fn main() -> anyhow::Result<()> {
    cohmem_daemon::cli::main()
}
