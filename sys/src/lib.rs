//! Safe wrappers around the kernel interfaces cohmem is built on.
//!
//! One module per interface, in the style of crosvm and Firecracker: the rest
//! of the project never issues a raw syscall, and every `unsafe` block here
//! carries a `// SAFETY:` comment.
//!
//! | module | interface |
//! | --- | --- |
//! | [`memfd`] | `memfd_create`, seals, `fstat` identity |
//! | [`inotify`] | `IN_MODIFY` on memfds: `pwrite`, `fallocate`, `MADV_REMOVE` that no fault reports |
//! | [`mapping`] | `mmap(MAP_SHARED)` of memory other processes write, accessed by copies only |
//! | [`uffd`] | userfaultfd: `UFFDIO_API`, `UFFDIO_REGISTER`, `UFFDIO_WRITEPROTECT`, fault messages |
//! | [`pagemap`] | `/proc/<pid>/pagemap`: `PAGEMAP_SCAN` and 64-bit entries |
//! | [`procmaps`] | `/proc/<pid>/maps`: `PROCMAP_QUERY` (one VMA per call) |
//! | [`smaps`] | `/proc/<pid>/smaps`: what a VMA maps and its `VmFlags` (MAP's view checks) |
//! | [`softdirty`] | `/proc/<pid>/clear_refs` and pagemap bit 55 |
//! | [`seqpacket`] | blocking `SOCK_SEQPACKET` Unix sockets with `SCM_RIGHTS` |
//! | [`pidfd`] | process fds (`SO_PEERPIDFD`, `pidfd_open`): proof that a peer exited |
//! | [`fork`] | `pthread_atfork`: is this a forked child of an object's maker? |
//! | [`signals`] | threads spawned with every signal blocked |
//! | [`drm`] | DRM nodes (drm-rs): driver and caps, dumb buffers, PRIME |
//! | [`kms`] | modesetting (drm-rs): DRM master, outputs, framebuffers, atomic or legacy scanout, damage (`FB_DAMAGE_CLIPS`, DIRTYFB) |
//! | `gbm` | libgbm (feature `gbm`): linear buffers, `gbm_bo_map`, dma-buf export |
//! | [`probe`] | real probes of what this kernel offers |
//! | [`sdnotify`] | the service manager's notify socket, fd store and passed fds |

pub mod drm;
pub mod error;
pub mod fork;
#[cfg(feature = "gbm")]
pub mod gbm;
pub mod inotify;
pub mod kms;
pub mod mapping;
pub mod memfd;
pub mod pagemap;
pub mod pidfd;
pub mod probe;
pub mod procmaps;
pub mod sdnotify;
pub mod seqpacket;
pub mod signals;
pub mod smaps;
pub mod softdirty;
pub mod uffd;

pub use error::{Result, SysError};

/// The system page size in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

/// Kernel release string (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
