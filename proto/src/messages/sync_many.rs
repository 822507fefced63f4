//! SYNC_MANY's per-BO outcome (README §4.2): one frame's submission syncs
//! every BO it references, as a vmwgfx command submission validates every
//! buffer it names; each BO gets its own result, and one BO's failure does
//! not stop the others.

use super::types::ErrorCode;
use crate::codec::{DecodeError, Reader, Writer};

/// What SYNC_MANY did for one BO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BoSyncOutcome {
    /// The BO handle, as in the request.
    pub bo: u32,
    /// 0 when the BO was synced, else the [`ErrorCode`] wire value of why
    /// not (its pages stay dirty: nothing is lost).
    pub status: u16,
    /// The [`Mechanism`](crate::Mechanism) wire value that found the pages.
    pub mechanism: u16,
    /// Pages uploaded.
    pub pages: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Time the daemon spent on this BO, nanoseconds.
    pub duration_ns: u64,
}

impl BoSyncOutcome {
    /// The error, if this BO was not synced.
    pub fn error(&self) -> Option<ErrorCode> {
        (self.status != 0).then(|| ErrorCode::from_wire(self.status))
    }

    pub(super) fn write(&self, w: &mut Writer<'_>) {
        w.u32(self.bo);
        w.u16(self.status);
        w.u16(self.mechanism);
        w.u64(self.pages);
        w.u64(self.bytes);
        w.u64(self.duration_ns);
    }

    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        // Struct fields are evaluated in the order written: this is the wire order.
        Ok(Self {
            bo: r.u32("bo")?,
            status: r.u16("status")?,
            mechanism: r.u16("mechanism")?,
            pages: r.u64("pages")?,
            bytes: r.u64("bytes")?,
            duration_ns: r.u64("duration_ns")?,
        })
    }
}
