//! The 8-byte frame header every message starts with: `u16 kind, u16 flags,
//! u32 request_id` (README §2).

use crate::codec::{DecodeError, Reader, Writer};
use crate::limits::MAX_FRAME;
use crate::HEADER_LEN;

/// Appends the header of a frame of `kind` answering or carrying request `id`.
pub(super) fn header(buf: &mut Vec<u8>, kind: u16, id: u32) {
    let mut w = Writer::new(buf);
    w.u16(kind);
    w.u16(0);
    w.u32(id);
}

/// Checks the frame's size and header; returns its kind, its request id and
/// a reader positioned at the start of the body.
pub(super) fn read_header(buf: &[u8]) -> Result<(u16, u32, Reader<'_>), DecodeError> {
    if buf.len() > MAX_FRAME {
        return Err(DecodeError::TooLong(buf.len()));
    }
    let mut r = Reader::new(buf);
    let kind = r.u16("kind")?;
    let flags = r.u16("flags")?;
    let id = r.u32("request id")?;
    if flags != 0 {
        return Err(DecodeError::BadFlags(flags));
    }
    Ok((kind, id, r))
}

/// Reads the request id of a frame without decoding it, so that an error
/// reply can answer even an undecodable request (0 when the header is short).
pub fn peek_request_id(buf: &[u8]) -> u32 {
    if buf.len() < HEADER_LEN {
        return 0;
    }
    u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]])
}

#[cfg(test)]
mod tests {
    use crate::{DecodeError, Request};

    #[test]
    fn header_flags_rejected() {
        let mut f = Request::Stats { flags: 0 }.encode(7);
        f[2] = 1;
        assert_eq!(Request::decode(&f), Err(DecodeError::BadFlags(1)));
    }
}
