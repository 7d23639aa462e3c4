//! The isolating backend: every session is a set of fresh Linux namespaces with its own root,
//! its workspace as an overlay over the task's working copy, a pid-1 init that runs commands
//! into the live session, cgroup and rlimit limits, Landlock, seccomp, and either no network
//! or an allowlisting egress proxy.
//!
//! The host side (this module and [`session`]) never creates namespaces itself: it starts the
//! helper (see [`helper`]) and talks to the init over a socket ([`wire`]).

mod cgroup;
mod confine;
pub(crate) mod helper;
mod proxy;
mod proxy_bridge;
mod session;
mod sys;
pub(crate) mod wire;

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub use cgroup::Version as CgroupVersion;
pub use helper::{HELPER_ARG, run_helper_if_requested};
pub use proxy::{EgressEvent, EgressVerdict};
pub use session::NamespacedSession;

pub(crate) use cgroup::probe as probe_cgroups;

use crate::{Sandbox, SandboxError, SandboxSession, SessionSpec};
use cgroup::SessionCgroup;
use wire::{HelperConfig, Reply, RlimitSpec};

/// How to start the helper: a program and the arguments that make it one.
#[derive(Debug, Clone)]
pub struct HelperCommand {
    pub program: PathBuf,
    /// Arguments before the helper's own; [`HelperCommand::new`] sets `[HELPER_ARG]`, which
    /// [`run_helper_if_requested`] recognises.
    pub args: Vec<OsString>,
}

impl HelperCommand {
    /// `program --nightshift-sandbox-helper`, for a binary whose `main` calls
    /// [`run_helper_if_requested`] first.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        HelperCommand {
            program: program.into(),
            args: vec![HELPER_ARG.into()],
        }
    }

    /// The running executable as the helper.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self::new(std::env::current_exe()?))
    }
}

/// Resource limits of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory of all processes together (cgroup), including what they write to /tmp.
    pub memory_bytes: Option<u64>,
    /// Processes and threads together (cgroup pids, or RLIMIT_NPROC without one).
    pub pids: Option<u64>,
    /// CPU time as a number of cores (cgroup cpu quota).
    pub cpus: Option<f64>,
    /// How much the workspace may grow over the working copy (and the largest single file).
    pub workspace_bytes: Option<u64>,
    /// Size of the /tmp tmpfs (counted in memory too).
    pub tmp_bytes: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: Some(4 << 30),
            pids: Some(1024),
            cpus: None,
            workspace_bytes: Some(10 << 30),
            tmp_bytes: 1 << 30,
            open_files: 8192,
        }
    }
}

/// What a session may reach over the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkPolicy {
    /// Nothing: only the loopback interface of the sandbox itself.
    #[default]
    None,
    /// HTTP and HTTPS (through CONNECT) to these hosts only, via the egress proxy. A pattern is
    /// a host name, optionally starting with `*.` for any subdomain (`*.crates.io`), and
    /// optionally ending with `:port` (any port otherwise).
    Allow(Vec<String>),
}

/// How [`Namespaced`] builds sessions.
#[derive(Debug, Clone)]
pub struct NamespacedConfig {
    pub helper: HelperCommand,
    /// Where each session keeps its overlay's upper layer, in `<state_dir>/<session>`.
    pub state_dir: PathBuf,
    /// Host directories bound read-only at the same path (toolchains: ~/.cargo, ~/.rustup...).
    pub ro_binds: Vec<PathBuf>,
    pub limits: Limits,
    pub network: NetworkPolicy,
    /// When nightshift runs as root, the host uid and gid the sandbox user becomes: an id
    /// that owns nothing on the host. (As any other user, the sandbox user is that user.)
    pub root_host_id: u32,
    /// How long building a session may take.
    pub start_timeout: Duration,
}

impl NamespacedConfig {
    pub fn new(helper: HelperCommand, state_dir: impl Into<PathBuf>) -> Self {
        NamespacedConfig {
            helper,
            state_dir: state_dir.into(),
            ro_binds: Vec::new(),
            limits: Limits::default(),
            network: NetworkPolicy::None,
            root_host_id: 1_000_000,
            start_timeout: Duration::from_secs(20),
        }
    }
}

/// Per-session overrides of the backend's configuration.
#[derive(Debug, Default, Clone)]
pub struct SessionOptions {
    pub network: Option<NetworkPolicy>,
    pub limits: Option<Limits>,
    /// Receives one event per proxied request (allowed or denied).
    pub egress_events: Option<tokio::sync::mpsc::UnboundedSender<EgressEvent>>,
}

/// The uid and gid the sandbox user has inside.
pub const SANDBOX_ID: u32 = 1000;

/// Isolating backend. See the module documentation.
#[derive(Debug, Clone)]
pub struct Namespaced {
    config: Arc<NamespacedConfig>,
}

static SESSION_SEQ: AtomicU64 = AtomicU64::new(0);

fn session_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seq = SESSION_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("s{}-{seq}-{nanos:x}", std::process::id())
}

fn setup_error(message: impl Into<String>) -> SandboxError {
    SandboxError::Setup(message.into())
}

impl Namespaced {
    pub fn new(config: NamespacedConfig) -> Self {
        Namespaced {
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &NamespacedConfig {
        &self.config
    }

    /// Starts a session with per-session options; [`Sandbox::start`] uses the defaults.
    pub async fn start_with(
        &self,
        spec: SessionSpec,
        options: SessionOptions,
    ) -> Result<NamespacedSession, SandboxError> {
        let workspace = tokio::fs::canonicalize(&spec.workspace)
            .await
            .map_err(|source| SandboxError::Workspace {
                path: spec.workspace.clone(),
                source,
            })?;
        if !workspace.is_dir() {
            let source = std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory");
            return Err(SandboxError::Workspace {
                path: workspace,
                source,
            });
        }
        let limits = options.limits.unwrap_or_else(|| self.config.limits.clone());
        let network = options
            .network
            .unwrap_or_else(|| self.config.network.clone());
        sweep_stale_state(&self.config.state_dir);
        let name = session_name();
        let mut resources = session::Resources::new(self.config.state_dir.join(&name));

        let euid = nix::unistd::geteuid().as_raw();
        let drop_root = euid == 0;
        let host_id = if drop_root {
            self.config.root_host_id
        } else {
            euid
        };
        let upper =
            prepare_state(&resources.state_dir, drop_root.then_some(host_id)).map_err(|e| {
                setup_error(format!("preparing {}: {e}", resources.state_dir.display()))
            })?;

        let (cgroup, mut notes) = SessionCgroup::create(&format!("nightshift-{name}"), &limits);
        let cgroup = cgroup.map(Arc::new);
        resources.cgroup = cgroup.clone();
        if let Some(cgroup) = &cgroup {
            notes.push(cgroup.describe());
        }

        let proxy = match &network {
            NetworkPolicy::None => false,
            NetworkPolicy::Allow(patterns) => {
                let path = resources.state_dir.join("proxy.sock");
                let proxy = proxy::EgressProxy::start(
                    &path,
                    patterns.clone(),
                    options.egress_events.clone(),
                    drop_root.then_some(host_id),
                )
                .map_err(|e| setup_error(format!("starting the egress proxy: {e}")))?;
                resources.proxy = Some(proxy);
                true
            }
        };

        let has = |f: fn(&SessionCgroup) -> bool| cgroup.as_deref().is_some_and(f);
        let rlimits = RlimitSpec {
            nofile: Some(limits.open_files),
            fsize: limits.workspace_bytes,
            nproc: if has(SessionCgroup::has_pids) {
                None
            } else {
                limits.pids
            },
            data: if has(SessionCgroup::has_memory) {
                None
            } else {
                limits.memory_bytes
            },
        };
        let config = HelperConfig {
            workspace: workspace.clone(),
            state: resources.state_dir.clone(),
            ro_binds: self.config.ro_binds.clone(),
            host_id,
            inside_id: SANDBOX_ID,
            drop_root,
            cgroup_procs: cgroup
                .as_deref()
                .map(SessionCgroup::init_procs)
                .unwrap_or_default(),
            cgroup_commands: cgroup
                .as_deref()
                .map(SessionCgroup::commands_procs)
                .unwrap_or_default(),
            tmp_bytes: limits.tmp_bytes,
            rlimits,
            proxy,
        };
        let started = self.spawn_helper(&config).await;
        let (child, stream, pid, confinement, stderr) = match started {
            Ok(started) => started,
            Err(error) => {
                resources.teardown(None);
                return Err(error);
            }
        };
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                resources.teardown(None);
                return Err(setup_error(format!("pidfd_open({pid}): {e}")));
            }
        };
        notes.extend(confinement);
        let mut env = session::base_env();
        if resources.proxy.is_some() {
            env.extend(proxy::proxy_env());
        }
        for (key, value) in spec.env {
            env.retain(|(existing, _)| *existing != key);
            env.push((key, value));
        }
        Ok(NamespacedSession::new(session::Parts {
            stream,
            child,
            pid,
            pidfd,
            resources,
            upper,
            limits,
            env,
            report: notes,
            stderr,
            file_owner: drop_root.then_some(host_id),
        }))
    }

    async fn spawn_helper(
        &self,
        config: &HelperConfig,
    ) -> Result<
        (
            tokio::process::Child,
            UnixStream,
            i32,
            Vec<String>,
            session::StderrTail,
        ),
        SandboxError,
    > {
        let (host_end, helper_end) =
            StdUnixStream::pair().map_err(|e| setup_error(format!("socketpair: {e}")))?;
        let helper = &self.config.helper;
        let mut child = tokio::process::Command::new(&helper.program)
            .args(&helper.args)
            .arg(std::process::id().to_string())
            .env_clear()
            .stdin(Stdio::from(OwnedFd::from(helper_end)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                setup_error(format!(
                    "starting the helper {}: {e}",
                    helper.program.display()
                ))
            })?;
        let stderr = session::StderrTail::collect(child.stderr.take());
        host_end
            .set_nonblocking(true)
            .map_err(|e| setup_error(format!("socket: {e}")))?;
        let mut stream =
            UnixStream::from_std(host_end).map_err(|e| setup_error(format!("socket: {e}")))?;
        let handshake = async {
            let frame = wire::encode_frame(config, &[]).map_err(|e| e.to_string())?;
            stream
                .write_all(&frame)
                .await
                .map_err(|e| format!("sending the configuration: {e}"))?;
            let pid = match read_reply(&mut stream).await? {
                Reply::Spawned { pid } => pid,
                Reply::SetupFailed { message } => return Err(message),
                other => return Err(format!("unexpected reply {other:?}")),
            };
            match read_reply(&mut stream).await? {
                Reply::Ready { confinement } => Ok((pid, confinement)),
                Reply::SetupFailed { message } => Err(message),
                other => Err(format!("unexpected reply {other:?}")),
            }
        };
        let outcome = tokio::time::timeout(self.config.start_timeout, handshake).await;
        let failure = match outcome {
            Ok(Ok((pid, confinement))) => return Ok((child, stream, pid, confinement, stderr)),
            Ok(Err(message)) => message,
            Err(_) => format!("no answer within {:?}", self.config.start_timeout),
        };
        let _ = child.kill().await;
        let tail = stderr.finished().await;
        let detail = if tail.trim().is_empty() {
            String::new()
        } else {
            format!(" ({})", tail.trim())
        };
        Err(setup_error(format!(
            "{failure}{detail}; `nightshift doctor` lists what this host lacks"
        )))
    }
}

async fn read_reply(stream: &mut (impl AsyncRead + Unpin)) -> Result<Reply, String> {
    read_frame_async(stream)
        .await
        .map_err(|e| format!("reading from the helper: {e}"))?
        .map(|(reply, _)| reply)
        .ok_or_else(|| "the helper exited before the sandbox was ready".to_string())
}

/// The async twin of [`wire::read_frame`].
pub(crate) async fn read_frame_async(
    input: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<(Reply, Vec<u8>)>> {
    let mut prefix = [0u8; 8];
    match input.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (header_len, payload_len) = wire::decode_lengths(prefix)?;
    let mut header = vec![0u8; header_len];
    input.read_exact(&mut header).await?;
    let mut payload = vec![0u8; payload_len];
    input.read_exact(&mut payload).await?;
    let reply = serde_json::from_slice(&header).map_err(std::io::Error::other)?;
    Ok(Some((reply, payload)))
}

/// Removes state directories of sessions whose process died without tearing them down.
fn sweep_stale_state(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if cgroup::is_stale(&entry.file_name().to_string_lossy()) {
            session::remove_tree(&entry.path());
        }
    }
}

/// Creates `<state>/upper` and `<state>/work`, owned by `owner` when given; returns the upper.
fn prepare_state(state: &Path, owner: Option<u32>) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state)?;
    if let Some(id) = owner {
        std::os::unix::fs::chown(state, Some(id), Some(id))?;
    }
    let upper = state.join("upper");
    let work = state.join("work");
    for dir in [&upper, &work] {
        std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        if let Some(id) = owner {
            std::os::unix::fs::chown(dir, Some(id), Some(id))?;
        }
    }
    Ok(upper)
}

#[async_trait]
impl Sandbox for Namespaced {
    fn backend(&self) -> &'static str {
        "namespaced"
    }

    fn isolated(&self) -> bool {
        true
    }

    async fn start(&self, spec: SessionSpec) -> Result<Box<dyn SandboxSession>, SandboxError> {
        Ok(Box::new(
            self.start_with(spec, SessionOptions::default()).await?,
        ))
    }
}
