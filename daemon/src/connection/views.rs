//! Views and the client process's subscription: ATTACH_MM (seed 003: one
//! subscription per client process, which its connections join), MAP (a
//! view proven to map the BO's memfd, attached to the process's
//! write-tracking mechanism as vmwgfx attaches a mapping to its BO's dirty
//! tracking), and UNMAP (the view's writes harvested as it goes).

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::{
    ErrorCode, Mechanism, Reply, ATTACH_MECHANISM_SHIFT, ATTACH_SYNC_ALL_FAULTS, ATTACH_WITH_CLEAR_REFS,
    ATTACH_WITH_FDS, ATTACH_WITH_MAPS, ATTACH_WITH_SYNC_UFFD,
};

use super::display::finish_shown;
use super::failure::{fail, ok, Failure, Outcome};
use super::Session;
use crate::bo::{Bo, MmSubscription, View};
use crate::mm::{MechanismOffer, MmKey};
use crate::tracker::TrackError;

impl Session {
    /// ATTACH_MM: joins this client process's subscription (seed 003: one
    /// per process, shared by its connections), or creates it with the
    /// mechanism chosen from what the client offered.
    pub(super) fn attach_mm(&mut self, token: u64, uffd_features: u64, flags: u32, fds: Vec<OwnedFd>) -> Outcome {
        check_attach_flags(flags)?;
        let key = MmKey {
            pid: self.info.pid,
            token,
        };
        if let Some(joined) = self.join_subscription(key) {
            return joined;
        }
        let requested = (flags >> ATTACH_MECHANISM_SHIFT) & 0xff;
        let requested = Mechanism::from_wire(requested as u16).map_err(|_| {
            fail(
                ErrorCode::InvalidArgument,
                format!("unknown mechanism {requested} requested"),
            )
        })?;
        let wanted = self.wanted_mechanism(requested);
        let needs_no_fds = matches!(wanted, Some(Mechanism::Full | Mechanism::Explicit));
        if flags & (ATTACH_WITH_FDS | ATTACH_WITH_SYNC_UFFD) == 0 && !needs_no_fds {
            return Err(fail(
                ErrorCode::NeedMmFds,
                "no subscription for this process yet: send ATTACH_MM with its userfaultfd(s) and pagemap fd",
            ));
        }
        let offer = offer_of(flags, uffd_features, fds);
        let choice = self.choose_mechanism(
            requested,
            offer.asynchronous.is_some(),
            offer.synchronous.is_some(),
            flags,
            uffd_features,
        )?;
        self.subscribe(key, choice, offer)
    }

    /// ATTACH_MM's answer when there is a subscription already: this
    /// connection's own (for `key`, or a refusal for another), or the one
    /// another connection of the process made, which this one joins.
    fn join_subscription(&mut self, key: MmKey) -> Option<Outcome> {
        if let Some(mm) = &self.mm {
            if mm.key == key {
                return Some(ok(attached(mm, true)));
            }
            return Some(Err(fail(
                ErrorCode::InvalidArgument,
                "this connection is already attached to another subscription",
            )));
        }
        let existing = self.daemon.mms.get(key)?;
        let reply = attached(&existing, true);
        self.mm = Some(existing);
        Some(ok(reply))
    }

    /// Builds the `choice` mechanism from `offer` and registers the new
    /// subscription (or joins one a racing connection made first).
    fn subscribe(&mut self, key: MmKey, choice: Mechanism, offer: MechanismOffer) -> Outcome {
        let tracker = self.build_tracker(&offer, choice, self.info.pid)?;
        let (mm, joined) = self
            .daemon
            .mms
            .get_or_insert(key, self.info.uid, tracker, offer, |mm| self.daemon.faults.register(mm))
            .map_err(|e| fail(ErrorCode::Kernel, format!("registering with the fault service: {e}")))?;
        crate::limited!(
            info,
            "client process attached",
            self.info.id,
            conn = self.info.id,
            mm = mm.id,
            pid = key.pid,
            mechanism = %mm.tracker().mechanism(),
            joined,
            "client process attached"
        );
        let reply = attached(&mm, joined);
        self.mm = Some(mm);
        ok(reply)
    }

    /// MAP: a view of BO handle `bo` at `addr`, tracked by this process's
    /// mechanism once it is proven to map the BO's memfd at `offset`.
    pub(super) async fn map(&mut self, bo: u32, addr: u64, len: u64, offset: u64) -> Outcome {
        let mm = self
            .mm
            .clone()
            .ok_or_else(|| fail(ErrorCode::NoMm, "MAP before ATTACH_MM"))?;
        let bo_arc = self.handle(bo)?.bo.clone();
        let ps = bo_arc.page_size;
        check_map_range(&bo_arc, addr, len, offset)?;
        self.check_view_room()?;
        let view_id = self.fresh_view_id();
        let view = Arc::new(View::new(
            view_id,
            Arc::downgrade(&bo_arc),
            mm.clone(),
            addr,
            len,
            offset,
            ps,
        ));
        // On the blocking pool, as one step with respect to mechanism
        // switches (the view is attached to the mechanism that is current
        // while it is added): an exclusive sync may hold the structural lock
        // for a whole upload.
        let (adder, added, attach_mm) = (bo_arc.clone(), view.clone(), mm.clone());
        self.blocking(move || add_view(&attach_mm, &adder, added, bo, addr, len, offset))
            .await??;
        if let Some(h) = self.handles.get_mut(&bo) {
            h.views.insert(view_id, view);
        }
        self.info.views.fetch_add(1, Ordering::Relaxed);
        ok(Reply::Mapped { view: view_id })
    }

    /// Fails when this connection cannot map another view.
    fn check_view_room(&self) -> Result<(), Failure> {
        let total_views: usize = self.handles.values().map(|h| h.views.len()).sum();
        if total_views >= self.daemon.config.max_views_per_connection {
            return Err(fail(
                ErrorCode::LimitExceeded,
                format!(
                    "connection already holds {total_views} views (limit max_views_per_connection = {})",
                    self.daemon.config.max_views_per_connection
                ),
            ));
        }
        Ok(())
    }

    pub(super) async fn unmap(&mut self, bo: u32, view: u32) -> Outcome {
        let handle = self.handles.get_mut(&bo).ok_or_else(|| {
            fail(
                ErrorCode::NoSuchBo,
                format!("BO handle {bo} is not open on this connection"),
            )
        })?;
        let v = handle.views.remove(&view).ok_or_else(|| {
            fail(
                ErrorCode::NoSuchView,
                format!("view {view} is not mapped on BO handle {bo}"),
            )
        })?;
        let bo_arc = handle.bo.clone();
        self.info.views.fetch_sub(1, Ordering::Relaxed);
        let daemon = self.daemon.clone();
        self.blocking(move || {
            daemon.sync_engine().remove_view(&bo_arc, &v);
            finish_shown(&daemon, &bo_arc);
        })
        .await?;
        ok(Reply::Ok)
    }
}

fn attached(mm: &MmSubscription, joined: bool) -> Reply {
    Reply::MmAttached {
        mechanism: mm.tracker().mechanism(),
        exact: mm.tracker().exact(),
        joined,
        mm_id: mm.id,
    }
}

/// Refuses ATTACH_MM flags this daemon does not know.
fn check_attach_flags(flags: u32) -> Result<(), Failure> {
    let known = ATTACH_WITH_FDS
        | ATTACH_WITH_SYNC_UFFD
        | ATTACH_SYNC_ALL_FAULTS
        | ATTACH_WITH_CLEAR_REFS
        | ATTACH_WITH_MAPS
        | (0xff << ATTACH_MECHANISM_SHIFT);
    if flags & !known != 0 {
        return Err(fail(
            ErrorCode::InvalidArgument,
            format!("unknown ATTACH_MM flags {flags:#x}"),
        ));
    }
    Ok(())
}

/// The fds ATTACH_MM carries, in the order its flags announce them.
fn offer_of(flags: u32, uffd_features: u64, fds: Vec<OwnedFd>) -> MechanismOffer {
    let mut fds = fds.into_iter();
    let mut offer = MechanismOffer {
        flags,
        uffd_features,
        ..MechanismOffer::default()
    };
    if flags & ATTACH_WITH_FDS != 0 {
        offer.asynchronous = fds.next().zip(fds.next());
    }
    if flags & ATTACH_WITH_SYNC_UFFD != 0 {
        offer.synchronous = fds.next();
    }
    if flags & ATTACH_WITH_CLEAR_REFS != 0 {
        offer.soft_dirty = fds.next().zip(fds.next());
    }
    if flags & ATTACH_WITH_MAPS != 0 {
        offer.maps = fds.next();
    }
    offer
}

/// Refuses a MAP range that is not page-aligned, leaves the BO, or wraps.
fn check_map_range(bo: &Bo, addr: u64, len: u64, offset: u64) -> Result<(), Failure> {
    let ps = bo.page_size;
    if addr % ps != 0 || len % ps != 0 || offset % ps != 0 || len == 0 {
        return Err(fail(
            ErrorCode::InvalidArgument,
            format!("MAP addr {addr:#x}, len {len} and offset {offset} must be non-zero page multiples"),
        ));
    }
    if offset.checked_add(len).is_none_or(|end| end > bo.size) {
        return Err(fail(
            ErrorCode::InvalidArgument,
            format!("MAP range {offset}+{len} exceeds the BO's {} bytes", bo.size),
        ));
    }
    if addr.checked_add(len).is_none() {
        return Err(fail(ErrorCode::InvalidArgument, "MAP address range overflows"));
    }
    Ok(())
}

/// MAP's blocking step: registers the view with the subscription, proves
/// it ([`verify_view`], [`verify_registration`]) and attaches it to the
/// mechanism, then adds it to the BO; on failure the view is removed again.
fn add_view(
    mm: &MmSubscription,
    bo: &Bo,
    view: Arc<View>,
    handle: u32,
    addr: u64,
    len: u64,
    offset: u64,
) -> Result<(), Failure> {
    let _attaching = mm.attaching();
    if let Err(other) = mm.insert_view(view.range(), &view) {
        return Err(fail(
            ErrorCode::InvalidArgument,
            format!(
                "MAP {addr:#x}+{len} overlaps the view at {:#x}..{:#x}",
                other.start, other.end
            ),
        ));
    }
    let result = verify_view(mm, bo, handle, view.range(), offset).and_then(|()| {
        match mm.tracker().attach_view(view.range()) {
            Ok(()) => Ok(()),
            Err(TrackError::BadView(m)) => Err(fail(ErrorCode::InvalidArgument, m)),
            Err(TrackError::Gone) => Err(fail(ErrorCode::Kernel, "client process has exited")),
            Err(TrackError::Sys(e)) => Err(fail(ErrorCode::Kernel, e.to_string())),
            Err(e @ TrackError::Moved { .. }) => Err(fail(ErrorCode::InvalidArgument, e.to_string())),
        }
        .and_then(|()| verify_registration(mm, view.range()))
    });
    if let Err(f) = result {
        mm.remove_view(addr);
        mm.tracker().forget(view.range());
        return Err(f);
    }
    // With the state lock held: every tracker operation sees a
    // stable view list while it holds that lock.
    bo.structural_change(|| {
        let _state = bo.state();
        bo.add_view(view);
    });
    Ok(())
}

/// MAP's proof that the view maps what the client announced
/// ([`crate::viewcheck::check_mapping`]): the BO's memfd at the announced
/// offset, shared, with `MADV_DONTFORK`.
fn verify_view(
    mm: &MmSubscription,
    bo: &Bo,
    handle: u32,
    range: std::ops::Range<u64>,
    offset: u64,
) -> Result<(), Failure> {
    let identity = bo
        .memfd()
        .identity()
        .map_err(|e| fail(ErrorCode::Kernel, format!("fstat of the BO's memfd: {e}")))?;
    crate::viewcheck::check_mapping(mm.key.pid, mm.offer.maps.as_ref(), range, handle, identity, offset)
        .map(|_| ())
        .map_err(|m| fail(ErrorCode::InvalidArgument, m.0))
}

/// After the mechanism attached the view (which refuses a range registered
/// with no uffd, and so must come first: registering here would hide
/// that), proves that the range is registered with the userfaultfd of the
/// process's mechanism, not another one
/// ([`crate::viewcheck::check_registration`]).
fn verify_registration(mm: &MmSubscription, range: std::ops::Range<u64>) -> Result<(), Failure> {
    let tracker = mm.tracker();
    match tracker.registration_uffd() {
        Some(uffd) => crate::viewcheck::check_registration(uffd, tracker.mechanism().name(), range)
            .map_err(|m| fail(ErrorCode::InvalidArgument, m.0)),
        None => Ok(()),
    }
}
