//! One task from claim to terminal state.
//!
//! Every path through here ends with exactly one `Ended` event and a terminal row, whatever
//! failed on the way; work the agent did is committed to the task's branch even when the task
//! fails or is cancelled, so nothing is lost. The two exceptions are deliberate: a worker that
//! shuts down hands the task back to the queue (`Released`), and a worker that lost its lease
//! writes nothing more, since the task is no longer its own.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use jiff::Timestamp;
use nightshift_agent::{CostFn, SinkError};
use nightshift_env::secrets::Redactor;
use nightshift_model::ModelSpec;
use nightshift_protocol::{ErrorKind, Event, Task, TaskId, TaskState};
use tokio_util::sync::CancellationToken;

use crate::ending::{Ending, fail, fail_env, fail_model, set_state};
use crate::environment;
use crate::follow_up::follow_up_base;
use crate::handoff::Run;
use crate::prepare::{agent_network, session_spec};
use crate::sink::TaskLog;
use crate::task_secret_use;
use crate::watch::{Watch, WatchConfig, watch};
use crate::{Runner, RunnerError};

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
        // The sessions are closed: what they still had to log comes before the end.
        log.settle(std::time::Duration::from_secs(3)).await;

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

        self.report_to_forge(&log, &ending).await?;
        let now = Timestamp::now();
        let task = log
            .update(|task| {
                task.state = ending.state;
                task.finished_at = Some(now);
                task.summary = ending.summary.clone();
                task.error = ending.error.clone();
            })
            .await?;
        if ending.review_after && task.state == TaskState::Succeeded && task.branch.is_some() {
            crate::review::queue_review(self, &log, &task).await?;
        }
        log.append(Event::Ended {
            state: ending.state,
            summary: ending.summary,
            usage: task.usage,
            cost_usd: ending.cost_usd,
            cpu_seconds: log.cpu_seconds(),
            turns: task.turns,
            duration_ms: started.elapsed().as_millis() as u64,
            no_changes: task.no_changes(),
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
        if !task.spec.attempts.is_empty() {
            return self.run_attempts(log, stop, stops).await;
        }
        set_state(
            log,
            TaskState::Preparing,
            Some("checking out the repository"),
        )
        .await?;

        let source = match self.open_source(&task.spec.repo).await {
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
        // A follow-up stands on the earlier runs' branch while it exists; without it, on the
        // base a person chose, as any task.
        let on_branch = match &parent {
            Some(parent) => follow_up_base(&source, parent).await,
            None => None,
        };
        let base_name = on_branch.clone().or_else(|| task.spec.base.clone());
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
        if let Some(ending) = self.begin_merge(log, &source, &copy, &task).await? {
            let _ = copy.remove().await;
            return Ok(ending);
        }

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
        let mut loaded = loaded;
        let mut capped = self.config.limit_ceilings.apply(&mut loaded.config.limits);
        capped.extend(crate::ceilings::cap_check_timeouts(
            &mut loaded.config.checks,
            self.config.max_duration,
            environment::CHECK_TIMEOUT,
        ));
        for message in capped {
            log.append(Event::Warning { message }).await?;
        }
        // A reviewed task's branch is an agent's work, as a follow-up's is.
        let reviewed = match task.spec.review.as_ref().and_then(|review| review.task) {
            Some(id) => self.store.get_task(id).await.ok().flatten(),
            None => None,
        };
        let provenance = match (&parent, &on_branch, &reviewed) {
            (Some(parent), Some(_), _) | (None, _, Some(parent)) => {
                self.follow_up_provenance(log, &source, parent, &base.commit)
                    .await?
            }
            _ => {
                self.subtask_provenance(log, &source, &task, &base.commit)
                    .await?
            }
        };
        if !provenance.configuration {
            loaded.config.network.agent.clear();
            loaded.config.network.setup.clear();
        }
        let secrets = self.load_secrets(log).await?;
        // Every stored secret is redacted, whichever this task may use.
        let values: Vec<(String, String)> = secrets
            .iter()
            .map(|stored| (stored.name.clone(), stored.value.clone()))
            .collect();
        log.redact_with(Redactor::new(&values));
        let task_secrets = match provenance.configuration {
            false => Ok(task_secret_use::TaskSecrets::default()),
            true => task_secret_use::task_secrets(&loaded, &secrets, &task.spec.repo),
        };
        let task_secrets = match task_secrets {
            // Setup scripts an agent may have rewritten get no setup secrets.
            Ok(task_secrets) if !provenance.chosen_tree => task_secret_use::TaskSecrets {
                setup_env: Vec::new(),
                ..task_secrets
            },
            Ok(task_secrets) => task_secrets,
            Err(refused) => {
                let _ = copy.remove().await;
                let (message, hint) = refused.explain(&task.spec.repo);
                return fail(log, ErrorKind::InvalidInput, message, Some(hint)).await;
            }
        };
        let backend = (!self.sandbox.credentials()).then(|| self.sandbox.backend());
        for message in task_secret_use::unsendable_credentials(&task_secrets.credentials, backend) {
            log.append(Event::Warning { message }).await?;
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
            setup_env: &task_secrets.setup_env,
            credentials: &task_secrets.credentials,
            parent: parent.as_ref(),
            reviewed: reviewed.as_ref(),
            chosen_tree: provenance.chosen_tree,
            layers: &[],
            image: None,
            user: None,
        };
        // Only a configuration the person chose asks for reviews (each costs model time).
        // A best-of-N task reviews its attempts itself, when it has a choice to make.
        let review_after = loaded.config.review.auto
            && provenance.configuration
            && task.spec.review.is_none()
            && task.spec.attempt_of.is_none()
            && task.spec.subtask_of.is_none();
        let ending = Ending {
            review_after,
            ..self.run_agent(&run, stop, stops, watch).await?
        };
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
        let Run { log, task, .. } = *run;
        let spec = match task.spec.model.parse::<ModelSpec>() {
            Ok(spec) => spec,
            Err(err) => return fail_model(log, err).await,
        };
        let mut providers = self.providers.clone();
        if let Some(dir) = &self.config.record_dir {
            providers.record = Some(dir.join(format!("{}.jsonl", task.id)));
            // The cassette holds no more than the log: the same redaction, as it stands.
            let log = log.clone();
            providers.record_redaction = Some(nightshift_model::Redaction::new(move |text| {
                log.redact(text)
            }));
        }
        let model = match nightshift_model::connect(&spec, &providers) {
            Ok(model) => model,
            Err(err) => return fail_model(log, err).await,
        };
        let image = match self.task_image(run, stop).await? {
            Ok(image) => image,
            Err(ending) => return Ok(ending),
        };
        let run = &Run {
            image: image.as_ref(),
            ..*run
        };
        let layers = match self.setup_layer(run, stop).await? {
            Ok(layers) => layers,
            Err(ending) => return Ok(ending),
        };
        let run_over_layers = Run {
            layers: &layers.paths,
            ..*run
        };
        let user = match self.image_user(&run_over_layers).await? {
            Ok(user) => user,
            Err(ending) => {
                layers
                    .release(log, self.config.layers_dir.as_deref())
                    .await?;
                return Ok(ending);
            }
        };
        let run_over_layers = Run {
            user: user.as_ref(),
            ..run_over_layers
        };
        let ending = match task.spec.plan_run {
            Some(_) => self.run_plan(&run_over_layers, stop, stops).await,
            None => {
                self.run_in_session(&run_over_layers, model.as_ref(), &spec, stop, stops, watch)
                    .await
            }
        };
        // Every session of the task is closed: a layer of its own goes with it.
        layers
            .release(log, self.config.layers_dir.as_deref())
            .await?;
        ending
    }

    /// Starts the agent's session over the task's layers, prepares it (setup where no layer
    /// holds it, maintenance), runs the agent and proves its result.
    async fn run_in_session(
        &self,
        run: &Run<'_>,
        model: &dyn nightshift_model::ModelClient,
        spec: &ModelSpec,
        stop: &CancellationToken,
        stops: &Stops,
        watch: &Watch,
    ) -> Result<Ending, SinkError> {
        let Run {
            log, task, copy, ..
        } = *run;
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
        let review = task.spec.review.as_ref();
        // Reviews and plans change nothing: their agents get the workspace read-only.
        let read_only = review.is_some() || task.spec.plan;
        let session_spec = nightshift_sandbox::SessionSpec {
            read_only_workspace: read_only,
            ..session_spec(copy.root(), run, network)
        };
        let session = match self.sandbox.start(session_spec).await {
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
        } else if read_only {
            // Nothing runs in a read-only session but the agent's own commands.
            if run.layers.is_empty() && run.env.config.environment.setup.is_some() {
                log.append(Event::Warning {
                    message: "the session has no setup layer (this runner caches none), and setup does not run in a read-only workspace: the agent sees the repository without what setup installs".into(),
                })
                .await?;
            }
            None
        } else {
            self.run_environment_scripts(run, session.as_ref(), stop)
                .await?
        };
        let ending = match prepared {
            Some(ending) => Ok(ending),
            None => {
                self.work(run, (model, spec), session.as_ref(), stop, stops, watch)
                    .await
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
}

/// A model's price as a cost function, looked up per model spec.
pub type PriceLookup = Arc<dyn Fn(&ModelSpec) -> Option<CostFn> + Send + Sync>;
