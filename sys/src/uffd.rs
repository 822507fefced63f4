//! userfaultfd: write-protect registration, protection changes, fault messages.
//!
//! The client creates the uffd on its own address space (only the owner of an
//! mm can register ranges in it), registers each BO mapping in WP mode and
//! passes the uffd to the daemon, which then protects and unprotects ranges of
//! the client's mapping through it (DESIGN.md §2; seed 003's per-mm
//! registration). With `UFFD_FEATURE_WP_ASYNC` the kernel resolves
//! write-protect faults itself and only marks the page written, which
//! `PAGEMAP_SCAN` then harvests ([`crate::pagemap`]); without it, faults arrive
//! here as messages ([`Userfaultfd::read_faults`]).

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use linux_raw_sys::general::{uffdio_api, uffdio_range, uffdio_register, uffdio_writeprotect};
use nix::errno::Errno;

use crate::error::{OsContext, Result, SysError};

/// `UFFD_FEATURE_*` bits that cohmem uses.
pub mod features {
    use linux_raw_sys::general as g;
    /// Write-protect faults on shmem (memfd) mappings.
    pub const WP_HUGETLBFS_SHMEM: u64 = g::UFFD_FEATURE_WP_HUGETLBFS_SHMEM as u64;
    /// Protecting unpopulated pages installs markers (no page left unprotected).
    pub const WP_UNPOPULATED: u64 = g::UFFD_FEATURE_WP_UNPOPULATED as u64;
    /// The kernel resolves WP faults itself and only records "written".
    pub const WP_ASYNC: u64 = g::UFFD_FEATURE_WP_ASYNC as u64;
    /// Messages for non-cooperative changes of registered ranges: munmap
    /// (and an mmap over them), mremap, and madvise(MADV_DONTNEED,
    /// MADV_REMOVE). The changing thread waits until the message is read.
    pub const MAP_EVENTS: u64 =
        (g::UFFD_FEATURE_EVENT_UNMAP | g::UFFD_FEATURE_EVENT_REMAP | g::UFFD_FEATURE_EVENT_REMOVE) as u64;
    /// Every feature whose messages make a thread of the client wait until
    /// they are read (the mapping changes, and fork).
    pub const WAITING_EVENTS: u64 = MAP_EVENTS | g::UFFD_FEATURE_EVENT_FORK as u64;

    /// Names of the known feature bits, for `cohmemctl caps`.
    pub fn names(bits: u64) -> Vec<&'static str> {
        const NAMES: [(u32, &str); 17] = [
            (g::UFFD_FEATURE_PAGEFAULT_FLAG_WP, "PAGEFAULT_FLAG_WP"),
            (g::UFFD_FEATURE_EVENT_FORK, "EVENT_FORK"),
            (g::UFFD_FEATURE_EVENT_REMAP, "EVENT_REMAP"),
            (g::UFFD_FEATURE_EVENT_REMOVE, "EVENT_REMOVE"),
            (g::UFFD_FEATURE_MISSING_HUGETLBFS, "MISSING_HUGETLBFS"),
            (g::UFFD_FEATURE_MISSING_SHMEM, "MISSING_SHMEM"),
            (g::UFFD_FEATURE_EVENT_UNMAP, "EVENT_UNMAP"),
            (g::UFFD_FEATURE_SIGBUS, "SIGBUS"),
            (g::UFFD_FEATURE_THREAD_ID, "THREAD_ID"),
            (g::UFFD_FEATURE_MINOR_HUGETLBFS, "MINOR_HUGETLBFS"),
            (g::UFFD_FEATURE_MINOR_SHMEM, "MINOR_SHMEM"),
            (g::UFFD_FEATURE_EXACT_ADDRESS, "EXACT_ADDRESS"),
            (g::UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "WP_HUGETLBFS_SHMEM"),
            (g::UFFD_FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED"),
            (g::UFFD_FEATURE_POISON, "POISON"),
            (g::UFFD_FEATURE_WP_ASYNC, "WP_ASYNC"),
            (g::UFFD_FEATURE_MOVE, "MOVE"),
        ];
        NAMES
            .iter()
            .filter(|(bit, _)| bits & u64::from(*bit) != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

nix::ioctl_readwrite!(
    /// `UFFDIO_API`: the feature handshake.
    ioctl_api, 0xAA, 0x3F, uffdio_api
);
nix::ioctl_readwrite!(
    /// `UFFDIO_REGISTER`: register a range (write-protect mode).
    ioctl_register, 0xAA, 0x00, uffdio_register
);
nix::ioctl_read!(
    /// `UFFDIO_UNREGISTER`: unregister a range.
    ioctl_unregister, 0xAA, 0x01, uffdio_range
);
nix::ioctl_readwrite!(
    /// `UFFDIO_WRITEPROTECT`: protect or unprotect a range.
    ioctl_writeprotect, 0xAA, 0x06, uffdio_writeprotect
);
nix::ioctl_read!(
    /// `UFFDIO_WAKE`: wake threads waiting on a range.
    ioctl_wake, 0xAA, 0x02, uffdio_range
);

const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
const UFFD_MSG_SIZE: usize = 32;

/// How a uffd may be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdFlavor {
    /// `userfaultfd(UFFD_USER_MODE_ONLY)`: allowed unprivileged, but in sync
    /// mode kernel-mode writes into protected pages fail with EFAULT.
    UserModeOnly,
    /// Handles kernel-mode faults too: needs CAP_SYS_PTRACE,
    /// `vm.unprivileged_userfaultfd=1` or access to `/dev/userfaultfd`.
    AllFaults,
}

/// A write-protect fault message (sync mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WpFault {
    /// Faulting address (page aligned unless EXACT_ADDRESS was requested).
    pub address: u64,
    /// `UFFD_PAGEFAULT_FLAG_*` bits.
    pub flags: u64,
}

/// A change of registered ranges, from a non-cooperative event message
/// ([`features::MAP_EVENTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapEvent {
    /// `munmap` (or an `mmap` over the range) removed `start..end`.
    Unmap {
        /// First address.
        start: u64,
        /// End address (exclusive).
        end: u64,
    },
    /// `mremap` moved `from..from + len` to `to`.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length.
        len: u64,
    },
    /// `madvise(MADV_DONTNEED / MADV_REMOVE / MADV_FREE)` on `start..end`.
    Remove {
        /// First address.
        start: u64,
        /// End address (exclusive).
        end: u64,
    },
}

impl MapEvent {
    /// The old address range the change touched.
    pub fn range(&self) -> std::ops::Range<u64> {
        match *self {
            MapEvent::Unmap { start, end } | MapEvent::Remove { start, end } => start..end,
            MapEvent::Remap { from, len, .. } => from..from.saturating_add(len),
        }
    }
}

/// An owned userfaultfd (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
}

impl Userfaultfd {
    /// Creates an uninitialised uffd of the given flavor. For `AllFaults` the
    /// syscall is tried first, then `/dev/userfaultfd`.
    pub fn create(flavor: UffdFlavor) -> Result<Self> {
        let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        if flavor == UffdFlavor::UserModeOnly {
            flags |= linux_raw_sys::general::UFFD_USER_MODE_ONLY as i32;
        }
        // SAFETY: userfaultfd takes a flags word and returns a new fd or -1;
        // no pointers are involved.
        let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if ret >= 0 {
            // SAFETY: the kernel just returned this fd to us; nobody else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(ret as i32) };
            return Ok(Self { fd });
        }
        let errno = Errno::last();
        if flavor == UffdFlavor::AllFaults && errno == Errno::EPERM {
            return Self::create_via_device(flags);
        }
        Err(SysError::os("userfaultfd", errno))
    }

    fn create_via_device(flags: i32) -> Result<Self> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/userfaultfd")
            .map_err(|e| SysError::os("open /dev/userfaultfd", crate::pagemap::errno_of(&e)))?;
        // SAFETY: USERFAULTFD_IOC_NEW = _IO(0xAA, 0) takes the uffd flags as a
        // plain integer argument, not a pointer.
        let ret = unsafe { libc::ioctl(dev.as_raw_fd(), nix::request_code_none!(0xAA, 0x00), flags) };
        if ret < 0 {
            return Err(SysError::os("USERFAULTFD_IOC_NEW", Errno::last()));
        }
        // SAFETY: fresh fd returned by the kernel.
        let fd = unsafe { OwnedFd::from_raw_fd(ret) };
        Ok(Self { fd })
    }

    /// The features this kernel offers (a throw-away uffd's UFFDIO_API with
    /// no features requested reports all of them).
    pub fn supported_features(flavor: UffdFlavor) -> Result<u64> {
        let probe = Self::create(flavor)?;
        probe.api(0)
    }

    /// Creates a uffd and enables `wanted ∩ supported` features; fails unless
    /// all of `required` are there. Returns the uffd and the features enabled.
    pub fn open(flavor: UffdFlavor, wanted: u64, required: u64) -> Result<(Self, u64)> {
        let supported = Self::supported_features(flavor)?;
        if supported & required != required {
            return Err(SysError::Invalid(format!(
                "kernel lacks userfaultfd features {:?}",
                features::names(required & !supported)
            )));
        }
        let uffd = Self::create(flavor)?;
        let enabled = uffd.api(wanted & supported)?;
        Ok((uffd, enabled))
    }

    /// UFFDIO_API handshake; returns the features the kernel reports.
    pub fn api(&self, features: u64) -> Result<u64> {
        let mut arg = uffdio_api {
            api: u64::from(linux_raw_sys::general::UFFD_API),
            features,
            ioctls: 0,
        };
        // SAFETY: `arg` is a valid uffdio_api that outlives the call.
        unsafe { ioctl_api(self.fd.as_raw_fd(), &mut arg) }.op("UFFDIO_API")?;
        Ok(arg.features)
    }

    /// Adopts a uffd received from a client, checking that it is one.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| SysError::Invalid(format!("cannot inspect the passed fd: {e}")))?;
        if link.as_os_str() != "anon_inode:[userfaultfd]" {
            return Err(SysError::Invalid(format!(
                "passed fd is {}, not a userfaultfd",
                link.display()
            )));
        }
        Ok(Self { fd })
    }

    /// Registers `[addr, addr+len)` in WP mode. The range is in the uffd's own
    /// address space (its creator's mm), which need not be the caller's: the
    /// daemon registers client ranges when it switches mechanisms.
    pub fn register_wp(&self, addr: u64, len: u64) -> Result<()> {
        let mut arg = uffdio_register {
            range: uffdio_range { start: addr, len },
            mode: u64::from(linux_raw_sys::general::UFFDIO_REGISTER_MODE_WP),
            ioctls: 0,
        };
        // SAFETY: `arg` is a valid uffdio_register that outlives the call; the
        // kernel validates the range against the uffd's own mm.
        unsafe { ioctl_register(self.fd.as_raw_fd(), &mut arg) }.op("UFFDIO_REGISTER")?;
        Ok(())
    }

    /// Unregisters a range.
    pub fn unregister(&self, addr: u64, len: u64) -> Result<()> {
        let mut arg = uffdio_range { start: addr, len };
        // SAFETY: `arg` is a valid uffdio_range; the kernel only reads it.
        unsafe { ioctl_unregister(self.fd.as_raw_fd(), &mut arg) }.op("UFFDIO_UNREGISTER")?;
        Ok(())
    }

    /// Write-protects (`protect = true`) or unprotects and wakes waiters
    /// (`protect = false`) a registered range of the uffd's address space.
    pub fn write_protect(&self, addr: u64, len: u64, protect: bool) -> Result<()> {
        let mut arg = uffdio_writeprotect {
            range: uffdio_range { start: addr, len },
            mode: if protect { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
        };
        // SAFETY: `arg` is a valid uffdio_writeprotect that outlives the call.
        unsafe { ioctl_writeprotect(self.fd.as_raw_fd(), &mut arg) }.op("UFFDIO_WRITEPROTECT")?;
        Ok(())
    }

    /// Wakes threads waiting in a fault on `[addr, addr+len)` without
    /// changing any protection (works on unregistered ranges too).
    pub fn wake(&self, addr: u64, len: u64) -> Result<()> {
        let mut arg = uffdio_range { start: addr, len };
        // SAFETY: `arg` is a valid uffdio_range; the kernel only reads it.
        unsafe { ioctl_wake(self.fd.as_raw_fd(), &mut arg) }.op("UFFDIO_WAKE")?;
        Ok(())
    }

    /// Reads pending fault messages without blocking; appends WP faults to
    /// `out` and returns how many messages were read (0 when none is pending).
    pub fn read_faults(&self, out: &mut Vec<WpFault>) -> Result<usize> {
        self.read_messages(|event, word| {
            if event == linux_raw_sys::general::UFFD_EVENT_PAGEFAULT {
                out.push(WpFault {
                    flags: word(8),
                    address: word(16),
                });
            }
        })
    }

    /// Reads pending messages without blocking; appends the mapping changes
    /// among them ([`features::MAP_EVENTS`]) to `out` and returns how many
    /// messages were read (0 when none is pending). Reading a change's
    /// message is what lets the changing thread go on.
    pub fn read_events(&self, out: &mut Vec<MapEvent>) -> Result<usize> {
        use linux_raw_sys::general as g;
        self.read_messages(|event, word| match event {
            g::UFFD_EVENT_UNMAP => out.push(MapEvent::Unmap {
                start: word(8),
                end: word(16),
            }),
            g::UFFD_EVENT_REMOVE => out.push(MapEvent::Remove {
                start: word(8),
                end: word(16),
            }),
            g::UFFD_EVENT_REMAP => out.push(MapEvent::Remap {
                from: word(8),
                to: word(16),
                len: word(24),
            }),
            _ => {}
        })
    }

    /// One non-blocking read of up to 64 messages; `each` gets every
    /// message's event and a reader of its little-endian words by offset.
    ///
    /// `preadv2` with `RWF_NOWAIT` where the kernel takes it (Linux 6.10,
    /// whose userfaultfd reads through `read_iter`), not `read`: the file is
    /// shared with the client, which may clear its `O_NONBLOCK`, and a plain
    /// read would then block the reader (nix has no preadv2 with flags).
    /// Older kernels refuse the flag (EOPNOTSUPP): a plain read there, with
    /// `O_NONBLOCK` set again where poll reports it cleared (EPOLLERR).
    fn read_messages(&self, mut each: impl FnMut(u32, &dyn Fn(usize) -> u64)) -> Result<usize> {
        use std::sync::atomic::{AtomicBool, Ordering};
        static NO_NOWAIT: AtomicBool = AtomicBool::new(false);
        let mut buf = [0u8; UFFD_MSG_SIZE * 64];
        let mut read = Err(Errno::EOPNOTSUPP);
        if !NO_NOWAIT.load(Ordering::Relaxed) {
            let iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: one iovec describing `buf`, which outlives the call;
            // the kernel writes at most `buf.len()` bytes into it.
            let ret = unsafe { libc::preadv2(self.fd.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
            read = if ret < 0 { Err(Errno::last()) } else { Ok(ret as usize) };
            if read == Err(Errno::EOPNOTSUPP) {
                NO_NOWAIT.store(true, Ordering::Relaxed);
            }
        }
        if read == Err(Errno::EOPNOTSUPP) {
            read = nix::unistd::read(self.fd.as_fd(), &mut buf);
        }
        match read {
            Ok(n) => {
                let msgs = n / UFFD_MSG_SIZE;
                for m in buf[..msgs * UFFD_MSG_SIZE].chunks_exact(UFFD_MSG_SIZE) {
                    let word = |at: usize| u64::from_le_bytes(m[at..at + 8].try_into().unwrap_or([0; 8]));
                    let event = u32::from(m[0]);
                    if event == linux_raw_sys::general::UFFD_EVENT_FORK {
                        // The kernel installed the child's new uffd in our
                        // fd table; we never asked for it.
                        let fd = u32::from_le_bytes(m[8..12].try_into().unwrap_or([0; 4]));
                        if let Ok(fd) = i32::try_from(fd) {
                            // SAFETY: the kernel just installed this fd for
                            // us with this message; nothing else owns it.
                            drop(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                        continue;
                    }
                    each(event, &word);
                }
                Ok(msgs)
            }
            Err(Errno::EAGAIN) => Ok(0),
            Err(e) => Err(SysError::os("read(userfaultfd)", e)),
        }
    }

    /// True from the moment a non-cooperative change of the uffd's mm
    /// (munmap, mremap, madvise; [`features::MAP_EVENTS`]) takes the mm's
    /// mmap lock until its message has been read and its thread woken (the
    /// kernel's `mmap_changing`); false otherwise.
    ///
    /// No ioctl reports the counter by itself, but `UFFDIO_WRITEPROTECT`
    /// checks it before it reads its argument: with a null argument it
    /// answers EAGAIN while a change is under way and EFAULT otherwise, and
    /// changes nothing. `probe::probe_all` checks this on the running kernel
    /// (`map_events`).
    pub fn mm_changing(&self) -> Result<bool> {
        // SAFETY: a null argument is never dereferenced by us; the kernel's
        // copy_from_user of it fails with EFAULT and nothing is written.
        match unsafe { ioctl_writeprotect(self.fd.as_raw_fd(), std::ptr::null_mut()) } {
            Err(Errno::EAGAIN) => Ok(true),
            Err(Errno::EFAULT) => Ok(false),
            Ok(_) => Err(SysError::Invalid("UFFDIO_WRITEPROTECT accepted a null argument".into())),
            Err(e) => Err(SysError::os("UFFDIO_WRITEPROTECT (mmap_changing probe)", e)),
        }
    }

    /// Calls `read` (which reads this uffd's messages) until no mapping
    /// change waits for one ([`Userfaultfd::mm_changing`]), for at most
    /// `bound`; `read` runs at least once.
    pub fn read_until_quiet(&self, bound: std::time::Duration, mut read: impl FnMut(&Self)) {
        let deadline = std::time::Instant::now() + bound;
        loop {
            read(self);
            if !matches!(self.mm_changing(), Ok(true)) || std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// The uffd's file (device, inode): the same for every fd of one uffd,
    /// whichever process holds it.
    pub fn file_id(&self) -> Result<(u64, u64)> {
        let st = nix::sys::stat::fstat(self.fd.as_fd()).map_err(|e| SysError::os("fstat(userfaultfd)", e))?;
        Ok((st.st_dev as u64, st.st_ino as u64))
    }

    /// Sets `O_NONBLOCK` on the (shared) file again: a uffd whose flag a
    /// client cleared reports EPOLLERR to every poll.
    pub fn ensure_nonblocking(&self) -> Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = fcntl(self.fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| SysError::os("fcntl(F_GETFL)", e))?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(self.fd.as_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| SysError::os("fcntl(F_SETFL)", e))?;
        Ok(())
    }

    /// The features the uffd's creator enabled (its UFFDIO_API), from
    /// `/proc/self/fdinfo`: what a uffd received from a client really does,
    /// whatever the client says.
    pub fn enabled_features(&self) -> Result<u64> {
        let path = format!("/proc/self/fdinfo/{}", self.fd.as_raw_fd());
        let text = std::fs::read_to_string(&path).map_err(|e| SysError::Invalid(format!("cannot read {path}: {e}")))?;
        // "API:\t<api>:<features>:<ioctls>" (hex); bit 31 of the features
        // is the kernel's own "initialized" mark.
        text.lines()
            .find_map(|l| l.strip_prefix("API:"))
            .and_then(|v| v.trim().split(':').nth(1))
            .and_then(|f| u64::from_str_radix(f, 16).ok())
            .map(|f| f & 0x7fff_ffff)
            .ok_or_else(|| SysError::Invalid(format!("{path} has no API line")))
    }

    /// Duplicates the fd (to hand it to the daemon).
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.fd
            .try_clone()
            .map_err(|e| SysError::os("dup", crate::pagemap::errno_of(&e)))
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
