//! Independent reference model of the Linux vmwgfx BO dirty tracker.
//!
//! Written only from `shared/research/vmwgfx-dirty-spec.md` (the behavioural
//! spec), never from cohmem's daemon, so that it can serve as an oracle for
//! differential tests:
//!
//! * [`trace`]: a line-oriented text trace format ([`trace::Event`],
//!   [`trace::parse_trace`]); documented in `tools/TRACE_FORMAT.md`.
//! * [`model`]: the sequential model ([`model::Model`], [`model::run_trace`])
//!   with explicit per-mapping PTE state (present / writable / dirty), the
//!   tracker bitmap and envelope, both methods and their switches.
//!
//! The model is sequential and does not prefault; see `TRACE_FORMAT.md` for
//! what it does and does not cover.

pub mod model;
pub mod replay;
pub mod trace;
