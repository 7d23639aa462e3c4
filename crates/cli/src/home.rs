//! NIGHTSHIFT_HOME: where the local store, working copies and worker logs live, and the
//! runners built on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nightshift_agent::CostFn;
use nightshift_env::config::{ByteSize, HumanDuration, McpServer};
use nightshift_env::secrets::{SecretError, SecretKey};
use nightshift_model::{ModelSpec, ProviderConfig, price_for};
use nightshift_protocol::Usage;
use nightshift_runner::{ImageSettings, LimitCeilings, PriceLookup, Runner, RunnerConfig};
use nightshift_sandbox::{HelperCommand, Namespaced, NamespacedConfig, Sandbox, Unisolated};
use nightshift_store::{Store, open_blobs, open_store};

use crate::output::Failure;
use crate::toolchains::{HostPaths, HostToolchains, SandboxSettings};

/// The local installation's data directory.
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `NIGHTSHIFT_HOME`, else `$XDG_DATA_HOME/nightshift`, else `~/.local/share/nightshift`.
    pub fn from_env() -> Result<Home, Failure> {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let root = if let Some(home) = var("NIGHTSHIFT_HOME") {
            PathBuf::from(home)
        } else if let Some(data) = var("XDG_DATA_HOME") {
            PathBuf::from(data).join("nightshift")
        } else if let Some(home) = var("HOME") {
            PathBuf::from(home).join(".local/share/nightshift")
        } else {
            return Err(Failure::usage(
                "cannot tell where to keep data: set NIGHTSHIFT_HOME",
            ));
        };
        let root = std::path::absolute(&root)
            .map_err(|err| Failure::usage(format!("NIGHTSHIFT_HOME {}: {err}", root.display())))?;
        Ok(Home { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn worker_log(&self, id: &str) -> PathBuf {
        self.root.join("workers").join(format!("{id}.log"))
    }

    /// The store: PostgreSQL when `NIGHTSHIFT_DATABASE_URL` names one, else SQLite in the
    /// home directory; its blobs in the bucket or directory `NIGHTSHIFT_BLOB_URL` names (with
    /// the `AWS_*` variables), else in the home directory.
    pub async fn store(&self) -> Result<Arc<dyn Store>, Failure> {
        let blob_url = std::env::var("NIGHTSHIFT_BLOB_URL")
            .ok()
            .filter(|url| !url.trim().is_empty());
        // `vars()` would panic on a variable that is not UTF-8; such a one is no AWS setting.
        let env = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        let blobs = open_blobs(blob_url.as_deref(), &self.root, env)
            .map_err(|err| Failure::usage(format!("NIGHTSHIFT_BLOB_URL: {err}")))?;
        let url = std::env::var("NIGHTSHIFT_DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty());
        open_store(url.as_deref(), blobs, &self.root)
            .await
            .map_err(|err| {
                let place = url.map_or_else(|| self.root.display().to_string(), redact_url);
                Failure::error(format!("cannot open the store ({place}): {err}"))
            })
    }

    /// A runner for one task started by `run`.
    pub async fn runner(&self, providers: ProviderConfig) -> Result<Runner, Failure> {
        self.runner_named(
            providers,
            format!("local:{}:{}", hostname(), std::process::id()),
        )
        .await
    }

    /// A runner for `nightshift worker` and `nightshift serve`. Both check the blobs first: a
    /// wrong bucket or key stops them here, rather than failing every task when it hands back
    /// its diff (or every `diff` request).
    pub async fn worker_runner(&self, providers: ProviderConfig) -> Result<Runner, Failure> {
        let runner = self
            .runner_named(
                providers,
                format!("worker:{}:{}", hostname(), std::process::id()),
            )
            .await?;
        runner
            .store()
            .check_blobs()
            .await
            .map_err(|err| Failure::error(format!("cannot use the blobs: {err}")))?;
        Ok(runner)
    }

    /// This installation's settings: `NIGHTSHIFT_CONFIG`, else `config.toml` in the home
    /// directory; none when there is no such file.
    pub fn settings(&self) -> Result<Settings, Failure> {
        let path = self.config_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Settings::default());
            }
            Err(err) => {
                return Err(Failure::usage(format!(
                    "cannot read {}: {err}",
                    path.display()
                )));
            }
        };
        let mut settings: Settings = toml::from_str(&text).map_err(|err| {
            Failure::usage(format!("{} is not valid: {err}", path.display())).with_hint(Some(
                "see docs/models.md for [prices] and [providers], docs/config.md for [sandbox]"
                    .into(),
            ))
        })?;
        let hint = || {
            Some(format!(
                "fix it in {} (docs/config.md, `[mcp.NAME]`, lists the keys)",
                path.display()
            ))
        };
        let (servers, warnings) = nightshift_env::config::read_mcp_table(&path, &text)
            .map_err(|err| Failure::usage(err.to_string()).with_hint(hint()))?;
        // The installation's file is held to its other tables' rule: no key it does not know.
        if let Some(warning) = warnings.first() {
            return Err(Failure::usage(warning.to_string()).with_hint(hint()));
        }
        settings.mcp_servers = servers;
        if let Some(budget) = &settings.images.budget {
            crate::args::parse_bytes(budget).map_err(|err| {
                Failure::usage(format!(
                    "{}: [images] budget = {budget:?}: {err}",
                    path.display()
                ))
            })?;
        }
        Ok(settings)
    }

    /// The settings file: `NIGHTSHIFT_CONFIG`, else `config.toml` in the home directory.
    pub fn config_file(&self) -> PathBuf {
        std::env::var_os("NIGHTSHIFT_CONFIG")
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join("config.toml"))
    }

    /// What the `[sandbox]` checks protect and expand `~` to.
    pub fn host_paths(&self) -> HostPaths {
        HostPaths {
            home: host_user_home(),
            nightshift_home: self.root.clone(),
            config_file: std::path::absolute(self.config_file())
                .unwrap_or_else(|_| self.config_file()),
        }
    }

    /// The host toolchains every sandbox of this installation sees (`[sandbox]` of the
    /// settings), checked: a refused entry stops here, before any sandbox starts.
    pub fn host_toolchains(&self) -> Result<HostToolchains, Failure> {
        let settings = self.settings()?;
        self.resolve_toolchains(&settings.sandbox)
    }

    fn resolve_toolchains(&self, sandbox: &SandboxSettings) -> Result<HostToolchains, Failure> {
        let host = self.host_paths();
        sandbox.resolve(&host).map_err(|err| {
            Failure::usage(format!("{}: {err}", self.config_file().display())).with_hint(Some(
                format!(
                    "{}; nothing ran (see \"Toolchains from the host\" in docs/config.md)",
                    err.hint(host.home.as_deref())
                ),
            ))
        })
    }

    /// The key secrets are sealed with, made on first use: `NIGHTSHIFT_SECRET_KEY`, else
    /// `keys/secrets.key` under the home directory (outside the database on purpose).
    pub fn secret_key(&self) -> Result<SecretKey, SecretError> {
        let (from_env, file) = self.secret_key_source();
        SecretKey::load(from_env.as_deref(), &file)
    }

    fn secret_key_source(&self) -> (Option<String>, PathBuf) {
        let from_env = std::env::var("NIGHTSHIFT_SECRET_KEY").ok();
        (from_env, self.root.join("keys").join("secrets.key"))
    }

    /// Where images are kept (`images/` under the home directory) and how they are fetched. As
    /// root, an image's files are stored owned as the sandbox's ids see them (its root is the
    /// sandbox's host id); otherwise they are the caller's.
    pub fn image_settings(&self, settings: &Settings) -> ImageSettings {
        let owner = if nix::unistd::geteuid().is_root() {
            nightshift_image::Owner::Shift(nightshift_sandbox::ROOT_HOST_ID)
        } else {
            nightshift_image::Owner::Caller
        };
        ImageSettings {
            dir: self.root.join("images"),
            owner,
            plain_http: settings.images.plain_http.clone(),
            allow_private: settings.images.allow_private.clone(),
            budget: settings.images.budget_bytes(),
            logins: settings.images.logins.clone(),
        }
    }

    /// The namespaced sandbox, with its state under the home directory and the host toolchains
    /// of the settings bound read-only.
    pub fn namespaced(&self, toolchains: &HostToolchains) -> Result<Namespaced, Failure> {
        let helper = HelperCommand::current_exe().map_err(|err| {
            Failure::error(format!("cannot find the nightshift executable: {err}"))
        })?;
        let mut config = NamespacedConfig::new(helper, self.root.join("sandbox"));
        config.allow_private = self.settings()?.network.allow_private;
        config.ro_binds = toolchains.mounts.clone();
        config.path_prefix = toolchains.path.clone();
        config.env = toolchains.env.clone();
        Ok(Namespaced::new(config))
    }

    /// The sandbox tasks run in: the namespaced one, unless `NIGHTSHIFT_SANDBOX=unisolated`
    /// explicitly asks for none (every task then logs a warning).
    pub fn sandbox(&self, toolchains: &HostToolchains) -> Result<Arc<dyn Sandbox>, Failure> {
        match std::env::var("NIGHTSHIFT_SANDBOX").ok().as_deref() {
            None | Some("") | Some("namespaced") => Ok(Arc::new(self.namespaced(toolchains)?)),
            Some("unisolated") => {
                tracing::warn!(
                    "NIGHTSHIFT_SANDBOX=unisolated: the agent's commands run on this host without isolation"
                );
                Ok(Arc::new(Unisolated))
            }
            Some(other) => Err(Failure::usage(format!(
                "NIGHTSHIFT_SANDBOX={other} is not a sandbox; use `namespaced` (the default) or `unisolated`"
            ))),
        }
    }

    async fn runner_named(
        &self,
        providers: ProviderConfig,
        worker: String,
    ) -> Result<Runner, Failure> {
        let store = self.store().await?;
        let mut config = RunnerConfig::new(self.root.join("work"), worker);
        config.layers_dir = Some(self.root.join("layers"));
        config.mirrors = Some(nightshift_env::Mirrors::new(self.root.join("mirrors")));
        if let Some(budget) = std::env::var("NIGHTSHIFT_LAYERS_BUDGET")
            .ok()
            .filter(|b| !b.is_empty())
        {
            config.layers_budget = crate::args::parse_bytes(&budget)
                .map_err(|err| Failure::usage(format!("NIGHTSHIFT_LAYERS_BUDGET: {err}")))?;
        }
        if let Some(lease) = std::env::var("NIGHTSHIFT_LEASE")
            .ok()
            .filter(|l| !l.is_empty())
        {
            config.lease = crate::args::parse_duration(&lease)
                .map_err(|err| Failure::usage(format!("NIGHTSHIFT_LEASE: {err}")))?;
        }
        if let Some(wait) = std::env::var("NIGHTSHIFT_FORGE_RETRY")
            .ok()
            .filter(|w| !w.is_empty())
        {
            config.forge_retry_wait = crate::args::parse_duration(&wait)
                .map_err(|err| Failure::usage(format!("NIGHTSHIFT_FORGE_RETRY: {err}")))?;
        }
        config.record_dir = std::env::var_os("NIGHTSHIFT_RECORD")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from);
        let settings = self.settings()?;
        let toolchains = self.resolve_toolchains(&settings.sandbox)?;
        config.host_binds = toolchains.binds.clone();
        config.images = Some(self.image_settings(&settings));
        let (ceilings, wall_time) = settings
            .limits
            .ceilings()
            .map_err(|err| Failure::usage(format!("{}: {err}", self.config_file().display())))?;
        config.limit_ceilings = ceilings;
        config.mcp_servers = settings.mcp_specs();
        if wall_time.is_some() {
            config.max_duration = wall_time;
        }
        // The environment wins; the settings file fills in what it leaves unset.
        let from_file = settings.providers;
        let mut providers = providers;
        providers.openai_api_key = providers.openai_api_key.or(from_file.openai_api_key);
        providers.openai_base_url = providers.openai_base_url.or(from_file.openai_base_url);
        providers.anthropic_api_key = providers.anthropic_api_key.or(from_file.anthropic_api_key);
        providers.anthropic_base_url = providers
            .anthropic_base_url
            .or(from_file.anthropic_base_url);
        let overrides = settings.prices;
        let prices: PriceLookup = Arc::new(move |spec: &ModelSpec| {
            let price = price_for(spec, &overrides)?;
            Some(Arc::new(move |usage: &Usage| price.cost(usage)) as CostFn)
        });
        let runner =
            Runner::new(store, self.sandbox(&toolchains)?, providers, config).with_prices(prices);
        // Only an existing key: listing tasks must not make one, and with no key there are no
        // secrets to unseal (a task says so if some are stored).
        let (from_env, key_file) = self.secret_key_source();
        Ok(match SecretKey::existing(from_env.as_deref(), &key_file) {
            Ok(Some(key)) => runner.with_secret_key(key),
            Ok(None) => runner,
            Err(err) => {
                tracing::warn!("secrets are unavailable to tasks: {err}");
                runner
            }
        })
    }

    /// A runner that first settles tasks whose worker died.
    pub async fn reconciled_runner(&self) -> Result<Runner, Failure> {
        let runner = self.runner(ProviderConfig::from_env()).await?;
        if let Err(err) = runner.reconcile(&local_worker_alive).await {
            tracing::warn!("could not check for abandoned tasks: {err}");
        }
        if let Err(err) = runner.settle_expired().await {
            tracing::warn!("could not check for lapsed leases: {err}");
        }
        Ok(runner)
    }
}

/// Settings of this installation (`config.toml`), as opposed to a repository's
/// `.nightshift.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Model prices (USD per million tokens) that replace or extend the built-in table, keyed
    /// by the whole model spec or by the model name.
    #[serde(default)]
    pub prices: BTreeMap<String, nightshift_model::Pricing>,
    /// Provider keys and endpoints, for what the environment variables leave unset.
    #[serde(default)]
    pub providers: ProviderSettings,
    /// Host toolchains every sandbox sees (docs/config.md, "Toolchains from the host").
    #[serde(default)]
    pub sandbox: SandboxSettings,
    /// The most a task may use, whatever its repository's `[limits]` ask for.
    #[serde(default)]
    pub limits: LimitSettings,
    /// What of the host's own network the sandboxes may reach.
    #[serde(default)]
    pub network: NetworkSettings,
    /// How images are fetched.
    #[serde(default)]
    pub images: ImageStoreSettings,
    /// `[mcp.NAME]`: MCP servers every task's agent gets (docs/tools.md, "MCP servers"). The
    /// table is read as a repository's `[mcp]` is, into `mcp_servers`.
    #[serde(default, rename = "mcp")]
    _mcp: toml::Table,
    #[serde(skip)]
    pub mcp_servers: Vec<McpServer>,
}

impl Settings {
    /// The installation's MCP servers as the runner takes them.
    pub fn mcp_specs(&self) -> Vec<nightshift_agent::mcp::McpServerSpec> {
        self.mcp_servers
            .iter()
            .map(|server| nightshift_runner::mcp::from_config(server, "config.toml"))
            .collect()
    }
}

/// `[images]` of `config.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageStoreSettings {
    /// Registries (`host:port`) spoken to over plain HTTP instead of HTTPS, such as a registry
    /// on this machine's loopback.
    #[serde(default)]
    pub plain_http: Vec<String>,
    /// Registries and feature hosts (`host:port`, or `host` for 443 and 80) that may be reached at a private address
    /// (loopback, RFC 1918, link-local and the like), such as a registry inside the company
    /// network; any other that resolves to one is refused, since image references and feature
    /// URLs may come from a repository. `plain_http` hosts may be private too.
    #[serde(default)]
    pub allow_private: Vec<String>,
    /// The most bytes the store's layers may hold (`"50G"`): past it, the least recently used
    /// images no task runs on are forgotten and their layers removed. Default 50G.
    #[serde(default)]
    pub budget: Option<String>,
    /// Registry logins from stored secrets: `"ghcr.io" = "GHCR_LOGIN"`, the secret holding
    /// `USER:PASSWORD` (a token as the password). They come before the host's login files.
    #[serde(default)]
    pub logins: std::collections::BTreeMap<String, String>,
}

impl ImageStoreSettings {
    /// The default of `budget`.
    pub const DEFAULT_BUDGET: u64 = 50 << 30;

    /// `budget` in bytes (checked when the settings are read).
    pub fn budget_bytes(&self) -> u64 {
        self.budget
            .as_deref()
            .and_then(|text| crate::args::parse_bytes(text).ok())
            .unwrap_or(Self::DEFAULT_BUDGET)
    }
}

/// `[limits]` of `config.toml`: ceilings, in the units of `.nightshift.toml`'s `[limits]`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub memory: Option<String>,
    pub disk: Option<String>,
    pub pids: Option<u32>,
    pub cpus: Option<f64>,
    /// The longest any task may work.
    pub wall_time: Option<String>,
}

impl LimitSettings {
    /// The ceilings, over the defaults for what is not set; and the longest a task may work.
    fn ceilings(&self) -> Result<(LimitCeilings, Option<Duration>), String> {
        let mut ceilings = LimitCeilings::default();
        if let Some(memory) = &self.memory {
            ceilings.memory_bytes = memory
                .parse::<ByteSize>()
                .map_err(|err| format!("[limits] memory = {memory:?}: {err}"))?
                .bytes();
        }
        if let Some(disk) = &self.disk {
            ceilings.disk_bytes = disk
                .parse::<ByteSize>()
                .map_err(|err| format!("[limits] disk = {disk:?}: {err}"))?
                .bytes();
        }
        if let Some(pids) = self.pids {
            ceilings.pids = pids;
        }
        if let Some(cpus) = self.cpus {
            if !(cpus > 0.0 && cpus.is_finite()) {
                return Err(format!("[limits] cpus = {cpus}: must be more than 0"));
            }
            ceilings.cpus = cpus;
        }
        let wall_time = match &self.wall_time {
            Some(time) => Some(
                time.parse::<HumanDuration>()
                    .map_err(|err| format!("[limits] wall_time = {time:?}: {err}"))?
                    .as_duration(),
            ),
            None => None,
        };
        Ok((ceilings, wall_time))
    }
}

/// `[network]` of `config.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    /// Private, loopback or this host's own addresses (or names that resolve to them) that a
    /// task's allowlist may reach: `host` or `host:port`. A repository's allowlist alone never
    /// reaches them.
    #[serde(default)]
    pub allow_private: Vec<String>,
}

/// `[providers]` of `config.toml`. Keep the file readable by its owner only when it holds keys.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    pub openai_api_key: Option<String>,
    pub openai_base_url: Option<String>,
    pub anthropic_api_key: Option<String>,
    pub anthropic_base_url: Option<String>,
}

/// A database URL without its password, for messages.
fn redact_url(url: String) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url,
    }
}

/// The host user's HOME: `$HOME`, else the user database's.
pub fn host_user_home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|user| user.dir)
        })
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether a worker named `local:<host>:<pid>` or `worker:<host>:<pid>` still runs. Workers of
/// other hosts are assumed alive: only their own host can tell (their leases settle them).
fn local_worker_alive(worker: &str) -> bool {
    let mut parts = worker.splitn(3, ':');
    let (Some("local" | "worker"), Some(host), Some(pid)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return true;
    };
    if host != hostname() || pid == std::process::id().to_string() {
        return true;
    }
    // A live nightshift process with that pid; a reused pid runs some other program.
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains("nightshift"),
        Err(_) => false,
    }
}
