//! Many BOs synced in one round trip ([`Connection::sync_many`]): a frame's
//! submission references many buffers, as a vmwgfx command submission
//! validates every BO it names at once.

use std::sync::Arc;
use std::time::Duration;

use cohmem_proto::limits::MAX_SYNC_BOS;
use cohmem_proto::{ErrorCode, Mechanism, Reply, Request};

use crate::bo::Bo;
use crate::connection::Connection;
use crate::error::{unexpected, ClientError};

/// What [`Connection::sync_many`] did for one BO.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BoSynced {
    /// Pages uploaded.
    pub pages: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Mechanism that found them.
    pub mechanism: Mechanism,
    /// Time the daemon spent on this BO.
    pub duration: Duration,
}

impl Connection {
    /// Syncs every BO of `bos` (all of this connection) in one round trip
    /// per 256 BOs, as [`Bo::sync`] would each. The result holds one entry
    /// per BO, in order: a BO the daemon could not sync (its upload failed;
    /// its pages stay dirty for the next sync) gets its error, and the
    /// others are synced all the same.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] when a BO belongs to another
    /// connection (nothing is synced then); the connection's errors as for
    /// any call.
    pub fn sync_many(&self, bos: &[&Bo]) -> Result<Vec<Result<BoSynced, ClientError>>, ClientError> {
        if let Some(i) = bos.iter().position(|b| !Arc::ptr_eq(&b.inner.conn, &self.inner)) {
            return Err(ClientError::InvalidArgument(format!(
                "BO {i} of the list belongs to another connection"
            )));
        }
        let mut out = Vec::with_capacity(bos.len());
        for chunk in bos.chunks(MAX_SYNC_BOS) {
            let build = || Request::SyncMany {
                flags: 0,
                bos: chunk.iter().map(|b| b.inner.handle()).collect(),
            };
            let outcomes = match self.inner.call_with(build, &[])? {
                (Reply::SyncManyDone(o), _) if o.len() == chunk.len() => o,
                (other, _) => return Err(unexpected("SYNC_MANY", &other)),
            };
            out.extend(outcomes.into_iter().map(|o| match o.error() {
                None => Ok(BoSynced {
                    pages: o.pages,
                    bytes: o.bytes,
                    mechanism: Mechanism::from_wire(o.mechanism).unwrap_or(Mechanism::None),
                    duration: Duration::from_nanos(o.duration_ns),
                }),
                Some(code) => Err(ClientError::Daemon {
                    request: "SYNC_MANY",
                    code,
                    message: describe(code),
                }),
            }));
        }
        Ok(out)
    }
}

/// The message for a BO's error code (the reply carries codes only).
fn describe(code: ErrorCode) -> String {
    match code {
        ErrorCode::Gpu => "upload failed (pages kept dirty)".into(),
        ErrorCode::NoSuchBo => "the BO handle is not open on this connection".into(),
        other => format!("this BO was not synced ({other:?})"),
    }
}
