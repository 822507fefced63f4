//! The mechanisms that track nothing: `full` (every sync uploads the whole
//! BO: what a user without tracking does) and `explicit` (the client reports
//! its damage, like Wayland's `damage_buffer`).

use std::ops::Range;

use cohmem_proto::Mechanism;

use super::{TrackError, WriteTracker};

/// `full`: no tracking at all; every scan finds the whole BO written, so
/// every sync uploads everything (what a user without tracking does).
pub struct FullTracker;

impl WriteTracker for FullTracker {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Full
    }

    fn exact(&self) -> bool {
        // Never under-reports; trivially "exact" in the no-lost-write sense.
        true
    }

    fn attach_view(&self, _range: Range<u64>) -> Result<(), TrackError> {
        Ok(())
    }

    fn harvest(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        out.push(range);
        Ok(())
    }

    fn peek(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        out.push(range);
        Ok(())
    }

    fn protect(&self, _range: Range<u64>) -> Result<(), TrackError> {
        Ok(())
    }

    fn whole_bo(&self) -> bool {
        true
    }
}

/// `explicit`: no tracking; the client reports its damage with DAMAGE
/// requests (like Wayland damage), which go straight into the bitmap.
pub struct ExplicitTracker;

impl WriteTracker for ExplicitTracker {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Explicit
    }

    fn exact(&self) -> bool {
        // Exactly as exact as the client's reports.
        false
    }

    fn attach_view(&self, _range: Range<u64>) -> Result<(), TrackError> {
        Ok(())
    }

    fn harvest(&self, _range: Range<u64>, _out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        Ok(())
    }

    fn peek(&self, _range: Range<u64>, _out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        Ok(())
    }

    fn protect(&self, _range: Range<u64>) -> Result<(), TrackError> {
        Ok(())
    }
}
