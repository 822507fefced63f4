//! A tracked mapping of a BO (`cohmem_mapping`): mapping, its pointer and
//! length, and unmapping. Mapped memory is shared with the daemon, so it is
//! handed to C as a raw pointer and never made a Rust slice here.

use std::ffi::c_int;

use cohmem_client::Mapping;

use crate::bo::cohmem_bo;
use crate::error::{fail, invalid, COHMEM_OK};

/// A tracked mapping of a BO in this process.
pub struct cohmem_mapping(Mapping<'static>);

/// Maps the whole BO, tracked: writes through `cohmem_mapping_ptr` are seen
/// by the next `cohmem_bo_sync`. `*out` is freed with `cohmem_unmap`.
///
/// # Safety
/// `bo` is a live BO; `out` is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_map(bo: *const cohmem_bo, out: *mut *mut cohmem_mapping) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_map: bo is NULL");
    };
    if out.is_null() {
        return invalid("cohmem_bo_map: out is NULL");
    }
    match bo.0.map_detached() {
        Ok(m) => {
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = Box::into_raw(Box::new(cohmem_mapping(m))) };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// Maps `len` bytes at `offset` of the BO, tracked (both multiples of
/// `cohmem_connection_page_size`; else `COHMEM_E_INVALID`, and nothing is
/// mapped). Byte 0 of the mapping is byte `offset` of the BO. `*out` is
/// freed with `cohmem_unmap`.
///
/// # Safety
/// `bo` is NULL or a live BO; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_map_range(
    bo: *const cohmem_bo,
    offset: u64,
    len: u64,
    out: *mut *mut cohmem_mapping,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_map_range: bo is NULL");
    };
    if out.is_null() {
        return invalid("cohmem_bo_map_range: out is NULL");
    }
    match bo.0.map_range_detached(offset, len) {
        Ok(m) => {
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = Box::into_raw(Box::new(cohmem_mapping(m))) };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// The offset in its BO of the mapping's first byte (0 for NULL, and for
/// a mapping from `cohmem_bo_map`).
///
/// # Safety
/// `map` is NULL or a live mapping.
#[no_mangle]
pub unsafe extern "C" fn cohmem_mapping_bo_offset(map: *const cohmem_mapping) -> u64 {
    // SAFETY: `map` is NULL or a live mapping (documented).
    unsafe { map.as_ref() }.map_or(0, |m| m.0.bo_offset())
}

/// Reports `len` bytes at `offset` of the mapping (not of the BO) written:
/// `cohmem_bo_damage` at `cohmem_mapping_bo_offset(map) + offset`, checked
/// against the mapping's length.
///
/// # Safety
/// `map` is NULL or a live mapping.
#[no_mangle]
pub unsafe extern "C" fn cohmem_mapping_damage(map: *const cohmem_mapping, offset: u64, len: u64) -> c_int {
    // SAFETY: `map` is NULL or a live mapping (documented).
    let Some(map) = (unsafe { map.as_ref() }) else {
        return invalid("cohmem_mapping_damage: map is NULL");
    };
    match map.0.damage(offset, len) {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}

/// The mapping's first byte (NULL for NULL). Valid until `cohmem_unmap`.
///
/// # Safety
/// `map` is NULL or a live mapping.
#[no_mangle]
pub unsafe extern "C" fn cohmem_mapping_ptr(map: *const cohmem_mapping) -> *mut u8 {
    // SAFETY: `map` is NULL or a live mapping (documented).
    unsafe { map.as_ref() }.map_or(std::ptr::null_mut(), |m| m.0.as_ptr())
}

/// The mapping's length in bytes (0 for NULL).
///
/// # Safety
/// `map` is NULL or a live mapping.
#[no_mangle]
pub unsafe extern "C" fn cohmem_mapping_len(map: *const cohmem_mapping) -> usize {
    // SAFETY: `map` is NULL or a live mapping (documented).
    unsafe { map.as_ref() }.map_or(0, |m| m.0.len())
}

/// Unmaps (the daemon first harvests what was written through it, so
/// nothing is lost) and frees the mapping.
///
/// # Safety
/// `map` is NULL or came from `cohmem_bo_map` and is not used again; no
/// pointer into it is used afterwards.
#[no_mangle]
pub unsafe extern "C" fn cohmem_unmap(map: *mut cohmem_mapping) -> c_int {
    if map.is_null() {
        return COHMEM_OK;
    }
    // SAFETY: `map` came from Box::into_raw and is freed once (documented).
    let map = unsafe { Box::from_raw(map) };
    match map.0.unmap() {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}
