//! The `cohmemd` command line: argument parsing, logging, start-up and
//! signal handling. Kept in the library so that every binary that runs the
//! daemon (cohmemd itself, the test suite's copy) is the same code.

use std::io::IsTerminal;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use cohmem_proto::Mechanism;

use crate::gpu::GpuChoice;
use crate::policy::{DensePolicy, MethodPolicy, TrackingPolicy};
use crate::quota::UserLimits;
use crate::{Daemon, DaemonConfig, Server};
use anyhow::Context;
use clap::Parser;
use cohmem_sys::sdnotify::NotifyState;
use tracing_subscriber::EnvFilter;

/// Keeps GPU buffers coherent with client-written memory by tracking which
/// pages were written and uploading only those.
#[derive(Debug, Parser)]
#[command(name = "cohmemd", version)]
struct Args {
    /// Configuration file: every option below as a TOML key (`gpu =
    /// "soft"`, `max-bo-size = 4294967296`, `allow-uid = [1000]`); options on
    /// the command line win. Default: /etc/cohmem/cohmemd.toml if it exists.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listening socket (default: $XDG_RUNTIME_DIR/cohmem.sock, else /run/cohmem/cohmem.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// GPU backend: `auto` (the first DRM card node with dumb buffers, else
    /// the embedded software GPU), `soft`, or `drm:/dev/dri/cardN`.
    #[arg(long, default_value = "auto")]
    gpu: GpuChoice,
    /// Write-tracking mechanism for every client: `auto` (uffd-async where it
    /// works, else uffd-sync), `uffd-async`, `uffd-sync`, `full` (no
    /// tracking, copy everything), `explicit` (clients report damage) or
    /// `soft-dirty` (never chosen by `auto`: it needs writers quiesced).
    #[arg(long, default_value = "auto", value_parser = parse_mechanism)]
    mechanism: MechanismArg,
    /// Largest BO a client may create, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    max_bo_size: u64,
    /// Socket file mode, octal: who may connect at all.
    #[arg(long, default_value = "660", value_parser = parse_octal)]
    socket_mode: u32,
    /// Only these uids (besides root and the daemon's own) may use the
    /// daemon, checked with SO_PEERCRED; repeat for several. Default: every
    /// uid the socket's mode lets in.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Most connections one uid may have open.
    #[arg(long, default_value_t = UserLimits::default().connections)]
    max_connections_per_user: u32,
    /// Most live BOs one uid may hold (created or adopted).
    #[arg(long, default_value_t = UserLimits::default().bos)]
    max_bos_per_user: u64,
    /// Most bytes of BOs one uid may hold (shadow copies under the
    /// `shadow` policy count too).
    #[arg(long, default_value_t = UserLimits::default().bytes)]
    max_bytes_per_user: u64,
    /// Most BO handles one connection may hold.
    #[arg(long, default_value_t = DaemonConfig::default().max_bos_per_connection)]
    max_bos_per_connection: usize,
    /// Do not keep BO memfds in systemd's fd store (used only when
    /// $NOTIFY_SOCKET is set).
    #[arg(long)]
    no_fdstore: bool,
    /// Seconds that BOs adopted from the fd store at start wait for a
    /// client to re-import them.
    #[arg(long, default_value_t = 60)]
    adopt_grace_secs: u64,
    /// Harvest and upload every BO with views every N microseconds in the
    /// background, so that a client's SYNC finds little left (0: off).
    #[arg(long, default_value_t = 0)]
    background_upload_us: u64,
    /// How each BO's method is chosen: `auto` (PAGETABLE for BOs whose views
    /// all use uffd-async, where it is always the cheaper one; vmwgfx's state
    /// machine otherwise) or `vmwgfx` (vmwgfx's state machine for every BO).
    #[arg(long, default_value = "auto", value_parser = parse_methods)]
    methods: MethodPolicy,
    /// Pause tracking of a BO (views unprotected, whole-BO uploads) when
    /// this percentage of its pages or more was written between syncs, for
    /// --dense-after syncs in a row; 0: never (vmwgfx's behaviour).
    #[arg(long, default_value_t = DensePolicy::default().percent, value_parser = clap::value_parser!(u64).range(0..=100))]
    dense_percent: u64,
    /// Consecutive dense syncs before tracking pauses.
    #[arg(long, default_value_t = DensePolicy::default().after, value_parser = clap::value_parser!(u32).range(1..))]
    dense_after: u32,
    /// While paused, one frame is tracked again (a probe) 8 syncs after
    /// pausing, then twice as late each time writes are still dense, at
    /// most every N syncs.
    #[arg(long, default_value_t = DensePolicy::default().probe_every, value_parser = clap::value_parser!(u32).range(1..))]
    dense_probe_every: u32,
    /// With --methods auto, BOs up to this many bytes (whose clients all use
    /// uffd-async) are not tracked but compared at each sync with the copy
    /// last uploaded, which is cheaper for small BOs; 0: never.
    #[arg(long, default_value_t = crate::policy::DEFAULT_SHADOW_MAX_BYTES, value_name = "BYTES")]
    auto_shadow_max_bytes: u64,
    /// With --methods auto, most pages of a BO that are left writable and
    /// compared at each sync because the client rewrites them at every
    /// sync (a sprite, a ticker), instead of write-faulting every frame;
    /// 0: never.
    #[arg(long, default_value_t = crate::policy::DEFAULT_HOT_MAX_PAGES, value_name = "PAGES")]
    auto_hot_max_pages: u64,
    /// Serve Prometheus metrics (OpenMetrics text) over HTTP at
    /// http://ADDR/metrics, for example 127.0.0.1:9464. Off by default;
    /// `cohmemctl metrics` reads the same text over the daemon's socket.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Show image BOs on this KMS connector of the DRM backend's device
    /// (`Virtual-1`, `VGA-1`, or `auto`: the first connected one); clients
    /// put a BO on it with SHOW (`cohmemctl show ID`). Needs --gpu drm: and
    /// DRM master (no compositor on the device).
    #[arg(long, value_name = "CONNECTOR|auto")]
    display: Option<String>,
    /// Least time between two damage commits to the display, in
    /// microseconds: the rectangles of syncs in between are coalesced and
    /// sent when it elapses, on unmap and on close (0: after every sync).
    #[arg(long, default_value_t = 0)]
    display_interval_us: u64,
    /// Log output: `text` (stderr), `json` (one JSON object a line on
    /// stderr), `journald` (native journal fields), or `auto` (journald when
    /// started by systemd with its stderr connected to the journal, else
    /// text).
    #[arg(long, default_value = "auto", value_parser = parse_log_format)]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Auto,
    Text,
    Json,
    Journald,
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "auto" => Ok(LogFormat::Auto),
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        "journald" => Ok(LogFormat::Journald),
        other => Err(format!("unknown log format {other:?} (auto, text, json, journald)")),
    }
}

/// True when stderr is the journal's stream (`$JOURNAL_STREAM` names its
/// device and inode, as systemd sets it for services).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

/// Installs the global subscriber: one line per event in the chosen format.
fn init_logging(format: LogFormat, filter: EnvFilter) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Journald => {
            let layer = tracing_journald::layer().context("connecting to the journal (--log-format journald)")?;
            registry.with(layer.with_syslog_identifier("cohmemd".into())).init();
        }
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text | LogFormat::Auto => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
    }
    Ok(())
}

/// Threads of tokio's blocking pool at most (see [`main`]).
const MAX_BLOCKING_THREADS: usize = 8;

/// `--methods`.
fn parse_methods(s: &str) -> Result<MethodPolicy, String> {
    match s {
        "auto" => Ok(MethodPolicy::Auto),
        "vmwgfx" => Ok(MethodPolicy::Vmwgfx),
        other => Err(format!("unknown method policy {other:?} (auto, vmwgfx)")),
    }
}

/// `--mechanism`: `None` is `auto`.
#[derive(Debug, Clone, Copy)]
struct MechanismArg(Option<Mechanism>);

fn parse_mechanism(s: &str) -> Result<MechanismArg, String> {
    match s {
        "auto" => Ok(MechanismArg(None)),
        "uffd-async" => Ok(MechanismArg(Some(Mechanism::UffdAsync))),
        "uffd-sync" => Ok(MechanismArg(Some(Mechanism::UffdSync))),
        "full" => Ok(MechanismArg(Some(Mechanism::Full))),
        "explicit" => Ok(MechanismArg(Some(Mechanism::Explicit))),
        "soft-dirty" => Ok(MechanismArg(Some(Mechanism::SoftDirty))),
        other => Err(format!(
            "unknown mechanism {other:?} (auto, uffd-async, uffd-sync, soft-dirty, full, explicit)"
        )),
    }
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("{s:?} is not an octal mode: {e}"))
}

/// The command line, with the configuration file's keys for every option
/// the command line does not set ([`crate::config_file`]).
fn parse_args_and_config() -> anyhow::Result<Args> {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let cli: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = Args::command();
    let matches = cmd.clone().get_matches_from(&cli);
    let (path, required) = match matches.get_one::<PathBuf>("config") {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(crate::config_file::DEFAULT_PATH), false),
    };
    let given: Vec<String> = cmd
        .get_arguments()
        .filter(|a| matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    let from_file = crate::config_file::file_args(&cmd, &path, required, &given)?;
    let mut all = cli.clone();
    all.splice(1..1, from_file);
    let merged = cmd.try_get_matches_from(all).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Args::from_arg_matches(&merged)?)
}

/// Runs the daemon with the process's command line until SIGTERM/SIGINT.
pub fn main() -> anyhow::Result<()> {
    let args = parse_args_and_config()?;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log))
        .with_context(|| format!("bad --log filter {:?}", args.log))?;
    init_logging(args.log_format, filter)?;
    let config = daemon_config(&args)?;
    raise_fd_limit();
    let daemon = Arc::new(Daemon::new(config).context("starting the daemon")?);
    log_start(&daemon);

    // Requests run on the workers (block_in_place); a worker that blocks
    // hands its other connections to a thread of the blocking pool. More
    // such threads than a few per core only cost memory (each has its own
    // stack and malloc arena: 130 threads grew the daemon by 20 MiB under
    // the bench's 100-client scale scenario), so the pool is bounded
    // (8 threads: 5 MiB, and more syncs per second than with 130).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    if let Some(interval) = daemon.config.background_upload {
        crate::background::start(&daemon, interval).context("starting the background upload")?;
    }
    // The fds the service manager passed: a listening socket (socket
    // activation, cohmemd.socket) and BOs a previous instance left in the fd
    // store, kept for the grace period so that their clients can re-import
    // them.
    let (listener, stored) = split_passed_fds();
    let adopted = crate::fdstore::adopt_stored(&daemon, stored);
    runtime.block_on(async move {
        let server = match listener {
            Some((fd, path)) => Server::activated(daemon.clone(), fd, path).context("taking the passed socket")?,
            None => Server::bind(daemon.clone()).context("binding the socket")?,
        };
        tracing::info!(socket = %server.path().display(), activated = server.is_activated(), "cohmemd listening");
        if let Some(addr) = daemon.config.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}: cannot listen there"))?;
            let local = listener.local_addr().unwrap_or(addr);
            tracing::info!(url = %format!("http://{local}/metrics"), "serving metrics");
            tokio::spawn(crate::metrics::serve(listener, daemon.clone()));
        }
        if let Some(interval) = cohmem_sys::sdnotify::watchdog_interval() {
            // Pet at half the interval; a daemon whose runtime is wedged
            // stops petting and is restarted (Restart=on-failure).
            tracing::info!(?interval, "systemd watchdog enabled");
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval / 2);
                loop {
                    tick.tick().await;
                    notify(&[NotifyState::Watchdog]);
                }
            });
        }
        if !adopted.is_empty() {
            let grace = daemon.config.adopt_grace;
            tracing::info!(bos = adopted.len(), ?grace, "holding BOs adopted from the fd store");
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let unclaimed = adopted.iter().filter(|b| Arc::strong_count(b) == 1).count();
                tracing::info!(unclaimed, "adoption grace period over");
                drop(adopted);
            });
        }
        notify(&[
            NotifyState::Ready,
            NotifyState::Status(&format!("listening on {}", server.path().display())),
        ]);
        server.run(shutdown_signal()).await;
        notify(&[NotifyState::Stopping]);
        tracing::info!("cohmemd stopped");
        anyhow::Ok(())
    })
}

/// The daemon's configuration from the command line (and config file),
/// refusing a `--max-bo-size` outside what the wire format can carry.
fn daemon_config(args: &Args) -> anyhow::Result<DaemonConfig> {
    if args.max_bo_size > cohmem_proto::limits::MAX_BO_SIZE || args.max_bo_size == 0 {
        anyhow::bail!(
            "--max-bo-size {} is outside 1..={} (the wire format's limit)",
            args.max_bo_size,
            cohmem_proto::limits::MAX_BO_SIZE
        );
    }
    let mut config = DaemonConfig {
        gpu: args.gpu.clone(),
        mechanism: args.mechanism.0,
        max_bo_size: args.max_bo_size,
        socket_mode: args.socket_mode,
        allowed_uids: args.allow_uid.clone(),
        user_limits: UserLimits {
            connections: args.max_connections_per_user,
            bos: args.max_bos_per_user,
            bytes: args.max_bytes_per_user,
        },
        max_bos_per_connection: args.max_bos_per_connection,
        fdstore: !args.no_fdstore,
        adopt_grace: std::time::Duration::from_secs(args.adopt_grace_secs),
        background_upload: (args.background_upload_us > 0)
            .then(|| std::time::Duration::from_micros(args.background_upload_us)),
        tracking: TrackingPolicy {
            methods: args.methods,
            dense: DensePolicy {
                percent: args.dense_percent,
                after: args.dense_after,
                probe_every: args.dense_probe_every,
            },
            shadow_max_bytes: args.auto_shadow_max_bytes,
            hot_max_pages: args.auto_hot_max_pages,
        },
        metrics_listen: args.metrics_listen,
        display: args.display.clone().map(|d| crate::display::DisplayConfig {
            connector: (d != "auto").then_some(d),
            interval: (args.display_interval_us > 0)
                .then(|| std::time::Duration::from_micros(args.display_interval_us)),
        }),
        ..DaemonConfig::default()
    };
    if let Some(s) = &args.socket {
        config.socket = s.clone();
    }
    Ok(config)
}

/// Logs what the kernel offers and which GPU backend was chosen.
fn log_start(daemon: &Daemon) {
    let k = &daemon.kernel;
    tracing::info!(
        kernel = %k.kernel,
        uffd_async = k.uffd_async.ok,
        uffd_sync = k.uffd_sync.ok,
        soft_dirty = k.soft_dirty.ok,
        pagemap_scan = k.pagemap_scan.ok,
        "kernel probed"
    );
    tracing::info!(backend = %daemon.gpu.name(), reason = %daemon.gpu_reason, "GPU backend chosen");
    if !k.uffd_async.ok {
        tracing::warn!(detail = %k.uffd_async.detail, "uffd-async unavailable: clients cannot attach tracking");
    }
}

/// An fd the service manager passed at start, with its name.
type PassedFd = (OwnedFd, String);

/// Splits the fds passed at start into the listening socket (the first
/// listening SEQPACKET socket, with its path) and the rest (the fd store).
fn split_passed_fds() -> (Option<(OwnedFd, PathBuf)>, Vec<PassedFd>) {
    use std::os::fd::AsFd;
    let passed = match cohmem_sys::sdnotify::take_listen_fds() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the fds passed at start");
            return (None, Vec::new());
        }
    };
    let mut listener = None;
    let mut rest = Vec::new();
    for (fd, name) in passed {
        match cohmem_sys::seqpacket::listening_seqpacket_path(fd.as_fd()) {
            Some(path) if listener.is_none() => {
                tracing::debug!(%name, path = %path.display(), "listening socket passed by the service manager");
                listener = Some((fd, path));
            }
            _ => rest.push((fd, name)),
        }
    }
    (listener, rest)
}

/// Tells the service manager (if any) about a state change.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = cohmem_sys::sdnotify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

/// Every BO costs the daemon two fds (its memfd and the software GPU's), so
/// the soft RLIMIT_NOFILE (often 1024) is raised to the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised RLIMIT_NOFILE"),
            Err(e) => tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "getrlimit(RLIMIT_NOFILE) failed"),
    }
}
