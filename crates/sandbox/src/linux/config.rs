//! What the namespaced backend is configured with: how to start its helper, the limits and
//! network policy of its sessions, and per-session overrides.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::helper::HELPER_ARG;
use super::proxy::EgressEvent;

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
    /// a host name or IP literal, optionally starting with `*.` for any subdomain
    /// (`*.crates.io`), and optionally ending with `:port`; without one it allows port 443
    /// for HTTPS (CONNECT) and 80 for plain HTTP, and no other. Whatever the list says, the
    /// proxy refuses private destinations (loopback, link-local, RFC 1918 and the like, and
    /// the host's own addresses) that [`NamespacedConfig::allow_private`] does not name.
    Allow(Vec<String>),
}

/// Bounds on a session's egress proxy, so that one session cannot take the host's resources
/// (descriptors, memory, tasks) by holding connections open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressLimits {
    /// Client connections served at once; one more is answered 503 and closed.
    pub connections: usize,
    /// How long a client has to send a whole request head (64 KiB at most), from connecting.
    pub head_timeout: Duration,
    /// How long a tunnel or a relayed request may pass no bytes either way before it is
    /// closed.
    pub idle_timeout: Duration,
}

impl Default for EgressLimits {
    fn default() -> Self {
        EgressLimits {
            connections: 64,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// How [`Namespaced`] builds sessions.
#[derive(Debug, Clone)]
pub struct NamespacedConfig {
    pub helper: HelperCommand,
    /// Where each session keeps its overlay's upper layer, in `<state_dir>/<session>`.
    pub state_dir: PathBuf,
    /// Host directories bound read-only at the same path (toolchains: ~/.cargo, ~/.rustup...).
    pub ro_binds: Vec<PathBuf>,
    /// Directories put before the default `PATH` inside, first first (a bound toolchain's
    /// `bin`).
    pub path_prefix: Vec<PathBuf>,
    /// Variables every session gets over the clean base environment and under the session's
    /// own (`RUSTUP_HOME` for a bound toolchain, say).
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub network: NetworkPolicy,
    /// When nightshift runs as root, the host uid and gid the sandbox user becomes: an id
    /// that owns nothing on the host. (As any other user, the sandbox user is that user.)
    pub root_host_id: u32,
    /// How long building a session may take.
    pub start_timeout: Duration,
    /// PEM files whose certificates the egress proxy trusts for upstream servers, besides the
    /// host's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` or the system store), when it adds a
    /// credential to a host's requests.
    pub upstream_roots: Vec<PathBuf>,
    /// Private destinations the egress proxy may connect to when a session's allowlist lets
    /// the request through: host names and IP literals, each optionally `:port` (as in
    /// [`NetworkPolicy::Allow`]: without a port, 443 for HTTPS and 80 for plain HTTP), matched
    /// against the requested host and against each address it resolves to. Private means
    /// loopback, link-local, RFC 1918, 100.64.0.0/10, unique-local, unspecified, multicast and
    /// broadcast addresses (in IPv4-mapped and NAT64 forms too), and the host's own addresses.
    ///
    /// Host configuration only: never fill it from a repository, whose allowlist is untrusted
    /// input and would otherwise open the host's own services to the sandbox.
    pub allow_private: Vec<String>,
    /// Bounds on each session's egress proxy.
    pub egress: EgressLimits,
}

impl NamespacedConfig {
    pub fn new(helper: HelperCommand, state_dir: impl Into<PathBuf>) -> Self {
        NamespacedConfig {
            helper,
            state_dir: state_dir.into(),
            ro_binds: Vec::new(),
            path_prefix: Vec::new(),
            env: Vec::new(),
            limits: Limits::default(),
            network: NetworkPolicy::None,
            root_host_id: ROOT_HOST_ID,
            start_timeout: Duration::from_secs(20),
            upstream_roots: Vec::new(),
            allow_private: Vec::new(),
            egress: EgressLimits::default(),
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
    /// Secrets the egress proxy adds to HTTPS requests to their hosts (with network allowed).
    pub credentials: Vec<crate::Credential>,
    /// Commands run as root inside (see [`crate::SessionSpec::root`]).
    pub root: bool,
}

/// The uid and gid the sandbox user has inside.
pub const SANDBOX_ID: u32 = 1000;

/// The host uid (and gid) the sandbox user stands for when nightshift runs as root, by default
/// (see [`NamespacedConfig::root_host_id`]): an id no host user has.
pub const ROOT_HOST_ID: u32 = 1_000_000;

/// Who a session's commands are inside, and which host ids stand for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ids {
    /// The host uid (and gid) the sandbox user, or root inside, stands for.
    pub host_id: u32,
    /// Whether the helper starts as host root and drops to `host_id`.
    pub drop_root: bool,
    /// The uid the namespace's creator (the init) is inside: the sandbox user, or 0.
    pub inside_id: u32,
    /// How many ids from `inside_id` and `host_id` on the namespace maps.
    pub range: u32,
    /// Whether commands switch to an image's user (see [`crate::SessionUser`]) in a namespace
    /// that maps the range as a root session's does, without its writable system.
    pub image_user: bool,
}

/// How many ids a session whose commands run as root maps, when the host is root: enough for
/// the system users and groups packages create.
pub(crate) const ROOT_RANGE: u32 = 65_536;

impl Ids {
    /// The sandbox user's ids; or, with `root`, root's: over a range of ids from `host_id` on
    /// when the host is root (so that the sandbox user, `host_id` elsewhere, is root here), else
    /// the one id of the host's user.
    pub(crate) fn new(root: bool, host_id: u32, drop_root: bool) -> Self {
        let (inside_id, range) = match (root, drop_root) {
            (false, _) => (SANDBOX_ID, 1),
            (true, true) => (0, ROOT_RANGE),
            (true, false) => (0, 1),
        };
        Ids {
            host_id,
            drop_root,
            inside_id,
            range,
            image_user: false,
        }
    }

    /// The ids of a session whose commands run as an image's user: the range a root session
    /// maps, so that the image's files show with their own owners. Only a root host can map
    /// it.
    pub(crate) fn image_user(host_id: u32, drop_root: bool) -> Result<Self, String> {
        if !drop_root {
            return Err("running commands as an image's user needs nightshift to run as root (to map the image's ids); unprivileged, commands run as the sandbox's own user".into());
        }
        Ok(Ids {
            image_user: true,
            ..Ids::new(true, host_id, drop_root)
        })
    }

    /// Whether the system directories can be writable: only over a range of ids, in which the
    /// host's owners exist, for root's commands.
    pub(crate) fn writable_system(self) -> bool {
        self.range > 1 && !self.image_user
    }
}

/// Whether `user` can be a session's: an image's user, with ids the namespace maps.
pub(crate) fn check_image_user(user: &crate::SessionUser, image: &[PathBuf]) -> Result<(), String> {
    if image.is_empty() {
        return Err(format!(
            "commands can run as the user {} only over an image",
            user.name
        ));
    }
    if user.uid == 0 {
        return Err("root's commands are those of a root session, not of a session user".into());
    }
    let ids = [user.uid, user.gid]
        .into_iter()
        .chain(user.groups.iter().copied());
    if let Some(id) = ids.into_iter().find(|id| *id >= ROOT_RANGE) {
        return Err(format!(
            "the user {} has the id {id}, and a session maps ids below {} only",
            user.name, ROOT_RANGE
        ));
    }
    Ok(())
}
