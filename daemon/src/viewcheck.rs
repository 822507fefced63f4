//! MAP's proof that a view is what the client announced (DESIGN.md §5.5,
//! issue 15 item 5): a view whose range maps something else, or whose
//! writes reach a userfaultfd the daemon does not read, or that a fork
//! inherits, would have its writes silently never uploaded.
//!
//! From `/proc/<pid>/smaps` (every kernel): each VMA covering
//! `[addr, addr+len)` must be a shared mapping of the BO's memfd (device and
//! inode) whose file offset at `addr` is the announced one, with no hole,
//! and carry `dc` (`MADV_DONTFORK`) in its `VmFlags`. Where the daemon may
//! not read the client's smaps (it lacks ptrace access to that process:
//! another uid without `CAP_SYS_PTRACE`, as under the shipped unit), the
//! identity, offset and sharing are checked with `PROCMAP_QUERY` on the
//! `/proc/self/maps` fd the client offered in ATTACH_MM (Linux 6.11), and
//! only `MADV_DONTFORK` goes unchecked (logged); with neither, nothing is
//! checked (logged). Then, through the mechanism's own userfaultfd, `UFFDIO_REGISTER`
//! of the range (a no-op for a range already registered with that uffd)
//! fails with EBUSY when another userfaultfd owns it: the only way to tell
//! which uffd a VMA belongs to (`UFFDIO_WRITEPROTECT` does not check).

use std::ops::Range;

use std::os::fd::OwnedFd;

use cohmem_sys::memfd::FileIdentity;
use cohmem_sys::procmaps::ProcMapsFile;
use cohmem_sys::smaps::{self, SmapsVma};
use cohmem_sys::uffd::Userfaultfd;
use nix::errno::Errno;

/// Why a MAP is refused; the text names what differs.
#[derive(Debug)]
pub struct Mismatch(pub String);

fn describe(v: &SmapsVma) -> String {
    if v.inode == 0 {
        "anonymous memory".to_string()
    } else {
        format!(
            "inode {} (device {}:{}) at offset {:#x}",
            v.inode,
            nix::sys::stat::major(v.dev),
            nix::sys::stat::minor(v.dev),
            v.offset
        )
    }
}

/// What MAP's checks read of one VMA; `dont_fork` is `None` where the
/// source does not tell (`PROCMAP_QUERY`).
struct Seen {
    vma: SmapsVma,
    dont_fork: Option<bool>,
}

/// How a MAP's mapping was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// From smaps: identity, offset, sharing and `MADV_DONTFORK`.
    Smaps,
    /// From `PROCMAP_QUERY`: identity, offset and sharing only.
    ProcmapQuery,
    /// Nothing could be read.
    Nothing,
}

/// The VMAs overlapping `range` through `PROCMAP_QUERY` on the offered
/// maps fd.
fn query_vmas(maps: &OwnedFd, range: std::ops::Range<u64>) -> Option<Vec<Seen>> {
    let maps = ProcMapsFile::from_fd(maps.try_clone().ok()?).ok()?;
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let v = maps.vma_at_or_after(at).ok()??;
        if v.start >= range.end {
            break;
        }
        at = v.end;
        out.push(Seen {
            vma: SmapsVma {
                start: v.start,
                end: v.end,
                offset: v.offset,
                dev: v.dev,
                inode: v.inode,
                shared: ProcMapsFile::is_shared(&v),
                flags: Vec::new(),
            },
            dont_fork: None,
        });
    }
    Some(out)
}

/// Checks the mapping behind `range` (announced as BO handle `bo`, whose
/// memfd is `identity`, at file offset `offset`) in process `pid`, from its
/// smaps, else through `maps` (the maps fd it offered), else not at all.
pub fn check_mapping(
    pid: i32,
    maps: Option<&OwnedFd>,
    range: Range<u64>,
    bo: u32,
    identity: FileIdentity,
    offset: u64,
) -> Result<Checked, Mismatch> {
    let (seen, checked) = match smaps::vmas_of(pid, range.clone()) {
        Ok(v) => (
            v.into_iter()
                .map(|vma| Seen {
                    dont_fork: Some(vma.has_flag("dc")),
                    vma,
                })
                .collect::<Vec<_>>(),
            Checked::Smaps,
        ),
        Err(e) => match maps.and_then(|m| query_vmas(m, range.clone())) {
            Some(v) => {
                tracing::debug!(pid, error = %e, "the client's smaps cannot be read: MADV_DONTFORK of its views is not verified");
                (v, Checked::ProcmapQuery)
            }
            None => {
                tracing::debug!(pid, error = %e, "neither the client's smaps nor PROCMAP_QUERY: its views are not verified");
                return Ok(Checked::Nothing);
            }
        },
    };
    let what = format!("MAP {:#x}+{}", range.start, range.end - range.start);
    let expected = format!("BO {bo}'s memfd (inode {}) at offset {offset:#x}", identity.ino);
    let mut at = range.start;
    for Seen { vma: v, dont_fork } in &seen {
        if v.start > at {
            return Err(Mismatch(format!(
                "{what} refused (not mapped): {:#x}..{:#x} is not mapped, not {expected}",
                at, v.start
            )));
        }
        let here = v.offset + (at - v.start);
        let want = offset + (at - range.start);
        if v.inode == 0 || (v.dev, v.inode) != (identity.dev, identity.ino) {
            return Err(Mismatch(format!(
                "{what} refused (another mapping): {:#x} maps {}, not {expected}",
                at,
                describe(v)
            )));
        }
        if here != want {
            return Err(Mismatch(format!(
                "{what} refused (wrong offset): {at:#x} maps BO {bo}'s memfd at offset {here:#x}, not {want:#x}"
            )));
        }
        if !v.shared {
            return Err(Mismatch(format!(
                "{what} refused (private mapping): {:#x}..{:#x} is a MAP_PRIVATE mapping of BO {bo}'s memfd",
                v.start.max(range.start),
                v.end.min(range.end)
            )));
        }
        if *dont_fork == Some(false) {
            return Err(Mismatch(format!(
                "{what} refused (no MADV_DONTFORK): {:#x}..{:#x} would be inherited by a fork (no `dc` in VmFlags), \
                 whose writes no mechanism sees",
                v.start.max(range.start),
                v.end.min(range.end)
            )));
        }
        at = v.end;
        if at >= range.end {
            return Ok(checked);
        }
    }
    Err(Mismatch(format!(
        "{what} refused (not mapped): {at:#x}..{:#x} is not mapped, not {expected}",
        range.end
    )))
}

/// Proves that `range` (registered with some userfaultfd: the mechanism
/// checked that) is registered with `uffd`, the one of the process's
/// mechanism `mechanism`: another uffd's registration makes
/// `UFFDIO_REGISTER` fail with EBUSY; the same one makes it a no-op.
pub fn check_registration(uffd: &Userfaultfd, mechanism: &str, range: Range<u64>) -> Result<(), Mismatch> {
    match uffd.register_wp(range.start, range.end - range.start) {
        Ok(()) => Ok(()),
        Err(e) if e.errno() == Some(Errno::EBUSY) => Err(Mismatch(format!(
            "MAP {:#x}+{} refused (wrong uffd): the range is registered with another userfaultfd, \
             not the {mechanism} userfaultfd this process attached",
            range.start,
            range.end - range.start
        ))),
        Err(e) => Err(Mismatch(format!(
            "MAP {:#x}+{} refused (not registered): the range cannot be registered with the {mechanism} \
             userfaultfd this process attached: {e}",
            range.start,
            range.end - range.start
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohmem_sys::mapping::SharedMapping;
    use cohmem_sys::memfd::Memfd;
    use std::os::fd::AsFd;

    fn me() -> i32 {
        std::process::id() as i32
    }

    #[test]
    fn smaps_checks_identity_offset_and_dont_fork() {
        let ps = cohmem_sys::page_size();
        let m = Memfd::create_sealed("t", 8 * ps).unwrap();
        let id = m.identity().unwrap();
        let map = SharedMapping::map(m.as_fd(), 4 * ps, 4 * ps, true).unwrap();
        let r = map.addr()..map.addr() + 4 * ps;
        let e = check_mapping(me(), None, r.clone(), 1, id, 4 * ps).unwrap_err();
        assert!(e.0.contains("(no MADV_DONTFORK)"), "{}", e.0);
        map.dont_fork().unwrap();
        assert_eq!(
            check_mapping(me(), None, r.clone(), 1, id, 4 * ps).unwrap(),
            Checked::Smaps
        );
        let e = check_mapping(me(), None, r.clone(), 1, id, 0).unwrap_err();
        assert!(e.0.contains("(wrong offset)"), "{}", e.0);
        // One page past the mapping's end is not covered.
        let e = check_mapping(me(), None, r.start..r.end + ps, 1, id, 4 * ps);
        assert!(e.is_err());
    }

    #[test]
    fn without_smaps_procmap_query_checks_identity_and_offset() {
        let Ok(maps) = ProcMapsFile::open_self() else { return };
        let Ok(fd) = maps.try_clone_fd() else { return };
        if ProcMapsFile::from_fd(fd.try_clone().unwrap()).is_err() {
            eprintln!("skipping: no PROCMAP_QUERY");
            return;
        }
        let ps = cohmem_sys::page_size();
        let m = Memfd::create_sealed("t", 8 * ps).unwrap();
        let other = Memfd::create_sealed("u", 8 * ps).unwrap();
        let id = m.identity().unwrap();
        let map = SharedMapping::map(m.as_fd(), 4 * ps, 4 * ps, true).unwrap();
        let r = map.addr()..map.addr() + 4 * ps;
        // pid -1 has no smaps: the maps fd answers instead; MADV_DONTFORK
        // is not known there, so its absence is not refused.
        assert_eq!(
            check_mapping(-1, Some(&fd), r.clone(), 1, id, 4 * ps).unwrap(),
            Checked::ProcmapQuery
        );
        let e = check_mapping(-1, Some(&fd), r.clone(), 1, id, 0).unwrap_err();
        assert!(e.0.contains("(wrong offset)"), "{}", e.0);
        let e = check_mapping(-1, Some(&fd), r.clone(), 1, other.identity().unwrap(), 4 * ps).unwrap_err();
        assert!(e.0.contains("(another mapping)"), "{}", e.0);
        assert_eq!(check_mapping(-1, None, r, 1, id, 4 * ps).unwrap(), Checked::Nothing);
    }
}
