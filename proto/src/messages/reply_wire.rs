//! The byte layout of every reply (README §4.2): [`Reply::encode`] and
//! [`Reply::decode`]. The report bodies (SYNC_DONE, STATS, SCANNED,
//! DIRTY_STATE, SNAPSHOT) are laid out by their structs in `reports` and
//! `stats`; the rest are fixed fields and short strings here.

use super::frame::{header, read_header};
use super::kind;
use super::reply::Reply;
use super::reports::{DirtyStateReport, ScanReport, SnapshotReport, SyncReport};
use super::stats::StatsReport;
use super::sync_many::BoSyncOutcome;
use super::types::{BoPolicy, ErrorCode, Mechanism};
use crate::codec::{check_limit, truncate_utf8, DecodeError, Writer};
use crate::image::ImageInfo;
use crate::limits::{MAX_ERROR_MESSAGE, MAX_NAME, MAX_SYNC_BOS};

impl Reply {
    /// Encodes the reply as one frame. Lists and strings longer than the
    /// limits are cut (and flagged as truncated where the format has a flag).
    // One arm per reply kind, each the body's fields in wire order (report
    // bodies delegate to their structs); kept as one table so it reads
    // against `decode` and README §4.2 line by line.
    pub fn encode(&self, id: u32) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        header(&mut buf, self.kind(), id);
        let mut w = Writer::new(&mut buf);
        match self {
            Self::Hello {
                version,
                caps,
                max_frame,
                page_size,
                max_bo_size,
            } => {
                w.u16(*version);
                w.u16(0);
                w.u64(*caps);
                w.u32(*max_frame);
                w.u32(*page_size);
                w.u64(*max_bo_size);
            }
            Self::Bo { bo, size, id, image } => {
                w.u32(*bo);
                w.u64(*size);
                w.u64(*id);
                ImageInfo::write_optional(image, &mut w);
            }
            Self::MmAttached {
                mechanism,
                exact,
                joined,
                mm_id,
            } => {
                w.u16(*mechanism as u16);
                w.u16(u16::from(*exact) | (u16::from(*joined) << 1));
                w.u64(*mm_id);
            }
            Self::Mapped { view } => w.u32(*view),
            Self::Ok => {}
            Self::SyncDone(s) => s.write(&mut w),
            Self::SyncManyDone(outcomes) => {
                // The daemon answers with one outcome per requested BO, at
                // most MAX_SYNC_BOS; more are cut.
                let n = outcomes.len().min(MAX_SYNC_BOS);
                w.u16(n as u16);
                for o in &outcomes[..n] {
                    o.write(&mut w);
                }
            }
            Self::Stats(s) => s.write(&mut w),
            Self::Resource {
                size,
                offset,
                pitch,
                image,
            } => {
                w.u64(*size);
                w.u64(*offset);
                w.u32(*pitch);
                ImageInfo::write_optional(image, &mut w);
            }
            Self::ReadbackDone {
                synced_pages,
                bytes,
                duration_ns,
            } => {
                w.u64(*synced_pages);
                w.u64(*bytes);
                w.u64(*duration_ns);
            }
            Self::ResourceAdded { index } => w.u32(*index),
            Self::PolicySet { previous, method } => {
                w.u16(*previous as u16);
                w.u16(*method);
            }
            Self::Metrics { len } => w.u64(*len),
            Self::Shown {
                connector,
                mode_width,
                mode_height,
                damage_path,
            } => {
                w.u32(*mode_width);
                w.u32(*mode_height);
                w.u16(*damage_path);
                let name = truncate_utf8(connector, MAX_NAME);
                w.u8(name.len() as u8);
                w.bytes(name.as_bytes());
            }
            Self::DaemonProcess => {}
            Self::Snapshot(s) => s.write(&mut w),
            Self::MechanismSet {
                from,
                to,
                exact,
                views,
                extra_pages,
            } => {
                w.u16(*from as u16);
                w.u16(*to as u16);
                w.u8(u8::from(*exact));
                w.u32(*views);
                w.u64(*extra_pages);
            }
            Self::Scanned(s) => s.write(&mut w),
            Self::DirtyState(d) => d.write(&mut w),
            Self::Error { code, message } => {
                let m = truncate_utf8(message, MAX_ERROR_MESSAGE);
                w.u16(code.to_wire());
                w.u16(m.len() as u16);
                w.bytes(m.as_bytes());
            }
        }
        buf
    }

    /// Decodes one frame into its request id and reply.
    // One arm per reply kind, each the body's fields in wire order; kept as
    // one table for the same reason as `encode`.
    pub fn decode(buf: &[u8]) -> Result<(u32, Reply), DecodeError> {
        let (k, id, mut r) = read_header(buf)?;
        let reply = match k {
            kind::R_HELLO => {
                let version = r.u16("version")?;
                let _reserved = r.u16("reserved")?;
                Self::Hello {
                    version,
                    caps: r.u64("caps")?,
                    max_frame: r.u32("max_frame")?,
                    page_size: r.u32("page_size")?,
                    max_bo_size: r.u64("max_bo_size")?,
                }
            }
            kind::R_BO => Self::Bo {
                bo: r.u32("bo")?,
                size: r.u64("size")?,
                id: r.u64("id")?,
                image: ImageInfo::read_optional(&mut r)?,
            },
            kind::R_MM_ATTACHED => {
                let mechanism = Mechanism::from_wire(r.u16("mechanism")?)?;
                let flags = r.u16("flags")?;
                Self::MmAttached {
                    mechanism,
                    exact: flags & 1 != 0,
                    joined: flags & 2 != 0,
                    mm_id: r.u64("mm_id")?,
                }
            }
            kind::R_MAPPED => Self::Mapped { view: r.u32("view")? },
            kind::R_OK => Self::Ok,
            kind::R_SYNC_DONE => Self::SyncDone(SyncReport::read(&mut r)?),
            kind::R_SYNC_MANY_DONE => {
                let n = r.count_u16("outcome_count", MAX_SYNC_BOS)?;
                let mut outcomes = Vec::with_capacity(n);
                for _ in 0..n {
                    outcomes.push(BoSyncOutcome::read(&mut r)?);
                }
                Self::SyncManyDone(outcomes)
            }
            kind::R_STATS => Self::Stats(StatsReport::read(&mut r)?),
            kind::R_RESOURCE => Self::Resource {
                size: r.u64("size")?,
                offset: r.u64("offset")?,
                pitch: r.u32("pitch")?,
                image: ImageInfo::read_optional(&mut r)?,
            },
            kind::R_READBACK_DONE => Self::ReadbackDone {
                synced_pages: r.u64("synced_pages")?,
                bytes: r.u64("bytes")?,
                duration_ns: r.u64("duration_ns")?,
            },
            kind::R_SNAPSHOT => Self::Snapshot(SnapshotReport::read(&mut r)?),
            kind::R_MECHANISM_SET => Self::MechanismSet {
                from: Mechanism::from_wire(r.u16("from")?)?,
                to: Mechanism::from_wire(r.u16("to")?)?,
                exact: r.u8("exact")? != 0,
                views: r.u32("views")?,
                extra_pages: r.u64("extra_pages")?,
            },
            kind::R_RESOURCE_ADDED => Self::ResourceAdded { index: r.u32("index")? },
            kind::R_POLICY_SET => Self::PolicySet {
                previous: BoPolicy::from_wire(r.u16("previous")?)?,
                method: r.u16("method")?,
            },
            kind::R_METRICS => Self::Metrics { len: r.u64("len")? },
            kind::R_SHOWN => {
                let mode_width = r.u32("mode_width")?;
                let mode_height = r.u32("mode_height")?;
                let damage_path = r.u16("damage_path")?;
                let len = r.u8("connector length")? as usize;
                check_limit("connector length", len, MAX_NAME)?;
                Self::Shown {
                    connector: r.str(len, "connector")?,
                    mode_width,
                    mode_height,
                    damage_path,
                }
            }
            kind::R_DAEMON_PROCESS => Self::DaemonProcess,
            kind::R_SCANNED => Self::Scanned(ScanReport::read(&mut r)?),
            kind::R_DIRTY_STATE => Self::DirtyState(DirtyStateReport::read(&mut r)?),
            kind::R_ERROR => {
                let code = ErrorCode::from_wire(r.u16("code")?);
                let len = r.u16("message length")? as usize;
                check_limit("message length", len, MAX_ERROR_MESSAGE)?;
                Self::Error {
                    code,
                    message: r.str(len, "message")?,
                }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok((id, reply))
    }
}

#[cfg(test)]
mod tests {
    use crate::limits::MAX_ERROR_MESSAGE;
    use crate::{ErrorCode, Reply};

    #[test]
    fn long_error_message_is_cut_on_a_char_boundary() {
        let msg = "é".repeat(MAX_ERROR_MESSAGE);
        let f = Reply::error(ErrorCode::Internal, msg).encode(9);
        let (id, r) = Reply::decode(&f).unwrap();
        assert_eq!(id, 9);
        match r {
            Reply::Error { message, .. } => {
                assert!(message.len() <= MAX_ERROR_MESSAGE);
                assert!(message.chars().all(|c| c == 'é'));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
