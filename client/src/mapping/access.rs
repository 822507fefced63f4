//! The safe ways into a [`Mapping`]'s memory: vm-memory's
//! [`VolatileSlice`], byte copies, typed loads and stores, bulk copies of
//! typed slices and aligned atomic words, every one bounds-checked (an
//! access past the end is [`ClientError::OutOfBounds`]). The memory is
//! shared with the daemon and other processes, so none of them hands out a
//! Rust reference into it.

use cohmem_sys::mapping::SharedMapping;
use vm_memory::{ByteValued, VolatileSlice};

use super::{as_bytes, as_bytes_mut, Mapping};
use crate::error::ClientError;

impl Mapping<'_> {
    /// The whole mapping as vm-memory's [`VolatileSlice`], borrowed from
    /// the mapping: bounds-checked sub-slices ([`VolatileSlice::subslice`]),
    /// bulk copies ([`VolatileSlice::copy_from`] of bytes is one `memcpy`),
    /// and with the [`Bytes`](vm_memory::Bytes) trait typed accesses
    /// (`write_obj`, `read_obj`, atomic `store`/`load`).
    ///
    /// ```no_run
    /// use cohmem_client::vm_memory::Bytes;
    /// # let conn = cohmem_client::Connection::connect_default()?;
    /// # let bo = conn.create_bo(1 << 20)?;
    /// let map = bo.map()?;
    /// let mem = map.as_volatile_slice()?;
    /// mem.write_obj(0xdead_beef_u32, 4096).expect("in bounds");
    /// mem.subslice(8192, 5).expect("in bounds").copy_from(b"hello");
    /// # Ok::<(), cohmem_client::ClientError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::ForkedChild`] in a child forked from the process that
    /// made the mapping (the child does not have the memory).
    pub fn as_volatile_slice(&self) -> Result<VolatileSlice<'_>, ClientError> {
        Ok(self.live()?.volatile())
    }

    /// The `len` bytes at `offset`, as a [`VolatileSlice`].
    ///
    /// # Errors
    ///
    /// [`ClientError::OutOfBounds`] when the range reaches past the
    /// mapping; [`ClientError::ForkedChild`] in a forked child.
    pub fn volatile_range(&self, offset: usize, len: usize) -> Result<VolatileSlice<'_>, ClientError> {
        let map = self.live()?;
        self.check_range(offset, len)?;
        map.volatile()
            .subslice(offset, len)
            .map_err(|_| self.out_of_bounds(offset, len))
    }

    /// Copies `data` into the mapping at `offset` (one `memcpy`).
    ///
    /// # Errors
    ///
    /// [`ClientError::OutOfBounds`] when `offset + data.len()` is past the
    /// mapping (nothing is written); [`ClientError::ForkedChild`] in a
    /// forked child.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), ClientError> {
        self.volatile_range(offset, data.len())?.copy_from(data);
        Ok(())
    }

    /// Copies a slice of plain values (`&[u32]` pixels, `&[u16]`, structs
    /// deriving [`ByteValued`]) into the mapping at `offset`, byte for byte
    /// in native (little-endian) order: one `memcpy`, however long.
    ///
    /// ```no_run
    /// # let conn = cohmem_client::Connection::connect_default()?;
    /// # let bo = conn.create_bo(1 << 20)?;
    /// # let map = bo.map()?;
    /// let pixels = vec![0x00ff_8000u32; 1920];
    /// map.write_slice(7680 * 10, &pixels)?; // row 10 of a 1920-wide XRGB image
    /// # Ok::<(), cohmem_client::ClientError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::OutOfBounds`] when the values reach past the mapping
    /// (nothing is written); [`ClientError::ForkedChild`] in a forked child.
    pub fn write_slice<T: ByteValued>(&self, offset: usize, values: &[T]) -> Result<(), ClientError> {
        let bytes = as_bytes(values);
        self.volatile_range(offset, bytes.len())?.copy_from(bytes);
        Ok(())
    }

    /// Copies values out of the mapping at `offset` into `values` (the
    /// reverse of [`Mapping::write_slice`]).
    ///
    /// # Errors
    ///
    /// As [`Mapping::write_slice`].
    pub fn read_slice<T: ByteValued>(&self, offset: usize, values: &mut [T]) -> Result<(), ClientError> {
        let bytes = as_bytes_mut(values);
        self.volatile_range(offset, bytes.len())?.copy_to(bytes);
        Ok(())
    }

    /// Stores one plain value (`u32`, `[u8; 3]`, a `#[repr(C)]` struct
    /// implementing [`ByteValued`]) at `offset`, which need not be aligned.
    /// For many values, [`Mapping::write_slice`] is much faster.
    ///
    /// # Errors
    ///
    /// As [`Mapping::write_slice`].
    pub fn write_obj<T: ByteValued>(&self, offset: usize, value: T) -> Result<(), ClientError> {
        self.write_slice(offset, std::slice::from_ref(&value))
    }

    /// Loads one plain value from `offset` (the reverse of
    /// [`Mapping::write_obj`]).
    ///
    /// # Errors
    ///
    /// As [`Mapping::write_slice`].
    pub fn read_obj<T: ByteValued>(&self, offset: usize) -> Result<T, ClientError> {
        let mut value = T::zeroed();
        self.read_slice(offset, std::slice::from_mut(&mut value))?;
        Ok(value)
    }

    /// Copies bytes out of the mapping at `offset`.
    ///
    /// # Errors
    ///
    /// [`ClientError::OutOfBounds`] when `offset + buf.len()` is past the
    /// mapping; [`ClientError::ForkedChild`] in a forked child.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), ClientError> {
        self.volatile_range(offset, buf.len())?.copy_to(buf);
        Ok(())
    }

    /// Fills `len` bytes at `offset` with `byte`.
    ///
    /// # Errors
    ///
    /// [`ClientError::OutOfBounds`] when the range is past the mapping;
    /// [`ClientError::ForkedChild`] in a forked child.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), ClientError> {
        let map = self.live()?;
        self.check_range(offset, len)?;
        Ok(map.fill(offset, len, byte)?)
    }

    /// Stores an aligned u64 with an atomic (relaxed) store: for counters
    /// and flags other processes read concurrently.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] for an offset that is not a
    /// multiple of 8, [`ClientError::OutOfBounds`] past the mapping,
    /// [`ClientError::ForkedChild`] in a forked child.
    pub fn write_u64(&self, offset: usize, value: u64) -> Result<(), ClientError> {
        let map = self.word(offset)?;
        Ok(map.write_u64(offset, value)?)
    }

    /// Loads an aligned u64 with an atomic (relaxed) load.
    ///
    /// # Errors
    ///
    /// As [`Mapping::write_u64`].
    pub fn read_u64(&self, offset: usize) -> Result<u64, ClientError> {
        let map = self.word(offset)?;
        Ok(map.read_u64(offset)?)
    }

    /// The mapping, checked for an aligned word at `offset`.
    fn word(&self, offset: usize) -> Result<&SharedMapping, ClientError> {
        let map = self.live()?;
        self.check_range(offset, 8)?;
        if offset % 8 != 0 {
            return Err(ClientError::InvalidArgument(format!(
                "offset {offset} is not 8-byte aligned: atomic words need an offset that is a multiple of 8 \
                 (use write_obj for unaligned values)"
            )));
        }
        Ok(map)
    }

    fn out_of_bounds(&self, offset: usize, len: usize) -> ClientError {
        ClientError::OutOfBounds {
            offset: offset as u64,
            len: len as u64,
            mapping_len: self.map.len() as u64,
        }
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), ClientError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.map.len() => Ok(()),
            _ => Err(self.out_of_bounds(offset, len)),
        }
    }
}
