//! Gives libcohmem.so its SONAME, `libcohmem.so.<major>` (`libcohmem.so.0`
//! while the version is 0.x): programs linked against it record that name,
//! and the Makefile installs the library as `libcohmem.so.<version>` with
//! the `libcohmem.so.<major>` and `libcohmem.so` symlinks.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcohmem.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
}
