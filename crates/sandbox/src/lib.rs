//! Where the agent's commands run.
//!
//! The runner and the agent only ever see the [`Sandbox`] and [`SandboxSession`] traits: a
//! session is started per task, commands are executed into it, and closing it ends everything it
//! started. Backends differ in how much they isolate; each says so through
//! [`Sandbox::isolated`], and the runner records it in the task's log.

#[cfg(target_os = "linux")]
mod doctor;
#[cfg(target_os = "linux")]
mod linux;
mod output;
mod process;
mod unisolated;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use output::HeadTailBuffer;
pub use process::{EgressRoute, ProcessHandle, SpawnRequest, Spawned};
pub use unisolated::Unisolated;

#[cfg(target_os = "linux")]
pub use doctor::{DoctorReport, Feature, doctor};
#[cfg(target_os = "linux")]
pub use linux::{
    CA_BUNDLE, EgressEvent, EgressLimits, EgressVerdict, HELPER_ARG, HelperCommand, Limits,
    Namespaced, NamespacedConfig, NamespacedSession, NetworkPolicy, ROOT_HOST_ID, SANDBOX_ID,
    SessionOptions, run_helper_if_requested,
};

/// What a session is started with.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// The task's working copy on the host.
    pub workspace: PathBuf,
    /// Variables set for every command, on top of the backend's clean base environment. Nothing
    /// of the host's own environment is passed on unless it is listed here.
    pub env: Vec<(String, String)>,
    /// Hosts the session may reach through the logging egress proxy (`host`, `*.host`,
    /// `host:port`; without a port, 443 for HTTPS and 80 for plain HTTP); empty means no
    /// network at all. Private destinations need the backend's host configuration too.
    pub network: Vec<String>,
    /// Resource limits; `None` fields keep the backend's defaults.
    pub limits: SessionLimits,
    /// Receives one record per request through the egress proxy, allowed or not.
    #[cfg(target_os = "linux")]
    pub egress: Option<tokio::sync::mpsc::UnboundedSender<EgressEvent>>,
    /// Read-only layers stacked over the workspace, lowest first: each is the changes a
    /// session kept with [`SandboxSession::close_keeping_changes`] (a cached setup).
    pub layers: Vec<PathBuf>,
    /// The image the session's root is made of: its unpacked layers, lowest first, each a
    /// directory in overlayfs's form (whiteouts as 0:0 character devices, opaque directories
    /// marked). Empty means the host's system directories, as by default. With an image, nothing
    /// of the host's `/usr` or `/etc` is visible, and `/usr`, `/etc`, `/opt` and `/var` are
    /// writable in every session (a layer keeps a root session's changes to them); only
    /// backends that [`Sandbox::supports_images`] take one.
    pub image: Vec<PathBuf>,
    /// The image's own environment variables: over the backend's base environment, under the
    /// backend's own additions and [`SessionSpec::env`].
    pub image_env: Vec<(String, String)>,
    /// Secrets the egress proxy adds to HTTPS requests to their hosts; the session never holds
    /// them. Only a backend with an egress proxy can use them (see [`Sandbox::credentials`]).
    pub credentials: Vec<Credential>,
    /// Commands run as root of the sandbox (uid 0 of its user namespace) rather than as the
    /// sandbox user: a setup session. Where the backend can (see [`Sandbox::writable_system`]),
    /// the system directories are then writable and a kept layer holds their changes, so that
    /// system package managers work; files root makes belong to the sandbox user in later
    /// sessions.
    pub root: bool,
    /// Stack the working copy above the layers' `workspace/` parts instead of below them, so
    /// that every path the working copy holds is its own while what only a layer holds (the
    /// dependencies setup installed) still shows: for a session that must see a committed
    /// tree exactly as committed, such as the checks that prove a result.
    pub workspace_over_layers: bool,
    /// Who commands run as, when not the sandbox's own unprivileged user: an image's user (its
    /// `User`, resolved in the image's `/etc/passwd` and `/etc/group`). Only backends that
    /// [`Sandbox::supports_users`] take one; a session with [`SessionSpec::root`] ignores it.
    pub user: Option<SessionUser>,
    /// The workspace is mounted read-only: commands and file tools read it and cannot change
    /// it (a review's session). Backends that cannot enforce it refuse the session.
    pub read_only_workspace: bool,
}

/// An image's user, for the commands of a session (see [`SessionSpec::user`]): its ids as the
/// image has them, so that the image's files show with their own owners. The workspace, the
/// session's home directory and what setup layers changed in them belong to this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    /// Its name in the image (or its uid as text where the image has none), as `USER`.
    pub name: String,
    /// Not 0: root's commands are those of a [`SessionSpec::root`] session.
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the image's `/etc/group` entries naming the user).
    pub groups: Vec<u32>,
    /// Its home directory, as `HOME`; `None` keeps the sandbox's own.
    pub home: Option<String>,
}

/// Host ids that files written into a session's workspace from the host must have (see
/// [`SandboxSession::file_owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOwner {
    pub uid: u32,
    pub gid: u32,
}

/// A secret sent as an HTTP header on the session's behalf: the egress proxy adds `header:
/// value` to every HTTPS request to one of `hosts` (patterns as in [`SessionSpec::network`]),
/// decrypting those connections with a certificate authority made for the session.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The secret's name, for the log.
    pub name: String,
    pub hosts: Vec<String>,
    pub header: String,
    /// The header's whole value, the secret included.
    pub value: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("header", &self.header)
            .field("value", &format_args!("[secret:{}]", self.name))
            .finish()
    }
}

impl SessionSpec {
    /// A session over `workspace` with a clean environment, no network and default limits.
    pub fn new(workspace: impl Into<PathBuf>) -> Self {
        SessionSpec {
            workspace: workspace.into(),
            env: Vec::new(),
            network: Vec::new(),
            limits: SessionLimits::default(),
            #[cfg(target_os = "linux")]
            egress: None,
            layers: Vec::new(),
            image: Vec::new(),
            image_env: Vec::new(),
            credentials: Vec::new(),
            root: false,
            workspace_over_layers: false,
            user: None,
            read_only_workspace: false,
        }
    }
}

/// Limits a session may ask for, whatever the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SessionLimits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    /// How much the workspace may grow.
    pub disk_bytes: Option<u64>,
}

/// One command to run in a session.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// A shell command line, run by `bash -c` (or `sh -c` where there is no bash).
    pub command: String,
    /// The directory to run in, relative to the workspace. `None` is the workspace itself.
    pub workdir: Option<PathBuf>,
    /// How long the command may run before it and everything it started are killed.
    pub timeout: Duration,
    /// The most output bytes kept; beyond it the middle is dropped (see [`HeadTailBuffer`]).
    pub output_limit: usize,
    /// Bytes fed to the command's standard input; `None` gives it an empty one.
    pub stdin: Option<Vec<u8>>,
}

impl ExecRequest {
    /// A request with the default timeout (10 minutes) and output limit (64 KiB).
    pub fn new(command: impl Into<String>) -> Self {
        ExecRequest {
            command: command.into(),
            workdir: None,
            timeout: Duration::from_secs(600),
            output_limit: 64 * 1024,
            stdin: None,
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// It ran past its timeout and was killed.
    TimedOut,
    /// The task was cancelled while it ran, and it was killed.
    Cancelled,
    /// It hit one of the session's resource limits and was stopped (or failed) because of it.
    LimitExceeded(Limit),
}

/// Which resource limit a command hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The session's memory limit: the kernel's OOM killer stopped a process.
    Memory,
    /// The session's process limit: fork failed (a fork bomb, or too many threads).
    Processes,
    /// The workspace or /tmp size limit, or the largest file allowed.
    Disk,
}

impl Limit {
    /// A sentence for the agent and the task log.
    pub fn explain(self) -> &'static str {
        match self {
            Limit::Memory => {
                "limit exceeded: the command ran out of the session's memory limit and was killed"
            }
            Limit::Processes => {
                "limit exceeded: the command hit the session's process limit and was killed"
            }
            Limit::Disk => {
                "limit exceeded: the command filled the session's disk limit (workspace or /tmp) and was stopped"
            }
        }
    }
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }

    /// The shell-style exit code: the code itself, 128 + signal, 124 for a timeout (as
    /// `timeout(1)` does), 130 for a cancellation (as an interrupt would) and 137 for a limit
    /// (as a kill would).
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => 128 + signal,
            ExitStatus::TimedOut => 124,
            ExitStatus::Cancelled => 130,
            ExitStatus::LimitExceeded(_) => 137,
        }
    }
}

/// What a command left behind.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub status: ExitStatus,
    /// Standard output and standard error, interleaved as they arrived, lossily decoded as
    /// UTF-8, with the middle cut out when longer than the request's limit.
    pub output: String,
    /// How many bytes of output were cut out.
    pub omitted_bytes: u64,
    pub duration: Duration,
}

/// Why a sandbox could not do what was asked. The command's own failure is not an error: it is
/// an [`ExecOutput`] with a non-zero status.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the workspace {path} is not usable: {source}")]
    Workspace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the working directory {0} is outside the workspace")]
    WorkdirOutsideWorkspace(PathBuf),
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("lost track of a running command: {0}")]
    Wait(std::io::Error),
    #[error("the session is closed")]
    Closed,
    #[error("could not build the sandbox: {0}")]
    Setup(String),
}

/// A way of running a task's commands.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// The backend's name, as recorded in the task log.
    fn backend(&self) -> &'static str;

    /// Whether commands are isolated from the host. A backend that returns false must be named
    /// so that nobody mistakes it for isolation.
    fn isolated(&self) -> bool;

    /// Starts a session for one task.
    async fn start(&self, spec: SessionSpec) -> Result<Box<dyn SandboxSession>, SandboxError>;

    /// Whether sessions take [`SessionSpec::layers`] and can keep their changes as one.
    fn supports_layers(&self) -> bool {
        false
    }

    /// Whether sessions can take their root from an image ([`SessionSpec::image`]).
    fn supports_images(&self) -> bool {
        false
    }

    /// Whether sessions can run their commands as an image's user ([`SessionSpec::user`]). The
    /// namespaced backend can when the host runs it as root (which maps the image's ids).
    fn supports_users(&self) -> bool {
        false
    }

    /// Whether a session with [`SessionSpec::root`] can change the system directories (and
    /// keep the changes as a layer). The namespaced backend can when the host runs it as root.
    fn writable_system(&self) -> bool {
        false
    }

    /// Whether sessions send [`SessionSpec::credentials`] (through an egress proxy). A backend
    /// that does not ignores them: the caller says so.
    fn credentials(&self) -> bool {
        false
    }

    /// Prepares what the next session needs ahead of it, if the backend can (the namespaced
    /// one starts a helper): for a process that will start a session soon, such as a worker.
    fn warm_up(&self) {}
}

/// A task's live sandbox: commands run one after another in the same environment.
#[async_trait]
pub trait SandboxSession: Send + Sync {
    /// The workspace as a host path, where file tools read and write.
    fn workspace(&self) -> &Path;

    /// The host uid and gid that host-side writes into the workspace must use, when they are
    /// not the caller's own: a root host creating files through a namespaced sandbox's view
    /// must act as the ids that stand for the sandbox user (or the image's user), which root's
    /// are not.
    fn file_owner(&self) -> Option<FileOwner> {
        None
    }

    /// CPU time the session's commands have used so far, where the backend can measure it.
    fn cpu_seconds(&self) -> Option<f64> {
        None
    }

    /// Runs one command. Returns once it has ended (or was killed for its timeout or a
    /// cancellation) and its output has been collected.
    async fn exec(
        &self,
        request: ExecRequest,
        cancel: &CancellationToken,
    ) -> Result<ExecOutput, SandboxError>;

    /// Starts a long-lived process that the caller talks to over its standard streams (an MCP
    /// server): it runs as [`SandboxSession::exec`]'s commands do (same user, environment,
    /// limits and network), with no timeout, until it exits, is killed through its handle, or
    /// the session ends.
    async fn spawn(&self, request: SpawnRequest) -> Result<Spawned, SandboxError> {
        Err(SandboxError::Spawn {
            command: request.command,
            source: std::io::Error::other("this sandbox cannot run a long-lived process"),
        })
    }

    /// How the host reaches this session's egress proxy, for requests it makes on the
    /// session's behalf (a remote MCP server's): under the session's allowlist, logged as its
    /// egress, with its credentials added. `None` when the session has no proxy.
    fn egress(&self) -> Option<EgressRoute> {
        None
    }

    /// Ends the session and every process it started.
    async fn close(&self) -> Result<(), SandboxError>;

    /// Ends the session like [`SandboxSession::close`], keeping what its commands changed in
    /// the workspace as a directory at `dest` (on the same filesystem as the backend's state),
    /// usable as a layer of later sessions. Backends without layers refuse.
    async fn close_keeping_changes(&self, dest: &Path) -> Result<(), SandboxError> {
        let _ = self.close().await;
        Err(SandboxError::Setup(format!(
            "this sandbox cannot keep a session's changes (wanted at {})",
            dest.display()
        )))
    }
}
