//! Tracker operations that only touch the dirty bitmap, no upload: vmwgfx
//! `clear_res` and `dirty_clear` (spec §4.7–§4.8), the `explicit`
//! mechanism's client-reported damage (one range or many), and the dirty state as vmwgfx would
//! hold it (for the comparison with vmwgfx).

use cohmem_proto::limits::MAX_REPORTED_RUNS;
use cohmem_proto::{ByteRange, DirtyStateReport};

use super::report::to_runs;
use super::{SyncEngine, SyncError};
use crate::bo::Bo;

impl SyncEngine<'_> {
    /// vmwgfx `clear_res`.
    pub fn clear_resource(&self, bo: &Bo, index: u32) -> Result<(), SyncError> {
        let mut st = bo.state();
        let views = bo.views();
        self.stop_comparing(bo, &mut st, &views);
        self.observe(bo, &mut st, &views);
        let res = Self::resource(&st, index)?;
        if let Some(t) = st.tracker.as_mut() {
            let ps = bo.page_size;
            t.dirty.clear_window(res.window.start / ps..res.window.end / ps);
        }
        self.protect_clean_writable(bo, &mut st);
        Ok(())
    }

    /// vmwgfx `dirty_clear`.
    pub fn clear_all(&self, bo: &Bo) {
        let mut st = bo.state();
        let views = bo.views();
        self.stop_comparing(bo, &mut st, &views);
        self.observe(bo, &mut st, &views);
        if let Some(t) = st.tracker.as_mut() {
            let n = t.dirty.pages();
            t.dirty.clear_window(0..n);
        }
        self.protect_clean_writable(bo, &mut st);
    }

    /// `explicit`: records client-reported damage (bytes `offset..offset+len`).
    pub fn damage(&self, bo: &Bo, offset: u64, len: u64) -> Result<(), SyncError> {
        self.damage_ranges(bo, &[ByteRange { offset, len }])
    }

    /// Records many client-reported byte ranges at once (DAMAGE_RANGES):
    /// every range is checked first, so a bad one records nothing; then all
    /// are recorded under one state lock.
    pub fn damage_ranges(&self, bo: &Bo, ranges: &[ByteRange]) -> Result<(), SyncError> {
        let pages = ranges
            .iter()
            .map(|&ByteRange { offset, len }| {
                let end = offset
                    .checked_add(len)
                    .filter(|&e| len > 0 && e <= bo.size)
                    .ok_or_else(|| {
                        SyncError::BadWindow(format!(
                            "damage {offset}+{len} is not inside the BO's {} bytes",
                            bo.size
                        ))
                    })?;
                Ok(offset / bo.page_size..end.div_ceil(bo.page_size))
            })
            .collect::<Result<Vec<_>, SyncError>>()?;
        let mut st = bo.state();
        for range in pages {
            st.record_written(range);
        }
        Ok(())
    }

    /// The tracker as vmwgfx would hold it now.
    pub fn dirty_state(&self, bo: &Bo) -> DirtyStateReport {
        let mut st = bo.state();
        let views = bo.views();
        self.observe(bo, &mut st, &views);
        let Some(t) = st.tracker.as_ref() else {
            return DirtyStateReport {
                pages: bo.pages(),
                start: bo.pages(),
                ..DirtyStateReport::default()
            };
        };
        let runs = t.dirty.runs();
        let (start, end) = t.dirty.envelope().map_or((t.dirty.pages(), 0), |e| (e.start, e.end));
        DirtyStateReport {
            method: t.method as u16,
            change_count: t.change_count,
            users: t.users,
            pages: t.dirty.pages(),
            start,
            end,
            dirty_pages: t.dirty.dirty_pages(),
            truncated: runs.len() > MAX_REPORTED_RUNS,
            runs: to_runs(&runs),
        }
    }
}
