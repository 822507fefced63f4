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
/// exported GPU resource 0 (the software backend's memfd or a DRM dma-buf,
/// laid out one page every `pitch` bytes), page by page; returns the
/// differing pages.
pub fn verify_gpu_copy(bo: &Bo) -> Result<Vec<Mismatch>, ClientError> {
    let res = bo.export_resource(0)?;
    let ps = cohmem_sys::page_size();
    let pages = res.size / ps;
    let gpu = SharedMapping::map(res.fd.as_fd(), pages.saturating_sub(1) * res.pitch + ps, 0, false)?;
    compare_pages(bo, res.offset, pages, |page, buf| {
        Ok(gpu.read_at((page * res.pitch) as usize, buf)?)
    })
}

/// Compares `pages` pages of the BO from byte `offset` with what `read_gpu`
/// returns for each page index; returns the differing pages.
pub fn compare_pages(
    bo: &Bo,
    offset: u64,
    pages: u64,
    mut read_gpu: impl FnMut(u64, &mut [u8]) -> Result<(), ClientError>,
) -> Result<Vec<Mismatch>, ClientError> {
    let ps = cohmem_sys::page_size();
    let mut want = vec![0u8; ps as usize];
    let mut got = vec![0u8; ps as usize];
    let mut out = Vec::new();
    for page in 0..pages {
        bo.read_at(offset + page * ps, &mut want)?;
        read_gpu(page, &mut got)?;
        if want != got {
            let first_byte = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(0);
            out.push(Mismatch { page, first_byte });
        }
    }
    Ok(out)
}
