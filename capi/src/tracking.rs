//! How writes are tracked, as C enums with names: the process's mechanism
//! (`cohmem_mechanism`: `cohmem_get_mechanism`, `cohmem_set_mechanism`),
//! a BO's vmwgfx method (`cohmem_method`) and its policy (`cohmem_policy`:
//! `cohmem_bo_set_policy`). The BO's tracker state and counters are in
//! `tracker_state.rs`.
//!
//! The enums are C enums in `cohmem.h`. A value C passes in arrives as an
//! `int` (the `*_int` aliases below, which cbindgen prints as the enum's
//! name): any int a C caller passes is then defined behaviour here, and one
//! that names no value is refused with `COHMEM_E_INVALID`.

use std::ffi::{c_char, c_int, CStr};

use cohmem_client::{BoPolicy, Mechanism, Method};

use crate::bo::cohmem_bo;
use crate::connection::cohmem_connection;
use crate::error::{fail, invalid, COHMEM_OK};

/// How this process's writes to its mappings are found (the same for every
/// connection and BO of the process). Chosen by the daemon (`cohmemd
/// --mechanism`), by `$COHMEM_MECHANISM` (uffd-async, uffd-sync,
/// soft-dirty, full, explicit) before the first mapping, or by
/// `cohmem_set_mechanism`.
///
/// Under `COHMEM_MECHANISM_EXPLICIT` nothing watches the mappings: a store
/// to mapped memory is sure to be uploaded only once reported with
/// `cohmem_bo_damage`, `cohmem_bo_damage_ranges`, `cohmem_bo_damage_rects`
/// or a `cohmem_bo_sync_damaged*` call. A store that is never reported may
/// never be uploaded (the daemon uploads more only when it copies or
/// compares a whole BO), and no call fails because of it: check
/// `cohmem_get_mechanism()` (or `cohmem_sync_result.mechanism`) if your
/// program does not report damage.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cohmem_mechanism {
    /// Nothing attached yet (this process has mapped nothing).
    COHMEM_MECHANISM_NONE = 0,
    /// userfaultfd asynchronous write-protection harvested with
    /// PAGEMAP_SCAN (Linux 6.7 and later): exact, no fault per page.
    COHMEM_MECHANISM_UFFD_ASYNC = 1,
    /// Synchronous userfaultfd write-protect faults resolved by the daemon:
    /// exact, one fault per page first written after a sync.
    COHMEM_MECHANISM_UFFD_SYNC = 2,
    /// The kernel's soft-dirty bits (clear_refs and /proc/pid/pagemap).
    COHMEM_MECHANISM_SOFT_DIRTY = 3,
    /// No tracking: every sync uploads the whole mapped BO.
    COHMEM_MECHANISM_FULL = 4,
    /// No tracking: only damage the program reports is uploaded (see
    /// above).
    COHMEM_MECHANISM_EXPLICIT = 5,
}

/// A `cohmem_mechanism` passed in by C (cbindgen prints it as
/// `cohmem_mechanism`; see the module doc).
pub type cohmem_mechanism_int = c_int;

/// How the daemon tracks one BO, as vmwgfx does: by write-protecting and
/// recording first writes (MKWRITE), or by harvesting the page tables' dirty
/// state at sync (PAGETABLE). The daemon switches between them as the BO's
/// write density changes, unless a `cohmem_policy` pins one.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cohmem_method {
    /// No tracker: the BO has no GPU resource.
    COHMEM_METHOD_NONE = 0,
    /// Harvest written pages by scanning at sync.
    COHMEM_METHOD_PAGETABLE = 1,
    /// Write-protect; record each page on its first write.
    COHMEM_METHOD_MKWRITE = 2,
}

/// How one BO is to be tracked (`cohmem_bo_set_policy`, `cohmemctl
/// set-policy`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cohmem_policy {
    /// The daemon's own choice (vmwgfx's switching between MKWRITE and
    /// PAGETABLE, and pauses while writes are dense).
    COHMEM_POLICY_AUTO = 0,
    /// MKWRITE, never switched and never paused.
    COHMEM_POLICY_MKWRITE = 1,
    /// PAGETABLE, never switched and never paused.
    COHMEM_POLICY_PAGETABLE = 2,
    /// No tracking: every sync uploads the whole BO (for a BO rewritten
    /// completely every frame).
    COHMEM_POLICY_FULL = 3,
    /// No tracking: at every sync the daemon compares the BO with its last
    /// uploaded copy and uploads the pages that differ (costs the daemon a
    /// copy of the BO; no faults, no scans). Refused by a daemon that does
    /// not know it (`COHMEM_DAEMON_E_INVALID_ARGUMENT`).
    COHMEM_POLICY_SHADOW = 4,
}

/// A `cohmem_policy` passed in by C (cbindgen prints it as
/// `cohmem_policy`; see the module doc).
pub type cohmem_policy_int = c_int;

/// A `cohmem_method` passed in by C (cbindgen prints it as
/// `cohmem_method`; see the module doc).
pub type cohmem_method_int = c_int;

impl cohmem_mechanism {
    const ALL: [Self; 6] = [
        Self::COHMEM_MECHANISM_NONE,
        Self::COHMEM_MECHANISM_UFFD_ASYNC,
        Self::COHMEM_MECHANISM_UFFD_SYNC,
        Self::COHMEM_MECHANISM_SOFT_DIRTY,
        Self::COHMEM_MECHANISM_FULL,
        Self::COHMEM_MECHANISM_EXPLICIT,
    ];

    /// The C value of a client mechanism (same wire values).
    pub(crate) fn from_client(m: Mechanism) -> Self {
        Self::ALL
            .get(usize::from(m as u16))
            .copied()
            .unwrap_or(Self::COHMEM_MECHANISM_NONE)
    }

    fn to_client(v: c_int) -> Option<Mechanism> {
        u16::try_from(v).ok().and_then(|v| Mechanism::from_wire(v).ok())
    }
}

impl cohmem_method {
    /// The C value of a client method (same wire values).
    pub(crate) fn from_client(m: Method) -> Self {
        Self::from_wire(m as u16)
    }

    /// The C value of a method's wire value (`NONE` for an unknown one).
    pub(crate) fn from_wire(v: u16) -> Self {
        match v {
            1 => Self::COHMEM_METHOD_PAGETABLE,
            2 => Self::COHMEM_METHOD_MKWRITE,
            _ => Self::COHMEM_METHOD_NONE,
        }
    }
}

impl cohmem_policy {
    const ALL: [Self; 5] = [
        Self::COHMEM_POLICY_AUTO,
        Self::COHMEM_POLICY_MKWRITE,
        Self::COHMEM_POLICY_PAGETABLE,
        Self::COHMEM_POLICY_FULL,
        Self::COHMEM_POLICY_SHADOW,
    ];

    /// The C value of a policy's wire value (`AUTO` for an unknown one).
    pub(crate) fn from_wire(v: u16) -> Self {
        Self::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(Self::COHMEM_POLICY_AUTO)
    }
}

/// What `cohmem_set_mechanism` did.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_mechanism_switch {
    /// Mechanism before.
    pub from: cohmem_mechanism,
    /// Mechanism now.
    pub to: cohmem_mechanism,
    /// 1 when the new mechanism is exact under concurrent writers, else 0.
    pub exact: c_int,
    /// Mappings (of every connection of this process) moved.
    pub views: u32,
    /// Pages the switch marked dirty that were not (each mapping is marked
    /// wholly dirty: its next sync uploads it once).
    pub extra_pages: u64,
}

/// Writes the mechanism the daemon tracks this process with to `*out`
/// (attaching the process's tracking first if nothing was mapped yet).
///
/// # Safety
/// `conn` is NULL or a live connection; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_get_mechanism(conn: *const cohmem_connection, out: *mut cohmem_mechanism) -> c_int {
    // SAFETY: `conn` is NULL or a live connection (documented).
    let Some(conn) = (unsafe { conn.as_ref() }) else {
        return invalid("cohmem_get_mechanism: conn is NULL");
    };
    // SAFETY: `out` is NULL or valid for writes (documented).
    let Some(out) = (unsafe { out.as_mut() }) else {
        return invalid("cohmem_get_mechanism: out is NULL");
    };
    match conn.0.mechanism() {
        Ok(m) => {
            *out = cohmem_mechanism::from_client(m);
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// Switches this whole process's write tracking (every connection, BO and
/// mapping of it) to `mechanism` while its mappings stay mapped and in use.
/// Every mapping is marked wholly dirty (a write made during the switch
/// cannot be proven absent), so the next sync of each BO uploads its mapped
/// pages once: no write is lost. `out` (NULL or valid for writes) receives
/// what the switch did.
///
/// Errors: `COHMEM_E_INVALID` for a value that is no `cohmem_mechanism`
/// (or `COHMEM_MECHANISM_NONE`); `COHMEM_E_DAEMON` with
/// `COHMEM_DAEMON_E_UNSUPPORTED` when the kernel or this process cannot
/// offer it (the message says why).
///
/// # Safety
/// `conn` is NULL or a live connection; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_set_mechanism(
    conn: *const cohmem_connection,
    mechanism: cohmem_mechanism_int,
    out: *mut cohmem_mechanism_switch,
) -> c_int {
    // SAFETY: `conn` is NULL or a live connection (documented).
    let Some(conn) = (unsafe { conn.as_ref() }) else {
        return invalid("cohmem_set_mechanism: conn is NULL");
    };
    let Some(m) = cohmem_mechanism::to_client(mechanism).filter(|m| *m != Mechanism::None) else {
        return invalid(&format!(
            "cohmem_set_mechanism: {mechanism} is no cohmem_mechanism (use COHMEM_MECHANISM_UFFD_ASYNC … \
             COHMEM_MECHANISM_EXPLICIT)"
        ));
    };
    match conn.0.set_mechanism(m) {
        Ok(s) => {
            // SAFETY: `out` is NULL or valid for writes (documented).
            if let Some(out) = unsafe { out.as_mut() } {
                *out = cohmem_mechanism_switch {
                    from: cohmem_mechanism::from_client(s.from),
                    to: cohmem_mechanism::from_client(s.to),
                    exact: c_int::from(s.exact),
                    views: s.views,
                    extra_pages: s.extra_pages,
                };
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// The static name of a `cohmem_mechanism` ("uffd-async", "explicit": the
/// names `$COHMEM_MECHANISM` and `cohmemd --mechanism` take), "unknown" for
/// another value.
#[no_mangle]
pub extern "C" fn cohmem_mechanism_name(mechanism: cohmem_mechanism_int) -> *const c_char {
    static NAMES: [&CStr; cohmem_mechanism::ALL.len()] = [
        c"none",
        c"uffd-async",
        c"uffd-sync",
        c"soft-dirty",
        c"full",
        c"explicit",
    ];
    name_of(&NAMES, mechanism)
}

/// The static name of a `cohmem_method` ("none", "pagetable", "mkwrite"),
/// "unknown" for another value.
#[no_mangle]
pub extern "C" fn cohmem_method_name(method: cohmem_method_int) -> *const c_char {
    static NAMES: [&CStr; 3] = [c"none", c"pagetable", c"mkwrite"];
    name_of(&NAMES, method)
}

/// The static name of a `cohmem_policy` ("auto", "mkwrite", "pagetable",
/// "full", "shadow": what `cohmemctl set-policy` takes), "unknown" for
/// another value.
#[no_mangle]
pub extern "C" fn cohmem_policy_name(policy: cohmem_policy_int) -> *const c_char {
    static NAMES: [&CStr; cohmem_policy::ALL.len()] = [c"auto", c"mkwrite", c"pagetable", c"full", c"shadow"];
    name_of(&NAMES, policy)
}

fn name_of(names: &[&'static CStr], value: c_int) -> *const c_char {
    usize::try_from(value)
        .ok()
        .and_then(|i| names.get(i))
        .copied()
        .unwrap_or(c"unknown")
        .as_ptr()
}

/// Pins how the daemon tracks `bo` (root, or any connection holding the
/// BO, may do this). `previous` (NULL or valid for writes) receives the
/// policy it had, `method` (NULL or valid for writes) the `cohmem_method`
/// it has now.
///
/// Errors: `COHMEM_E_INVALID` for a value that is no `cohmem_policy`;
/// `COHMEM_E_DAEMON` (`COHMEM_DAEMON_E_INVALID_ARGUMENT`) for a policy the
/// daemon does not know.
///
/// # Safety
/// `bo` is NULL or a live BO; `previous` and `method` are NULL or valid for
/// writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_set_policy(
    bo: *const cohmem_bo,
    policy: cohmem_policy_int,
    previous: *mut cohmem_policy,
    method: *mut cohmem_method,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_set_policy: bo is NULL");
    };
    let Some(p) = u16::try_from(policy).ok().and_then(|v| BoPolicy::from_wire(v).ok()) else {
        return invalid(&format!(
            "cohmem_bo_set_policy: {policy} is no cohmem_policy this library knows (use COHMEM_POLICY_*)"
        ));
    };
    match bo.0.set_policy(p) {
        Ok((was, now)) => {
            // SAFETY: `previous` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { previous.as_mut() } {
                *slot = cohmem_policy::from_wire(was as u16);
            }
            // SAFETY: `method` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { method.as_mut() } {
                *slot = cohmem_method::from_client(now);
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}
