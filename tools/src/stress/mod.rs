//! `cohmem-stress`: N client processes × M BOs each, random write patterns
//! from several threads, a sync after every round and a byte-for-byte check
//! of the GPU copy after every sync; optionally with chaos (SIGKILLed
//! clients and daemon restarts on the same socket).
//!
//! * [`parent`]: the orchestrating process (daemon, workers, chaos, tally);
//! * [`worker`]: one client process (the hidden `worker` subcommand);
//! * [`report`]: the line protocol between the two;
//! * [`patterns`]: the write patterns and their split among threads;
//! * [`daemon`]: a daemon that can be restarted on the same socket path.

pub mod daemon;
pub mod parent;
pub mod patterns;
pub mod report;
pub mod worker;

pub use parent::{run_stress, Outcome, StressConfig};
pub use report::Tally;
pub use worker::{worker_main, WorkerConfig};
