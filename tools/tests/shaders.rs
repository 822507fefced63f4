//! shaders/ (issue 8): every shader validates with naga (pure Rust, on every
//! machine) and with glslangValidator where Debian's glslang-tools is
//! installed (CI installs it); a broken shader fails these tests. Then
//! cohmem-verify runs on this host against a daemon with the software GPU:
//! it must either check every page through a real GLES 3.1 context (and say
//! why the resource was uploaded rather than imported) or say why no GPU
//! path exists; never stay silent.

use std::path::{Path, PathBuf};
use std::process::Command;

use naga::front::glsl::{Frontend, Options};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::ShaderStage;

const DAEMON: &str = env!("CARGO_BIN_EXE_cohmem-tools-test-daemon");
const VERIFY: &str = env!("CARGO_BIN_EXE_cohmem-verify");

fn shaders_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders")
}

/// Every shader file of shaders/ with its stage (by extension).
fn shaders() -> Vec<(PathBuf, ShaderStage)> {
    let mut out: Vec<(PathBuf, ShaderStage)> = std::fs::read_dir(shaders_dir())
        .expect("shaders/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let stage = match p.extension()?.to_str()? {
                "comp" => ShaderStage::Compute,
                "frag" => ShaderStage::Fragment,
                "vert" => ShaderStage::Vertex,
                _ => return None,
            };
            Some((p, stage))
        })
        .collect();
    out.sort();
    out
}

/// Parses and validates GLSL ES with naga. naga's GLSL frontend takes only
/// `#version 440`–`460` (Vulkan-flavoured GLSL), so the version line is
/// rewritten; everything else is checked as written.
fn validate_with_naga(src: &str, stage: ShaderStage) -> Result<naga::Module, String> {
    let mut text = String::new();
    for (i, line) in src.lines().enumerate() {
        if i == 0 && line.trim_start().starts_with("#version") {
            text.push_str("#version 450\n");
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    let module = Frontend::default()
        .parse(
            &Options {
                stage,
                defines: Default::default(),
            },
            &text,
        )
        .map_err(|e| e.emit_to_string(&text))?;
    Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| e.emit_to_string(&text))?;
    Ok(module)
}

#[test]
fn every_shader_validates_with_naga() {
    let all = shaders();
    assert!(
        all.iter().any(|(p, _)| p.ends_with("page_checksum.comp")),
        "page_checksum.comp missing from {all:?}"
    );
    for (path, stage) in all {
        let src = std::fs::read_to_string(&path).expect("readable shader");
        assert!(
            src.starts_with("#version 310 es") || src.starts_with("#version 300 es"),
            "{}: not GLSL ES 3.x",
            path.display()
        );
        let module = validate_with_naga(&src, stage).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        assert_eq!(module.entry_points.len(), 1, "{}", path.display());
        if stage == ShaderStage::Compute {
            assert_eq!(module.entry_points[0].workgroup_size, [64, 1, 1], "{}", path.display());
        }
    }
}

#[test]
fn the_binary_ships_the_shader_in_shaders() {
    let on_disk = std::fs::read_to_string(shaders_dir().join("page_checksum.comp")).expect("readable");
    assert_eq!(cohmem_tools::gpu_check::PAGE_CHECKSUM_SHADER, on_disk);
}

#[test]
fn naga_rejects_a_broken_shader() {
    // The check can fail: a type error and a syntax error are caught.
    let good = std::fs::read_to_string(shaders_dir().join("page_checksum.comp")).expect("readable");
    let type_error = good.replace("sums[row] = h;", "sums[row] = 1.5;");
    assert!(validate_with_naga(&type_error, ShaderStage::Compute).is_err());
    let syntax_error = good.replace("sums[row] = h;", "sums[row] = h");
    assert!(validate_with_naga(&syntax_error, ShaderStage::Compute).is_err());
}

#[test]
fn every_shader_validates_with_glslang_where_installed() {
    let Ok(version) = Command::new("glslangValidator").arg("--version").output() else {
        assert!(
            std::env::var_os("COHMEM_REQUIRE_GLES").is_none(),
            "COHMEM_REQUIRE_GLES is set but glslangValidator is missing"
        );
        eprintln!("glslangValidator not installed (Debian: glslang-tools): only naga checked the shaders");
        return;
    };
    assert!(version.status.success());
    for (path, _) in shaders() {
        let out = Command::new("glslangValidator").arg(&path).output().expect("runs");
        assert!(
            out.status.success(),
            "glslangValidator {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And it fails on a broken shader.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.comp");
    let good = std::fs::read_to_string(shaders_dir().join("page_checksum.comp")).expect("readable");
    std::fs::write(&bad, good.replace("sums[row] = h;", "sums[row] = 1.5;")).expect("write");
    assert!(!Command::new("glslangValidator")
        .arg(&bad)
        .status()
        .expect("runs")
        .success());
}

#[test]
fn cohmem_verify_on_this_host_checks_through_the_gpu_or_says_why_not() -> anyhow::Result<()> {
    let out = Command::new(VERIFY)
        .args(["--gpu", "soft", "--rounds", "8", "--size-mib", "2", "--json"])
        .env("COHMEMD_BIN", DAEMON)
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| anyhow::anyhow!("not JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))?;
    eprintln!("{report:#}");
    if report["available"] == false {
        // No EGL at all: the reason must name what is missing, and CI
        // (which installs Mesa) must not get here.
        assert!(
            std::env::var_os("COHMEM_REQUIRE_GLES").is_none(),
            "COHMEM_REQUIRE_GLES is set but: {report}"
        );
        assert_eq!(out.status.code(), Some(2), "{report}");
        let why = report["why"].as_str().unwrap_or_default();
        assert!(why.contains("EGL") || why.contains("libEGL"), "unclear: {why}");
        return Ok(());
    }
    assert_eq!(out.status.code(), Some(0), "{report}");
    let check = &report["check"];
    assert_eq!(check["pages"], 512, "{report}");
    assert_eq!(check["mismatched_pages"].as_array().map(Vec::len), Some(0), "{report}");
    // The software backend's resource is a memfd: it cannot be imported,
    // and the report says so.
    assert_eq!(check["path"], "upload", "{report}");
    assert!(
        check["why_not_imported"]
            .as_str()
            .unwrap_or_default()
            .contains("not a dma-buf"),
        "{report}"
    );
    Ok(())
}

#[test]
fn a_page_the_gpu_sees_differently_is_found() -> anyhow::Result<()> {
    // The comparison itself, on this host's GPU if it has one: a texture
    // uploaded from bytes that differ from the BO in one page.
    use cohmem_tools::gpu_check::{page_checksum, ChannelOrder, Gles, Platform};
    let gles = match Gles::open(Platform::Surfaceless) {
        Ok(g) => g,
        Err(e) => {
            assert!(
                std::env::var_os("COHMEM_REQUIRE_GLES").is_none(),
                "COHMEM_REQUIRE_GLES is set but: {e}"
            );
            eprintln!("no GLES here ({e}): the GPU comparison is checked in the VM tier only");
            return Ok(());
        }
    };
    let ps = 4096usize;
    let pages = 40usize;
    let mut bytes: Vec<u8> = (0..ps * pages).map(|i| (i * 7 + i / 4096) as u8).collect();
    let want: Vec<u32> = bytes
        .chunks_exact(ps)
        .map(|p| page_checksum(p, ChannelOrder::Memory))
        .collect();
    bytes[17 * ps + 1234] ^= 0x40;
    let tex = gles.upload(&bytes, (ps / 4) as u32, pages as u32, ps as u32)?;
    let got = gles.page_checksums(tex, pages as u32, (ps / 4) as u32)?;
    let differing: Vec<usize> = (0..pages).filter(|&i| got[i] != want[i]).collect();
    assert_eq!(differing, vec![17], "renderer {}", gles.renderer);
    Ok(())
}
