//! A tracked mapping of a BO in this process ([`Mapping`]) and the safe
//! ways to reach its memory: byte copies, typed loads and stores, bulk
//! copies of typed slices, and vm-memory's [`VolatileSlice`] for the rest.
//! Rows of image BOs are in `rows.rs`; the accessors are in `access.rs`.

use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use cohmem_proto::{Mechanism, Reply, Request};
use cohmem_sys::mapping::SharedMapping;
use vm_memory::ByteValued;

use crate::error::{unexpected, ClientError};
use crate::handle::{BoInner, ViewSlot};
use crate::tracking::ProcessTracking;

mod access;

/// A `MAP_SHARED` mapping of (part of) a BO, registered for write-protect
/// tracking and announced to the daemon. Writes through it are tracked;
/// dropping it harvests it one last time (UNMAP), unregisters and unmaps.
///
/// # Lifetime
///
/// [`Bo::map`](crate::Bo::map) and [`Bo::map_range`](crate::Bo::map_range)
/// return a `Mapping<'bo>` that borrows its BO, so a mapping cannot outlive
/// the BO it was made from:
///
/// ```compile_fail,E0505
/// # fn f(conn: &cohmem_client::Connection) -> Result<(), cohmem_client::ClientError> {
/// let bo = conn.create_bo(4096)?;
/// let map = bo.map()?;
/// drop(bo); // error[E0505]: cannot move out of `bo` because it is borrowed
/// map.write(0, b"lost")?;
/// # Ok(()) }
/// ```
///
/// Where a mapping must be stored next to its BO, handed to another thread
/// or kept by C code, [`Bo::map_detached`](crate::Bo::map_detached) gives a
/// `Mapping<'static>` that holds a reference count on the BO instead. Either
/// kind can always sync what was written through it:
/// [`Mapping::sync`] (or [`Mapping::bo`] for the BO's other calls). A BO
/// keeps its connection alive in the same way.
///
/// # Access
///
/// Other processes and the daemon share this memory, so it is never
/// exposed as a Rust slice (`&mut [u8]` would promise the compiler that
/// nobody else changes it). The safe ways in, fastest first:
///
/// - bulk copies: [`Mapping::write`] / [`Mapping::read`] of bytes,
///   [`Mapping::write_slice`] of typed slices (`&[u32]` pixels), and for
///   image BOs the rows ([`Mapping::row`], [`Mapping::rows`]) with
///   [`Row::write_pixels`](crate::Row::write_pixels): a sprite is one
///   `memcpy` per row, as fast as raw stores;
/// - typed stores and loads: [`Mapping::write_obj`] / [`Mapping::read_obj`]
///   (any [`ByteValued`] type), [`Mapping::write_u64`] (atomic);
/// - [`Mapping::as_volatile_slice`]: vm-memory's bounds-checked
///   [`VolatileSlice`](vm_memory::VolatileSlice) (the type crosvm and Firecracker use for guest
///   memory), with its [`Bytes`](vm_memory::Bytes) trait for everything
///   else;
/// - [`Mapping::as_ptr`] for raw-pointer code (`unsafe`, yours to get
///   right).
///
/// ```no_run
/// use cohmem_client::{fourcc, Connection};
/// let conn = Connection::connect_default()?;
/// let bo = conn.create_image(640, 480, fourcc::XRGB8888)?;
/// let map = bo.map()?;
/// let sprite = [0x00ff_0000u32; 32];
/// for y in 100..132 {
///     map.row(y)?.write_pixels(200, &sprite)?; // one bounds-checked memcpy
/// }
/// let done = map.sync()?; // uploads the pages the rows touched
/// println!("{} pages, rectangles {:?}", done.pages, done.rects);
/// # Ok::<(), cohmem_client::ClientError>(())
/// ```
///
/// A forked child does not inherit the mapping (`MADV_DONTFORK`): tracking
/// is per address space, so a child's writes could not be seen; every
/// access from the child fails with [`ClientError::ForkedChild`].
pub struct Mapping<'bo> {
    bo: Arc<BoInner>,
    tracking: Arc<ProcessTracking>,
    map: SharedMapping,
    slot: Arc<ViewSlot>,
    offset: u64,
    unmapped: bool,
    /// The borrow of the BO (none for a detached mapping).
    _bo: PhantomData<&'bo ()>,
}

impl std::fmt::Debug for Mapping<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("addr", &format_args!("{:#x}", self.map.addr()))
            .field("len", &self.map.len())
            .field("bo_offset", &self.offset)
            .finish()
    }
}

impl<'bo> Mapping<'bo> {
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
            _bo: PhantomData,
        })
    }

    /// Address of the first byte, for raw-pointer code.
    ///
    /// The pointer is valid while the mapping lives (it does not borrow
    /// it: using it after [`Mapping::unmap`] or the drop is yours to
    /// avoid). Writing through it needs `unsafe`, and the memory is shared
    /// with other processes: never make a `&[u8]` or `&mut [u8]` of it, use
    /// `ptr::write`/`ptr::copy_nonoverlapping` (or volatile) accesses. The
    /// safe accessors ([`Mapping::row`], [`Mapping::write_slice`]) are as
    /// fast for bulk writes.
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
    ///
    /// # Errors
    ///
    /// [`ClientError::OutOfBounds`] for a range past the mapping,
    /// [`ClientError::ForkedChild`] in a forked child, and the errors of
    /// any call to the daemon ([`ClientError::Daemon`],
    /// [`ClientError::Disconnected`] when it is gone and not back).
    pub fn damage(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        let end = offset.checked_add(len).filter(|&e| e <= self.map.len() as u64);
        if end.is_none() {
            return Err(ClientError::OutOfBounds {
                offset,
                len,
                mapping_len: self.map.len() as u64,
            });
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

    /// The BO's state (for the calls `bo.rs` and `rows.rs` make on a
    /// mapping's behalf).
    pub(crate) fn bo_inner(&self) -> &Arc<BoInner> {
        &self.bo
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

    /// Unmaps explicitly, reporting errors that drop would swallow. The
    /// daemon harvests the mapping first, so what was written through it
    /// still reaches the next sync.
    ///
    /// # Errors
    ///
    /// [`ClientError::ForkedChild`] in a forked child (which has nothing to
    /// unmap), the daemon's refusal of UNMAP, or a failed
    /// `UFFDIO_UNREGISTER` ([`ClientError::Sys`]). The memory is unmapped
    /// in every case.
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
        // A range a switch could not move off the WP_ASYNC uffd would make
        // the munmap wait for a mapping-change message nobody reads: take
        // it off that one too (EINVAL where it is not registered there).
        if self.tracking.mechanism() != Mechanism::UffdAsync {
            if let Some(a) = self.tracking.asynchronous.as_ref() {
                let _ = a.uffd.unregister(self.map.addr(), self.map.len() as u64);
            }
        }
        match result? {
            (Reply::Ok, _) => {}
            (other, _) => return Err(unexpected("UNMAP", &other)),
        }
        unreg
    }
}

impl Drop for Mapping<'_> {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// The bytes of a slice of plain values.
pub(crate) fn as_bytes<T: ByteValued>(values: &[T]) -> &[u8] {
    // SAFETY: `ByteValued` types have no padding and no invalid bit
    // patterns (the trait's contract), so their memory is initialised
    // bytes; the length is the slice's size in bytes, within one allocation.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

/// The bytes of a mutable slice of plain values.
pub(crate) fn as_bytes_mut<T: ByteValued>(values: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; and any byte pattern written through the
    // result is a valid `T` (`ByteValued`'s contract).
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}
