//! The listening socket: binds (or takes over a socket-activated one),
//! accepts connections and hands each to [`crate::connection::serve`] with
//! the shared [`Daemon`] state; removes its socket file at shutdown.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio_seqpacket::UnixSeqpacketListener;

use crate::connection;
use crate::server::Daemon;

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Another daemon answers on the socket.
    #[error("a daemon is already listening on {0}")]
    AlreadyRunning(PathBuf),
    /// Socket setup failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The listening side of the daemon.
pub struct Server {
    listener: UnixSeqpacketListener,
    path: PathBuf,
    daemon: Arc<Daemon>,
    /// The socket was passed by the service manager (socket activation):
    /// its file belongs to the socket unit and is left in place at exit.
    activated: bool,
}

impl Server {
    /// Binds the socket (mode from the config), removing a stale socket file
    /// but refusing to replace a live daemon.
    pub fn bind(daemon: Arc<Daemon>) -> Result<Self, ServerError> {
        let path = daemon.config.socket.clone();
        let io = |what, source| ServerError::Io {
            what,
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(io(
                    "refusing to replace a non-socket file at",
                    std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                ));
            }
            if cohmem_sys::seqpacket::SeqpacketSocket::connect(&path).is_ok() {
                return Err(ServerError::AlreadyRunning(path));
            }
            std::fs::remove_file(&path).map_err(|e| io("removing stale socket", e))?;
        }
        let listener = UnixSeqpacketListener::bind(&path).map_err(|e| io("binding", e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(daemon.config.socket_mode))
            .map_err(|e| io("setting the mode of", e))?;
        Ok(Self {
            listener,
            path,
            daemon,
            activated: false,
        })
    }

    /// Serves on a listening socket the service manager passed
    /// (`ListenSequentialPacket=` in cohmemd.socket): its path, mode and
    /// group are the socket unit's; `--socket` and `--socket-mode` do not
    /// apply.
    pub fn activated(daemon: Arc<Daemon>, fd: std::os::fd::OwnedFd, path: PathBuf) -> Result<Self, ServerError> {
        use std::os::fd::AsFd;
        cohmem_sys::seqpacket::set_nonblocking(fd.as_fd()).map_err(|e| ServerError::Io {
            what: "making the passed listening socket non-blocking",
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let listener = UnixSeqpacketListener::try_from(fd).map_err(|source| ServerError::Io {
            what: "taking over the passed listening socket",
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            listener,
            path,
            daemon,
            activated: true,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the service manager passed the socket.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Accepts connections until `shutdown` completes, then removes the socket.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(sock) => {
                        let daemon = self.daemon.clone();
                        tokio::spawn(connection::serve(daemon, sock));
                    }
                    Err(e) => {
                        crate::limited!(warn, "accept failed", 0, error = %e, "accept failed");
                        // EMFILE and friends: back off instead of spinning.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
        if self.activated {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove socket");
        }
    }
}
