//! The STATS reply's report (README §4.2): daemon-wide counters
//! ([`DaemonStats`]), optional connection and BO rows ([`ConnectionRow`],
//! [`BoRow`]) gathered in a [`StatsReport`], with its byte layout.

use crate::codec::{check_limit, truncate_utf8, DecodeError, Reader, Writer};
use crate::limits::{MAX_NAME, MAX_STATS_BOS, MAX_STATS_CONNECTIONS};

/// Daemon-wide counters in a STATS reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DaemonStats {
    /// Milliseconds since the daemon started.
    pub uptime_ms: u64,
    /// Open connections.
    pub connections: u32,
    /// Live mm subscriptions (client processes).
    pub mm_subscriptions: u32,
    /// Live BOs.
    pub bos: u32,
    /// Live views.
    pub views: u32,
    /// Completed syncs.
    pub syncs: u64,
    /// Pages uploaded by all syncs.
    pub pages_uploaded: u64,
    /// Bytes uploaded by all syncs.
    pub bytes_uploaded: u64,
    /// Uploads that failed (their runs were folded back).
    pub upload_failures: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// vmwgfx method switches.
    pub method_switches: u64,
    /// Pages marked dirty without proof of a write (switches, dead views).
    pub extra_pages: u64,
    /// Sync read sections retried after colliding with a structural change.
    pub sync_retries: u64,
    /// Syncs that took the exclusive path.
    pub sync_exclusive: u64,
    /// Write-protect faults resolved by the fault service (uffd-sync).
    pub faults: u64,
    /// GPU backend name.
    pub backend: String,
}

/// One connection row of a STATS reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionRow {
    /// Daemon-wide connection id.
    pub id: u64,
    /// Peer pid (SO_PEERCRED).
    pub pid: u32,
    /// Peer uid.
    pub uid: u32,
    /// BO handles open on the connection.
    pub bos: u32,
    /// Views mapped through the connection.
    pub views: u32,
    /// Requests handled.
    pub requests: u64,
}

/// One BO row of a STATS reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BoRow {
    /// Daemon-wide BO id.
    pub id: u64,
    /// Size in bytes.
    pub size: u64,
    /// Views across all processes.
    pub views: u32,
    /// Pages recorded dirty and not uploaded yet.
    pub dirty_pages: u64,
    /// Syncs done on this BO.
    pub syncs: u64,
    /// Pages uploaded by those syncs.
    pub pages_uploaded: u64,
    /// Bytes uploaded by those syncs.
    pub bytes_uploaded: u64,
    /// [`Method`](crate::Method) wire value (0: no tracker).
    pub method: u16,
    /// Sync read sections retried.
    pub sync_retries: u64,
    /// Syncs that took the exclusive path.
    pub sync_exclusive: u64,
    /// [`BoPolicy`](crate::BoPolicy) wire value set by SET_POLICY.
    pub policy: u16,
    /// [`BO_ROW_PAUSED`] when tracking is paused (dense writes or the
    /// `full` policy: every sync uploads the whole BO).
    pub flags: u16,
}

/// [`BoRow::flags`]: tracking is paused, every sync uploads the whole BO.
pub const BO_ROW_PAUSED: u16 = 1;

/// Reply to STATS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatsReport {
    /// Daemon-wide counters.
    pub daemon: DaemonStats,
    /// Connection rows visible to the caller.
    pub connections: Vec<ConnectionRow>,
    /// BO rows visible to the caller.
    pub bos: Vec<BoRow>,
    /// True when more rows existed than the limits allow.
    pub truncated: bool,
}

impl DaemonStats {
    /// Writes the counters, then the backend name (`u8` length, UTF-8 cut
    /// to [`MAX_NAME`] bytes on a character boundary).
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(self.uptime_ms);
        w.u32(self.connections);
        w.u32(self.mm_subscriptions);
        w.u32(self.bos);
        w.u32(self.views);
        w.u64(self.syncs);
        w.u64(self.pages_uploaded);
        w.u64(self.bytes_uploaded);
        w.u64(self.upload_failures);
        w.u64(self.errors);
        w.u64(self.method_switches);
        w.u64(self.extra_pages);
        w.u64(self.sync_retries);
        w.u64(self.sync_exclusive);
        w.u64(self.faults);
        let name = truncate_utf8(&self.backend, MAX_NAME);
        w.u8(name.len() as u8);
        w.bytes(name.as_bytes());
    }

    /// Reads what [`DaemonStats::write`] wrote.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut d = Self {
            uptime_ms: r.u64("uptime_ms")?,
            connections: r.u32("connections")?,
            mm_subscriptions: r.u32("mm_subscriptions")?,
            bos: r.u32("bos")?,
            views: r.u32("views")?,
            syncs: r.u64("syncs")?,
            pages_uploaded: r.u64("pages_uploaded")?,
            bytes_uploaded: r.u64("bytes_uploaded")?,
            upload_failures: r.u64("upload_failures")?,
            errors: r.u64("errors")?,
            method_switches: r.u64("method_switches")?,
            extra_pages: r.u64("extra_pages")?,
            sync_retries: r.u64("sync_retries")?,
            sync_exclusive: r.u64("sync_exclusive")?,
            faults: r.u64("faults")?,
            backend: String::new(),
        };
        let name_len = r.u8("backend length")? as usize;
        check_limit("backend length", name_len, MAX_NAME)?;
        d.backend = r.str(name_len, "backend")?;
        Ok(d)
    }
}

impl ConnectionRow {
    /// Bytes of one row on the wire.
    const WIRE_LEN: usize = 32;

    /// Writes one row.
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(self.id);
        w.u32(self.pid);
        w.u32(self.uid);
        w.u32(self.bos);
        w.u32(self.views);
        w.u64(self.requests);
    }

    /// Reads one row.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u64("connection.id")?,
            pid: r.u32("connection.pid")?,
            uid: r.u32("connection.uid")?,
            bos: r.u32("connection.bos")?,
            views: r.u32("connection.views")?,
            requests: r.u64("connection.requests")?,
        })
    }
}

impl BoRow {
    /// Bytes of one row on the wire.
    const WIRE_LEN: usize = 74;

    /// Writes one row.
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(self.id);
        w.u64(self.size);
        w.u32(self.views);
        w.u64(self.dirty_pages);
        w.u64(self.syncs);
        w.u64(self.pages_uploaded);
        w.u64(self.bytes_uploaded);
        w.u16(self.method);
        w.u64(self.sync_retries);
        w.u64(self.sync_exclusive);
        w.u16(self.policy);
        w.u16(self.flags);
    }

    /// Reads one row.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u64("bo.id")?,
            size: r.u64("bo.size")?,
            views: r.u32("bo.views")?,
            dirty_pages: r.u64("bo.dirty_pages")?,
            syncs: r.u64("bo.syncs")?,
            pages_uploaded: r.u64("bo.pages_uploaded")?,
            bytes_uploaded: r.u64("bo.bytes_uploaded")?,
            method: r.u16("bo.method")?,
            sync_retries: r.u64("bo.sync_retries")?,
            sync_exclusive: r.u64("bo.sync_exclusive")?,
            policy: r.u16("bo.policy")?,
            flags: r.u16("bo.flags")?,
        })
    }
}

impl StatsReport {
    /// Writes the STATS body: the counters, `u8 truncated`, then `u16` and
    /// the connection rows, `u16` and the BO rows. Rows beyond
    /// [`MAX_STATS_CONNECTIONS`] and [`MAX_STATS_BOS`] are cut and flagged
    /// as truncated.
    pub(super) fn write(&self, w: &mut Writer<'_>) {
        self.daemon.write(w);
        let nc = self.connections.len().min(MAX_STATS_CONNECTIONS);
        let nb = self.bos.len().min(MAX_STATS_BOS);
        let truncated = self.truncated || nc < self.connections.len() || nb < self.bos.len();
        w.u8(u8::from(truncated));
        w.u16(nc as u16);
        for c in &self.connections[..nc] {
            c.write(w);
        }
        w.u16(nb as u16);
        for b in &self.bos[..nb] {
            b.write(w);
        }
    }

    /// Reads the STATS body. Each row count is checked against its limit and
    /// the bytes left before anything is allocated.
    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let daemon = DaemonStats::read(r)?;
        let truncated = r.u8("truncated")? != 0;
        let nc = r.count_u16("connection rows", MAX_STATS_CONNECTIONS)?;
        check_limit("connection rows", nc * ConnectionRow::WIRE_LEN, r.remaining())?;
        let mut connections = Vec::with_capacity(nc);
        for _ in 0..nc {
            connections.push(ConnectionRow::read(r)?);
        }
        let nb = r.count_u16("bo rows", MAX_STATS_BOS)?;
        check_limit("bo rows", nb * BoRow::WIRE_LEN, r.remaining())?;
        let mut bos = Vec::with_capacity(nb);
        for _ in 0..nb {
            bos.push(BoRow::read(r)?);
        }
        Ok(Self {
            daemon,
            connections,
            bos,
            truncated,
        })
    }
}
