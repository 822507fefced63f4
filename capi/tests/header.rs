//! `capi/include/cohmem.h` is what cbindgen generates from `capi/src/lib.rs`
//! with `capi/cbindgen.toml`: a C API change without its header fails here.
//! Regenerate with `COHMEM_BLESS=1 cargo test -p cohmem-capi --test header`.

use std::path::Path;

#[test]
fn the_committed_header_is_current() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_src(root.join("src/lib.rs"))
        .with_config(config)
        .generate()
        .map_err(|e| anyhow::anyhow!("cbindgen: {e}"))?
        .write(&mut generated);
    let path = root.join("include/cohmem.h");
    if std::env::var_os("COHMEM_BLESS").is_some() {
        std::fs::write(&path, &generated)?;
    }
    let committed = std::fs::read(&path)?;
    anyhow::ensure!(
        committed == generated,
        "{} is out of date: regenerate it with COHMEM_BLESS=1 cargo test -p cohmem-capi --test header",
        path.display()
    );
    Ok(())
}
