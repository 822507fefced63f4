//! Daemon configuration: what the command line and `cohmemd.toml` (`config_file`) set, for every layer.

use std::path::PathBuf;

use crate::gpu::GpuChoice;
use crate::quota::UserLimits;

/// Everything the daemon needs to start.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Listening socket path.
    pub socket: PathBuf,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// GPU backend.
    pub gpu: GpuChoice,
    /// Mechanism forced for every client (`None`: chosen per client).
    pub mechanism: Option<cohmem_proto::Mechanism>,
    /// Largest BO a client may create, bytes.
    pub max_bo_size: u64,
    /// Most BO handles one connection may hold.
    pub max_bos_per_connection: usize,
    /// Most views one connection may hold.
    pub max_views_per_connection: usize,
    /// Consecutive undecodable frames after which a connection is closed.
    pub max_consecutive_bad_frames: u32,
    /// Per-user quotas (connections, BOs, bytes).
    pub user_limits: UserLimits,
    /// Uids allowed to use the daemon besides root and the daemon's own
    /// uid; empty: every uid the socket's permissions let in.
    pub allowed_uids: Vec<u32>,
    /// Keep BO memfds in the service manager's fd store (under systemd).
    pub fdstore: bool,
    /// How long BOs adopted from the fd store wait for a client to
    /// re-import them before they are released.
    pub adopt_grace: std::time::Duration,
    /// Sync every BO with views this often in the background (`None`: off).
    pub background_upload: Option<std::time::Duration>,
    /// How BOs are tracked beyond vmwgfx's bookkeeping: method choice and
    /// pausing for dense writes.
    pub tracking: crate::policy::TrackingPolicy,
    /// Serve Prometheus metrics over HTTP here (`None`: only through the
    /// METRICS request).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The display output (`--display`), `None`: no display.
    pub display: Option<DisplayConfig>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            socket: default_socket_path(),
            socket_mode: 0o660,
            gpu: GpuChoice::Auto,
            mechanism: None,
            max_bo_size: 4 << 30,
            max_bos_per_connection: 4096,
            max_views_per_connection: 4096,
            max_consecutive_bad_frames: 32,
            user_limits: UserLimits::default(),
            allowed_uids: Vec::new(),
            fdstore: true,
            adopt_grace: std::time::Duration::from_secs(60),
            background_upload: None,
            tracking: crate::policy::TrackingPolicy::default(),
            metrics_listen: None,
            display: None,
        }
    }
}

/// `$XDG_RUNTIME_DIR/cohmem.sock`, else `/run/cohmem/cohmem.sock`.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("cohmem.sock"),
        _ => PathBuf::from("/run/cohmem/cohmem.sock"),
    }
}

/// `--display` and `--display-interval-us` (the display output,
/// the display module).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisplayConfig {
    /// The connector to show on (`Virtual-1`, `VGA-1`); `None`: the first
    /// connected one.
    pub connector: Option<String>,
    /// Least time between two damage commits (`None`: after every sync).
    pub interval: Option<std::time::Duration>,
}
