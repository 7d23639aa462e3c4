//! One task from claim to terminal state.
//!
//! Every path through here ends with exactly one `Ended` event and a terminal row, whatever
//! failed on the way; work the agent did is committed to the task's branch even when the task
//! fails or is cancelled, so nothing is lost. The two exceptions are deliberate: a worker that
//! shuts down hands the task back to the queue (`Released`), and a worker that lost its lease
//! writes nothing more, since the task is no longer its own.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nightshift_agent::{Agent, AgentConfig, AgentOutcome, Budget, CostFn, SinkError};
use nightshift_env::config::SecretScope;
use nightshift_env::secrets::Redactor;
use nightshift_env::{EnvError, ResolvedBase, SourceRepo};
use nightshift_model::{ModelError, ModelSpec};
use nightshift_protocol::{CommandPhase, ErrorKind, Event, Task, TaskId, TaskState};
use nightshift_sandbox::{EgressEvent, EgressVerdict, SandboxSession, SessionLimits, SessionSpec};
use tokio_util::sync::CancellationToken;

use crate::environment;
use crate::follow_up::{follow_up_base, follow_up_context};
use crate::handoff::{HandoffError, Run, commit_in_sandbox, commit_message};
use crate::sink::TaskLog;
use crate::watch::{Watch, WatchConfig, watch};
use crate::{Runner, RunnerError};
use nightshift_env::cache::{CacheKey, Lookup, SetupCache};
use std::path::PathBuf;

/// How a run ended, before it is written down.
struct Ending {
    state: TaskState,
    summary: Option<String>,
    error: Option<String>,
    cost_usd: Option<f64>,
    /// Keep the working copy: it holds work that could not be handed back.
    keep_copy: bool,
    /// The worker is shutting down: the task goes back to the queue instead of ending.
    released: bool,
}

impl Ending {
    fn new(state: TaskState, summary: Option<String>, error: Option<String>) -> Self {
        Ending {
            state,
            summary,
            error,
            cost_usd: None,
            keep_copy: false,
            released: false,
        }
    }

    fn released() -> Self {
        Ending {
            released: true,
            ..Ending::new(TaskState::Queued, None, None)
        }
    }

    fn cancelled() -> Self {
        Ending::new(
            TaskState::Cancelled,
            Some("cancelled on request".into()),
            None,
        )
    }
}

/// Why a run stopped early, besides its own outcome.
pub(crate) struct Stops {
    /// Cancelled by a person (or this process's caller).
    pub(crate) cancel: CancellationToken,
    /// The worker is shutting down: hand the task back to the queue instead of ending it.
    pub(crate) shutdown: CancellationToken,
}

impl Runner {
    /// Claims the queued task `id` and runs it to a terminal state. `cancel` stops it from this
    /// process; a cancel requested through the store (`nightshift cancel`) is noticed too.
    pub async fn run_task(
        &self,
        id: TaskId,
        cancel: CancellationToken,
    ) -> Result<Task, RunnerError> {
        if !self
            .store
            .claim_task(id, &self.config.worker, self.config.lease)
            .await?
        {
            let state = match self.store.get_task(id).await? {
                Some(task) => task.state,
                None => return Err(RunnerError::NoSuchTask(id)),
            };
            return Err(RunnerError::NotClaimable { id, state });
        }
        let task = self
            .store
            .get_task(id)
            .await?
            .ok_or(RunnerError::NoSuchTask(id))?;
        self.run_claimed(
            task,
            Stops {
                cancel,
                shutdown: CancellationToken::new(),
            },
        )
        .await
    }

    /// Runs a task this worker has claimed.
    pub(crate) async fn run_claimed(&self, task: Task, stops: Stops) -> Result<Task, RunnerError> {
        let id = task.id;
        let started = Instant::now();
        let log = TaskLog::new(self.store.clone(), task);
        let claimed = self
            .store
            .append_event(
                id,
                &Event::Claimed {
                    worker: self.config.worker.clone(),
                },
            )
            .await?;

        // One token stops the run, whichever reason fires.
        let stop = CancellationToken::new();
        let findings = Arc::new(Watch::default());
        let watcher = watch(
            self.store.clone(),
            id,
            stop.clone(),
            WatchConfig {
                poll: self.config.cancel_poll,
                lease: self.config.lease,
                worker: self.config.worker.clone(),
            },
            findings.clone(),
            claimed.seq,
        );
        let relay = {
            let stop = stop.clone();
            let (cancel, shutdown) = (stops.cancel.clone(), stops.shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => stop.cancel(),
                    _ = shutdown.cancelled() => stop.cancel(),
                    _ = stop.cancelled() => {}
                }
            })
        };
        let ending = self.drive(&log, &stop, &stops, &findings).await;
        stop.cancel();
        watcher.abort();
        relay.abort();
        let ending = ending?;

        if findings.lease_lost.load(Ordering::SeqCst) {
            return Ok(self
                .store
                .get_task(id)
                .await?
                .unwrap_or(log.snapshot().await));
        }
        if ending.released {
            log.append(Event::Released {
                worker: self.config.worker.clone(),
                reason: "the worker is shutting down; another worker will start the task over"
                    .into(),
            })
            .await?;
            self.store.release_task(id, &self.config.worker).await?;
            return Ok(self
                .store
                .get_task(id)
                .await?
                .unwrap_or(log.snapshot().await));
        }

        let now = Timestamp::now();
        let task = log
            .update(|task| {
                task.state = ending.state;
                task.finished_at = Some(now);
                task.summary = ending.summary.clone();
                task.error = ending.error.clone();
            })
            .await?;
        log.append(Event::Ended {
            state: ending.state,
            summary: ending.summary,
            usage: task.usage,
            cost_usd: ending.cost_usd,
            cpu_seconds: log.cpu_seconds(),
            turns: task.turns,
            duration_ms: started.elapsed().as_millis() as u64,
        })
        .await?;
        Ok(task)
    }

    async fn drive(
        &self,
        log: &TaskLog,
        stop: &CancellationToken,
        stops: &Stops,
        watch: &Watch,
    ) -> Result<Ending, SinkError> {
        let task = log.snapshot().await;
        set_state(
            log,
            TaskState::Preparing,
            Some("checking out the repository"),
        )
        .await?;

        let source = match SourceRepo::open(Path::new(&task.spec.repo)).await {
            Ok(source) => source,
            Err(err) => return fail_env(log, err).await,
        };
        let parent = match self.followed(&task).await {
            Ok(parent) => parent,
            Err(err) => {
                return fail(
                    log,
                    ErrorKind::Internal,
                    format!("reading the task this one follows: {err}"),
                    None,
                )
                .await;
            }
        };
        let base_name = match &parent {
            Some(parent) => follow_up_base(&source, parent)
                .await
                .or_else(|| task.spec.base.clone()),
            None => task.spec.base.clone(),
        };
        let base = match source.resolve_base(base_name.as_deref()).await {
            Ok(base) => base,
            Err(err) => return fail_env(log, err).await,
        };
        let dirty = source.has_uncommitted_changes().await.unwrap_or(false);
        let dest = self.config.work_dir.join(task.id.to_string());
        if dest.exists() {
            // Left over from a run that died; it holds nothing that is not in the source.
            let _ = tokio::fs::remove_dir_all(&dest).await;
        }
        let copy = match source.checkout(&base, &dest).await {
            Ok(copy) => copy,
            Err(err) => return fail_env(log, err).await,
        };
        let short_commit = &base.commit[..base.commit.len().min(12)];
        let note = if dirty {
            format!(
                "the source repository has uncommitted changes; the task starts from the committed {} ({short_commit}) and does not see them",
                base.name
            )
        } else {
            format!(
                "started from the committed {} ({short_commit}); uncommitted changes are never included",
                base.name
            )
        };
        log.append(Event::CheckedOut {
            base: base.name.clone(),
            base_commit: base.commit.clone(),
            note,
        })
        .await?;
        log.update(|task| task.base_commit = Some(base.commit.clone()))
            .await?;

        let loaded = match environment::load(copy.root()).await {
            Ok(loaded) => loaded,
            Err(err) => {
                let _ = copy.remove().await;
                let hint = Some(err.hint());
                return fail(
                    log,
                    ErrorKind::InvalidInput,
                    format!("the repository's configuration is invalid: {err}"),
                    hint,
                )
                .await;
            }
        };
        environment::announce(log, &loaded).await?;
        let secrets = self.load_secrets(log).await?;
        log.redact_with(Redactor::new(&secrets));
        let setup_env = match environment::setup_secrets(&loaded, &secrets) {
            Ok(env) => env,
            Err(missing) => {
                let _ = copy.remove().await;
                return fail(
                    log,
                    ErrorKind::InvalidInput,
                    format!("the configuration gives setup the secret(s) {}, which are not set", missing.join(", ")),
                    Some(format!("set each with `nightshift secret set NAME` (the value is read from stdin), e.g. `nightshift secret set {}`", missing[0])),
                )
                .await;
            }
        };
        for spec in &loaded.config.secrets {
            if matches!(spec.scope, SecretScope::Proxy { .. }) {
                log.append(Event::Warning {
                    message: format!("secret `{}` has scope `proxy`, which this version cannot inject yet; the task does not get it", spec.name),
                })
                .await?;
            }
        }
        environment::copy_untracked(
            log,
            source.root(),
            copy.root(),
            &loaded.config.environment.copy,
        )
        .await?;

        let run = Run {
            log,
            task: &task,
            source: &source,
            copy: &copy,
            env: &loaded,
            setup_env: &setup_env,
            parent: parent.as_ref(),
            layers: &[],
        };
        let ending = self.run_agent(&run, stop, stops, watch).await?;
        if !ending.keep_copy
            && let Err(err) = copy.remove().await
        {
            log.append(Event::Warning {
                message: format!("could not remove the working copy: {err}"),
            })
            .await?;
        }
        Ok(ending)
    }

    async fn run_agent(
        &self,
        run: &Run<'_>,
        stop: &CancellationToken,
        stops: &Stops,
        watch: &Watch,
    ) -> Result<Ending, SinkError> {
        let Run {
            log, task, copy, ..
        } = *run;
        let spec = match task.spec.model.parse::<ModelSpec>() {
            Ok(spec) => spec,
            Err(err) => return fail_model(log, err).await,
        };
        let mut providers = self.providers.clone();
        if let Some(dir) = &self.config.record_dir {
            providers.record = Some(dir.join(format!("{}.jsonl", task.id)));
        }
        let model = match nightshift_model::connect(&spec, &providers) {
            Ok(model) => model,
            Err(err) => return fail_model(log, err).await,
        };
        let layers = match self.setup_layer(run, stop).await? {
            Ok(layers) => layers,
            Err(ending) => return Ok(ending),
        };
        let run = &Run {
            layers: &layers,
            ..*run
        };
        let network = agent_network(run);
        if network.len() > run.env.config.network.agent.len() {
            log.append(Event::Warning {
                message: format!(
                    "setup runs in the agent's own sandbox session (cached setup layers are not built yet), so the agent may also reach the setup hosts: {}",
                    network.join(", ")
                ),
            })
            .await?;
        }
        let session = match self
            .sandbox
            .start(session_spec(copy.root(), run, network))
            .await
        {
            Ok(session) => session,
            Err(err) => {
                return fail(
                    log,
                    ErrorKind::Sandbox,
                    err.to_string(),
                    Some("run `nightshift doctor`".into()),
                )
                .await;
            }
        };
        log.append(Event::SandboxStarted {
            backend: self.sandbox.backend().to_string(),
            isolated: self.sandbox.isolated(),
        })
        .await?;
        if !self.sandbox.isolated() {
            log.append(Event::Warning {
                message: format!(
                    "the agent's commands run on the host without isolation (sandbox backend `{}`)",
                    self.sandbox.backend()
                ),
            })
            .await?;
        }
        let prepared = if stop.is_cancelled() {
            Some(Ending::cancelled())
        } else {
            self.run_environment_scripts(run, session.as_ref(), stop)
                .await?
        };
        let ending = if let Some(ending) = prepared {
            Ok(ending)
        } else {
            set_state(log, TaskState::Running, None).await?;
            let config = AgentConfig {
                budget: budget(
                    task,
                    Some(run.env.config.limits.wall_time.as_duration())
                        .into_iter()
                        .chain(self.config.max_duration)
                        .min(),
                ),
                limits: self.config.tool_limits.clone(),
                max_output_tokens: None,
                cost: self.cost.clone().and_then(|price| price(&spec)),
                context_window: Some(nightshift_model::limits(&spec).context_window),
            };
            let agent = Agent {
                model: model.as_ref(),
                session: session.as_ref(),
                sink: log,
                config: &config,
                inbox: Some(&watch.messages),
            };
            let mut context = environment::agent_context(run.env, copy.root());
            if let Some(parent) = run.parent {
                context.push_str(&format!("\n{}", follow_up_context(parent)));
            }
            let prompt = if context.trim().is_empty() {
                task.spec.prompt.clone()
            } else {
                format!(
                    "{}\n\n# The task\n\n{}",
                    context.trim_end(),
                    task.spec.prompt
                )
            };
            match agent.run(&prompt, stop).await {
                Ok(report) => {
                    let cost = report.cost_usd;
                    let shutting_down = stops.shutdown.is_cancelled()
                        && !stops.cancel.is_cancelled()
                        && !watch.cancel_requested.load(Ordering::SeqCst);
                    self.conclude(run, session.as_ref(), report.outcome, shutting_down)
                        .await
                        .map(|ending| Ending {
                            cost_usd: cost,
                            ..ending
                        })
                }
                Err(nightshift_agent::AgentError::Sink(err)) => Err(err),
            }
        };
        log.add_cpu(session.cpu_seconds());
        if let Err(err) = session.close().await {
            log.append(Event::Warning {
                message: format!("closing the sandbox: {err}"),
            })
            .await?;
        }
        ending
    }

    /// Runs the repository's setup and maintenance scripts in the session before the agent
    /// starts. Returns the task's ending when one fails.
    async fn run_environment_scripts(
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
        for (phase, name, script) in scripts {
            let Some(script) = script else { continue };
            if phase == CommandPhase::Setup && !run.layers.is_empty() {
                continue;
            }
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
                let hint = format!(
                    "fix the {name} script in .nightshift.toml; its whole log is the artifact {name}.log"
                );
                return fail(run.log, ErrorKind::Setup, message, Some(hint))
                    .await
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// The agent finished: commit its work, run the declared checks on the committed tree in a
    /// fresh sandbox, and create the branch. A failing check fails the task; the branch stays.
    async fn verify_and_publish(
        &self,
        run: &Run<'_>,
        session: &dyn SandboxSession,
        summary: String,
    ) -> Result<Ending, SinkError> {
        let log = run.log;
        let checks = &run.env.config.checks;
        set_state(log, TaskState::Verifying, Some("committing the result")).await?;
        let message = commit_message(&summary, run.task, None);
        let head = match commit_in_sandbox(session, run.copy, &message).await {
            Ok(Some(head)) => head,
            Ok(None) => {
                log.append(Event::Warning {
                    message: "the agent finished without changing any file; no branch was created"
                        .into(),
                })
                .await?;
                return Ok(Ending::new(TaskState::Succeeded, Some(summary), None));
            }
            Err(HandoffError::Sink(err)) => return Err(err),
            Err(err) => return self.handoff_failed(log, run.copy, err).await,
        };
        let failed = if checks.is_empty() {
            log.append(Event::Warning {
                message: "no checks are declared ([checks] in .nightshift.toml): the result was not verified beyond the agent's own runs".into(),
            })
            .await?;
            Vec::new()
        } else {
            set_state(
                log,
                TaskState::Verifying,
                Some(&format!(
                    "running {} check(s) on the committed tree in a fresh sandbox",
                    checks.len()
                )),
            )
            .await?;
            self.verify(run, &head).await?
        };
        set_state(log, TaskState::HandingOff, Some("creating the branch")).await?;
        match self.publish(run, &head, false).await {
            Ok(()) => {}
            Err(HandoffError::Sink(err)) => return Err(err),
            Err(err) => return self.handoff_failed(log, run.copy, err).await,
        }
        if failed.is_empty() {
            let summary = if checks.is_empty() {
                format!(
                    "{summary}\n\n(Not verified by nightshift: the repository declares no checks.)"
                )
            } else {
                summary
            };
            return Ok(Ending::new(TaskState::Succeeded, Some(summary), None));
        }
        let names: Vec<String> = failed
            .iter()
            .map(|(name, code)| format!("`{name}` (exit {code})"))
            .collect();
        let ending = fail(
            log,
            ErrorKind::Checks,
            format!("the agent finished, but check {} failed on the committed result", names.join(", ")),
            Some("the branch has the work; each check's log is an artifact (check-NAME.log) and its tail is in `nightshift logs`".into()),
        )
        .await?;
        Ok(Ending {
            summary: Some(summary),
            ..ending
        })
    }

    /// Runs every declared check on `head` in a fresh sandbox: a new working copy of the
    /// committed tree, the setup script again, nothing of the agent's session. Returns the
    /// failed checks with their exit codes.
    async fn verify(&self, run: &Run<'_>, head: &str) -> Result<Vec<(String, i32)>, SinkError> {
        let log = run.log;
        let config = &run.env.config;
        let all_failed = |reason: String| {
            config
                .checks
                .iter()
                .map(|c| (format!("{} ({reason})", c.name), -1))
                .collect::<Vec<_>>()
        };
        let dest = self.config.work_dir.join(format!("{}-verify", run.task.id));
        if dest.exists() {
            let _ = tokio::fs::remove_dir_all(&dest).await;
        }
        let committed = ResolvedBase {
            name: "nightshift/result".into(),
            commit: head.to_string(),
        };
        let tree = match SourceRepo::open(run.copy.root()).await {
            Ok(host_copy) => host_copy.checkout(&committed, &dest).await,
            Err(err) => Err(err),
        };
        let tree = match tree {
            Ok(tree) => tree,
            Err(err) => {
                log.append(Event::Warning {
                    message: format!(
                        "could not check out the committed tree for the checks: {err}"
                    ),
                })
                .await?;
                return Ok(all_failed("not run".into()));
            }
        };
        let session = match self
            .sandbox
            .start(session_spec(tree.root(), run, agent_network(run)))
            .await
        {
            Ok(session) => session,
            Err(err) => {
                log.append(Event::Warning {
                    message: format!("could not start a sandbox for the checks: {err}"),
                })
                .await?;
                let _ = tree.remove().await;
                return Ok(all_failed("not run".into()));
            }
        };
        let never = CancellationToken::new();
        let mut failed = Vec::new();
        let environment = &config.environment;
        let mut ready = true;
        if let Some(setup) = environment
            .setup
            .as_deref()
            .filter(|_| run.layers.is_empty())
        {
            let outcome = environment::run_command(
                log,
                self.store.as_ref(),
                run.task.id,
                session.as_ref(),
                environment.workdir.as_deref(),
                CommandPhase::Setup,
                "setup (verification)",
                setup,
                run.setup_env,
                None,
                &never,
            )
            .await?;
            ready = outcome.ok;
        }
        for check in &config.checks {
            if !ready {
                failed.push((format!("{} (setup failed)", check.name), -1));
                continue;
            }
            let outcome = environment::run_command(
                log,
                self.store.as_ref(),
                run.task.id,
                session.as_ref(),
                environment.workdir.as_deref(),
                CommandPhase::Check,
                &check.name,
                &check.run,
                &[],
                check.timeout.map(Into::into),
                &never,
            )
            .await?;
            if !outcome.ok {
                failed.push((check.name.clone(), outcome.exit_code));
            }
        }
        log.add_cpu(session.cpu_seconds());
        let _ = session.close().await;
        let _ = tree.remove().await;
        Ok(failed)
    }

    /// The setup layer of the task: from the cache on a hit; on a miss, built by running setup
    /// in a session of its own (with the setup allowlist) and keeping its changes. Empty when
    /// there is no setup, no cache, or the sandbox takes no layers (setup then runs in the
    /// agent's session). The task's ending instead when setup fails.
    async fn setup_layer(
        &self,
        run: &Run<'_>,
        stop: &CancellationToken,
    ) -> Result<Result<Vec<PathBuf>, Ending>, SinkError> {
        let environment = &run.env.config.environment;
        let (Some(setup), Some(dir)) = (environment.setup.as_deref(), &self.config.layers_dir)
        else {
            return Ok(Ok(Vec::new()));
        };
        if !self.sandbox.supports_layers() {
            return Ok(Ok(Vec::new()));
        }
        let log = run.log;
        set_state(
            log,
            TaskState::Preparing,
            Some("looking for a cached setup layer"),
        )
        .await?;
        let base = nightshift_env::cache::base_identity(self.sandbox.backend());
        let key = CacheKey::compute(run.copy.root(), &run.env.config, &base);
        let cache = SetupCache::new(dir, self.config.layers_budget);
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
                return Ok(Ok(vec![layer]));
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
        let spec = session_spec(run.copy.root(), run, run.env.config.network.setup.clone());
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
            let hint =
                "fix the setup script in .nightshift.toml; its whole log is the artifact setup.log";
            return fail(log, ErrorKind::Setup, message, Some(hint.into()))
                .await
                .map(Err);
        }
        let kept = match cache.staging(&key) {
            Ok(staged) => session
                .close_keeping_changes(&staged)
                .await
                .map(|()| staged)
                .map_err(|err| err.to_string()),
            Err(err) => {
                let _ = session.close().await;
                Err(err.to_string())
            }
        };
        let committed = match kept {
            Ok(staged) => {
                let (cache, key, repo) = (cache.clone(), key.clone(), repo.clone());
                tokio::task::spawn_blocking(move || cache.commit(&repo, &key, &staged))
                    .await
                    .map_err(|err| err.to_string())
                    .and_then(|done| done.map_err(|err| err.to_string()))
            }
            Err(err) => Err(err),
        };
        match committed {
            Ok(layer) => {
                // A layer is kept on disk: it must not hold a secret in the clear.
                if let Some((name, file)) = environment::secret_in_tree(log, &layer).await {
                    if let Some(dir) = layer.parent() {
                        let _ = tokio::fs::remove_dir_all(dir).await;
                    }
                    let message = format!(
                        "the setup script wrote the value of secret {name} into the workspace ({}); the layer was discarded",
                        file.display()
                    );
                    let hint = "write credentials outside the workspace (e.g. in $HOME, which no layer keeps)";
                    return fail(log, ErrorKind::Setup, message, Some(hint.into()))
                        .await
                        .map(Err);
                }
                Ok(Ok(vec![layer]))
            }
            Err(err) => {
                let message = format!("keeping the setup layer: {err}");
                fail(log, ErrorKind::Internal, message, None).await.map(Err)
            }
        }
    }

    /// Every stored secret, unsealed with this worker's key; what cannot be unsealed is
    /// reported and left out.
    async fn load_secrets(&self, log: &TaskLog) -> Result<Vec<(String, String)>, SinkError> {
        let sealed = match self.store.secrets().await {
            Ok(sealed) => sealed,
            Err(err) => {
                log.append(Event::Warning {
                    message: format!("could not read the stored secrets: {err}"),
                })
                .await?;
                return Ok(Vec::new());
            }
        };
        if sealed.is_empty() {
            return Ok(Vec::new());
        }
        let Some(key) = &self.secret_key else {
            log.append(Event::Warning {
                message: "secrets are stored, but this worker has no secret key (NIGHTSHIFT_SECRET_KEY or the key file); tasks here get none".into(),
            })
            .await?;
            return Ok(Vec::new());
        };
        let mut secrets = Vec::new();
        for secret in sealed {
            match key.unseal(&secret.name, &secret.sealed) {
                Ok(value) => secrets.push((secret.name, value)),
                Err(err) => {
                    log.append(Event::Warning {
                        message: err.to_string(),
                    })
                    .await?
                }
            }
        }
        Ok(secrets)
    }

    async fn handoff_failed(
        &self,
        log: &TaskLog,
        copy: &nightshift_env::WorkingCopy,
        err: HandoffError,
    ) -> Result<Ending, SinkError> {
        let message = format!("handing off failed: {err}");
        if let HandoffError::SecretInResult(_) = err {
            // Keeping the working copy would keep the secret in the clear.
            let hint = "the agent wrote a secret's value into the repository; its work was discarded so the value is stored nowhere. Run the task again, telling it not to write credentials into files".to_string();
            return fail(log, ErrorKind::Repository, message, Some(hint)).await;
        }
        let hint = format!("the working copy is kept at {}", copy.root().display());
        let ending = fail(log, ErrorKind::Repository, message, Some(hint)).await?;
        Ok(Ending {
            keep_copy: true,
            ..ending
        })
    }

    /// Turns the agent's outcome into the task's ending, handing back its work.
    async fn conclude(
        &self,
        run: &Run<'_>,
        session: &dyn SandboxSession,
        outcome: AgentOutcome,
        shutting_down: bool,
    ) -> Result<Ending, SinkError> {
        let log = run.log;
        match outcome {
            AgentOutcome::Finished { summary } => {
                self.verify_and_publish(run, session, summary).await
            }
            AgentOutcome::BudgetExceeded { reason, summary } => {
                self.save_incomplete(run, session, summary.as_deref(), &reason)
                    .await?;
                let ending = fail(
                    log,
                    ErrorKind::Budget,
                    format!("the task stopped: {reason}"),
                    Some("run it again with a larger budget (--max-turns, --max-tokens, --max-cost, --max-time) or a more specific prompt".into()),
                )
                .await?;
                Ok(Ending { summary, ..ending })
            }
            AgentOutcome::Cancelled => {
                if shutting_down {
                    // The task goes back to the queue and starts over elsewhere; its branch
                    // name must stay free for that run.
                    return Ok(Ending::released());
                }
                self.save_incomplete(run, session, None, "the task was cancelled")
                    .await?;
                Ok(Ending::cancelled())
            }
            AgentOutcome::ModelFailed(err) => {
                self.save_incomplete(run, session, None, &format!("the model failed: {err}"))
                    .await?;
                fail_model(log, err).await
            }
        }
    }
}

/// The task's budget: its own limits, and the runner's wall-clock limit unless the task has a
/// shorter one.
fn budget(task: &Task, max_duration: Option<Duration>) -> Budget {
    let own = task.spec.max_duration_secs.map(Duration::from_secs);
    Budget {
        max_turns: task.spec.max_turns,
        max_tokens: task.spec.max_tokens,
        max_cost_usd: task.spec.max_cost_usd,
        max_duration: match (own, max_duration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    }
}

async fn set_state(log: &TaskLog, state: TaskState, detail: Option<&str>) -> Result<(), SinkError> {
    log.update(|task| task.state = state).await?;
    log.append(Event::StateChanged {
        state,
        detail: detail.map(str::to_string),
    })
    .await
}

async fn fail(
    log: &TaskLog,
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
) -> Result<Ending, SinkError> {
    log.append(Event::Error {
        kind,
        message: message.clone(),
        hint,
    })
    .await?;
    Ok(Ending::new(TaskState::Failed, None, Some(message)))
}

async fn fail_env(log: &TaskLog, err: EnvError) -> Result<Ending, SinkError> {
    let kind = if err.is_invalid_input() {
        ErrorKind::InvalidInput
    } else {
        ErrorKind::Repository
    };
    let hint = err.hint();
    fail(log, kind, err.to_string(), hint).await
}

async fn fail_model(log: &TaskLog, err: ModelError) -> Result<Ending, SinkError> {
    let kind = match &err {
        ModelError::Unreachable { .. } | ModelError::IdleTimeout(_) => ErrorKind::ModelUnreachable,
        ModelError::Unauthorized { .. } => ErrorKind::ModelAuth,
        ModelError::Malformed { .. } => ErrorKind::ModelProtocol,
        ModelError::Config(_) | ModelError::ReplayDiverged { .. } => ErrorKind::InvalidInput,
        ModelError::Cancelled => return Ok(Ending::cancelled()),
        ModelError::RateLimited { .. }
        | ModelError::Server { .. }
        | ModelError::Rejected { .. } => ErrorKind::Model,
    };
    let hint = err.hint().map(str::to_string);
    fail(log, kind, err.to_string(), hint).await
}

/// A model's price as a cost function, looked up per model spec.
pub type PriceLookup = Arc<dyn Fn(&ModelSpec) -> Option<CostFn> + Send + Sync>;

/// A session for the working copy at `workspace` with the configuration's environment
/// variables, limits and network allowlist, its egress requests logged as task events.
fn session_spec(workspace: &Path, run: &Run<'_>, network: Vec<String>) -> SessionSpec {
    let (log, env) = (run.log, run.env);
    let limits = &env.config.limits;
    let (egress, mut requests) = tokio::sync::mpsc::unbounded_channel::<EgressEvent>();
    let log = log.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            let _ = log
                .append(Event::Egress {
                    host: request.host,
                    port: request.port,
                    method: request.method,
                    allowed: matches!(request.verdict, EgressVerdict::Allowed),
                    bytes_up: request.bytes_up,
                    bytes_down: request.bytes_down,
                    detail: request.detail,
                })
                .await;
        }
    });
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
        layers: run.layers.to_vec(),
        ..SessionSpec::new(workspace)
    }
}

/// The hosts the agent's session may reach: the agent's allowlist, plus the setup allowlist
/// while setup runs in the same session.
fn agent_network(run: &Run<'_>) -> Vec<String> {
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
