//! Flag bits of request bodies (SYNC, STATS, ATTACH_MM, SHOW, CREATE_BO)
//! and the `damage_path` values of the SHOW reply (README §5.1).

/// Flag of SYNC: list the uploaded runs in the reply.
pub const SYNC_REPORT_RUNS: u32 = 1;
/// Flag of DAMAGE_RANGES: sync the BO after recording the ranges, in the
/// same round trip (the reply is SYNC_DONE; [`SYNC_REPORT_RUNS`] may be set
/// with it).
pub const DAMAGE_THEN_SYNC: u32 = 2;
/// Flag of STATS: include one row per connection.
pub const STATS_CONNECTIONS: u32 = 1;
/// Flag of STATS: include one row per BO.
pub const STATS_BOS: u32 = 2;
/// Flag of ATTACH_MM: the WP_ASYNC uffd and pagemap fds are attached.
pub const ATTACH_WITH_FDS: u32 = 1;
/// Flag of ATTACH_MM: a synchronous (no WP_ASYNC) uffd is attached, after
/// the fds of [`ATTACH_WITH_FDS`] if those are attached too.
pub const ATTACH_WITH_SYNC_UFFD: u32 = 2;
/// Flag of ATTACH_MM: the synchronous uffd handles kernel-mode faults too
/// (created without `UFFD_USER_MODE_ONLY`), so `read(2)` into a protected page
/// waits for the daemon instead of failing with EFAULT.
pub const ATTACH_SYNC_ALL_FAULTS: u32 = 4;
/// Flag of ATTACH_MM: for the soft-dirty mechanism, the process's
/// `/proc/self/pagemap` and `/proc/self/clear_refs` (opened for writing) are
/// attached last (2 fds; kernels without WP_ASYNC send no other pagemap).
pub const ATTACH_WITH_CLEAR_REFS: u32 = 16;
/// Flag of ATTACH_MM: the process's `/proc/self/maps` is attached last (1
/// fd): with `PROCMAP_QUERY` (Linux 6.11) the daemon proves a view is still
/// mapped with one query per VMA instead of a page-by-page walk.
pub const ATTACH_WITH_MAPS: u32 = 32;
/// ATTACH_MM flags bits 8..16: the [`Mechanism`](crate::Mechanism) the
/// client asks for (0 = the daemon's choice).
pub const ATTACH_MECHANISM_SHIFT: u32 = 8;
/// Flag of SHOW: take the BO off the display (the output goes dark or
/// keeps its last picture, as the device does).
pub const SHOW_HIDE: u32 = 1;
/// [`Reply::Shown`](crate::Reply::Shown) `damage_path`: nothing shown.
pub const DAMAGE_PATH_NONE: u16 = 0;
/// [`Reply::Shown`](crate::Reply::Shown) `damage_path`: atomic commits with FB_DAMAGE_CLIPS.
pub const DAMAGE_PATH_ATOMIC: u16 = 1;
/// [`Reply::Shown`](crate::Reply::Shown) `damage_path`: DIRTYFB with clips (legacy modesetting).
pub const DAMAGE_PATH_DIRTYFB: u16 = 2;
/// Flag of CREATE_BO: create the BO without its default whole-BO resource
/// (so without a tracker until ADD_RESOURCE).
pub const CREATE_NO_RESOURCE: u32 = 1;
