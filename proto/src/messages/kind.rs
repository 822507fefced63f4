//! Message kinds on the wire: requests (README §4.1) and, with the high
//! bit set, replies (§4.2).

#![allow(missing_docs)]

pub const HELLO: u16 = 0x0001;
pub const CREATE_BO: u16 = 0x0002;
pub const IMPORT_BO: u16 = 0x0003;
pub const ATTACH_MM: u16 = 0x0004;
pub const MAP: u16 = 0x0005;
pub const UNMAP: u16 = 0x0006;
pub const SYNC: u16 = 0x0007;
pub const DESTROY: u16 = 0x0008;
pub const STATS: u16 = 0x0009;
pub const EXPORT_RESOURCE: u16 = 0x000a;
pub const ADD_RESOURCE: u16 = 0x000b;
pub const RELEASE_RESOURCE: u16 = 0x000c;
pub const SCAN: u16 = 0x000d;
pub const TRANSFER: u16 = 0x000e;
pub const CLEAR_RESOURCE: u16 = 0x000f;
pub const CLEAR_ALL: u16 = 0x0010;
pub const DIRTY_STATE: u16 = 0x0011;
pub const DAMAGE: u16 = 0x0012;
pub const SNAPSHOT: u16 = 0x0013;
pub const SET_MECHANISM: u16 = 0x0014;
pub const READBACK: u16 = 0x0015;
pub const SET_POLICY: u16 = 0x0016;
pub const METRICS: u16 = 0x0017;
pub const WATCH_DAEMON: u16 = 0x0018;
pub const CREATE_IMAGE: u16 = 0x0019;
pub const IMPORT_IMAGE: u16 = 0x001a;
pub const SHOW: u16 = 0x001b;
pub const DAMAGE_RANGES: u16 = 0x001c;
pub const SYNC_MANY: u16 = 0x001d;

pub const R_HELLO: u16 = 0x8001;
pub const R_BO: u16 = 0x8002;
pub const R_MM_ATTACHED: u16 = 0x8003;
pub const R_MAPPED: u16 = 0x8004;
pub const R_OK: u16 = 0x8005;
pub const R_SYNC_DONE: u16 = 0x8006;
pub const R_STATS: u16 = 0x8007;
pub const R_RESOURCE: u16 = 0x8008;
pub const R_RESOURCE_ADDED: u16 = 0x8009;
pub const R_SCANNED: u16 = 0x800a;
pub const R_DIRTY_STATE: u16 = 0x800b;
pub const R_SNAPSHOT: u16 = 0x800c;
pub const R_MECHANISM_SET: u16 = 0x800d;
pub const R_READBACK_DONE: u16 = 0x800e;
pub const R_POLICY_SET: u16 = 0x800f;
pub const R_METRICS: u16 = 0x8010;
pub const R_DAEMON_PROCESS: u16 = 0x8011;
pub const R_SHOWN: u16 = 0x8012;
pub const R_SYNC_MANY_DONE: u16 = 0x8013;
pub const R_ERROR: u16 = 0x80ff;
