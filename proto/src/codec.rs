//! Bounds-checked little-endian reader and writer used by every message.

use thiserror::Error;

/// Why a frame could not be decoded. Decoding stops at the first problem.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The frame ended before the field named here.
    #[error("frame truncated while reading {0}")]
    Truncated(&'static str),
    /// The frame is larger than `limits::MAX_FRAME`.
    #[error("frame of {0} bytes exceeds the {max} byte limit", max = crate::limits::MAX_FRAME)]
    TooLong(usize),
    /// The frame has bytes after the end of its body.
    #[error("{0} unexpected trailing bytes after the message body")]
    Trailing(usize),
    /// The kind field names no message of this direction.
    #[error("unknown message kind {0:#06x}")]
    UnknownKind(u16),
    /// Reserved header flags were set.
    #[error("reserved header flags {0:#06x} must be zero")]
    BadFlags(u16),
    /// A length or count is larger than its limit.
    #[error("{field} is {value}, limit {limit}")]
    OverLimit {
        /// Field name.
        field: &'static str,
        /// Value found on the wire.
        value: u64,
        /// Limit it exceeds.
        limit: u64,
    },
    /// A string is not valid UTF-8.
    #[error("{0} is not valid UTF-8")]
    BadUtf8(&'static str),
    /// A field holds a value that means nothing.
    #[error("{field} has invalid value {value}")]
    BadValue {
        /// Field name.
        field: &'static str,
        /// Value found on the wire.
        value: u64,
    },
}

/// Reads little-endian fields from a frame, never past its end.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated(field))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    /// Reads a little-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    /// Reads a little-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    /// Reads a little-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Reads a count and checks it against `limit` before anything is allocated.
    pub fn count_u16(&mut self, field: &'static str, limit: usize) -> Result<usize, DecodeError> {
        let n = self.u16(field)? as usize;
        check_limit(field, n, limit)?;
        Ok(n)
    }

    /// Reads a string of `len` bytes (length already read and checked).
    pub fn str(&mut self, len: usize, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8(field))
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails if any bytes are left: every message has an exact size.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Fails with [`DecodeError::OverLimit`] when `value > limit`.
pub fn check_limit(field: &'static str, value: usize, limit: usize) -> Result<(), DecodeError> {
    if value > limit {
        return Err(DecodeError::OverLimit {
            field,
            value: value as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

/// Appends little-endian fields to a frame buffer.
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// Appends to `buf`.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Self { buf }
    }
    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
