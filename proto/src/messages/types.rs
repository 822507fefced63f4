//! The enums carried in message fields, with their wire values: how writes
//! are observed ([`Mechanism`], README §5.3), vmwgfx's tracking method
//! ([`Method`], §5.4), an operator's per-BO policy ([`BoPolicy`], §5.6) and
//! the ERROR reply's code ([`ErrorCode`], §5.5).

use crate::codec::DecodeError;

/// How a client process's writes are observed. The numeric values are the
/// wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Mechanism {
    /// No tracking attached (nothing mapped yet).
    None = 0,
    /// userfaultfd WP_ASYNC + PAGEMAP_SCAN (Linux >= 6.7).
    UffdAsync = 1,
    /// Synchronous userfaultfd write-protect faults resolved by the daemon.
    UffdSync = 2,
    /// clear_refs + pagemap bit 55.
    SoftDirty = 3,
    /// No tracking: every sync copies the whole BO.
    Full = 4,
    /// The client reports damage ranges itself.
    Explicit = 5,
}

impl Mechanism {
    /// Decodes the wire value.
    pub fn from_wire(v: u16) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => Self::None,
            1 => Self::UffdAsync,
            2 => Self::UffdSync,
            3 => Self::SoftDirty,
            4 => Self::Full,
            5 => Self::Explicit,
            _ => {
                return Err(DecodeError::BadValue {
                    field: "mechanism",
                    value: v.into(),
                })
            }
        })
    }

    /// The name used on command lines and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::UffdAsync => "uffd-async",
            Self::UffdSync => "uffd-sync",
            Self::SoftDirty => "soft-dirty",
            Self::Full => "full",
            Self::Explicit => "explicit",
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// vmwgfx's per-BO tracking method (spec §2). The numeric values are the
/// wire encoding; 0 means the BO has no tracker (no resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Method {
    /// No tracker: no resource is bound to the BO.
    None = 0,
    /// Harvest written state by scanning (hardware dirty bits).
    PageTable = 1,
    /// Write-protect; record on first write.
    MkWrite = 2,
}

impl Method {
    /// Decodes the wire value.
    pub fn from_wire(v: u16) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(Self::None),
            1 => Ok(Self::PageTable),
            2 => Ok(Self::MkWrite),
            _ => Err(DecodeError::BadValue {
                field: "method",
                value: v.into(),
            }),
        }
    }

    /// Name for logs and tools.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::PageTable => "pagetable",
            Self::MkWrite => "mkwrite",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How an operator asked one BO to be tracked (SET_POLICY,
/// `cohmemctl set-policy`). The numeric values are the wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u16)]
pub enum BoPolicy {
    /// The daemon's own choice: vmwgfx's state machine, or `--methods auto`,
    /// with dense-write pauses.
    #[default]
    Auto = 0,
    /// MKWRITE, never switched and never paused.
    MkWrite = 1,
    /// PAGETABLE, never switched and never paused.
    PageTable = 2,
    /// No tracking: every sync uploads the whole BO (the views are
    /// unprotected where their mechanism allows).
    Full = 3,
    /// No tracking: at every sync the daemon compares the BO with its last
    /// uploaded copy (a shadow it keeps, as a VNC server keeps a shadow
    /// surface) and uploads the pages that differ. Costs the daemon a copy
    /// of the BO's size; no write faults, no page-table scans.
    Shadow = 4,
}

impl BoPolicy {
    /// Every policy, in wire order.
    pub const ALL: [Self; 5] = [Self::Auto, Self::MkWrite, Self::PageTable, Self::Full, Self::Shadow];

    /// Decodes the wire value.
    pub fn from_wire(v: u16) -> Result<Self, DecodeError> {
        Self::ALL.get(usize::from(v)).copied().ok_or(DecodeError::BadValue {
            field: "policy",
            value: v.into(),
        })
    }

    /// The name used on command lines and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::MkWrite => "mkwrite",
            Self::PageTable => "pagetable",
            Self::Full => "full",
            Self::Shadow => "shadow",
        }
    }

    /// Parses a [`BoPolicy::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for BoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Error codes carried by the ERROR reply. Unknown codes from a newer peer
/// decode as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame could not be decoded.
    BadFrame,
    /// No protocol version in common.
    UnsupportedVersion,
    /// A request other than HELLO came before HELLO, or HELLO came twice.
    NotNegotiated,
    /// The message kind is not a request this daemon knows.
    UnknownRequest,
    /// The wrong number or type of file descriptors came with the request.
    BadFds,
    /// The BO handle is not open on this connection.
    NoSuchBo,
    /// The view is not mapped on this connection.
    NoSuchView,
    /// An argument is out of range (alignment, bounds, overlap).
    InvalidArgument,
    /// A size exceeds the daemon's configured maximum.
    TooLarge,
    /// A per-connection or per-user limit was reached.
    LimitExceeded,
    /// ATTACH_MM without fds, but the daemon has no subscription for this process.
    NeedMmFds,
    /// MAP before ATTACH_MM.
    NoMm,
    /// The requested mechanism or feature is not available.
    Unsupported,
    /// A kernel operation failed (the message names it and the errno).
    Kernel,
    /// The GPU backend failed.
    Gpu,
    /// Anything else inside the daemon.
    Internal,
    /// The peer's uid is not allowed to use this daemon.
    PermissionDenied,
    /// A code this crate does not know.
    Other(u16),
}

impl ErrorCode {
    /// Wire value.
    pub fn to_wire(self) -> u16 {
        match self {
            Self::BadFrame => 1,
            Self::UnsupportedVersion => 2,
            Self::NotNegotiated => 3,
            Self::UnknownRequest => 4,
            Self::BadFds => 5,
            Self::NoSuchBo => 6,
            Self::NoSuchView => 7,
            Self::InvalidArgument => 8,
            Self::TooLarge => 9,
            Self::LimitExceeded => 10,
            Self::NeedMmFds => 11,
            Self::NoMm => 12,
            Self::Unsupported => 13,
            Self::Kernel => 14,
            Self::Gpu => 15,
            Self::Internal => 16,
            Self::PermissionDenied => 17,
            Self::Other(v) => v,
        }
    }

    /// Decodes a wire value; unknown values are kept as [`ErrorCode::Other`].
    pub fn from_wire(v: u16) -> Self {
        match v {
            1 => Self::BadFrame,
            2 => Self::UnsupportedVersion,
            3 => Self::NotNegotiated,
            4 => Self::UnknownRequest,
            5 => Self::BadFds,
            6 => Self::NoSuchBo,
            7 => Self::NoSuchView,
            8 => Self::InvalidArgument,
            9 => Self::TooLarge,
            10 => Self::LimitExceeded,
            11 => Self::NeedMmFds,
            12 => Self::NoMm,
            13 => Self::Unsupported,
            14 => Self::Kernel,
            15 => Self::Gpu,
            16 => Self::Internal,
            17 => Self::PermissionDenied,
            other => Self::Other(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_round_trip() {
        for v in 0..40u16 {
            assert_eq!(ErrorCode::from_wire(v).to_wire(), v);
        }
    }
}
