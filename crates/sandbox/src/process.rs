//! A long-lived process of a session that the host talks to over its standard streams, such as
//! an MCP server: see [`SandboxSession::spawn`](crate::SandboxSession::spawn).

use std::path::PathBuf;

use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ExitStatus;

/// A process to start in a session and keep talking to.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    /// A shell command line, as [`crate::ExecRequest::command`].
    pub command: String,
    /// The directory to run in, relative to the workspace. `None` is the workspace itself.
    pub workdir: Option<PathBuf>,
    /// Variables over the session's own environment.
    pub env: Vec<(String, String)>,
}

impl SpawnRequest {
    pub fn new(command: impl Into<String>) -> Self {
        SpawnRequest {
            command: command.into(),
            workdir: None,
            env: Vec::new(),
        }
    }
}

/// A started process: the host's ends of its three standard streams, and its handle. Closing
/// `stdin` is how a well-behaved process is asked to end; [`ProcessHandle::kill`] ends any.
pub struct Spawned {
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    pub handle: ProcessHandle,
}

/// A session's egress proxy as the host reaches it: see
/// [`SandboxSession::egress`](crate::SandboxSession::egress).
#[derive(Debug, Clone)]
pub struct EgressRoute {
    /// The proxy's Unix socket on the host. It speaks HTTP proxy requests: `CONNECT` for
    /// HTTPS, absolute `http://` requests otherwise.
    pub socket: PathBuf,
    /// The session's certificate authority, in PEM, when the proxy adds credentials: it signs
    /// the certificates the proxy shows for those hosts, so a client must trust it.
    pub ca_pem: Option<String>,
}

/// Follows and ends a [`Spawned`] process. Clones follow the same process.
#[derive(Clone)]
pub struct ProcessHandle {
    exit: watch::Receiver<Option<ExitStatus>>,
    kill: CancellationToken,
}

impl ProcessHandle {
    /// A handle whose process reports its end on `exit` and is killed when `kill` fires (the
    /// backend watches it).
    pub(crate) fn new(exit: watch::Receiver<Option<ExitStatus>>, kill: CancellationToken) -> Self {
        ProcessHandle { exit, kill }
    }

    /// Kills the process and everything it started (its process group).
    pub fn kill(&self) {
        self.kill.cancel();
    }

    /// How it ended, if it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits for its end. A backend that lost track of it (its session ended) reports it as
    /// cancelled.
    pub async fn wait(&self) -> ExitStatus {
        let mut exit = self.exit.clone();
        if let Ok(status) = exit.wait_for(Option::is_some).await {
            return status.unwrap_or(ExitStatus::Cancelled);
        }
        let last = *exit.borrow();
        last.unwrap_or(ExitStatus::Cancelled)
    }
}

/// Three pipes for a process's standard streams: the child's ends (stdin's read end, stdout's
/// and stderr's write ends) and the host's, as tokio pipes.
pub(crate) struct Pipes {
    pub child: [std::os::fd::OwnedFd; 3],
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

impl Pipes {
    pub(crate) fn new() -> std::io::Result<Pipes> {
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        let (in_read, in_write) = nix::unistd::pipe2(flags)?;
        let (out_read, out_write) = nix::unistd::pipe2(flags)?;
        let (err_read, err_write) = nix::unistd::pipe2(flags)?;
        Ok(Pipes {
            child: [in_read, out_write, err_write],
            stdin: pipe::Sender::from_owned_fd(in_write)?,
            stdout: pipe::Receiver::from_owned_fd(out_read)?,
            stderr: pipe::Receiver::from_owned_fd(err_read)?,
        })
    }
}
