//! The report bodies of the replies that describe one BO: SYNC_DONE
//! ([`SyncReport`], also the TRANSFER reply), DIRTY_STATE
//! ([`DirtyStateReport`]), SNAPSHOT ([`SnapshotReport`]) and SCANNED
//! ([`ScanReport`]), with the byte layout of each body (README §4.2).

use crate::codec::{check_limit, DecodeError, Reader, Writer};
use crate::image::{ImageDamage, ImageInfo};
use crate::limits::MAX_REPORTED_RUNS;

/// A run of consecutive BO pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First page, counted from the start of the BO.
    pub first_page: u32,
    /// Number of pages (at least 1).
    pub pages: u32,
}

/// What one SYNC did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncReport {
    /// Pages uploaded.
    pub pages: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Number of runs uploaded (may exceed `runs.len()`).
    pub run_count: u32,
    /// Mechanism that found the pages.
    pub mechanism: u16,
    /// vmwgfx method of the BO after the sync ([`Method`](crate::Method) wire value).
    pub method: u16,
    /// True when `runs` lists fewer runs than `run_count` (or none was asked for).
    pub runs_truncated: bool,
    /// Time the daemon spent, nanoseconds.
    pub duration_ns: u64,
    /// Views scanned.
    pub views_scanned: u32,
    /// The uploaded runs, ascending, at most [`MAX_REPORTED_RUNS`].
    pub runs: Vec<Run>,
    /// For an image BO: the rectangles of pixels that changed on its GPU
    /// copy; `None` for a byte BO.
    pub damage: Option<ImageDamage>,
}

/// Reply to DIRTY_STATE: the BO's tracker as vmwgfx would hold it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirtyStateReport {
    /// [`Method`](crate::Method) wire value (0: no tracker).
    pub method: u16,
    /// Consecutive scans that asked for a method switch.
    pub change_count: u32,
    /// Users of the tracker (resources bound to the BO).
    pub users: u32,
    /// Pages of the BO (N).
    pub pages: u64,
    /// Envelope start (N when empty).
    pub start: u64,
    /// Envelope end (0 when empty).
    pub end: u64,
    /// Pages whose bit is set.
    pub dirty_pages: u64,
    /// True when `runs` is not the complete list of set bits.
    pub truncated: bool,
    /// Maximal runs of set bits, ascending, at most [`MAX_REPORTED_RUNS`].
    pub runs: Vec<Run>,
}

/// Reply to SNAPSHOT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotReport {
    /// Bytes in the snapshot (the BO's size).
    pub size: u64,
    /// True when no write can have changed the BO while it was copied.
    pub exact: bool,
    /// Copy attempts (writers that cannot be blocked are checked afterwards,
    /// and the copy is retried if they wrote).
    pub attempts: u32,
    /// Views whose writers were blocked (uffd-sync).
    pub blocked_views: u32,
    /// Views whose writers could not be blocked, only checked (uffd-async),
    /// or not even checked (full, explicit: then `exact` is false).
    pub unblocked_views: u32,
    /// The layout of an image BO (so a snapshot can be saved as a picture),
    /// `None` for a byte BO.
    pub image: Option<ImageInfo>,
}

/// Reply to SCAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanReport {
    /// [`Method`](crate::Method) wire value after the scan.
    pub method: u16,
    /// [`Method`](crate::Method) wire value switched to by this scan, 0 if none.
    pub switched_to: u16,
    /// Change count after the scan.
    pub change_count: u32,
    /// PTEs cleaned (PAGETABLE) or re-protected (MKWRITE), per mapping.
    pub num_marked: u64,
}

impl ScanReport {
    /// The vmwgfx method after the scan, as the enum (`None` for a value
    /// this library does not know).
    pub fn method(&self) -> Option<crate::Method> {
        crate::Method::from_wire(self.method).ok()
    }

    /// The method this scan switched to, if it switched.
    pub fn switched_to(&self) -> Option<crate::Method> {
        match self.switched_to {
            0 => None,
            v => crate::Method::from_wire(v).ok(),
        }
    }
}

/// Writes a run list: `u16 n`, then `n` × (`u32 first_page, u32 pages`).
/// The caller has already cut `runs` to [`MAX_REPORTED_RUNS`].
fn write_runs(w: &mut Writer<'_>, runs: &[Run]) {
    w.u16(runs.len() as u16);
    for run in runs {
        w.u32(run.first_page);
        w.u32(run.pages);
    }
}

/// Reads a run list written by [`write_runs`]; `field` names its count in
/// errors. The count is checked against the limit and the bytes left before
/// anything is allocated.
fn read_runs(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<Run>, DecodeError> {
    let n = r.count_u16(field, MAX_REPORTED_RUNS)?;
    check_limit(field, n * 8, r.remaining())?;
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n {
        runs.push(Run {
            first_page: r.u32("run.first_page")?,
            pages: r.u32("run.pages")?,
        });
    }
    Ok(runs)
}

impl SyncReport {
    /// Writes the SYNC_DONE body; runs beyond [`MAX_REPORTED_RUNS`] are cut
    /// and flagged as truncated.
    pub(super) fn write(&self, w: &mut Writer<'_>) {
        let n = self.runs.len().min(MAX_REPORTED_RUNS);
        let truncated = self.runs_truncated || n < self.runs.len();
        w.u64(self.pages);
        w.u64(self.bytes);
        w.u32(self.run_count);
        w.u16(self.mechanism);
        w.u16(self.method);
        w.u16(u16::from(truncated));
        w.u64(self.duration_ns);
        w.u32(self.views_scanned);
        write_runs(w, &self.runs[..n]);
        ImageDamage::write_optional(&self.damage, w);
    }

    /// Reads the SYNC_DONE body.
    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        // Struct fields are evaluated in the order written: this is the wire order.
        Ok(Self {
            pages: r.u64("pages")?,
            bytes: r.u64("bytes")?,
            run_count: r.u32("run_count")?,
            mechanism: r.u16("mechanism")?,
            method: r.u16("method")?,
            runs_truncated: r.u16("flags")? & 1 != 0,
            duration_ns: r.u64("duration_ns")?,
            views_scanned: r.u32("views_scanned")?,
            runs: read_runs(r, "reported runs")?,
            damage: ImageDamage::read_optional(r)?,
        })
    }
}

impl DirtyStateReport {
    /// Writes the DIRTY_STATE body; runs beyond [`MAX_REPORTED_RUNS`] are
    /// cut and flagged as truncated.
    pub(super) fn write(&self, w: &mut Writer<'_>) {
        let n = self.runs.len().min(MAX_REPORTED_RUNS);
        let truncated = self.truncated || n < self.runs.len();
        w.u16(self.method);
        w.u32(self.change_count);
        w.u32(self.users);
        w.u64(self.pages);
        w.u64(self.start);
        w.u64(self.end);
        w.u64(self.dirty_pages);
        w.u8(u8::from(truncated));
        write_runs(w, &self.runs[..n]);
    }

    /// Reads the DIRTY_STATE body.
    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        // Struct fields are evaluated in the order written: this is the wire order.
        Ok(Self {
            method: r.u16("method")?,
            change_count: r.u32("change_count")?,
            users: r.u32("users")?,
            pages: r.u64("pages")?,
            start: r.u64("start")?,
            end: r.u64("end")?,
            dirty_pages: r.u64("dirty_pages")?,
            truncated: r.u8("truncated")? != 0,
            runs: read_runs(r, "dirty runs")?,
        })
    }
}

impl SnapshotReport {
    /// Writes the SNAPSHOT body.
    pub(super) fn write(&self, w: &mut Writer<'_>) {
        w.u64(self.size);
        w.u8(u8::from(self.exact));
        w.u32(self.attempts);
        w.u32(self.blocked_views);
        w.u32(self.unblocked_views);
        ImageInfo::write_optional(&self.image, w);
    }

    /// Reads the SNAPSHOT body.
    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            size: r.u64("size")?,
            exact: r.u8("exact")? != 0,
            attempts: r.u32("attempts")?,
            blocked_views: r.u32("blocked_views")?,
            unblocked_views: r.u32("unblocked_views")?,
            image: ImageInfo::read_optional(r)?,
        })
    }
}

impl ScanReport {
    /// Writes the SCANNED body.
    pub(super) fn write(&self, w: &mut Writer<'_>) {
        w.u16(self.method);
        w.u16(self.switched_to);
        w.u32(self.change_count);
        w.u64(self.num_marked);
    }

    /// Reads the SCANNED body.
    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            method: r.u16("method")?,
            switched_to: r.u16("switched_to")?,
            change_count: r.u32("change_count")?,
            num_marked: r.u64("num_marked")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{DecodeError, Reply, SyncReport};

    #[test]
    fn oversized_run_count_rejected_before_allocation() {
        let mut f = Reply::SyncDone(SyncReport::default()).encode(1);
        let n = f.len();
        f[n - 2..].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            Reply::decode(&f),
            Err(DecodeError::OverLimit {
                field: "reported runs",
                ..
            })
        ));
    }
}

#[cfg(test)]
mod scan_report_tests {
    use super::ScanReport;
    use crate::Method;

    #[test]
    fn methods_read_as_the_enum() {
        let r = ScanReport {
            method: 2,
            switched_to: 0,
            change_count: 1,
            num_marked: 3,
        };
        assert_eq!((r.method(), r.switched_to()), (Some(Method::MkWrite), None));
        let r = ScanReport {
            method: 1,
            switched_to: 1,
            ..r
        };
        assert_eq!(
            (r.method(), r.switched_to()),
            (Some(Method::PageTable), Some(Method::PageTable))
        );
        let r = ScanReport { method: 9, ..r };
        assert_eq!(r.method(), None, "an unknown wire value is not a method");
    }
}
