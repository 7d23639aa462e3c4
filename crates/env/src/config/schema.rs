//! The effective environment configuration of a repository, after `.nightshift.toml` or an
//! importer has been read and defaults filled in. Everything here is already validated: a
//! consumer never re-checks a path, a duration or a host pattern.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::units::{ByteSize, HumanDuration};

/// The newest `.nightshift.toml` schema version this build understands.
pub const CONFIG_VERSION: u32 = 1;

/// Everything a repository says about the environment its tasks run in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvConfig {
    /// The schema version the file was written for (1 when absent).
    pub version: u32,
    pub environment: Environment,
    /// Named commands that prove a task's result, in the order they were written.
    pub checks: Vec<Check>,
    pub network: Network,
    pub limits: Limits,
    /// Secrets by name, in the order they were written. Values live in the secret store,
    /// never in configuration.
    pub secrets: Vec<SecretSpec>,
    pub review: Review,
    /// MCP servers whose tools the agent gets, in the order they were written.
    pub mcp: Vec<McpServer>,
}

/// `[mcp.NAME]`: an MCP server run inside the task's sandbox, spoken to over its standard
/// input and output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct McpServer {
    pub name: String,
    /// The program, found on the sandbox's `PATH` or given as a path; empty for a remote
    /// server.
    pub command: String,
    pub args: Vec<String>,
    /// A remote server's URL (`http://` or `https://`), reached over streamable HTTP through
    /// the egress proxy.
    pub url: Option<String>,
    /// A remote server that speaks the older HTTP+SSE transport (`transport = "sse"`) rather
    /// than streamable HTTP.
    pub sse: bool,
    /// Variables for it, over the sandbox's environment.
    pub env: BTreeMap<String, String>,
    /// Only these of its tools, when given.
    pub tools: Option<Vec<String>>,
    /// Never these of its tools.
    pub exclude_tools: Vec<String>,
    /// How long starting it may take; `None` is the default (30 s).
    pub startup_timeout: Option<HumanDuration>,
    /// How long one call may take; `None` is the default (2 min).
    pub timeout: Option<HumanDuration>,
}

/// `[review]`: what is reviewed without being asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Review {
    /// Queue a review task of every task that succeeds with a branch, as it ends.
    pub auto: bool,
}

/// How the task's environment is prepared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Environment {
    /// A shell script run once per setup cache key; its result is kept as a layer.
    pub setup: Option<String>,
    /// A shell script run at the start of every task, on top of the setup layer.
    pub maintenance: Option<String>,
    /// The subdirectory (relative, normalised, inside the repository) commands run in; `None`
    /// is the repository root.
    pub workdir: Option<PathBuf>,
    /// Extra files or globs, relative to the repository root, whose contents key the setup cache.
    pub cache_key: Vec<String>,
    /// Untracked files (relative paths) brought from the local source checkout into the task.
    pub copy: Vec<PathBuf>,
    /// Plain environment variables for every command.
    pub env: BTreeMap<String, String>,
    /// The image the sandbox's root is made of, as its canonical reference
    /// (`docker.io/library/rust:1.86`, `oci:/path:tag`...); `None` is the host's system.
    pub image: Option<String>,
    /// What nightshift builds over the image itself: a Dockerfile's steps and devcontainer
    /// features (from devcontainer.json).
    pub build: Option<ImageBuild>,
    /// Who the agent and the checks run as on the image (`NAME|UID[:GROUP|GID]`), over the
    /// image's own `User` and a Dockerfile's last `USER`: devcontainer.json's `remoteUser`,
    /// else its `containerUser`.
    pub user: Option<String>,
}

/// A Dockerfile and features to build, as devcontainer.json's `build` and `features` say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageBuild {
    /// The Dockerfile, relative to the repository root; its `FROM` is the image.
    pub dockerfile: Option<PathBuf>,
    /// The build context COPY and ADD read from, relative to the repository root.
    pub context: PathBuf,
    /// Build arguments, over the Dockerfile's `ARG` defaults.
    pub args: BTreeMap<String, String>,
    /// Features to install over the image, in devcontainer.json's order.
    pub features: Vec<crate::build::features::FeatureRequest>,
    /// `overrideFeatureInstallOrder`.
    pub feature_order: Vec<String>,
    /// The folder of devcontainer.json, relative to the repository root: local features are
    /// there.
    pub config_dir: PathBuf,
}

/// A command whose success proves a task's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    /// A shell command line or script.
    pub run: String,
    /// How long the check may run; `None` leaves it to the task's wall time.
    pub timeout: Option<HumanDuration>,
}

/// Which hosts may be reached, per phase. Entries are host patterns: `example.com`,
/// `*.example.com` (any subdomain), optionally with `:PORT`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Network {
    /// Hosts the setup and maintenance scripts may reach.
    pub setup: Vec<String>,
    /// Hosts the agent's commands and the checks may reach.
    pub agent: Vec<String>,
    /// Whether `setup` holds the registries (it is the default, or lists `@registries`): a
    /// setup that runs as root over a writable system then also reaches the distribution's
    /// package mirrors (see [`super::apt_source_hosts`]).
    #[serde(skip)]
    pub setup_registries: bool,
}

/// Resource limits for a task's sandbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    pub wall_time: HumanDuration,
    pub memory: ByteSize,
    /// CPUs the task may use (fractions allowed); `None` is no limit beyond the machine's.
    pub cpus: Option<f64>,
    /// The most processes and threads at once; `None` is the sandbox's own default.
    pub pids: Option<u32>,
    pub disk: ByteSize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            wall_time: HumanDuration::from_secs(59 * 60),
            memory: ByteSize::from_bytes(4 * ByteSize::GIB),
            cpus: None,
            pids: None,
            disk: ByteSize::from_bytes(10 * ByteSize::GIB),
        }
    }
}

/// A secret the repository uses, by name, and where its value may go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretSpec {
    pub name: String,
    pub scope: SecretScope,
}

/// Where a secret's value is visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum SecretScope {
    /// An environment variable of the setup script only; the agent never sees it.
    Setup,
    /// Added by the egress proxy as a header on requests to `hosts`; the sandbox never sees it.
    Proxy {
        hosts: Vec<String>,
        /// The header to set, e.g. `Authorization`.
        header: String,
        /// The header's value, with `{value}` standing for the secret, e.g. `Bearer {value}`.
        format: String,
    },
}

impl SecretScope {
    pub const DEFAULT_HEADER: &'static str = "Authorization";
    pub const DEFAULT_FORMAT: &'static str = "Bearer {value}";
}

impl EnvConfig {
    /// The configuration of a repository that says nothing: no setup, no checks, default limits,
    /// and `setup_hosts` (usually the registries of the detected ecosystems) for setup.
    pub fn defaults(setup_hosts: Vec<String>) -> EnvConfig {
        EnvConfig {
            version: CONFIG_VERSION,
            environment: Environment::default(),
            checks: Vec::new(),
            network: Network {
                setup: setup_hosts,
                agent: Vec::new(),
                setup_registries: true,
            },
            limits: Limits::default(),
            secrets: Vec::new(),
            review: Review::default(),
            mcp: Vec::new(),
        }
    }

    /// The check called `name`, if declared.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|check| check.name == name)
    }

    /// The secret called `name`, if declared.
    pub fn secret(&self, name: &str) -> Option<&SecretSpec> {
        self.secrets.iter().find(|secret| secret.name == name)
    }
}
