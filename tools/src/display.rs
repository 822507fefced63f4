//! The daemon's display output for operators (issue 17): `cohmemctl show ID
//! [--hide]` puts an image BO on the output `cohmemd --display` opened (or
//! takes it off), and the words the tools use for what SHOW answered.

use anyhow::Context;
use cohmem_client::{Connection, Shown, DAMAGE_PATH_ATOMIC, DAMAGE_PATH_DIRTYFB, DAMAGE_PATH_NONE};
use serde_json::json;

/// The image size the demo draws with `--display` when no `--image-size` is
/// given: 1024x768, the default mode of QEMU's bochs-drm (`-vga std`) and
/// virtio-gpu and a mode nearly every connector lists, so the daemon sets
/// exactly that mode and the image fills the screen.
pub const DEFAULT_DISPLAY_SIZE: (u32, u32) = (1024, 768);

/// How each sync's rectangles reach the device, for people:
/// `atomic FB_DAMAGE_CLIPS` or `DIRTYFB`.
pub fn damage_path_name(path: u16) -> String {
    match path {
        DAMAGE_PATH_ATOMIC => "atomic FB_DAMAGE_CLIPS".into(),
        DAMAGE_PATH_DIRTYFB => "DIRTYFB".into(),
        DAMAGE_PATH_NONE => "none".into(),
        other => format!("unknown ({other})"),
    }
}

/// The same for `--json`: `atomic`, `dirtyfb` or `none`.
pub fn damage_path_word(path: u16) -> String {
    match path {
        DAMAGE_PATH_ATOMIC => "atomic".into(),
        DAMAGE_PATH_DIRTYFB => "dirtyfb".into(),
        DAMAGE_PATH_NONE => "none".into(),
        other => format!("unknown-{other}"),
    }
}

/// `Virtual-1, mode 1024x768, damage by atomic FB_DAMAGE_CLIPS`.
pub fn describe(shown: &Shown) -> String {
    format!(
        "{}, mode {}x{}, damage by {}",
        shown.connector,
        shown.mode.0,
        shown.mode.1,
        damage_path_name(shown.damage_path)
    )
}

/// What SHOW answered for BO `id`, as JSON.
pub fn shown_json(id: u64, shown: &Shown) -> serde_json::Value {
    json!({
        "bo": id, "shown": true, "connector": shown.connector,
        "mode": { "width": shown.mode.0, "height": shown.mode.1 },
        "damage_path": damage_path_word(shown.damage_path),
    })
}

/// A note when the mode set is not the image's size (`None` when it is):
/// the image's top-left part is shown, or it covers only part of the mode.
pub fn mode_note(shown: &Shown, image: (u32, u32)) -> Option<String> {
    let (mode, (w, h)) = (shown.mode, image);
    if mode == image {
        return None;
    }
    let what = if w >= mode.0 && h >= mode.1 {
        "its top-left part is shown"
    } else {
        "it covers only part of the screen (drivers whose primary plane must cover the mode refuse this)"
    };
    Some(format!(
        "the mode is {}x{}, the image {w}x{h}: {what}; an image of the mode's size fills the screen",
        mode.0, mode.1
    ))
}

/// `cohmemctl show ID [--hide]`: puts image BO `id` on the daemon's display
/// output (or takes it off) and prints where. A refusal is the daemon's
/// message (no display output, another DRM master, a byte BO, not root and
/// not a holder of the BO), as an error.
pub fn show_command(conn: &Connection, id: u64, hide: bool, as_json: bool) -> anyhow::Result<()> {
    if hide {
        conn.show(id, true)
            .with_context(|| format!("taking BO {id} off the display"))?;
        if as_json {
            println!("{}", json!({ "bo": id, "shown": false }));
        } else {
            println!("BO {id} taken off the display (what was pending was committed first)");
        }
        return Ok(());
    }
    let shown = conn
        .show(id, false)
        .with_context(|| format!("showing BO {id} on the display"))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&shown_json(id, &shown))?);
        return Ok(());
    }
    println!("BO {id} on display {}", describe(&shown));
    println!("each sync of BO {id} now sends the rectangles it changed to the device");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(mode: (u32, u32), damage_path: u16) -> Shown {
        Shown {
            connector: "Virtual-1".into(),
            mode,
            damage_path,
        }
    }

    #[test]
    fn damage_paths_and_descriptions_are_named() {
        assert_eq!(
            describe(&shown((1024, 768), DAMAGE_PATH_ATOMIC)),
            "Virtual-1, mode 1024x768, damage by atomic FB_DAMAGE_CLIPS"
        );
        assert_eq!(damage_path_name(DAMAGE_PATH_DIRTYFB), "DIRTYFB");
        assert_eq!(damage_path_word(DAMAGE_PATH_DIRTYFB), "dirtyfb");
        assert_eq!(damage_path_word(7), "unknown-7");
        let j = shown_json(3, &shown((800, 600), DAMAGE_PATH_ATOMIC));
        assert_eq!(j["mode"]["width"], 800);
        assert_eq!(j["damage_path"], "atomic");
    }

    #[test]
    fn a_mode_other_than_the_image_size_is_explained() {
        let s = shown((1024, 768), DAMAGE_PATH_ATOMIC);
        assert_eq!(mode_note(&s, (1024, 768)), None);
        assert!(mode_note(&s, (1920, 1080)).is_some_and(|n| n.contains("top-left part")));
        assert!(mode_note(&s, (640, 360)).is_some_and(|n| n.contains("only part")));
    }
}
