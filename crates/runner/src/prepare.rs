//! Preparing a task's environment: the cached setup layer (looked up, or built in a session of
//! its own), the maintenance script, and the sandbox sessions that stack the layer.

use std::path::{Path, PathBuf};

use nightshift_agent::SinkError;
use nightshift_env::cache::{CacheKey, Lookup, SetupCache};
use nightshift_protocol::{CommandPhase, ErrorKind, Event, TaskState};
use nightshift_sandbox::{EgressEvent, SandboxSession, SessionLimits, SessionSpec};
use tokio_util::sync::CancellationToken;

use crate::Runner;
use crate::ending::{Ending, fail, set_state};
use crate::environment;
use crate::handoff::{self, Run};
use crate::sink::TaskLog;
use crate::task_secret_use;

impl Runner {
    /// Runs the repository's setup and maintenance scripts in the session before the agent
    /// starts. Returns the task's ending when one fails.
    pub(crate) async fn run_environment_scripts(
        &self,
        run: &Run<'_>,
        session: &dyn SandboxSession,
        stop: &CancellationToken,
    ) -> Result<Option<Ending>, SinkError> {
        let environment = &run.env.config.environment;
        let scripts = [
            (CommandPhase::Setup, "setup", environment.setup.as_deref()),
            (
                CommandPhase::Maintenance,
                "maintenance",
                environment.maintenance.as_deref(),
            ),
        ];
        let mut ran = false;
        for (phase, name, script) in scripts {
            let Some(script) = script else { continue };
            if phase == CommandPhase::Setup && !run.layers.is_empty() {
                continue;
            }
            ran = true;
            set_state(
                run.log,
                TaskState::Preparing,
                Some(&format!("running the {name} script")),
            )
            .await?;
            let outcome = environment::run_command(
                run.log,
                self.store.as_ref(),
                run.task.id,
                session,
                environment.workdir.as_deref(),
                phase,
                name,
                script,
                if phase == CommandPhase::Setup {
                    run.setup_env
                } else {
                    &[]
                },
                None,
                stop,
            )
            .await?;
            if stop.is_cancelled() {
                return Ok(Some(Ending::cancelled()));
            }
            if !outcome.ok {
                let message = format!(
                    "the {name} script failed (exit {}):\n{}",
                    outcome.exit_code, outcome.tail
                );
                let hint = environment::script_hint(name, script, &outcome.tail, None);
                return fail(run.log, ErrorKind::Setup, message, Some(hint))
                    .await
                    .map(Some);
            }
        }
        let changed = ran || run.layers.iter().any(|l| layer_changed_workspace(l));
        // A resolution starts with a merge under way: what the merge brought in is its work,
        // so no baseline may take it for what setup left.
        let merging = run.task.spec.merge.is_some();
        if changed
            && !merging
            && let Err(message) = handoff::record_baseline(session).await
        {
            let message = format!("recording what setup left in the working copy: {message}");
            return fail(run.log, ErrorKind::Internal, message, None)
                .await
                .map(Some);
        }
        Ok(None)
    }

    /// The setup layer of the task: from the cache on a hit; on a miss, built by running setup
    /// in a session of its own (with the setup allowlist) and keeping its changes. A tree no
    /// person chose (a follow-up on an agent's commits) gets a layer of its own instead, built
    /// the same way but never looked up, scanned into or committed to the cache. None when
    /// there is no setup, no cache, or the sandbox takes no layers (setup then runs in the
    /// agent's session). The task's ending instead when setup fails.
    pub(crate) async fn setup_layer(
        &self,
        run: &Run<'_>,
        stop: &CancellationToken,
    ) -> Result<Result<SetupLayers, Ending>, SinkError> {
        let environment = &run.env.config.environment;
        let (Some(_), Some(dir)) = (environment.setup.as_deref(), &self.config.layers_dir) else {
            return Ok(Ok(SetupLayers::default()));
        };
        if !self.sandbox.supports_layers() {
            return Ok(Ok(SetupLayers::default()));
        }
        let log = run.log;
        let cache = SetupCache::new(dir, self.config.layers_budget);
        if !run.chosen_tree {
            let detail = "running the setup script to build a layer for this task alone";
            set_state(log, TaskState::Preparing, Some(detail)).await?;
            let name = run.task.id.to_string();
            let unshared = {
                let cache = cache.clone();
                tokio::task::spawn_blocking(move || cache.unshared(&name))
                    .await
                    .map_err(|err| err.to_string())
                    .and_then(|made| made.map_err(|err| err.to_string()))
            };
            let layer = match unshared {
                Ok(layer) => layer,
                Err(err) => {
                    let message = format!("making a place for the task's setup layer: {err}");
                    return fail(log, ErrorKind::Internal, message, None).await.map(Err);
                }
            };
            return match self.build_layer(run, stop, &cache, &layer).await? {
                Ok(()) => Ok(Ok(SetupLayers {
                    paths: vec![layer.clone()],
                    unshared: Some(layer),
                })),
                Err(ending) => Ok(Err(ending)),
            };
        }
        set_state(
            log,
            TaskState::Preparing,
            Some("looking for a cached setup layer"),
        )
        .await?;
        let key = {
            let (backend, binds) = (self.sandbox.backend(), self.config.host_binds.clone());
            let (root, config) = (run.copy.root().to_path_buf(), run.env.config.clone());
            let repo = run.task.spec.repo.clone();
            let image = run
                .image
                .map(|image| (image.reference.clone(), image.key.clone()));
            // The base hashes the host's package database, the key the repository's lockfiles.
            tokio::task::spawn_blocking(move || {
                let key = match image {
                    Some((reference, image_key)) => {
                        let base = nightshift_env::cache::image_base_identity(backend);
                        CacheKey::compute(&root, &config, &base).on_image(&reference, &image_key)
                    }
                    None => {
                        let base = nightshift_env::cache::base_identity(backend, &binds);
                        CacheKey::compute(&root, &config, &base)
                    }
                };
                key.for_repository(&repo)
            })
            .await
        };
        let key = match key {
            Ok(key) => key,
            Err(err) => {
                let message = format!("computing the setup cache key: {err}");
                return fail(log, ErrorKind::Internal, message, None).await.map(Err);
            }
        };
        let repo = run.task.spec.repo.clone();
        let locked = {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::task::spawn_blocking(move || cache.lock(&key).map_err(|e| e.to_string())).await
        };
        let _lock = match locked.map_err(|e| e.to_string()).and_then(|locked| locked) {
            Ok(lock) => lock,
            Err(err) => {
                let message = format!("locking the setup cache: {err}");
                return fail(log, ErrorKind::Internal, message, None).await.map(Err);
            }
        };
        let reasons = match cache.lookup(&repo, &key) {
            Lookup::Hit { layer } => {
                let hit = Event::SetupCache {
                    key: key.key.clone(),
                    hit: true,
                    reasons: vec![],
                };
                log.append(hit).await?;
                return Ok(Ok(SetupLayers::shared(layer)));
            }
            Lookup::Miss { reasons } => reasons,
        };
        log.append(Event::SetupCache {
            key: key.key.clone(),
            hit: false,
            reasons,
        })
        .await?;
        let detail = "running the setup script to build its layer";
        set_state(log, TaskState::Preparing, Some(detail)).await?;
        let staged = {
            // Off the async threads: it may remove what earlier discards left.
            let (cache, key) = (cache.clone(), key.clone());
            tokio::task::spawn_blocking(move || cache.staging(&key))
                .await
                .map_err(|err| err.to_string())
                .and_then(|made| made.map_err(|err| err.to_string()))
        };
        let staged = match staged {
            Ok(staged) => staged,
            Err(err) => {
                let message = format!("keeping the setup layer: {err}");
                return fail(log, ErrorKind::Internal, message, None).await.map(Err);
            }
        };
        if let Err(ending) = self.build_layer(run, stop, &cache, &staged).await? {
            return Ok(Err(ending));
        }
        // A layer is kept on disk and served to later tasks: it must not hold a secret in the
        // clear. It is checked while it is still staged, where nothing serves it, and is
        // discarded from there (moved aside first, so that it stays unserved even if removing
        // it fails).
        if let Some((name, file)) = task_secret_use::secret_in_tree(log, &staged).await {
            discard(log, &cache, &staged, "the refused setup layer").await?;
            let message = match name.strip_prefix("(unknown: ") {
                Some(why) => format!(
                    "the setup layer could not be checked for secrets ({}: {}); it was discarded",
                    file.display(),
                    why.trim_end_matches(')')
                ),
                None => format!(
                    "the setup script wrote the value of secret {name} into its layer ({}); the layer was discarded",
                    file.display()
                ),
            };
            let hint = "a layer keeps the workspace, $HOME and the system directories: give the secret scope `proxy` (the egress proxy adds it to requests, and it never enters the sandbox), or remove what holds it before setup ends";
            return fail(log, ErrorKind::Setup, message, Some(hint.into()))
                .await
                .map(Err);
        }
        let committed = {
            let (cache, key, repo, staged) = (cache.clone(), key.clone(), repo, staged.clone());
            tokio::task::spawn_blocking(move || cache.commit(&repo, &key, &staged))
                .await
                .map_err(|err| err.to_string())
                .and_then(|done| done.map_err(|err| err.to_string()))
        };
        match committed {
            Ok(layer) => Ok(Ok(SetupLayers::shared(layer))),
            Err(err) => {
                discard(log, &cache, &staged, "the setup layer that was not kept").await?;
                let message = format!("keeping the setup layer: {err}");
                fail(log, ErrorKind::Internal, message, None).await.map(Err)
            }
        }
    }

    /// Runs setup as root of a session of its own and keeps its changes at `dest`. A failure
    /// leaves nothing at `dest`, and is the task's ending.
    async fn build_layer(
        &self,
        run: &Run<'_>,
        stop: &CancellationToken,
        cache: &SetupCache,
        dest: &Path,
    ) -> Result<Result<(), Ending>, SinkError> {
        let log = run.log;
        let environment = &run.env.config.environment;
        let setup = environment.setup.as_deref().unwrap_or_default();
        // Setup runs as root of its sandbox (over a writable copy of the system where the
        // backend can), as it would on a hosted agent's VM; the agent, later, does not.
        let spec = SessionSpec {
            root: true,
            ..session_spec(run.copy.root(), run, self.setup_network(run))
        };
        let session = match self.sandbox.start(spec).await {
            Ok(session) => session,
            Err(err) => {
                let hint = Some("run `nightshift doctor`".into());
                return fail(log, ErrorKind::Sandbox, err.to_string(), hint)
                    .await
                    .map(Err);
            }
        };
        let outcome = environment::run_command(
            log,
            self.store.as_ref(),
            run.task.id,
            session.as_ref(),
            environment.workdir.as_deref(),
            CommandPhase::Setup,
            "setup",
            setup,
            run.setup_env,
            None,
            stop,
        )
        .await?;
        log.add_cpu(session.cpu_seconds());
        if !outcome.ok || stop.is_cancelled() {
            let _ = session.close().await;
            if stop.is_cancelled() {
                return Ok(Err(Ending::cancelled()));
            }
            let message = format!(
                "the setup script failed (exit {}); no layer was kept:\n{}",
                outcome.exit_code, outcome.tail
            );
            let hint = environment::script_hint(
                "setup",
                setup,
                &outcome.tail,
                Some(self.sandbox.writable_system() || run.image.is_some()),
            );
            return fail(log, ErrorKind::Setup, message, Some(hint))
                .await
                .map(Err);
        }
        if let Err(err) = session.close_keeping_changes(dest).await {
            // What was kept before it failed is no layer.
            discard(log, cache, dest, "the partly kept setup layer").await?;
            let message = format!("keeping the setup layer: {err}");
            return fail(log, ErrorKind::Internal, message, None).await.map(Err);
        }
        Ok(Ok(()))
    }
}

/// The setup layers a task's sessions stack.
#[derive(Debug, Default)]
pub(crate) struct SetupLayers {
    /// The layers, lowest first.
    pub(crate) paths: Vec<PathBuf>,
    /// The layer among them that is this task's alone, to discard when the task ends.
    pub(crate) unshared: Option<PathBuf>,
}

impl SetupLayers {
    fn shared(layer: PathBuf) -> SetupLayers {
        SetupLayers {
            paths: vec![layer],
            unshared: None,
        }
    }

    /// Discards the layer only this task used, if any (the task's sessions are closed).
    pub(crate) async fn release(self, log: &TaskLog, dir: Option<&Path>) -> Result<(), SinkError> {
        match (self.unshared, dir) {
            (Some(layer), Some(dir)) => {
                let cache = SetupCache::new(dir, 0);
                discard(log, &cache, &layer, "the task's own setup layer").await
            }
            _ => Ok(()),
        }
    }
}

/// Takes the layer at `path` out of the cache for good ([`SetupCache::discard`]); what cannot
/// be removed is a warning, and is never served all the same.
async fn discard(
    log: &TaskLog,
    cache: &SetupCache,
    path: &Path,
    what: &str,
) -> Result<(), SinkError> {
    let discarded = {
        let (cache, path) = (cache.clone(), path.to_path_buf());
        tokio::task::spawn_blocking(move || cache.discard(&path))
            .await
            .map_err(|err| err.to_string())
            .and_then(|done| done.map_err(|err| err.to_string()))
    };
    match discarded {
        Ok(()) => Ok(()),
        Err(err) => {
            log.append(Event::Warning {
                message: format!("could not remove {what} ({err}); it is never served to a task"),
            })
            .await
        }
    }
}

impl Runner {
    /// The hosts setup may reach: `[network].setup`, and where it holds the registries and
    /// setup can install system packages, the distribution's mirrors: from the image's apt
    /// sources on an image, else from the host's.
    pub(crate) fn setup_network(&self, run: &Run<'_>) -> Vec<String> {
        let network = &run.env.config.network;
        let mut hosts = network.setup.clone();
        let mirrors = match run.image {
            _ if !network.setup_registries => Vec::new(),
            Some(image) => image_apt_hosts(&image.layers),
            None if self.sandbox.writable_system() => {
                nightshift_env::config::apt_source_hosts(Path::new("/etc/apt"))
            }
            None => Vec::new(),
        };
        for host in mirrors {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        hosts
    }
}

/// The package mirrors an image's apt sources name, over all its layers (a source a later layer
/// removed only widens what setup may reach to another mirror). `etc` and `etc/apt` are looked
/// at only where they are directories: a link in an image leads somewhere inside its root, not
/// on the host.
fn image_apt_hosts(layers: &[PathBuf]) -> Vec<String> {
    let is_dir = |path: &Path| std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir());
    let mut hosts = Vec::new();
    for layer in layers.iter().rev() {
        let etc_apt = layer.join("etc/apt");
        if is_dir(&layer.join("etc")) && is_dir(&etc_apt) {
            for host in nightshift_env::config::apt_source_hosts(&etc_apt) {
                if !hosts.contains(&host) {
                    hosts.push(host);
                }
            }
        }
    }
    hosts
}

/// Whether a setup layer holds changes to the working copy (besides `.git`, which no layer
/// keeps).
fn layer_changed_workspace(layer: &Path) -> bool {
    std::fs::read_dir(layer.join("workspace"))
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}

/// A session for the working copy at `workspace` with the configuration's environment
/// variables, limits and network allowlist, its egress requests logged as task events (refused
/// ones up to a rate: see [`crate::egress_log`]).
pub(crate) fn session_spec(workspace: &Path, run: &Run<'_>, network: Vec<String>) -> SessionSpec {
    let (log, env) = (run.log, run.env);
    let limits = &env.config.limits;
    let (egress, requests) = tokio::sync::mpsc::unbounded_channel::<EgressEvent>();
    log.track(tokio::spawn(crate::egress_log::log_egress(
        log.clone(),
        requests,
    )));
    SessionSpec {
        env: env
            .config
            .environment
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        network,
        limits: SessionLimits {
            memory_bytes: Some(limits.memory.bytes()),
            pids: limits.pids.map(u64::from),
            cpus: limits.cpus,
            disk_bytes: Some(limits.disk.bytes()),
        },
        egress: Some(egress),
        layers: run
            .image
            .map(|image| image.built.as_slice())
            .unwrap_or_default()
            .iter()
            .chain(run.layers)
            .cloned()
            .collect(),
        image: run
            .image
            .map(|image| image.layers.clone())
            .unwrap_or_default(),
        image_env: run.image.map(|image| image.env.clone()).unwrap_or_default(),
        credentials: run.credentials.to_vec(),
        user: run.user.cloned(),
        ..SessionSpec::new(workspace)
    }
}

/// The hosts the agent's session may reach: the agent's allowlist, plus the setup allowlist
/// while setup runs in the same session.
pub(crate) fn agent_network(run: &Run<'_>) -> Vec<String> {
    let env = run.env;
    let network = &env.config.network;
    let mut hosts = network.agent.clone();
    let setup_in_session = env.config.environment.setup.is_some() && run.layers.is_empty();
    if setup_in_session || env.config.environment.maintenance.is_some() {
        for host in &network.setup {
            if !hosts.contains(host) {
                hosts.push(host.clone());
            }
        }
    }
    hosts
}
