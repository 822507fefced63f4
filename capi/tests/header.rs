//! `capi/include/cohmem.h` is what cbindgen generates from `capi/src/lib.rs`
//! with `capi/cbindgen.toml`: a C API change without its header fails here.
//! Regenerate with `COHMEM_BLESS=1 cargo test -p cohmem-capi --test header`.

use std::path::Path;

mod common;

/// Held while a test writes (COHMEM_BLESS) or reads the header: the tests of
/// this file run in parallel.
static HEADER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_committed_header_is_current() -> anyhow::Result<()> {
    let _header = HEADER.lock().unwrap_or_else(|p| p.into_inner());
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

/// What C sees through `cohmem.h` is what the library was built with: a C
/// program compiled with the header prints each struct's size and field
/// offsets and each constant, and they must equal Rust's (catches a header
/// edited by hand, a cbindgen that renders a constant expression wrongly,
/// and `#[repr(C)]` structs whose layout C reads differently).
#[test]
fn c_sees_the_librarys_struct_layouts_and_constants() -> anyhow::Result<()> {
    use std::ffi::c_int;
    use std::mem::{offset_of, size_of};

    use cohmem::*;

    if !common::have("cc") {
        eprintln!("skipping: cc is not installed");
        return Ok(());
    }
    macro_rules! layout {
        ($($ty:ident { $($field:ident),* })*) => {{
            let mut c = String::new();
            let mut rust = Vec::new();
            $(
                c += &format!("    P(\"sizeof {0}\", sizeof(struct {0}));\n", stringify!($ty));
                rust.push(format!("sizeof {} {}", stringify!($ty), size_of::<$ty>()));
                $(
                    c += &format!(
                        "    P(\"offsetof {0}.{1}\", offsetof(struct {0}, {1}));\n",
                        stringify!($ty),
                        stringify!($field)
                    );
                    rust.push(format!(
                        "offsetof {}.{} {}",
                        stringify!($ty),
                        stringify!($field),
                        offset_of!($ty, $field)
                    ));
                )*
            )*
            (c, rust)
        }};
    }
    let (mut c, mut want) = layout! {
        cohmem_sync_result { pages, bytes, duration_ns, run_count, mechanism, method }
        cohmem_stats {
            uptime_ms, connections, bos, syncs, pages_uploaded, bytes_uploaded, faults, method_switches, errors,
            mm_subscriptions, views, upload_failures, extra_pages, sync_retries, sync_exclusive
        }
        cohmem_bo_stats {
            size, views, method, policy, paused, dirty_pages, syncs, pages_uploaded, bytes_uploaded, sync_retries,
            sync_exclusive
        }
        cohmem_image_info { width, height, fourcc, pitch, offset, modifier }
        cohmem_rect { x, y, w, h }
        cohmem_range { offset, len }
        cohmem_run { first_page, pages }
        cohmem_dmabuf { fd, size, pitch, image, offset }
        cohmem_mechanism_switch { from, to, exact, views, extra_pages }
        cohmem_dirty_state { method, change_count, users, pages, start, end, dirty_pages, truncated }
        cohmem_scan_report { method, switched_to, change_count, num_marked }
        cohmem_snapshot { size, exact, attempts, blocked_views, unblocked_views, image }
        cohmem_readback { synced_pages, bytes, duration_ns }
        cohmem_shown { connector, mode_width, mode_height, damage_path }
    };
    // Every enum value C sees, by name, against Rust's (negative status
    // codes print as large unsigned numbers on both sides).
    macro_rules! enum_values {
        ($($ty:ident { $($v:ident),* })*) => {
            vec![$($((stringify!($v), $ty::$v as i64 as u64)),*),*]
        };
    }
    let values = enum_values! {
        cohmem_status {
            COHMEM_OK, COHMEM_E_INVALID, COHMEM_E_CONNECT, COHMEM_E_DISCONNECTED, COHMEM_E_DAEMON,
            COHMEM_E_SYSTEM, COHMEM_E_PROTOCOL, COHMEM_E_FORKED, COHMEM_E_OTHER
        }
        cohmem_daemon_error {
            COHMEM_DAEMON_E_NONE, COHMEM_DAEMON_E_BAD_FRAME, COHMEM_DAEMON_E_UNSUPPORTED_VERSION,
            COHMEM_DAEMON_E_NOT_NEGOTIATED, COHMEM_DAEMON_E_UNKNOWN_REQUEST, COHMEM_DAEMON_E_BAD_FDS,
            COHMEM_DAEMON_E_NO_SUCH_BO, COHMEM_DAEMON_E_NO_SUCH_VIEW, COHMEM_DAEMON_E_INVALID_ARGUMENT,
            COHMEM_DAEMON_E_TOO_LARGE, COHMEM_DAEMON_E_LIMIT_EXCEEDED, COHMEM_DAEMON_E_NEED_MM_FDS,
            COHMEM_DAEMON_E_NO_MM, COHMEM_DAEMON_E_UNSUPPORTED, COHMEM_DAEMON_E_KERNEL, COHMEM_DAEMON_E_GPU,
            COHMEM_DAEMON_E_INTERNAL, COHMEM_DAEMON_E_PERMISSION_DENIED
        }
        cohmem_mechanism {
            COHMEM_MECHANISM_NONE, COHMEM_MECHANISM_UFFD_ASYNC, COHMEM_MECHANISM_UFFD_SYNC,
            COHMEM_MECHANISM_SOFT_DIRTY, COHMEM_MECHANISM_FULL, COHMEM_MECHANISM_EXPLICIT
        }
        cohmem_method { COHMEM_METHOD_NONE, COHMEM_METHOD_PAGETABLE, COHMEM_METHOD_MKWRITE }
        cohmem_policy {
            COHMEM_POLICY_AUTO, COHMEM_POLICY_MKWRITE, COHMEM_POLICY_PAGETABLE, COHMEM_POLICY_FULL,
            COHMEM_POLICY_SHADOW
        }
        cohmem_damage_path { COHMEM_DAMAGE_PATH_NONE, COHMEM_DAMAGE_PATH_ATOMIC, COHMEM_DAMAGE_PATH_DIRTYFB }
    };
    for (name, value) in values {
        c += &format!("    P(\"{name}\", (long long){name});\n");
        want.push(format!("{name} {value}"));
    }
    // The enums' values are the wire values of the protocol's enums.
    for m in [
        cohmem_client::Mechanism::None,
        cohmem_client::Mechanism::UffdAsync,
        cohmem_client::Mechanism::UffdSync,
        cohmem_client::Mechanism::SoftDirty,
        cohmem_client::Mechanism::Full,
        cohmem_client::Mechanism::Explicit,
    ] {
        // SAFETY: cohmem_mechanism_name returns a static C string.
        let name = unsafe { std::ffi::CStr::from_ptr(cohmem_mechanism_name(c_int::from(m as u16))) };
        assert_eq!(name.to_str()?, m.name());
    }
    for p in cohmem_client::BoPolicy::ALL {
        // SAFETY: cohmem_policy_name returns a static C string.
        let name = unsafe { std::ffi::CStr::from_ptr(cohmem_policy_name(c_int::from(p as u16))) };
        assert_eq!(name.to_str()?, p.name());
    }
    for m in [
        cohmem_client::Method::None,
        cohmem_client::Method::PageTable,
        cohmem_client::Method::MkWrite,
    ] {
        // SAFETY: cohmem_method_name returns a static C string.
        let name = unsafe { std::ffi::CStr::from_ptr(cohmem_method_name(c_int::from(m as u16))) };
        assert_eq!(name.to_str()?, m.name());
    }
    for (name, value) in [
        ("COHMEM_FORMAT_XRGB8888", u64::from(COHMEM_FORMAT_XRGB8888)),
        ("COHMEM_FORMAT_ARGB8888", u64::from(COHMEM_FORMAT_ARGB8888)),
        ("COHMEM_FORMAT_RGB565", u64::from(COHMEM_FORMAT_RGB565)),
        ("COHMEM_MODIFIER_LINEAR", COHMEM_MODIFIER_LINEAR),
        ("COHMEM_MAX_DAMAGE_RECTS", COHMEM_MAX_DAMAGE_RECTS as u64),
    ] {
        c += &format!("    P(\"{name}\", {name});\n");
        want.push(format!("{name} {value}"));
    }
    // The fourccs are drm_fourcc.h's values, usable as case labels.
    c += "    switch ((uint32_t)0x34325258u) { case COHMEM_FORMAT_XRGB8888: break; default: return 1; }\n";
    let program = format!(
        "#include <cohmem.h>\n#include <stddef.h>\n#include <stdio.h>\n\
         #define P(name, v) printf(\"%s %llu\\n\", name, (unsigned long long)(v))\n\
         _Static_assert(COHMEM_FORMAT_ARGB8888 == 0x34325241u, \"AR24\");\n\
         _Static_assert(COHMEM_FORMAT_RGB565 == 0x36314752u, \"RG16\");\n\
         int main(void)\n{{\n{c}    return 0;\n}}\n"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("cohmem-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("layout.c"), &program)?;
    let exe = dir.join("layout");
    let header = HEADER.lock().unwrap_or_else(|p| p.into_inner());
    let cc = std::process::Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(dir.join("layout.c"))
        .output()?;
    drop(header);
    anyhow::ensure!(
        cc.status.success(),
        "cc: {}\n{program}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let run = std::process::Command::new(&exe).output()?;
    anyhow::ensure!(run.status.success(), "{}", String::from_utf8_lossy(&run.stdout));
    let got: Vec<String> = String::from_utf8(run.stdout)?.lines().map(str::to_owned).collect();
    anyhow::ensure!(got == want, "C sees:\n{got:#?}\nRust has:\n{want:#?}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
