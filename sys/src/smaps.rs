//! `/proc/<pid>/smaps`: what each VMA maps and its `VmFlags`.
//!
//! MAP must prove that a view is what the client claims (DESIGN.md §5.5): the
//! range maps the BO's memfd (device and inode) at the announced file offset,
//! shared, is registered for write-protect faults (`uw`) and is not inherited
//! by a fork (`dc`, `MADV_DONTFORK`). `PROCMAP_QUERY` (Linux 6.11) gives the
//! identity but not the flags; smaps gives both, on every kernel, so one
//! parse serves everywhere. Reading stops at the first VMA past the range:
//! the kernel formats (and walks the page tables of) only the VMAs read.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::ops::Range;

use crate::error::{Result, SysError};
use crate::pagemap::errno_of;

/// One VMA as smaps describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmapsVma {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Device of the mapped file, encoded like `st_dev` (0 for anonymous).
    pub dev: u64,
    /// Inode of the mapped file (0 for anonymous memory).
    pub inode: u64,
    /// `MAP_SHARED` (`s` in the permissions).
    pub shared: bool,
    /// The `VmFlags` mnemonics (`dc`: `MADV_DONTFORK`, `uw`: registered
    /// with a userfaultfd for write-protect faults).
    pub flags: Vec<String>,
}

impl SmapsVma {
    /// Whether `VmFlags` lists `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// `st_dev` encoding of a `major:minor` pair (glibc's `makedev`).
pub fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
}

fn parse_header(line: &str) -> Option<SmapsVma> {
    let mut it = line.split_whitespace();
    let (start, end) = it.next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = it.next()?;
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let (major, minor) = it.next()?.split_once(':')?;
    let dev = makedev(
        u64::from_str_radix(major, 16).ok()?,
        u64::from_str_radix(minor, 16).ok()?,
    );
    let inode = it.next()?.parse().ok()?;
    Some(SmapsVma {
        start,
        end,
        offset,
        dev,
        inode,
        shared: perms.as_bytes().get(3) == Some(&b's'),
        flags: Vec::new(),
    })
}

/// The VMAs of an smaps text that overlap `range`, in address order.
/// Stops reading at the first VMA starting at or past `range.end`.
pub fn parse_overlapping(reader: impl BufRead, range: Range<u64>) -> std::io::Result<Vec<SmapsVma>> {
    let mut out: Vec<SmapsVma> = Vec::new();
    let mut current: Option<SmapsVma> = None;
    for line in reader.lines() {
        let line = line?;
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(v) = current.as_mut() {
                v.flags = flags.split_whitespace().map(str::to_owned).collect();
            }
            continue;
        }
        // Key lines ("Rss:   4 kB") have a colon in their first word;
        // header lines have a '-' in theirs.
        let first = line.split_whitespace().next().unwrap_or("");
        if first.ends_with(':') || !first.contains('-') {
            continue;
        }
        let Some(vma) = parse_header(&line) else { continue };
        if let Some(done) = current.take() {
            out.push(done);
        }
        if vma.start >= range.end {
            break;
        }
        if vma.end > range.start {
            current = Some(vma);
        }
    }
    if let Some(done) = current {
        out.push(done);
    }
    Ok(out)
}

/// The VMAs of process `pid` that overlap `range`, from `/proc/<pid>/smaps`.
pub fn vmas_of(pid: i32, range: Range<u64>) -> Result<Vec<SmapsVma>> {
    let file =
        File::open(format!("/proc/{pid}/smaps")).map_err(|e| SysError::os("open /proc/<pid>/smaps", errno_of(&e)))?;
    parse_overlapping(BufReader::new(file), range).map_err(|e| SysError::os("read /proc/<pid>/smaps", errno_of(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::SharedMapping;
    use crate::memfd::Memfd;
    use std::os::fd::AsFd;

    #[test]
    fn a_memfd_mapping_is_described_with_its_flags() {
        let ps = crate::page_size();
        let m = Memfd::create_sealed("t", 8 * ps).unwrap();
        let map = SharedMapping::map(m.as_fd(), 4 * ps, 2 * ps, true).unwrap();
        let base = map.addr();
        let id = m.identity().unwrap();
        let v = vmas_of(std::process::id() as i32, base..base + 4 * ps).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!((v[0].start, v[0].end, v[0].offset), (base, base + 4 * ps, 2 * ps));
        assert_eq!((v[0].dev, v[0].inode), (id.dev, id.ino));
        assert!(v[0].shared && !v[0].has_flag("dc"));
        map.dont_fork().unwrap();
        let v = vmas_of(std::process::id() as i32, base..base + 4 * ps).unwrap();
        assert!(v[0].has_flag("dc"), "{v:?}");
    }

    #[test]
    fn only_overlapping_vmas_are_returned() {
        let text = "1000-3000 rw-s 00002000 00:01 77 /memfd:x (deleted)\nRss: 4 kB\nVmFlags: rd wr sh dc uw\n\
                    3000-4000 rw-p 00000000 00:00 0\nVmFlags: rd wr\n\
                    5000-6000 r--p 00000000 fd:01 9 /bin/x\nVmFlags: rd\n";
        let v = parse_overlapping(text.as_bytes(), 0x2000..0x3800).unwrap();
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(
            (v[0].offset, v[0].dev, v[0].inode, v[0].shared),
            (0x2000, makedev(0, 1), 77, true)
        );
        assert!(v[0].has_flag("dc") && v[0].has_flag("uw"));
        assert_eq!((v[1].start, v[1].inode, v[1].shared), (0x3000, 0, false));
        assert_eq!(makedev(0xfd, 1), 0xfd01);
    }
}
