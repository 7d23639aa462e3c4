//! Proving a result: commit the agent's work, run the declared checks on the committed tree in
//! a fresh sandbox, and hand it back as a branch; a failing check fails the task. A result that
//! changes nothing is proved the same way, on the tree the task started from: "succeeded" never
//! means "the checks were skipped".

use nightshift_agent::SinkError;
use nightshift_env::{ResolvedBase, SourceRepo};
use nightshift_protocol::{CommandPhase, ErrorKind, Event, TaskState};
use nightshift_sandbox::{SandboxSession, SessionSpec};
use tokio_util::sync::CancellationToken;

use crate::Runner;
use crate::ending::{Ending, fail, set_state};
use crate::environment;
use crate::follow_up::follow_up_base;
use crate::handoff::{HandoffError, Run, commit_in_sandbox, commit_message};
use crate::prepare::{agent_network, session_spec};
use crate::sink::TaskLog;

impl Runner {
    /// The agent finished: commit its work, run the declared checks on the committed tree in a
    /// fresh sandbox, and create the branch. A failing check fails the task; the branch stays.
    pub(crate) async fn verify_and_publish(
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
            Ok(None) => return self.verify_unchanged(run, summary).await,
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
        let ending = fail(
            log,
            ErrorKind::Checks,
            format!("the agent finished, but check {} failed on the committed result", check_names(&failed)),
            Some("the branch has the work; each check's log is an artifact (check-NAME.log) and its tail is in `nightshift logs`".into()),
        )
        .await?;
        Ok(Ending {
            summary: Some(summary),
            ..ending
        })
    }

    /// The agent finished without changing any file: nothing is handed back, but the checks run
    /// on the tree the task stands on (the base commit, or for a follow-up the tip of the branch
    /// it continues), and a failing one fails the task. The result is recorded as that commit
    /// (`head_commit == base_commit`), which is what "no changes" means on the task.
    async fn verify_unchanged(&self, run: &Run<'_>, summary: String) -> Result<Ending, SinkError> {
        let log = run.log;
        let checks = &run.env.config.checks;
        let base = run.copy.base_commit().to_string();
        let short = &base[..base.len().min(12)];
        // A follow-up started from the earlier task's branch when it still existed; it stays
        // the task's branch, so that a follow-up of this one continues it too.
        let branch = match run.parent {
            Some(parent) => follow_up_base(run.source, parent).await,
            None => None,
        };
        let (stands_on, left) = match &branch {
            Some(branch) => (
                format!("{branch} at {short}"),
                format!("the branch {branch} was left as it was"),
            ),
            None => (
                format!("the base commit {short}"),
                "no branch was created".to_string(),
            ),
        };
        log.append(Event::Warning {
            message: format!("the agent finished without changing any file; {left}"),
        })
        .await?;
        log.update(|task| {
            task.head_commit = Some(base.clone());
            if branch.is_some() {
                task.branch = branch.clone();
            }
        })
        .await?;
        let failed = if checks.is_empty() {
            log.append(Event::Warning {
                message: "no checks are declared ([checks] in .nightshift.toml): the unchanged tree was not verified".into(),
            })
            .await?;
            Vec::new()
        } else {
            set_state(
                log,
                TaskState::Verifying,
                Some(&format!(
                    "running {} check(s) on the unchanged tree ({stands_on}) in a fresh sandbox",
                    checks.len()
                )),
            )
            .await?;
            self.verify(run, &base).await?
        };
        if failed.is_empty() {
            return Ok(Ending::new(TaskState::Succeeded, Some(summary), None));
        }
        let ending = fail(
            log,
            ErrorKind::Checks,
            format!(
                "the agent finished without changing any file, and check {} failed on the tree it started from ({stands_on})",
                check_names(&failed)
            ),
            Some("nothing was handed back: the checks fail on the unchanged tree, so the task is not done; each check's log is an artifact (check-NAME.log) and its tail is in `nightshift logs`".into()),
        )
        .await?;
        Ok(Ending {
            summary: Some(summary),
            ..ending
        })
    }

    /// Runs every declared check on `head` in a fresh sandbox: a new working copy of the
    /// committed tree over the setup layer (or the setup script again), nothing of the agent's
    /// session. Returns the
    /// failed checks with their exit codes.
    pub(crate) async fn verify(
        &self,
        run: &Run<'_>,
        head: &str,
    ) -> Result<Vec<(String, i32)>, SinkError> {
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
        // The committed tree is what is tested: every path it holds is its own, above what
        // the setup layer changed in the working copy (which still shows where the tree has
        // nothing, such as installed dependencies).
        let spec = SessionSpec {
            workspace_over_layers: true,
            ..session_spec(tree.root(), run, agent_network(run))
        };
        let session = match self.sandbox.start(spec).await {
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
            // The committed tree holds the agent's commits, which may have rewritten what setup
            // runs: setup secrets go only to a tree a person chose.
            let setup_env = if head == run.copy.base_commit() {
                run.setup_env
            } else {
                &[]
            };
            if setup_env.len() < run.setup_env.len() {
                log.append(Event::Warning {
                    message: "setup runs again for the checks without its secrets: the committed tree holds the agent's commits, which may have changed the scripts setup runs".into(),
                })
                .await?;
            }
            let outcome = environment::run_command(
                log,
                self.store.as_ref(),
                run.task.id,
                session.as_ref(),
                environment.workdir.as_deref(),
                CommandPhase::Setup,
                "setup (verification)",
                setup,
                setup_env,
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

    pub(crate) async fn handoff_failed(
        &self,
        log: &TaskLog,
        copy: &nightshift_env::WorkingCopy,
        err: HandoffError,
    ) -> Result<Ending, SinkError> {
        let message = format!("handing off failed: {err}");
        // Keeping the working copy would keep the secret in the clear.
        let discarded = match err {
            HandoffError::SecretInResult(_) => Some(
                "the agent wrote a secret's value into the repository; its work was discarded so the value is stored nowhere. Run the task again, telling it not to write credentials into files",
            ),
            HandoffError::SecretCheck(_) => Some(
                "the work was discarded, since it may hold a secret's value. Run the task again; if this repeats, the error says what git said",
            ),
            HandoffError::Env(_) | HandoffError::Sink(_) | HandoffError::Commit(_) => None,
        };
        if let Some(hint) = discarded {
            return fail(log, ErrorKind::Repository, message, Some(hint.into())).await;
        }
        let hint = format!("the working copy is kept at {}", copy.root().display());
        let ending = fail(log, ErrorKind::Repository, message, Some(hint)).await?;
        Ok(Ending {
            keep_copy: true,
            ..ending
        })
    }
}

/// The failed checks as a message names them: `` `test` (exit 1), `lint` (exit 2) ``.
fn check_names(failed: &[(String, i32)]) -> String {
    failed
        .iter()
        .map(|(name, code)| format!("`{name}` (exit {code})"))
        .collect::<Vec<_>>()
        .join(", ")
}
