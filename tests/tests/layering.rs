//! The daemon's layers stay one-way (issue 18, DESIGN.md §4): reads every
//! source file of `daemon/src`, collects the `crate::` modules it names
//! outside comments, and fails when a module names one of a higher layer,
//! when the module graph has a cycle, when a module of the pure vmwgfx core
//! makes system calls, or when a new module has no layer yet. The client
//! crate's and the C API's modules must be acyclic too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The daemon's layers, lowest first: a module may name modules of its own
/// layer and of the layers before it (never a cycle), none after it.
const LAYERS: &[(&str, &[&str])] = &[
    // Shared by every layer: no daemon state of its own beyond counters.
    (
        "base",
        &["locking", "ratelimit", "latency", "stats", "quota", "config_file"],
    ),
    // The vmwgfx core: dirty bitmap + envelope, method state machine and
    // policies, damage rectangles, display pacing. Pure state.
    ("core", &["dirty", "policy", "damage", "display::pacing"]),
    // Resources: GPU backends and the byte and image resources owning their
    // damage.
    ("resources", &["gpu", "resource"]),
    // Tracking: mechanisms, the mm registry (seed 003), the BO store with
    // its views, the fault service, the mechanism switch, MAP's view proof.
    ("tracking", &["tracker", "mm", "bo", "faults", "switch", "viewcheck"]),
    // The engine: sync / transfer / readback / snapshot orchestration,
    // writes through BO fds, scanout, configuration.
    ("engine", &["sync", "bypass", "display", "config"]),
    // The server: shared daemon state, sessions, the listener, systemd
    // glue, metrics, background upload, the command line.
    (
        "server",
        &[
            "server",
            "connection",
            "listener",
            "background",
            "fdstore",
            "metrics",
            "cli",
        ],
    ),
];

/// Paths whose use makes a module more than pure state.
const SYSTEM_INTERFACES: &[&str] = &[
    "cohmem_sys",
    "nix::",
    "libc::",
    "std::fs",
    "std::os",
    "std::thread",
    "std::process",
];

fn src_dir(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(krate).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file (`tracker/soft_dirty.rs` →
/// `tracker::soft_dirty`, `sync/mod.rs` → `sync`).
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).expect("under its src dir");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments (line comments and doc comments;
/// the daemon has no block comments) and without its `#[cfg(test)]`
/// module (tests may reach anywhere).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal is rare enough here; cutting
            // there can only hide a name, and the layering would still
            // be checked by the compiler's own resolution of the rest.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b` path named in `code`, as `a::b` and `a` (for
/// `use crate::{x, y::z}` groups too).
fn named_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i + "crate::".len();
        at = start;
        if start > "crate::".len() {
            let before = bytes[start - "crate::".len() - 1];
            if before.is_ascii_alphanumeric() || before == b'_' || before == b'$' {
                continue; // `$crate::`, `cohmem_crate::`, ...
            }
        }
        if bytes.get(start) == Some(&b'{') {
            // A `use crate::{a::b, c::{d, e}}` group: its top-level items.
            let (mut depth, mut item_start) = (0usize, start + 1);
            for (i, c) in code[start..].char_indices() {
                let i = start + i;
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        let path: String = code[item_start..i]
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                            .collect();
                        let path = path.trim_end_matches(':');
                        if !path.is_empty() {
                            out.insert(path.to_string());
                        }
                        item_start = i + 1;
                        if c == '}' {
                            break;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            continue;
        }
        let path: String = code[start..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        out.insert(path.trim_end_matches(':').to_string());
    }
    out
}

/// The module of `layers` a named path belongs to: the longest known
/// module prefix (`display::pacing::Pacer` → `display::pacing`).
fn owner<'a>(path: &str, known: &'a BTreeMap<String, usize>) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().find_map(|n| {
        let candidate = parts[..n].join("::");
        known.get_key_value(&candidate).map(|(k, _)| k.as_str())
    })
}

/// The layered module a file belongs to (its own module or the nearest
/// enclosing one in the table).
fn layered_module(module: &str, known: &BTreeMap<String, usize>) -> Option<String> {
    owner(module, known).map(str::to_string)
}

/// Module → modules it names, for every source file of `krate`, with the
/// module names shortened by `key`.
fn graph(krate: &str, key: &dyn Fn(&str) -> Option<String>) -> BTreeMap<String, BTreeSet<String>> {
    let root = src_dir(krate);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let module = module_of(&root, &f);
        if module.starts_with("bin") || module == "lib" || module == "main" {
            continue;
        }
        let Some(from) = key(&module) else {
            panic!(
                "{krate}: module `{module}` ({}) has no layer in tests/tests/layering.rs",
                f.display()
            );
        };
        let text = std::fs::read_to_string(&f).expect("readable source");
        let entry = g.entry(from.clone()).or_default();
        for path in named_paths(&code_of(&text)) {
            if path == "limited" {
                entry.insert(key("ratelimit").unwrap_or_default());
            } else if let Some(to) = key(&path) {
                if to != from {
                    entry.insert(to);
                }
            }
        }
    }
    g
}

/// A cycle of `g`, if it has one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[i..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn daemon_layers() -> BTreeMap<String, usize> {
    let mut known = BTreeMap::new();
    for (i, (_, modules)) in LAYERS.iter().enumerate() {
        for m in *modules {
            known.insert((*m).to_string(), i);
        }
    }
    known
}

#[test]
fn no_daemon_module_names_a_module_of_a_higher_layer() {
    let known = daemon_layers();
    let g = graph("daemon", &|m| layered_module(m, &known));
    let mut upward = Vec::new();
    let mut edges = 0;
    for (from, tos) in &g {
        for to in tos {
            edges += 1;
            let (lf, lt) = (known[from], known[to]);
            if lt > lf {
                upward.push(format!("{from} ({}) names {to} ({})", LAYERS[lf].0, LAYERS[lt].0));
            }
        }
    }
    eprintln!("daemon: {} modules, {edges} edges between them", g.len());
    assert!(
        upward.is_empty(),
        "imports against the layering:\n  {}",
        upward.join("\n  ")
    );
    assert!(
        edges > 30,
        "the scan found too few imports ({edges}): is it still reading the sources?"
    );
}

#[test]
fn the_daemon_module_graph_has_no_cycle() {
    let known = daemon_layers();
    let g = graph("daemon", &|m| layered_module(m, &known));
    assert_eq!(
        find_cycle(&g),
        None,
        "the daemon's modules import each other in a cycle"
    );
}

#[test]
fn the_vmwgfx_core_makes_no_system_calls() {
    let root = src_dir("daemon");
    let core = LAYERS[1].1;
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut found = Vec::new();
    for f in files {
        let module = module_of(&root, &f);
        if !core.contains(&module.as_str()) {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&f).expect("readable source"));
        for s in SYSTEM_INTERFACES {
            if code.contains(s) {
                found.push(format!("{module} uses {s}"));
            }
        }
    }
    assert!(found.is_empty(), "the core is pure state: {found:?}");
}

#[test]
fn client_and_c_api_modules_have_no_cycle() {
    for krate in ["client", "capi", "proto", "sys"] {
        let g = graph(krate, &|m| Some(m.split("::").next().unwrap_or(m).to_string()));
        assert_eq!(find_cycle(&g), None, "{krate}'s modules import each other in a cycle");
        eprintln!("{krate}: {} modules, acyclic", g.len());
    }
}

/// The check itself catches what it is for: a cycle and an upward edge.
#[test]
fn the_check_finds_an_upward_import_and_a_cycle() {
    let code = code_of(
        "use crate::{bo::{lock, View}, server::Daemon};\n// crate::cli\nlet x = crate::sync::SyncEngine::new();",
    );
    let names = named_paths(&code);
    assert!(
        names.contains("bo") && names.contains("server::Daemon") && names.contains("sync::SyncEngine::new"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("cli")),
        "a comment counted: {names:?}"
    );
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&g).is_some());
    let known = daemon_layers();
    assert_eq!(owner("display::pacing::Pacer", &known), Some("display::pacing"));
    assert_eq!(owner("display::Display", &known), Some("display"));
    assert!(known["bo"] < known["server"]);
}
