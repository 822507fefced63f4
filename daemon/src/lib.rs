//! cohmemd: coherent GPU buffers without driver support.
//!
//! Clients map BOs (sealed memfds) and write to them like ordinary memory;
//! the daemon finds out which pages were written and copies only those into
//! the GPU resource. The modules form the layers of DESIGN.md §4; each
//! names only modules of its own layer or of the layers listed before it
//! (`tests/tests/layering.rs` checks it, and that the graph is acyclic).
//! `docs/ARCHITECTURE.md` follows one SYNC through them.
//!
//! | layer | module | role | seed / vmwgfx behaviour |
//! | --- | --- | --- | --- |
//! | base | [`locking`], [`ratelimit`], [`latency`], [`stats`], [`quota`], [`config_file`] | poison-tolerant locks, rate-limited logs, histograms, counters, per-user quotas, `cohmemd.toml` | issues 7, 15; DESIGN.md §5.4 |
//! | core | [`dirty`] | bitmap + envelope | seed 001, spec §1, §4.6 |
//! | core | [`policy`] | method state machine, change count, dense-write decisions | spec §2–§3 |
//! | core | [`damage`], `display::pacing` | damage rectangles under a cap; commit pacing | spec §4.6 (dirty boxes) |
//! | resources | [`gpu`], [`resource`] | GPU backends; byte and image resources owning their damage | `dirty_range_add` / `dirty_sync` |
//! | tracking | [`tracker`] | write-tracking mechanisms | seed 001 (protect / clean-and-record) |
//! | tracking | [`mm`] | per-process subscriptions with address → view map | seed 003 |
//! | tracking | [`bo`] | BO store, views, tracking state | vmwgfx BOs with resources |
//! | tracking | [`faults`] | uffd-sync fault thread: record + unprotect under the BO lock | vmwgfx `vm_mkwrite`, spec 17c |
//! | tracking | [`switch`], [`viewcheck`] | mechanism switch without losing writes; MAP's view proof | seed 004; issue 15 |
//! | engine | [`sync`] | scan, transfer, readback, snapshot → upload, seqcount + exclusive fallback | seed 000, spec §3–§4, DESIGN.md §5.1 |
//! | engine | [`bypass`], [`display`], [`config`] | writes through BO fds; scanout with damage commits; configuration | DESIGN.md §5.5, §8 |
//! | server | [`server`], [`connection`], [`listener`] | shared state, sessions and their request handlers, the socket | — |
//! | server | [`background`], [`fdstore`], [`metrics`], [`cli`] | background upload, systemd fd store, metrics endpoint, command line | issue 6, DESIGN.md §5.5 |

pub mod background;
pub mod bo;
pub mod bypass;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod connection;
pub mod damage;
pub mod dirty;
pub mod display;
pub mod faults;
pub mod fdstore;
pub mod gpu;
pub mod latency;
pub mod listener;
pub mod locking;
pub mod metrics;
pub mod mm;
pub mod policy;
pub mod quota;
pub mod ratelimit;
pub mod resource;
pub mod server;
pub mod stats;
pub mod switch;
pub mod sync;
pub mod tracker;
pub mod viewcheck;

pub use config::DaemonConfig;
pub use listener::{Server, ServerError};
pub use server::Daemon;
