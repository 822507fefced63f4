//! The display output's side of requests: SHOW (an image BO put on a
//! connector, or taken off), the damage rectangles a sync sends to the BO
//! on screen, and the final sync and commit when a shown BO's view goes
//! (DESIGN.md §8, [`crate::display`]).

use cohmem_proto::{ErrorCode, Reply, SyncReport, SHOW_HIDE};

use super::failure::{fail, Outcome};
use super::Session;
use crate::bo::Bo;
use crate::server::Daemon;

impl Session {
    /// SHOW: puts image BO `id` on the display output, or takes it off
    /// ([`SHOW_HIDE`]). Root, or a connection holding the BO, may do this.
    pub(super) async fn show(&self, id: u64, flags: u32) -> Outcome {
        if flags & !SHOW_HIDE != 0 {
            return Err(fail(
                ErrorCode::InvalidArgument,
                format!("unknown SHOW flags {flags:#x}"),
            ));
        }
        let bo = self.bo_by_id_with(id, "show", true)?;
        let display = self.daemon.display.clone().ok_or_else(|| {
            fail(
                ErrorCode::Unsupported,
                crate::display::DisplayError::NotConfigured.to_string(),
            )
        })?;
        let info = if flags & SHOW_HIDE != 0 {
            let (id, uid) = (bo.id, self.info.uid);
            let shown = self
                .blocking(move || display.hide(id, uid))
                .await?
                .map_err(|e| fail(ErrorCode::PermissionDenied, format!("SHOW: {e}")))?;
            if !shown {
                return Err(fail(ErrorCode::InvalidArgument, format!("BO {id} is not shown")));
            }
            crate::display::hidden_info()
        } else {
            let (d, uid) = (display.clone(), self.info.uid);
            self.blocking(move || d.show(bo, uid)).await?.map_err(|e| {
                let code = match e {
                    crate::display::DisplayError::NotShowable(_) => ErrorCode::InvalidArgument,
                    crate::display::DisplayError::NotMaster(_) | crate::display::DisplayError::Taken(_) => {
                        ErrorCode::PermissionDenied
                    }
                    _ => ErrorCode::Gpu,
                };
                fail(code, format!("SHOW: {e} (connectors: {})", display.connectors()))
            })?
        };
        Ok((
            Reply::Shown {
                connector: info.connector,
                mode_width: info.mode.0,
                mode_height: info.mode.1,
                damage_path: info.damage_path,
            },
            vec![],
        ))
    }
}

/// Sends a sync's rectangles to the display output if `bo` is shown.
pub(super) fn damage_display(daemon: &Daemon, bo: &Bo, report: &SyncReport) {
    if let (Some(display), Some(damage)) = (&daemon.display, &report.damage) {
        display.damaged(bo, &damage.rects);
    }
}

/// An unmap or a close of the BO on screen: everything written through
/// the view that goes is synced and committed now, whatever the pacing
/// interval, so no frame written before a close is lost.
pub(super) fn finish_shown(daemon: &Daemon, bo: &Bo) {
    let Some(display) = &daemon.display else {
        return;
    };
    if !display.is_shown(bo.id) {
        return;
    }
    match daemon.sync_engine().sync(bo, false) {
        Ok(report) => damage_display(daemon, bo, &report),
        Err(e) => {
            crate::limited!(warn, "final display sync failed", bo.id, bo = bo.id, error = %e, "final sync of the shown BO failed")
        }
    }
    display.flush(bo.id);
}
