//! Which write-tracking mechanism tracks a client process: the choice for
//! a new subscription (the client's request, the daemon's `--mechanism`,
//! else uffd-async, else uffd-sync; each refused with the reason it cannot
//! work here), and SET_MECHANISM, the switch of a live subscription under
//! quiesce (seed 004, [`crate::switch`]).

use cohmem_proto::{ErrorCode, Mechanism, Reply, ATTACH_SYNC_ALL_FAULTS, ATTACH_WITH_CLEAR_REFS};
use cohmem_sys::probe::KernelCaps;
use cohmem_sys::uffd::features;

use super::failure::{fail, ok, switch_failure, Failure, Outcome};
use super::syncs::only_quiesce;
use super::Session;
use crate::mm::MechanismOffer;
use crate::switch;
use crate::tracker::WriteTracker;

impl Session {
    /// Builds `mechanism`'s tracker for process `pid` from `offer`, with
    /// this daemon's mapping-change probe and counts.
    pub(super) fn build_tracker(
        &self,
        offer: &MechanismOffer,
        mechanism: Mechanism,
        pid: i32,
    ) -> Result<Box<dyn WriteTracker>, Failure> {
        offer
            .build(
                mechanism,
                pid,
                self.daemon.kernel.map_events.ok,
                &self.daemon.map_events,
            )
            .map_err(switch_failure)
    }

    /// SET_MECHANISM: switches this process's subscription to `mechanism`
    /// under quiesce ([`crate::switch`]).
    pub(super) async fn set_mechanism(&self, mechanism: Mechanism) -> Outcome {
        let mm = self
            .mm
            .clone()
            .ok_or_else(|| fail(ErrorCode::NoMm, "SET_MECHANISM before ATTACH_MM"))?;
        if mechanism == Mechanism::None {
            return Err(fail(
                ErrorCode::InvalidArgument,
                "SET_MECHANISM needs a mechanism, not none",
            ));
        }
        let offer = &mm.offer;
        let chosen = self.choose_mechanism(
            mechanism,
            offer.asynchronous.is_some(),
            offer.synchronous.is_some(),
            offer.flags,
            offer.uffd_features,
        )?;
        let tracker = self.build_tracker(offer, chosen, mm.key.pid)?;
        let exact = tracker.exact();
        let daemon = self.daemon.clone();
        let switched = mm.clone();
        let only_one = only_quiesce(&daemon).await?;
        let report = self
            .blocking(move || {
                let _only_one = only_one;
                switch::switch_mechanism(&daemon.counters, &daemon.faults, &switched, tracker).map_err(switch_failure)
            })
            .await??;
        crate::limited!(
            info,
            "tracking mechanism switched",
            self.info.id,
            conn = self.info.id,
            mm = mm.id,
            from = %report.from,
            to = %chosen,
            views = report.views,
            extra_pages = report.extra_pages,
            "tracking mechanism switched"
        );
        ok(Reply::MechanismSet {
            from: report.from,
            to: chosen,
            exact,
            views: report.views,
            extra_pages: report.extra_pages,
        })
    }

    /// Picks the mechanism for a new client process: the client's request,
    /// else the daemon's `--mechanism`, else uffd-async where it works, else
    /// uffd-sync. uffd-sync is refused when the client's uffd would break its
    /// own syscalls (user-mode only: `read(2)` into a protected page would
    /// fail with EFAULT).
    pub(super) fn choose_mechanism(
        &self,
        requested: Mechanism,
        has_async: bool,
        has_sync: bool,
        flags: u32,
        uffd_features: u64,
    ) -> Result<Mechanism, Failure> {
        let kernel = &self.daemon.kernel;
        let async_ok = || async_refusal(kernel, has_async, uffd_features);
        let sync_ok = || sync_refusal(kernel, has_sync, flags);
        let wanted = self.wanted_mechanism(requested);
        let unsupported = |m: Mechanism, why: String| fail(ErrorCode::Unsupported, format!("{m} refused: {why}"));
        match wanted {
            Some(Mechanism::UffdAsync) => async_ok()
                .map(|()| Mechanism::UffdAsync)
                .map_err(|w| unsupported(Mechanism::UffdAsync, w)),
            Some(Mechanism::UffdSync) => sync_ok()
                .map(|()| Mechanism::UffdSync)
                .map_err(|w| unsupported(Mechanism::UffdSync, w)),
            Some(m @ (Mechanism::Full | Mechanism::Explicit)) => Ok(m),
            Some(Mechanism::SoftDirty) => soft_dirty_refusal(kernel, has_sync, flags)
                .map(|()| Mechanism::SoftDirty)
                .map_err(|w| unsupported(Mechanism::SoftDirty, w)),
            Some(Mechanism::None) => Err(unsupported(Mechanism::None, "no mechanism named".into())),
            None => match (async_ok(), sync_ok()) {
                (Ok(()), _) => Ok(Mechanism::UffdAsync),
                (Err(_), Ok(())) => Ok(Mechanism::UffdSync),
                (Err(a), Err(s)) => Err(fail(
                    ErrorCode::Unsupported,
                    format!("no write-tracking mechanism for this client: uffd-async: {a}; uffd-sync: {s}"),
                )),
            },
        }
    }

    /// The mechanism a client process gets asked for: the one it named, or
    /// (naming none) the daemon's `--mechanism`, if any.
    pub(super) fn wanted_mechanism(&self, requested: Mechanism) -> Option<Mechanism> {
        match requested {
            Mechanism::None => self.daemon.config.mechanism,
            m => Some(m),
        }
    }
}

/// Why uffd-async cannot track this client, if it cannot.
fn async_refusal(kernel: &KernelCaps, has_async: bool, uffd_features: u64) -> Result<(), String> {
    if !has_async {
        return Err("the client sent no WP_ASYNC userfaultfd and pagemap fd".into());
    }
    if !kernel.uffd_async.ok {
        return Err(format!(
            "uffd-async is not available on this kernel: {}",
            kernel.uffd_async.detail
        ));
    }
    if uffd_features & features::WP_ASYNC == 0 {
        return Err("the client's userfaultfd lacks UFFD_FEATURE_WP_ASYNC".into());
    }
    Ok(())
}

/// Why uffd-sync cannot track this client, if it cannot.
fn sync_refusal(kernel: &KernelCaps, has_sync: bool, flags: u32) -> Result<(), String> {
    if !has_sync {
        return Err("the client sent no synchronous userfaultfd".into());
    }
    if !kernel.uffd_sync.ok {
        return Err(format!(
            "uffd-sync is not available on this kernel: {}",
            kernel.uffd_sync.detail
        ));
    }
    if flags & ATTACH_SYNC_ALL_FAULTS == 0 {
        return Err(
            "the client's synchronous userfaultfd is UFFD_USER_MODE_ONLY: read(2) or recv(2) into \
                    a write-protected page would fail with EFAULT; uffd-sync needs a userfaultfd that \
                    handles kernel faults (CAP_SYS_PTRACE, access to /dev/userfaultfd, or \
                    vm.unprivileged_userfaultfd=1)"
                .into(),
        );
    }
    Ok(())
}

/// Why soft-dirty cannot track this client exactly, if it cannot.
fn soft_dirty_refusal(kernel: &KernelCaps, has_sync: bool, flags: u32) -> Result<(), String> {
    if !kernel.soft_dirty.ok {
        return Err(format!("this kernel does not offer it: {}", kernel.soft_dirty.detail));
    }
    // Exact only with the client's writers quiesced around
    // every read-and-clear (the kernel part of the rule, with
    // what was measured on 6.1, is in the probe).
    let quiesce = kernel.soft_dirty_quiesce();
    if !quiesce.ok {
        return Err(format!("writers cannot be quiesced here: {}", quiesce.detail));
    }
    // Exact only with writers quiesced, which needs a
    // synchronous uffd that handles kernel faults too.
    sync_refusal(kernel, has_sync, flags)?;
    if flags & ATTACH_WITH_CLEAR_REFS == 0 {
        return Err("the client sent no pagemap and clear_refs fds".into());
    }
    Ok(())
}
