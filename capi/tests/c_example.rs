//! Issue 7 "C API": the C example (`capi/examples/cohmem_example.c`) is
//! compiled with the flags `pkg-config --cflags --libs cohmem` gives for a
//! `cohmem.pc` rendered from `capi/cohmem.pc.in` (as `make install` renders
//! it), linked against the libcohmem.so cargo built, and run against a real
//! daemon: it checks that a sync uploads exactly the two pages it wrote and
//! that the exported GPU resource holds the bytes written. Its image part
//! draws a rectangle and a line into an image BO and prints the rectangles
//! `cohmem_bo_sync_rects` reports; this test draws the same pixels and
//! checks those rectangles against the pages they lie in.

use std::path::{Path, PathBuf};
use std::process::Command;

use cohmem_tools::DaemonProcess;

mod common;

/// The directory cargo put libcohmem.so in (target/<profile>).
fn lib_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        if dir.join("libcohmem.so").is_file() {
            return Ok(dir.to_path_buf());
        }
    }
    anyhow::bail!("libcohmem.so not found near {}", exe.display())
}

#[test]
fn the_c_example_builds_with_pkg_config_and_syncs_exact_bytes() -> anyhow::Result<()> {
    for tool in ["cc", "pkg-config"] {
        if !common::have(tool) {
            // .ci/run installs both; a developer machine without them skips.
            eprintln!("skipping: {tool} is not installed");
            return Ok(());
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile_dir()?;
    let libdir = lib_dir()?;
    let pc = std::fs::read_to_string(root.join("cohmem.pc.in"))?
        .replace("@PREFIX@", &dir.display().to_string())
        .replace("@LIBDIR@", &libdir.display().to_string())
        .replace("@INCLUDEDIR@", &root.join("include").display().to_string())
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"))
        .replace("@LIBS_PRIVATE@", "");
    std::fs::write(dir.join("cohmem.pc"), pc)?;
    let flags = common::pkg_config_flags(&[("PKG_CONFIG_PATH", &dir)])?;
    eprintln!("pkg-config --cflags --libs cohmem: {flags}");
    let exe = dir.join("cohmem_example");
    common::compile_example(&exe, &flags)?;

    let daemon = DaemonProcess::spawn_bin(
        env!("CARGO_BIN_EXE_cohmem-capi-test-daemon").as_ref(),
        &["--log", "warn"],
    )?;
    // The example was linked against libcohmem's SONAME, libcohmem.so.0
    // (capi/build.rs); cargo leaves the library as libcohmem.so only.
    std::os::unix::fs::symlink(libdir.join("libcohmem.so"), dir.join("libcohmem.so.0"))?;
    let run = Command::new(&exe)
        .arg(daemon.socket())
        .env("LD_LIBRARY_PATH", &dir)
        .output()?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&run.stderr));
    anyhow::ensure!(run.status.success(), "the C example failed: {}", run.status);
    anyhow::ensure!(stdout.contains("synced 2 pages"), "{stdout}");
    anyhow::ensure!(stdout.contains("damaged and synced 1 page(s)"), "{stdout}");
    anyhow::ensure!(stdout.contains("GPU copy equals the BO"), "{stdout}");
    check_image_rects(&stdout)?;
    anyhow::ensure!(stdout.contains("GPU image equals the BO"), "{stdout}");
    for line in [
        "policy full (was auto): a 1-byte store synced 16 pages",
        "snapshot equals the BO",
        "background sync: 1 page(s)",
        "explicit: an unreported store synced 0 pages (mechanism explicit)",
        "explicit: the reported store synced 1 page(s)",
        "refused as expected: cohmemd refused the request, daemon code TooLarge",
    ] {
        anyhow::ensure!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    anyhow::ensure!(stdout.trim_end().ends_with("ok"), "{stdout}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cohmem-capi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// What the example draws (its RECT_* and LINE_* macros; it prints them
/// and the test checks that it printed these).
const IMG: (u32, u32) = (320, 200);
const RECT: Rect = Rect {
    x: 40,
    y: 30,
    w: 100,
    h: 50,
};
const LINE: ((u32, u32), (u32, u32)) = ((180, 100), (300, 140));

#[derive(Debug, Clone, Copy, PartialEq)]
struct Rect {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

impl Rect {
    fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && y >= self.y && x - self.x < self.w && y - self.y < self.h
    }
}

/// The pixels the example draws, as it draws them (C integer arithmetic).
fn drawn_pixels() -> Vec<(u32, u32)> {
    let mut px = Vec::new();
    for y in RECT.y..RECT.y + RECT.h {
        for x in RECT.x..RECT.x + RECT.w {
            px.push((x, y));
        }
    }
    let ((x0, y0), (x1, y1)) = LINE;
    for x in x0..=x1 {
        px.push((x, y0 + (x - x0) * (y1 - y0) / (x1 - x0)));
    }
    px
}

/// The numbers after `key` in `line` up to the next non-digit.
fn number_after(line: &str, key: &str) -> anyhow::Result<u64> {
    let rest = &line[line
        .find(key)
        .ok_or_else(|| anyhow::anyhow!("no {key:?} in {line:?}"))?
        + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Ok(digits.parse()?)
}

/// Checks the example's image part: the layout it printed, the pages its
/// sync uploaded, and that the rectangles it printed contain every pixel
/// drawn and otherwise only pixels of the pages drawn into (the sync is not
/// merged: a handful of rects), so their total area is at most the pixels
/// those pages hold.
fn check_image_rects(stdout: &str) -> anyhow::Result<()> {
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .ok_or_else(|| anyhow::anyhow!("no line starting {prefix:?}:\n{stdout}"))
    };
    let ((x0, y0), (x1, y1)) = LINE;
    let drew = format!(
        "drew rectangle x={} y={} w={} h={} and line ({x0},{y0})-({x1},{y1})",
        RECT.x, RECT.y, RECT.w, RECT.h
    );
    anyhow::ensure!(
        stdout.lines().any(|l| l == drew),
        "the example no longer draws what this test checks ({drew}):\n{stdout}"
    );
    let head = line(&format!("image {}x{} XR24: ", IMG.0, IMG.1))?;
    let (pitch, offset) = (number_after(head, "pitch ")?, number_after(head, "offset ")?);
    anyhow::ensure!(pitch >= u64::from(IMG.0) * 4, "pitch {pitch} below a row: {head}");
    let synced = line("image synced ")?;
    let (pages, count, merged) = (
        number_after(synced, "synced ")?,
        number_after(synced, "pages, ")?,
        number_after(synced, "merged ")?,
    );
    let rects: Vec<Rect> = stdout
        .lines()
        .filter(|l| l.starts_with("rect "))
        .map(|l| {
            Ok(Rect {
                x: u32::try_from(number_after(l, "x=")?)?,
                y: u32::try_from(number_after(l, "y=")?)?,
                w: u32::try_from(number_after(l, "w=")?)?,
                h: u32::try_from(number_after(l, "h=")?)?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    eprintln!("image: pitch {pitch} offset {offset}, {pages} pages, rects {rects:?}");
    anyhow::ensure!(
        rects.len() as u64 == count,
        "{count} rects announced, {} printed",
        rects.len()
    );
    anyhow::ensure!(merged == 0, "a few separate rects need no merging: {synced}");

    // SAFETY: sysconf has no preconditions.
    let ps = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })?;
    let pixel = |x: u32, y: u32| offset + u64::from(y) * pitch + u64::from(x) * 4;
    let drawn = drawn_pixels();
    let mut dirty: Vec<u64> = drawn.iter().map(|&(x, y)| pixel(x, y) / ps).collect();
    dirty.sort_unstable();
    dirty.dedup();
    anyhow::ensure!(
        pages == dirty.len() as u64,
        "the sync uploaded {pages} pages; the drawing touched {} ({dirty:?})",
        dirty.len()
    );
    // A pixel lies in a dirty page if any of its 4 bytes does.
    let in_dirty_page = |x: u32, y: u32| {
        let p = pixel(x, y);
        dirty.binary_search(&(p / ps)).is_ok() || dirty.binary_search(&((p + 3) / ps)).is_ok()
    };
    // The bound from the page runs: every image pixel in a dirty page.
    let bound = (0..IMG.1)
        .flat_map(|y| (0..IMG.0).map(move |x| (x, y)))
        .filter(|&(x, y)| in_dirty_page(x, y))
        .count() as u64;
    let area: u64 = rects.iter().map(|r| u64::from(r.w) * u64::from(r.h)).sum();
    anyhow::ensure!(
        area <= bound,
        "the rects cover {area} pixels; the {} dirty pages hold {bound}",
        dirty.len()
    );
    for r in &rects {
        anyhow::ensure!(
            r.w > 0 && r.h > 0 && r.x + r.w <= IMG.0 && r.y + r.h <= IMG.1,
            "{r:?} is empty or outside the image"
        );
        for y in r.y..r.y + r.h {
            for x in r.x..r.x + r.w {
                anyhow::ensure!(in_dirty_page(x, y), "{r:?} covers ({x}, {y}), in no page drawn into");
            }
        }
    }
    for &(x, y) in &drawn {
        anyhow::ensure!(
            rects.iter().any(|r| r.contains(x, y)),
            "the drawn pixel ({x}, {y}) is in no rect: {rects:?}"
        );
    }
    eprintln!(
        "{} rects, {area} pixels (bound {bound}) cover the {} pixels drawn",
        rects.len(),
        drawn.len()
    );
    Ok(())
}
