//! The byte layout of every request (README §4.1): [`Request::encode`] and
//! [`Request::decode`]. Bodies are fixed-size little-endian fields; decoding
//! rejects unknown kinds, bad enum values, non-zero reserved fields and
//! trailing bytes.

use super::frame::{header, read_header};
use super::kind;
use super::request::{ByteRange, Request};
use super::types::{BoPolicy, Mechanism};
use crate::codec::{DecodeError, Reader, Writer};
use crate::image::ImageInfo;
use crate::limits::{MAX_DAMAGE_RANGES, MAX_SYNC_BOS};

/// Reads a `u16` reserved field, which must be zero.
fn read_reserved(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    let reserved = r.u16("reserved")?;
    if reserved != 0 {
        return Err(DecodeError::BadValue {
            field: "reserved",
            value: u64::from(reserved),
        });
    }
    Ok(())
}

impl Request {
    /// Encodes the request as one frame.
    // One arm per request kind, each the body's fields in wire order; kept
    // as one table (not split by family) so it reads against `decode` and
    // README §4.1 line by line.
    pub fn encode(&self, id: u32) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        header(&mut buf, self.kind(), id);
        let mut w = Writer::new(&mut buf);
        match *self {
            Self::Hello {
                min_version,
                max_version,
                caps,
            } => {
                w.u16(min_version);
                w.u16(max_version);
                w.u64(caps);
            }
            Self::CreateBo { size, flags } => {
                w.u64(size);
                w.u32(flags);
            }
            Self::ImportBo => {}
            Self::ImportImage { ref image } => image.write(&mut w),
            Self::CreateImage {
                width,
                height,
                fourcc,
                flags,
            } => {
                w.u32(width);
                w.u32(height);
                w.u32(fourcc);
                w.u32(flags);
            }
            Self::AttachMm {
                token,
                uffd_features,
                flags,
            } => {
                w.u64(token);
                w.u64(uffd_features);
                w.u32(flags);
            }
            Self::Map { bo, addr, len, offset } => {
                w.u32(bo);
                w.u64(addr);
                w.u64(len);
                w.u64(offset);
            }
            Self::Unmap { bo, view } => {
                w.u32(bo);
                w.u32(view);
            }
            Self::Sync { bo, flags } | Self::Readback { bo, flags } => {
                w.u32(bo);
                w.u32(flags);
            }
            Self::Destroy { bo } => w.u32(bo),
            Self::Stats { flags } => w.u32(flags),
            Self::ExportResource { bo, index }
            | Self::ReleaseResource { bo, index }
            | Self::ClearResource { bo, index } => {
                w.u32(bo);
                w.u32(index);
            }
            Self::AddResource { bo, offset, len } | Self::Damage { bo, offset, len } => {
                w.u32(bo);
                w.u64(offset);
                w.u64(len);
            }
            Self::DamageRanges { bo, flags, ref ranges } => {
                // The caller keeps to MAX_DAMAGE_RANGES (the client library
                // splits longer lists); a longer list is written whole and
                // refused by the decoder, never cut silently.
                w.u32(bo);
                w.u32(flags);
                w.u16(u16::try_from(ranges.len()).unwrap_or(u16::MAX));
                w.u16(0);
                for range in ranges {
                    w.u64(range.offset);
                    w.u64(range.len);
                }
            }
            Self::SyncMany { flags, ref bos } => {
                // As DAMAGE_RANGES: a longer list is written whole and
                // refused by the decoder (the client library refuses it first).
                w.u32(flags);
                w.u16(u16::try_from(bos.len()).unwrap_or(u16::MAX));
                w.u16(0);
                for &bo in bos {
                    w.u32(bo);
                }
            }
            Self::Scan { bo } | Self::ClearAll { bo } | Self::DirtyState { bo } => w.u32(bo),
            Self::Snapshot { id, flags } | Self::Show { id, flags } => {
                w.u64(id);
                w.u32(flags);
            }
            Self::SetMechanism { mechanism } => {
                w.u16(mechanism as u16);
                w.u16(0);
            }
            Self::SetPolicy { id, policy } => {
                w.u64(id);
                w.u16(policy as u16);
                w.u16(0);
            }
            Self::Metrics | Self::WatchDaemon => {}
            Self::Transfer { bo, index, flags } => {
                w.u32(bo);
                w.u32(index);
                w.u32(flags);
            }
        }
        buf
    }

    /// Decodes one frame into its request id and request.
    // One arm per request kind, each the body's fields in wire order; kept
    // as one table for the same reason as `encode`.
    pub fn decode(buf: &[u8]) -> Result<(u32, Request), DecodeError> {
        let (k, id, mut r) = read_header(buf)?;
        let req = match k {
            kind::HELLO => Self::Hello {
                min_version: r.u16("min_version")?,
                max_version: r.u16("max_version")?,
                caps: r.u64("caps")?,
            },
            kind::CREATE_BO => Self::CreateBo {
                size: r.u64("size")?,
                flags: r.u32("flags")?,
            },
            kind::IMPORT_BO => Self::ImportBo,
            kind::SHOW => Self::Show {
                id: r.u64("id")?,
                flags: r.u32("flags")?,
            },
            kind::IMPORT_IMAGE => Self::ImportImage {
                image: ImageInfo::read(&mut r)?,
            },
            kind::CREATE_IMAGE => Self::CreateImage {
                width: r.u32("width")?,
                height: r.u32("height")?,
                fourcc: r.u32("fourcc")?,
                flags: r.u32("flags")?,
            },
            kind::ATTACH_MM => Self::AttachMm {
                token: r.u64("token")?,
                uffd_features: r.u64("uffd_features")?,
                flags: r.u32("flags")?,
            },
            kind::MAP => Self::Map {
                bo: r.u32("bo")?,
                addr: r.u64("addr")?,
                len: r.u64("len")?,
                offset: r.u64("offset")?,
            },
            kind::UNMAP => Self::Unmap {
                bo: r.u32("bo")?,
                view: r.u32("view")?,
            },
            kind::SYNC => Self::Sync {
                bo: r.u32("bo")?,
                flags: r.u32("flags")?,
            },
            kind::DESTROY => Self::Destroy { bo: r.u32("bo")? },
            kind::STATS => Self::Stats { flags: r.u32("flags")? },
            kind::EXPORT_RESOURCE => Self::ExportResource {
                bo: r.u32("bo")?,
                index: r.u32("index")?,
            },
            kind::ADD_RESOURCE => Self::AddResource {
                bo: r.u32("bo")?,
                offset: r.u64("offset")?,
                len: r.u64("len")?,
            },
            kind::RELEASE_RESOURCE => Self::ReleaseResource {
                bo: r.u32("bo")?,
                index: r.u32("index")?,
            },
            kind::SCAN => Self::Scan { bo: r.u32("bo")? },
            kind::TRANSFER => Self::Transfer {
                bo: r.u32("bo")?,
                index: r.u32("index")?,
                flags: r.u32("flags")?,
            },
            kind::CLEAR_RESOURCE => Self::ClearResource {
                bo: r.u32("bo")?,
                index: r.u32("index")?,
            },
            kind::CLEAR_ALL => Self::ClearAll { bo: r.u32("bo")? },
            kind::DIRTY_STATE => Self::DirtyState { bo: r.u32("bo")? },
            kind::SNAPSHOT => Self::Snapshot {
                id: r.u64("id")?,
                flags: r.u32("flags")?,
            },
            kind::READBACK => Self::Readback {
                bo: r.u32("bo")?,
                flags: r.u32("flags")?,
            },
            kind::SET_MECHANISM => {
                let mechanism = Mechanism::from_wire(r.u16("mechanism")?)?;
                read_reserved(&mut r)?;
                Self::SetMechanism { mechanism }
            }
            kind::DAMAGE => Self::Damage {
                bo: r.u32("bo")?,
                offset: r.u64("offset")?,
                len: r.u64("len")?,
            },
            kind::DAMAGE_RANGES => {
                let bo = r.u32("bo")?;
                let flags = r.u32("flags")?;
                let n = r.count_u16("range_count", MAX_DAMAGE_RANGES)?;
                read_reserved(&mut r)?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    ranges.push(ByteRange {
                        offset: r.u64("offset")?,
                        len: r.u64("len")?,
                    });
                }
                Self::DamageRanges { bo, flags, ranges }
            }
            kind::SYNC_MANY => {
                let flags = r.u32("flags")?;
                let n = r.count_u16("bo_count", MAX_SYNC_BOS)?;
                read_reserved(&mut r)?;
                let mut bos = Vec::with_capacity(n);
                for _ in 0..n {
                    bos.push(r.u32("bo")?);
                }
                Self::SyncMany { flags, bos }
            }
            kind::SET_POLICY => {
                let id = r.u64("id")?;
                let policy = BoPolicy::from_wire(r.u16("policy")?)?;
                read_reserved(&mut r)?;
                Self::SetPolicy { id, policy }
            }
            kind::METRICS => Self::Metrics,
            kind::WATCH_DAEMON => Self::WatchDaemon,
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok((id, req))
    }
}

#[cfg(test)]
mod tests {
    use crate::{DecodeError, Request};

    #[test]
    fn trailing_bytes_rejected() {
        let mut f = Request::Destroy { bo: 3 }.encode(1);
        f.push(0);
        assert_eq!(Request::decode(&f), Err(DecodeError::Trailing(1)));
    }
}
