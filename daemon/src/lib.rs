//! cohmemd: coherent GPU buffers without driver support.
//!
//! Clients map BOs (sealed memfds) and write to them like ordinary memory;
//! the daemon finds out which pages were written and copies only those into
//! the GPU resource. The module map follows DESIGN.md §3:
//!
//! | module | role | seed / vmwgfx behaviour |
//! | --- | --- | --- |
//! | [`server`], [`connection`] | socket, sessions, request dispatch | — |
//! | [`bo`] | BO store, views | vmwgfx BOs with resources |
//! | [`mm`] | per-process subscriptions with address → view map | seed 003 |
//! | [`tracker`] | write-tracking mechanisms | seed 001 (protect / clean-and-record) |
//! | [`faults`] | uffd-sync fault thread: record + unprotect under the BO lock | vmwgfx `vm_mkwrite`, spec 17c |
//! | [`dirty`] | bitmap + envelope | seed 001, spec §1, §4.6 |
//! | [`policy`] | method, change count, users | vmwgfx spec §2–§3 |
//! | [`sync`] | scan, transfer, add/release, pre_unmap → upload | spec §3–§4, DESIGN.md §5.1 |
//! | [`gpu`] | GPU backends | — |
//! | [`background`] | background upload while clients write | issue 6 |
//! | [`bypass`] | writes through a BO's fd (inotify `IN_MODIFY`) mark it dirty | DESIGN.md §5.5 |
//! | [`fdstore`] | BOs kept across restarts in systemd's fd store | DESIGN.md §5.5 |
//! | [`ratelimit`] | logs a client can trigger, rate-limited per kind and scope | issue 15 |
//! | [`quota`] | per-user quotas, uid allow-list | DESIGN.md §5.4 |
//! | [`config_file`] | `cohmemd.toml`: every option as a key | issue 7 |

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
