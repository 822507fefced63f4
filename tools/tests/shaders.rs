//! shaders/ (issues 8 and 16): every shader validates with naga (pure Rust,
//! on every machine) and with glslangValidator where Debian's glslang-tools
//! is installed (CI installs it); a broken shader fails these tests. Then
//! cohmem-verify runs on this host against a daemon with the software GPU:
//! it must either check every page (and, with `--image`, every pixel of an
//! image BO, finding a corrupted rectangle exactly) through a real GLES 3.1
//! context (and say why the resource was uploaded rather than imported) or
//! say why no GPU path exists; never stay silent.

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
/// rewritten, and so are combined samplers, which it does not implement
/// (`uniform highp sampler2D name;` becomes a `texture2D` and a `sampler`
/// in descriptor sets of their own, as GL's texture units do not share
/// binding numbers with buffers, and `texelFetch(name, …)` samples
/// `sampler2D(name_t, name_s)`);
/// everything else is checked as written.
fn validate_with_naga(src: &str, stage: ShaderStage) -> Result<naga::Module, String> {
    let mut text = String::new();
    let mut combined = Vec::new();
    for (i, line) in src.lines().enumerate() {
        if i == 0 && line.trim_start().starts_with("#version") {
            text.push_str("#version 450\n");
        } else if let Some((binding, kind, name)) = combined_sampler(line) {
            let texture = kind.replace("sampler", "texture");
            text.push_str(&format!(
                "layout(set = 2, binding = {binding}) uniform {texture} {name}_t;\n\
                 layout(set = 3, binding = {binding}) uniform sampler {name}_s;\n"
            ));
            combined.push((kind, name));
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    for (kind, name) in combined {
        text = text.replace(
            &format!("texelFetch({name},"),
            &format!("texelFetch({kind}({name}_t, {name}_s),"),
        );
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

/// `layout(binding = N) uniform [precision] [iu]sampler2D name;` as
/// (N, the sampler type, name).
fn combined_sampler(line: &str) -> Option<(u32, String, String)> {
    let rest = line.trim().strip_prefix("layout(binding = ")?;
    let (binding, rest) = rest.split_once(')')?;
    let words: Vec<&str> = rest.trim().trim_end_matches(';').split_whitespace().collect();
    let (kind, name) = match words.as_slice() {
        ["uniform", _, kind, name] | ["uniform", kind, name] => (*kind, *name),
        _ => return None,
    };
    kind.ends_with("sampler2D")
        .then(|| Some((binding.trim().parse().ok()?, kind.to_string(), name.to_string())))?
}

#[test]
fn every_shader_validates_with_naga() {
    let all = shaders();
    for name in ["page_checksum.comp", "image_compare.comp"] {
        assert!(
            all.iter().any(|(p, _)| p.ends_with(name)),
            "{name} missing from {all:?}"
        );
    }
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
fn the_binary_ships_the_shaders_in_shaders() {
    let on_disk = std::fs::read_to_string(shaders_dir().join("page_checksum.comp")).expect("readable");
    assert_eq!(cohmem_tools::gpu_check::PAGE_CHECKSUM_SHADER, on_disk);
    let on_disk = std::fs::read_to_string(shaders_dir().join("image_compare.comp")).expect("readable");
    assert_eq!(cohmem_tools::gpu_check::IMAGE_COMPARE_SHADER, on_disk);
}

#[test]
fn naga_rejects_a_broken_shader() {
    // The check can fail: a type error and a syntax error are caught.
    let good = std::fs::read_to_string(shaders_dir().join("page_checksum.comp")).expect("readable");
    let type_error = good.replace("sums[row] = h;", "sums[row] = 1.5;");
    assert!(validate_with_naga(&type_error, ShaderStage::Compute).is_err());
    let syntax_error = good.replace("sums[row] = h;", "sums[row] = h");
    assert!(validate_with_naga(&syntax_error, ShaderStage::Compute).is_err());
    // Through the combined-sampler rewrite too.
    let good = std::fs::read_to_string(shaders_dir().join("image_compare.comp")).expect("readable");
    validate_with_naga(&good, ShaderStage::Compute).expect("valid");
    let type_error = good.replace("differing += 1u;", "differing += 1.5;");
    assert_ne!(type_error, good);
    assert!(validate_with_naga(&type_error, ShaderStage::Compute).is_err());
    let wrong_sampler = good.replace(
        "uvec4 want = texelFetch(expected, at, 0);",
        "uvec4 want = texelFetch(observed, at, 0);",
    );
    assert_ne!(wrong_sampler, good);
    assert!(validate_with_naga(&wrong_sampler, ShaderStage::Compute).is_err());
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

/// The GLES context of this host's GPU (llvmpipe here), or `None` where
/// there is none and CI does not require one.
fn host_gles() -> Option<cohmem_tools::gpu_check::Gles> {
    use cohmem_tools::gpu_check::{Gles, Platform};
    match Gles::open(Platform::Surfaceless) {
        Ok(g) => Some(g),
        Err(e) => {
            assert!(
                std::env::var_os("COHMEM_REQUIRE_GLES").is_none(),
                "COHMEM_REQUIRE_GLES is set but: {e}"
            );
            eprintln!("no GLES here ({e}): the GPU comparison is checked in the VM tier only");
            None
        }
    }
}

#[test]
fn an_image_rectangle_the_gpu_sees_differently_is_found() -> anyhow::Result<()> {
    // The image check itself on this host's GPU, without a dma-buf: bytes
    // with a pitch that is no multiple of the page size and a first row
    // past byte 0, uploaded with GL_UNPACK_ROW_LENGTH and compared with the
    // CPU's expectation; a corrupted rectangle (on no tile boundary, and
    // one at the image's corner) must be found exactly, in both formats.
    use cohmem_client::{fourcc, ImageInfo, Rect};
    use cohmem_tools::gpu_check::image::{compare_upload, corrupt_rect, tile_aligned};
    use cohmem_tools::gpu_check::TexelOrder;
    let Some(gles) = host_gles() else { return Ok(()) };
    for code in [fourcc::XRGB8888, fourcc::ARGB8888] {
        let info = ImageInfo {
            width: 1000,
            height: 300,
            fourcc: code,
            pitch: 4036,
            offset: 512,
            modifier: 0,
        };
        let mut rng = cohmem_tools::SplitMix64::new(u64::from(code));
        let mut bytes = vec![0u8; info.end() as usize];
        rng.fill(&mut bytes);
        let clean = compare_upload(&gles, &bytes, &info, &bytes)?;
        assert!(clean.finds(None), "{clean:?}");
        assert_eq!(
            (clean.pixels, clean.tiles, clean.order),
            (300_000, 80, TexelOrder::Format)
        );
        for r in [
            Rect {
                x: 338,
                y: 78,
                w: 97,
                h: 41,
            },
            Rect { x: 0, y: 0, w: 1, h: 1 },
            Rect {
                x: 999,
                y: 250,
                w: 1,
                h: 50,
            },
        ] {
            let mut observed = bytes.clone();
            corrupt_rect(&mut observed, &info, &r);
            let found = compare_upload(&gles, &observed, &info, &bytes)?;
            assert!(found.finds(Some(&r)), "{} {r:?}: {found:?}", fourcc::name(code));
            assert_eq!(found.pixel_bbox, Some(r));
            assert_eq!(found.checksum_bbox, Some(tile_aligned(&r, 1000, 300)));
            assert!(!found.finds(None));
        }
        // Only XRGB8888's X byte changed: not a visible difference there,
        // but ARGB8888's alpha.
        let mut observed = bytes.clone();
        let at = info.pixel_offset(500, 150) as usize;
        observed[at + 3] ^= 0xff;
        let found = compare_upload(&gles, &observed, &info, &bytes)?;
        assert_eq!(found.differing_pixels, u64::from(code == fourcc::ARGB8888), "{found:?}");
        // And the pitch matters: rows read one pixel short of the pitch
        // differ nearly everywhere.
        let wrong = ImageInfo { pitch: 4032, ..info };
        let found = compare_upload(&gles, &relaid(&bytes, &info, &wrong), &info, &bytes)?;
        assert!(found.differing_pixels > 290_000, "{}", found.differing_pixels);
    }
    Ok(())
}

/// The rows of `bytes` as a reader assuming layout `wrong` sees them, laid
/// out again as `info`.
fn relaid(bytes: &[u8], info: &cohmem_client::ImageInfo, wrong: &cohmem_client::ImageInfo) -> Vec<u8> {
    let mut out = vec![0u8; info.end() as usize];
    let row = info.width as usize * 4;
    for y in 0..info.height {
        let (src, dst) = (wrong.pixel_offset(0, y) as usize, info.pixel_offset(0, y) as usize);
        out[dst..dst + row].copy_from_slice(&bytes[src..src + row]);
    }
    out
}

#[test]
fn cohmem_verify_image_on_this_host_finds_the_corrupted_rectangle() -> anyhow::Result<()> {
    // The whole of `cohmem-verify --image` against the software backend:
    // its resource is a sealed memfd (no import, not writable), so the
    // bytes are uploaded with the image's pitch and the corruption goes
    // into the uploaded copy; the report says both.
    let out = Command::new(VERIFY)
        .args([
            "--gpu",
            "soft",
            "--image",
            "1000x300",
            "--corrupt",
            "--rounds",
            "8",
            "--json",
            "--quiet",
        ])
        .env("COHMEMD_BIN", DAEMON)
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| anyhow::anyhow!("not JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))?;
    eprintln!("{report:#}");
    if report["available"] == false {
        assert!(
            std::env::var_os("COHMEM_REQUIRE_GLES").is_none(),
            "COHMEM_REQUIRE_GLES is set but: {report}"
        );
        assert_eq!(out.status.code(), Some(2), "{report}");
        return Ok(());
    }
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["mode"], "image");
    assert_eq!(report["image"]["width"], 1000);
    assert_eq!(report["cpu_check"], "identical", "{report}");
    let drawing = &report["drawing"];
    assert!(drawing["changed_pixels"].as_u64() > Some(0), "{report}");
    assert_eq!(drawing["uncovered_pixels"], 0, "{report}");
    let check = &report["check"];
    assert_eq!(
        (&check["pixels"], &check["tiles"]),
        (&300_000.into(), &80.into()),
        "{report}"
    );
    assert_eq!(check["differing_pixels"], 0, "{report}");
    assert_eq!(check["path"], "upload", "{report}");
    let c = &report["corruption"];
    assert_eq!(c["found"], true, "{report}");
    assert_eq!(c["in_resource"], false, "{report}");
    assert_eq!(c["after"]["pixel_bbox"], c["rect"], "{report}");
    let r = &c["rect"];
    assert_eq!(
        c["after"]["differing_pixels"].as_u64(),
        Some(r["w"].as_u64().unwrap_or(0) * r["h"].as_u64().unwrap_or(0)),
        "{report}"
    );
    assert_eq!(c["repaired"]["differing_pixels"], 0, "{report}");
    Ok(())
}
