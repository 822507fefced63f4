//! Helpers shared by cohmem's tools and tests: a private daemon on a
//! temporary socket, GPU-copy verification (byte and image BOs), image BOs as
//! PNG and the image demo, the display output (`cohmemctl show`), and a small deterministic RNG.

pub mod bench;
pub mod daemon;
pub mod demo;
pub mod display;
pub mod gpu_check;
pub mod image;
pub mod image_demo;
pub mod rng;
pub mod stress;
pub mod verify;
pub mod vmwgfx;
pub mod writer;

pub use daemon::DaemonProcess;
pub use rng::SplitMix64;
pub use verify::{compare_pages, verify_gpu_copy, Mismatch};
