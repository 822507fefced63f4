//! A tracked mapping of a BO in this process.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use cohmem_proto::{Reply, Request};
use cohmem_sys::mapping::SharedMapping;

use crate::error::{unexpected, ClientError};
use crate::handle::{BoInner, ViewSlot};
use crate::tracking::ProcessTracking;

/// A `MAP_SHARED` mapping of (part of) a BO, registered for write-protect
/// tracking and announced to the daemon. Writes through it are tracked;
/// dropping it harvests it one last time (UNMAP), unregisters and unmaps.
///
/// Other processes and the daemon share this memory, so it is never exposed
/// as a Rust slice: copy in and out with [`Mapping::write`] and
/// [`Mapping::read`], or use [`Mapping::as_ptr`] with raw-pointer writes.
///
/// A forked child does not inherit the mapping (`MADV_DONTFORK`): tracking
/// is per address space, so a child's writes could not be seen.
pub struct Mapping {
    bo: Arc<BoInner>,
    tracking: Arc<ProcessTracking>,
    map: SharedMapping,
    slot: Arc<ViewSlot>,
    offset: u64,
    unmapped: bool,
}

impl Mapping {
    pub(crate) fn new(
        bo: Arc<BoInner>,
        tracking: Arc<ProcessTracking>,
        offset: u64,
        len: u64,
    ) -> Result<Self, ClientError> {
        let map = SharedMapping::map(bo.memfd.as_fd(), len, offset, true)?;
        map.dont_fork()?;
        let addr = map.addr();
        // A daemon that died is replaced first (if it is back), so that the
        // mapping is registered with the mechanism of the live one.
        bo.conn.ensure_connected()?;
        // Registration and MAP are one step with respect to a mechanism
        // switch of this process.
        let _no_switch = tracking.mapping_guard();
        let mechanism = tracking.mechanism();
        let uffd = tracking.uffd_for(mechanism)?;
        if let Some(uffd) = uffd {
            uffd.register_wp(addr, len)?;
        }
        // Recorded before MAP, so that the daemon's protection can always be
        // undone if the daemon dies.
        tracking.add_mapped(addr..addr + len);
        let slot = Arc::new(ViewSlot {
            addr,
            len,
            offset,
            view: AtomicU32::new(0),
            retired: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        });
        // The slot is recorded with the reply, before any reconnect could
        // miss it.
        let build = || Request::Map {
            bo: bo.handle(),
            addr,
            len,
            offset,
        };
        let record = |r: &Reply| {
            if let Reply::Mapped { view } = r {
                slot.view.store(*view, Ordering::Release);
                slot.generation.store(bo.conn.generation(), Ordering::Release);
                bo.add_view(&slot);
            }
        };
        match bo.conn.call_and_record(build, &[], record) {
            Ok((Reply::Mapped { .. }, _)) => {}
            other => {
                if let Some(uffd) = uffd {
                    let _ = uffd.unregister(addr, len);
                }
                tracking.remove_mapped(addr);
                return Err(match other {
                    Err(e) => e,
                    Ok((reply, _)) => unexpected("MAP", &reply),
                });
            }
        }
        drop(_no_switch);
        Ok(Self {
            bo,
            tracking,
            map,
            slot,
            offset,
            unmapped: false,
        })
    }

    /// Address of the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True for a zero-length mapping (never constructed).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Offset of the mapping in the BO.
    pub fn bo_offset(&self) -> u64 {
        self.offset
    }

    /// Reports `len` bytes at `offset` of this mapping written, for writes
    /// no fault reports: call it after pinned I/O into the mapping (an
    /// `O_DIRECT` `read`, io_uring, a device) completed. See [`crate::Bo::damage`].
    pub fn damage(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        let end = offset.checked_add(len).filter(|&e| e <= self.map.len() as u64);
        if end.is_none() {
            return Err(ClientError::Protocol(format!(
                "damage {offset}+{len} is outside the mapping's {} bytes",
                self.map.len()
            )));
        }
        self.live()?;
        self.bo.call(
            |bo| Request::Damage {
                bo,
                offset: self.offset + offset,
                len,
            },
            &[],
        )?;
        Ok(())
    }

    /// Copies `data` into the mapping at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), ClientError> {
        Ok(self.live()?.write_at(offset, data)?)
    }

    /// Copies bytes out of the mapping at `offset`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), ClientError> {
        Ok(self.live()?.read_at(offset, buf)?)
    }

    /// Fills `len` bytes at `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), ClientError> {
        Ok(self.live()?.fill(offset, len, byte)?)
    }

    /// Stores an aligned u64 (volatile).
    pub fn write_u64(&self, offset: usize, value: u64) -> Result<(), ClientError> {
        Ok(self.live()?.write_u64(offset, value)?)
    }

    /// Loads an aligned u64 (volatile).
    pub fn read_u64(&self, offset: usize) -> Result<u64, ClientError> {
        Ok(self.live()?.read_u64(offset)?)
    }

    /// The mapping, unless this is a forked child, which does not have it.
    fn live(&self) -> Result<&SharedMapping, ClientError> {
        if self.map.not_inherited() {
            return Err(ClientError::ForkedChild {
                owner: self.tracking.pid,
                pid: std::process::id(),
            });
        }
        Ok(&self.map)
    }

    /// Unmaps explicitly, reporting errors that drop would swallow.
    pub fn unmap(mut self) -> Result<(), ClientError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), ClientError> {
        if self.unmapped {
            return Ok(());
        }
        self.unmapped = true;
        if self.map.not_inherited() {
            // A forked child dropping its copy of the parent's value: the
            // session, the uffds and the view are the parent's, and the
            // range is not mapped here. Nothing to release.
            return Err(ClientError::ForkedChild {
                owner: self.tracking.pid,
                pid: std::process::id(),
            });
        }
        // UNMAP first: the daemon harvests the view while it still exists.
        let _no_switch = self.tracking.mapping_guard();
        // Retired first: a reconnect no longer re-announces it. UNMAP names
        // its view only on the session that has it (checked under the link
        // lock); on a dead session there is nothing to unmap.
        self.slot.retired.store(true, Ordering::Release);
        let build = || {
            // A view of an earlier session is gone with it.
            (self.slot.generation.load(Ordering::Acquire) == self.bo.conn.generation()).then(|| Request::Unmap {
                bo: self.bo.handle(),
                view: self.slot.view.load(Ordering::Acquire),
            })
        };
        let result = match self.bo.conn.call_if_connected(build, &[]) {
            Err(ClientError::Disconnected) => Ok((Reply::Ok, Vec::new())),
            other => other,
        };
        self.tracking.remove_mapped(self.map.addr());
        let unreg = self.tracking.uffd_for(self.tracking.mechanism()).and_then(|u| match u {
            Some(u) => {
                let (addr, len) = (self.map.addr(), self.map.len() as u64);
                let r = u.unregister(addr, len);
                // Unregistering does not wake a thread of ours still waiting
                // in a write-protect fault here; this does.
                let _ = u.wake(addr, len);
                Ok(r?)
            }
            None => Ok(()),
        });
        match result? {
            (Reply::Ok, _) => {}
            (other, _) => return Err(unexpected("UNMAP", &other)),
        }
        unreg
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let _ = self.release();
    }
}
