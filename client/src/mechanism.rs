//! Switching this process's write-tracking mechanism while its mappings
//! stay in use: [`Connection::set_mechanism`] and what it did
//! ([`MechanismSwitch`]).

use cohmem_proto::{Mechanism, Reply, Request};

use crate::attach::watch_daemon;
use crate::connection::Connection;
use crate::error::{unexpected, ClientError};

/// What [`Connection::set_mechanism`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MechanismSwitch {
    /// Mechanism before.
    pub from: Mechanism,
    /// Mechanism now.
    pub to: Mechanism,
    /// Whether the new mechanism is exact under concurrent writers.
    pub exact: bool,
    /// Mappings (of every connection of this process) moved.
    pub views: u32,
    /// Pages the switch marked dirty that were not.
    pub extra_pages: u64,
}

impl Connection {
    /// Switches this process's write tracking to `mechanism` while its
    /// mappings stay mapped and in use. The mechanism belongs to the
    /// process, not to this connection: every mapping of every connection
    /// of this process to this daemon moves. The daemon moves every
    /// mapping of the process to the new mechanism under quiesce and marks
    /// each one wholly dirty (writes made during the switch cannot be proven
    /// absent), so the next sync of each BO uploads its mapped pages once;
    /// no write is lost. Fails with
    /// [`ErrorCode::Unsupported`](cohmem_proto::ErrorCode::Unsupported) (and
    /// the reason) when the kernel or this process cannot offer the
    /// mechanism.
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `Unsupported` as above; with
    /// `Kernel` when moving a mapping failed (the mappings stay under the
    /// old mechanism); [`ClientError::Sys`] when this process cannot
    /// create the new mechanism's userfaultfd.
    pub fn set_mechanism(&self, mechanism: Mechanism) -> Result<MechanismSwitch, ClientError> {
        let pt = self.inner.tracking()?;
        let _no_mapping_changes = pt.switch_guard();
        let mut fetch = || watch_daemon(&mut |r, f| self.inner.call(r, f));
        // The daemon moves mappings to the synchronous uffd and protects
        // them during the switch: the guard that undoes that if the daemon
        // dies half way must be watching before.
        // Likewise, mappings moved to a WP_ASYNC uffd with mapping-change
        // messages need the guard that reads them if the daemon dies.
        pt.guard_for(mechanism, &mut fetch)?;
        let req = Request::SetMechanism { mechanism };
        match self.inner.call(&req, &[])? {
            (
                Reply::MechanismSet {
                    from,
                    to,
                    exact,
                    views,
                    extra_pages,
                },
                _,
            ) => {
                pt.set_mechanism(to, &mut fetch)?;
                Ok(MechanismSwitch {
                    from,
                    to,
                    exact,
                    views,
                    extra_pages,
                })
            }
            (other, _) => Err(unexpected("SET_MECHANISM", &other)),
        }
    }

    /// The mechanism the daemon tracks this process with (attaching the
    /// process first if needed).
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `Unsupported` when the daemon cannot
    /// track this process at all (no mechanism its kernel offers);
    /// [`ClientError::Sys`] when creating the process's userfaultfd or
    /// opening its pagemap fails.
    pub fn mechanism(&self) -> Result<Mechanism, ClientError> {
        Ok(self.inner.tracking()?.mechanism())
    }
}
