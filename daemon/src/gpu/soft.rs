//! The embedded software GPU: device memory emulated as a daemon-private
//! memfd per resource.
//!
//! Uploads copy from the BO's daemon mapping into the resource mapping, so
//! the "GPU copy" is a separate buffer that tests compare byte for byte with
//! the BO. [`GpuResource::export_fd`] hands out the memfd sealed with
//! `F_SEAL_FUTURE_WRITE`: an importer can map and read it but never write it.

use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};

use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::Memfd;

use super::{GpuBackend, GpuError, GpuResource};

/// The software backend.
#[derive(Debug, Default)]
pub struct SoftGpu;

impl SoftGpu {
    /// A new software backend.
    pub fn new() -> Self {
        Self
    }
}

impl GpuBackend for SoftGpu {
    fn name(&self) -> String {
        "soft".into()
    }

    fn create_resource(&self, size: u64) -> Result<Box<dyn GpuResource>, GpuError> {
        let memfd = Memfd::create("cohmem-soft-vram", size, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)?;
        let mapping = SharedMapping::map(memfd.as_fd(), size, 0, true)?;
        // Writable mapping first, then forbid any new write access.
        memfd.add_seals(libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL)?;
        Ok(Box::new(SoftResource { memfd, mapping }))
    }
}

struct SoftResource {
    memfd: Memfd,
    mapping: SharedMapping,
}

impl GpuResource for SoftResource {
    fn size(&self) -> u64 {
        self.memfd.size()
    }

    fn upload(&self, src: &SharedMapping, src_base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
        for r in runs {
            let len = (r.end - r.start) as usize;
            src.copy_to((src_base + r.start) as usize, &self.mapping, r.start as usize, len)?;
        }
        Ok(())
    }

    fn download(&self, dst: &SharedMapping, dst_base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
        for r in runs {
            let len = (r.end - r.start) as usize;
            self.mapping
                .copy_to(r.start as usize, dst, (dst_base + r.start) as usize, len)?;
        }
        Ok(())
    }

    fn export_fd(&self) -> Result<OwnedFd, GpuError> {
        Ok(self.memfd.try_clone_fd()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_copies_only_the_runs_and_export_is_read_only() {
        let ps = cohmem_sys::page_size();
        let bo = Memfd::create_sealed("bo", 4 * ps).unwrap();
        let src = SharedMapping::map(bo.as_fd(), 4 * ps, 0, true).unwrap();
        src.fill(0, (4 * ps) as usize, 0xaa).unwrap();
        let res = SoftGpu::new().create_resource(4 * ps).unwrap();
        let one_page_run = std::iter::once(ps..2 * ps).collect::<Vec<_>>();
        res.upload(&src, 0, &one_page_run).unwrap();
        let fd = res.export_fd().unwrap();
        let view = SharedMapping::map(fd.as_fd(), 4 * ps, 0, false).unwrap();
        let mut b = [0u8; 1];
        view.read_at(ps as usize, &mut b).unwrap();
        assert_eq!(b[0], 0xaa);
        view.read_at(0, &mut b).unwrap();
        assert_eq!(b[0], 0);
        assert!(
            SharedMapping::map(fd.as_fd(), 4 * ps, 0, true).is_err(),
            "export must not be writable"
        );
    }
}
