//! A GPU resource bound to a window of a BO, owning its damage (vmwgfx's
//! `dirty_range_add` / `dirty_sync` of surfaces, DESIGN.md §8).
//!
//! The sync engine hands a resource the byte runs of its window that it
//! uploaded ([`Resource::upload`]); a byte resource only copies them, an
//! image resource also turns them into rectangles
//! ([`crate::damage::DamageAccumulator`]) and keeps them until the next
//! SYNC reply takes them ([`Resource::take_damage`]).

use std::ops::Range;
use std::sync::Mutex;

use cohmem_proto::{ImageDamage, ImageInfo};
use cohmem_sys::mapping::SharedMapping;

use crate::damage::DamageAccumulator;
use crate::gpu::{GpuError, GpuResource};

use crate::locking::lock;

/// A GPU resource bound to a byte window of a BO.
pub struct Resource {
    /// Window in the BO, bytes, page aligned.
    pub window: Range<u64>,
    /// The device buffer.
    pub gpu: Box<dyn GpuResource>,
    /// The rectangles uploaded since the last [`Resource::take_damage`]
    /// (image resources only).
    damage: Option<Mutex<DamageAccumulator>>,
}

impl Resource {
    /// Binds `gpu` to `window`. Its damage starts empty: a new resource
    /// and a new BO are both zero (an adopted BO starts wholly dirty, so its
    /// first sync reports the whole image).
    pub fn new(window: Range<u64>, gpu: Box<dyn GpuResource>) -> Self {
        let damage = gpu.image().map(|image| Mutex::new(DamageAccumulator::new(image)));
        Self { window, gpu, damage }
    }

    /// The image layout of an image resource.
    pub fn image(&self) -> Option<ImageInfo> {
        self.gpu.image()
    }

    /// Copies window-relative byte `runs` from the BO mapping `src` into
    /// the resource and, for an image, records the rectangles they cover.
    pub fn upload(&self, src: &SharedMapping, runs: &[Range<u64>]) -> Result<(), GpuError> {
        self.gpu.upload(src, self.window.start, runs)?;
        if let Some(d) = &self.damage {
            lock(d).add_runs(runs);
        }
        Ok(())
    }

    /// Like [`Resource::upload`] for `runs` whose bytes come from several
    /// mappings (`parts`: a mapping and the runs to take from it), so an
    /// image records the rectangles of `runs` as one upload would.
    pub fn upload_parts(
        &self,
        parts: &[(&SharedMapping, Vec<Range<u64>>)],
        runs: &[Range<u64>],
    ) -> Result<(), GpuError> {
        for (src, part) in parts.iter().filter(|(_, p)| !p.is_empty()) {
            self.gpu.upload(src, self.window.start, part)?;
        }
        if let Some(d) = &self.damage {
            lock(d).add_runs(runs);
        }
        Ok(())
    }

    /// The rectangles uploaded since the last call (`None` for a byte
    /// resource), leaving none.
    pub fn take_damage(&self) -> Option<ImageDamage> {
        self.damage.as_ref().map(|d| lock(d).take())
    }
}
