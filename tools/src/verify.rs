//! Byte-for-byte comparison of a BO with its GPU copy.

use std::os::fd::AsFd;

use cohmem_client::{Bo, ClientError};
use cohmem_sys::mapping::SharedMapping;

/// A page whose GPU copy differs from the BO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// BO-relative page.
    pub page: u64,
    /// First differing byte offset within the page.
    pub first_byte: usize,
}

/// Compares the BO's bytes (read with `pread` on its memfd) with its
/// exported GPU resource 0, page by page; returns the differing pages.
pub fn verify_gpu_copy(bo: &Bo) -> Result<Vec<Mismatch>, ClientError> {
    let res = bo.export_resource(0)?;
    let gpu = SharedMapping::map(res.fd.as_fd(), res.size, 0, false)?;
    let ps = cohmem_sys::page_size() as usize;
    let mut want = vec![0u8; ps];
    let mut got = vec![0u8; ps];
    let mut out = Vec::new();
    for page in 0..(res.size as usize / ps) {
        bo.read_at(res.offset + (page * ps) as u64, &mut want)?;
        gpu.read_at(page * ps, &mut got)?;
        if want != got {
            let first_byte = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(0);
            out.push(Mismatch {
                page: page as u64,
                first_byte,
            });
        }
    }
    Ok(out)
}
