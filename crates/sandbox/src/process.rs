//! A long-lived process of a session that the host talks to over its standard streams, such as
//! an MCP server: see [`SandboxSession::spawn`](crate::SandboxSession::spawn).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

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

/// Follows and ends a [`Spawned`] process. Clones follow the same process; when the last one
/// is dropped, the process is killed, so that nothing a caller lost track of keeps running.
#[derive(Clone)]
pub struct ProcessHandle {
    exit: watch::Receiver<Option<ExitStatus>>,
    kill: CancellationToken,
    /// Why the process never started, when it did not.
    failure: Arc<OnceLock<String>>,
    _kill_on_drop: Arc<DropGuard>,
}

/// The backend's side of a [`ProcessHandle`]: it carries out the kill and reports the end.
pub(crate) struct Follower {
    exit: watch::Sender<Option<ExitStatus>>,
    failure: Arc<OnceLock<String>>,
    /// Fires when the process is to be killed: by [`ProcessHandle::kill`] or the last handle's
    /// drop.
    pub kill: CancellationToken,
}

impl Follower {
    /// The process ended so.
    pub fn ended(self, status: ExitStatus) {
        let _ = self.exit.send(Some(status));
    }

    /// The process never started, for the reason `message` (a shell's "command not found"
    /// exit code, 127, stands for it where only a status is read).
    pub fn failed(self, message: String) {
        let _ = self.failure.set(message);
        self.ended(ExitStatus::Exited(127));
    }
}

impl ProcessHandle {
    /// A handle and its backend's side.
    pub(crate) fn new() -> (ProcessHandle, Follower) {
        let (exit_tx, exit) = watch::channel(None);
        let kill = CancellationToken::new();
        let failure = Arc::new(OnceLock::new());
        let handle = ProcessHandle {
            exit,
            kill: kill.clone(),
            failure: failure.clone(),
            _kill_on_drop: Arc::new(kill.clone().drop_guard()),
        };
        let follower = Follower {
            exit: exit_tx,
            failure,
            kill,
        };
        (handle, follower)
    }

    /// Why the process never started, when the sandbox could not start it.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
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
