//! The task lifecycle: validate and queue a task, then claim it, prepare its working copy and
//! sandbox, run the agent, and hand the result back as a branch, recording every step.
//!
//! The runner renders nothing; the CLI and the server read what it writes to the store.

mod attempts;
mod build;
mod ceilings;
mod conclude;
mod egress_log;
mod ending;
mod environment;
mod error;
mod fan_out;
mod follow_up;
mod forge;
mod forge_retry;
mod handoff;
mod image;
mod image_user;
mod lifecycle;
pub mod mcp;
mod plan;
mod prepare;
mod reconcile;
mod repos;
mod review;
mod sink;
mod submit;
mod task_secret_use;
mod verify;
mod watch;
mod work;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nightshift_agent::tools::ToolLimits;
use nightshift_env::secrets::SecretKey;
use nightshift_forge::InstallationToken;
use nightshift_model::ProviderConfig;
use nightshift_sandbox::Sandbox;
use nightshift_store::Store;

pub use ceilings::LimitCeilings;
pub use error::{RunnerError, SubmitError};
pub use follow_up::{MessageOutcome, MessageRefusal};
pub use forge::Forge;
pub use handoff::DIFF_BLOB;
pub use image::{ImageSettings, LoginError, login_from_secret, registry_login};
pub use lifecycle::PriceLookup;
pub use nightshift_env::is_remote;
pub use plan::PlanError;
pub use repos::{RegisterError, RepoOptions, find_registered, register_repo};
pub use submit::{ReviewOf, TaskRequest, attempt_models};
pub use worker::WorkerConfig;

/// Everything a runner needs, passed in explicitly (no globals, no environment reads). A clone
/// shares the store, the sandbox and the caches.
#[derive(Clone)]
pub struct Runner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) sandbox: Arc<dyn Sandbox>,
    pub(crate) providers: ProviderConfig,
    pub(crate) config: RunnerConfig,
    pub(crate) cost: Option<PriceLookup>,
    pub(crate) secret_key: Option<Arc<SecretKey>>,
    /// Installation tokens minted for repositories that act as a GitHub App, by App, key,
    /// API and repository; each is used until five minutes before it expires.
    pub(crate) app_tokens: Arc<Mutex<HashMap<String, InstallationToken>>>,
}

/// Paths and knobs of a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Where task working copies are made: `<work_dir>/<task id>`.
    pub work_dir: PathBuf,
    /// This worker's name in `claimed` events and task rows.
    pub worker: String,
    /// How often a running task checks for a cancel request or a message.
    pub cancel_poll: Duration,
    /// How long a claim holds without renewal; a worker renews every third of it.
    pub lease: Duration,
    /// The longest any task may work, whatever it asks for.
    pub max_duration: Option<Duration>,
    /// Where to record each task's model traffic as a cassette, `<dir>/<task id>.jsonl`
    /// (`NIGHTSHIFT_RECORD`).
    pub record_dir: Option<PathBuf>,
    /// Where setup layers are cached; `None` runs setup in every task's own session.
    pub layers_dir: Option<PathBuf>,
    /// How many bytes of setup layers to keep before evicting the least recently used.
    pub layers_budget: u64,
    /// The host paths the sandbox binds read-only (the installation's toolchains, canonical):
    /// part of what a setup layer is built on, so each is an input of its cache key.
    pub host_binds: Vec<PathBuf>,
    pub tool_limits: ToolLimits,
    /// The most a task may use, whatever its repository's `[limits]` ask for.
    pub limit_ceilings: LimitCeilings,
    /// Where images are pulled to and how; `None`: tasks cannot start from an image.
    pub images: Option<ImageSettings>,
    /// Where remote repositories (tasks whose repository is a URL) are mirrored; `None`:
    /// tasks take local paths only.
    pub mirrors: Option<nightshift_env::Mirrors>,
    /// Refuse at submit a task whose model needs an API key the runner's provider
    /// configuration lacks. Off for a process that only queues tasks for workers elsewhere,
    /// whose keys it cannot see.
    pub check_provider_keys: bool,
    /// The first wait before a push or pull request that a forge outage held up is tried
    /// again; it doubles with each attempt, up to an hour (`NIGHTSHIFT_FORGE_RETRY`).
    pub forge_retry_wait: Duration,
    /// MCP servers the installation offers every task (`[mcp.NAME]` of `config.toml`), before
    /// the repository's own.
    pub mcp_servers: Vec<nightshift_agent::mcp::McpServerSpec>,
}

impl RunnerConfig {
    /// The default lease: long enough to ride out a short database outage, short enough that
    /// a dead worker's task is settled within minutes.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

    /// Defaults for a worker that keeps working copies under `work_dir`.
    pub fn new(work_dir: PathBuf, worker: String) -> Self {
        RunnerConfig {
            work_dir,
            worker,
            cancel_poll: Duration::from_millis(250),
            lease: Self::DEFAULT_LEASE,
            max_duration: Some(Duration::from_secs(59 * 60)),
            record_dir: None,
            layers_dir: None,
            layers_budget: 20 << 30,
            host_binds: Vec::new(),
            tool_limits: ToolLimits::default(),
            limit_ceilings: LimitCeilings::default(),
            images: None,
            mirrors: None,
            check_provider_keys: true,
            mcp_servers: Vec::new(),
            forge_retry_wait: Duration::from_secs(60),
        }
    }
}

impl Runner {
    pub fn new(
        store: Arc<dyn Store>,
        sandbox: Arc<dyn Sandbox>,
        providers: ProviderConfig,
        config: RunnerConfig,
    ) -> Self {
        Runner {
            store,
            sandbox,
            providers,
            config,
            cost: None,
            secret_key: None,
            app_tokens: Arc::default(),
        }
    }

    /// Prices model usage, for dollar budgets and cost reports.
    pub fn with_prices(mut self, lookup: PriceLookup) -> Self {
        self.cost = Some(lookup);
        self
    }

    /// Whether `submit` refuses a task whose model needs a key this runner lacks (on by
    /// default; see [`RunnerConfig::check_provider_keys`]).
    pub fn with_provider_key_check(mut self, check: bool) -> Self {
        self.config.check_provider_keys = check;
        self
    }

    /// Unseals stored secrets for tasks (redaction, setup variables).
    pub fn with_secret_key(mut self, key: SecretKey) -> Self {
        self.secret_key = Some(Arc::new(key));
        self
    }

    /// Has the sandbox prepare for the next task's first session (see [`Sandbox::warm_up`]),
    /// for a process that is about to run tasks.
    pub fn warm_up(&self) {
        self.sandbox.warm_up();
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }
}
