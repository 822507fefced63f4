//! Issue 20 "one API in Rust and C": every public method of the Rust
//! client's `Connection`, `Bo` and `Mapping` (read from `client/src`) has
//! its C call in `cohmem.h`, or a stated reason why C does it otherwise. A
//! new client method fails this test until it is added to the table below
//! (and to the C API).

use std::collections::BTreeMap;
use std::path::Path;

/// How C does what a client method does.
enum InC {
    /// These functions of cohmem.h.
    Calls(&'static [&'static str]),
    /// C does it another way (the reason says how).
    Otherwise(&'static str),
    /// Not in C yet (the reason says what is missing).
    #[allow(dead_code)] // while every operation is in C
    Missing(&'static str),
}
use InC::{Calls, Missing, Otherwise};

const STORES: InC = Otherwise("C stores through cohmem_mapping_ptr() (bounds are the caller's, as for any pointer)");

fn table() -> BTreeMap<&'static str, InC> {
    BTreeMap::from([
        ("Connection::connect", Calls(&["cohmem_connect"])),
        ("Connection::connect_default", Calls(&["cohmem_connect"])),
        ("Connection::reconnects", Calls(&["cohmem_connection_reconnects"])),
        ("Connection::caps", Calls(&["cohmem_connection_caps"])),
        ("Connection::max_bo_size", Calls(&["cohmem_connection_max_bo_size"])),
        ("Connection::page_size", Calls(&["cohmem_connection_page_size"])),
        ("Connection::create_bo", Calls(&["cohmem_bo_create"])),
        (
            "Connection::create_bo_without_resource",
            Calls(&["cohmem_bo_create_without_resource"]),
        ),
        ("Connection::create_image", Calls(&["cohmem_image_create"])),
        ("Connection::import_bo", Calls(&["cohmem_bo_import"])),
        ("Connection::snapshot", Calls(&["cohmem_bo_snapshot"])),
        ("Connection::set_policy", Calls(&["cohmem_bo_set_policy"])),
        ("Connection::metrics", Calls(&["cohmem_metrics"])),
        ("Connection::stats", Calls(&["cohmem_stats_get", "cohmem_bo_stats_get"])),
        ("Connection::show", Calls(&["cohmem_bo_show", "cohmem_bo_hide"])),
        ("Connection::set_mechanism", Calls(&["cohmem_set_mechanism"])),
        (
            "Connection::mechanism",
            Calls(&["cohmem_get_mechanism", "cohmem_mechanism_name"]),
        ),
        ("Connection::sync_many", Calls(&["cohmem_sync_many"])),
        ("Bo::size", Calls(&["cohmem_bo_size"])),
        ("Bo::image", Calls(&["cohmem_bo_image_info"])),
        ("Bo::id", Calls(&["cohmem_bo_id"])),
        ("Bo::handle", Calls(&["cohmem_bo_handle"])),
        ("Bo::memfd", Calls(&["cohmem_bo_memfd"])),
        ("Bo::read_at", Calls(&["cohmem_bo_read"])),
        ("Bo::map", Calls(&["cohmem_bo_map", "cohmem_unmap"])),
        ("Bo::map_detached", Calls(&["cohmem_bo_map"])),
        ("Bo::map_range", Calls(&["cohmem_bo_map_range"])),
        ("Bo::map_range_detached", Calls(&["cohmem_bo_map_range"])),
        ("Bo::sync", Calls(&["cohmem_bo_sync", "cohmem_bo_sync_rects"])),
        ("Bo::sync_with_runs", Calls(&["cohmem_bo_sync_runs"])),
        (
            "Bo::sync_in_background",
            Calls(&[
                "cohmem_bo_sync_start",
                "cohmem_pending_sync_fd",
                "cohmem_pending_sync_done",
                "cohmem_pending_sync_wait",
                "cohmem_pending_sync_free",
            ]),
        ),
        ("Bo::add_resource", Calls(&["cohmem_bo_add_resource"])),
        ("Bo::release_resource", Calls(&["cohmem_bo_release_resource"])),
        ("Bo::scan", Calls(&["cohmem_bo_scan"])),
        ("Bo::transfer", Calls(&["cohmem_bo_transfer"])),
        ("Bo::clear_resource", Calls(&["cohmem_bo_clear_resource"])),
        ("Bo::clear_all", Calls(&["cohmem_bo_clear_all"])),
        ("Bo::damage", Calls(&["cohmem_bo_damage"])),
        ("Bo::dirty_state", Calls(&["cohmem_bo_dirty_state"])),
        (
            "Bo::export_resource",
            Calls(&["cohmem_bo_export_resource", "cohmem_bo_export_dmabuf"]),
        ),
        ("Bo::readback", Calls(&["cohmem_bo_readback"])),
        ("Bo::set_policy", Calls(&["cohmem_bo_set_policy", "cohmem_policy_name"])),
        ("Bo::snapshot", Calls(&["cohmem_bo_snapshot"])),
        ("Bo::damage_ranges", Calls(&["cohmem_bo_damage_ranges"])),
        ("Bo::sync_damaged", Calls(&["cohmem_bo_sync_damaged"])),
        ("Bo::damage_rects", Calls(&["cohmem_bo_damage_rects"])),
        ("Bo::sync_damaged_rects", Calls(&["cohmem_bo_sync_damaged_rects"])),
        ("Bo::show", Calls(&["cohmem_bo_show"])),
        ("Bo::hide", Calls(&["cohmem_bo_hide"])),
        ("Mapping::as_ptr", Calls(&["cohmem_mapping_ptr"])),
        ("Mapping::len", Calls(&["cohmem_mapping_len"])),
        ("Mapping::is_empty", Calls(&["cohmem_mapping_len"])),
        ("Mapping::unmap", Calls(&["cohmem_unmap"])),
        ("Mapping::bo_offset", Calls(&["cohmem_mapping_bo_offset"])),
        ("Mapping::damage", Calls(&["cohmem_mapping_damage"])),
        ("Mapping::sync", Otherwise("cohmem_bo_sync on the mapping's BO")),
        (
            "Mapping::bo",
            Otherwise("C keeps its cohmem_bo (a mapping keeps the BO alive until cohmem_unmap)"),
        ),
        ("Mapping::image", Calls(&["cohmem_bo_image_info"])),
        (
            "Mapping::row",
            Otherwise("a row is cohmem_mapping_ptr() + offset + y * pitch (cohmem_bo_image_info)"),
        ),
        (
            "Mapping::rows",
            Otherwise("a row is cohmem_mapping_ptr() + offset + y * pitch (cohmem_bo_image_info)"),
        ),
        ("Mapping::as_volatile_slice", STORES),
        ("Mapping::volatile_range", STORES),
        ("Mapping::write", STORES),
        ("Mapping::read", STORES),
        ("Mapping::fill", STORES),
        ("Mapping::write_u64", STORES),
        ("Mapping::read_u64", STORES),
        ("Mapping::write_slice", STORES),
        ("Mapping::read_slice", STORES),
        ("Mapping::write_obj", STORES),
        ("Mapping::read_obj", STORES),
    ])
}

/// `Type::method` for every `pub fn` in an inherent `impl` of `Connection`,
/// `Bo` or `Mapping` in the client's sources.
fn client_methods() -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for path in files {
        let mut current: Option<String> = None;
        for line in std::fs::read_to_string(&path)?.lines() {
            if let Some(rest) = line.strip_prefix("impl") {
                // `impl<'bo> Mapping<'bo> {`, `impl Bo {`; not `impl X for Y`.
                let rest = if rest.starts_with('<') {
                    rest.split_once('>').map_or("", |(_, r)| r)
                } else {
                    rest
                };
                let name: String = rest
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                current = (!line.contains(" for ") && ["Connection", "Bo", "Mapping"].contains(&name.as_str()))
                    .then_some(name);
            } else if line.starts_with('}') {
                current = None;
            } else if let (Some(ty), Some(rest)) = (&current, line.strip_prefix("    pub fn ")) {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.push(format!("{ty}::{name}"));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[test]
fn every_client_method_has_its_c_call() -> anyhow::Result<()> {
    let header = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/cohmem.h"))?;
    let declared = |f: &str| header.contains(&format!(" {f}(")) || header.contains(&format!("*{f}("));
    let table = table();
    let methods = client_methods()?;
    anyhow::ensure!(methods.len() > 40, "found only {methods:?} in client/src");
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    let mut otherwise = Vec::new();
    for m in &methods {
        match table.get(m.as_str()) {
            None => problems.push(format!(
                "{m}: not in capi/tests/parity.rs (add its C call to the C API)"
            )),
            Some(Calls(fs)) => {
                for f in *fs {
                    if !declared(f) {
                        problems.push(format!("{m}: {f} is not declared in cohmem.h"));
                    }
                }
            }
            Some(Otherwise(how)) => otherwise.push(format!("{m}: {how}")),
            Some(Missing(why)) => missing.push(format!("{m}: {why}")),
        }
    }
    for name in table.keys() {
        if !methods.iter().any(|m| m == name) {
            problems.push(format!("{name}: in the table but no longer in the client (remove it)"));
        }
    }
    eprintln!("done otherwise in C:\n  {}", otherwise.join("\n  "));
    if !missing.is_empty() {
        eprintln!("not in C yet:\n  {}", missing.join("\n  "));
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
