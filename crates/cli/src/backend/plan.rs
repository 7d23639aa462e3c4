//! A planning task's plan through either backend: read it, change it, approve it.

use nightshift_protocol::{Plan, PlanHistory, Task};
use nightshift_runner::PlanError;
use serde::Deserialize;
use serde_json::json;

use super::Backend;
use crate::output::Failure;

/// What the server answers to an edit or an approval.
#[derive(Deserialize)]
struct Version {
    version: u32,
    #[serde(default)]
    run: Option<String>,
}

fn plan_failure(err: PlanError) -> Failure {
    match err {
        PlanError::Store(_) | PlanError::Submit(_) => Failure::error(err.to_string()),
        PlanError::NoPlanYet(..) => Failure::usage(err.to_string()).with_hint(Some(
            "wait for it to end (`nightshift run`'s --wait, or `nightshift logs --follow ID`)"
                .into(),
        )),
        _ => Failure::usage(err.to_string()),
    }
}

impl Backend {
    /// Every version of the plan of the planning task `task`, and the one approved.
    pub async fn plan_history(&self, task: &Task) -> Result<PlanHistory, Failure> {
        match self {
            Backend::Local(local) => local
                .runner()
                .plan_history(task.id)
                .await
                .map_err(plan_failure),
            Backend::Remote(remote) => {
                let url = format!("{}/api/tasks/{}/plan", remote.base(), task.id);
                remote
                    .json("reading the plan", || remote.client.get(&url))
                    .await
                    .map_err(|err| remote.failure(err))
            }
        }
    }

    /// Stores `plan` as the next version; returns the newest version.
    pub async fn edit_plan(&self, task: &Task, plan: &Plan) -> Result<u32, Failure> {
        match self {
            Backend::Local(local) => local
                .runner()
                .edit_plan(task.id, plan.clone(), &whoami())
                .await
                .map_err(plan_failure),
            Backend::Remote(remote) => {
                let url = format!("{}/api/tasks/{}/plan", remote.base(), task.id);
                let body = json!({ "plan": plan });
                remote
                    .json::<Version>("changing the plan", || remote.client.post(&url).json(&body))
                    .await
                    .map(|answer| answer.version)
                    .map_err(|err| remote.failure(err))
            }
        }
    }

    /// Approves `version` (default: the newest) and queues its run; returns the version
    /// approved and the run's id.
    pub async fn approve_plan(
        &self,
        task: &Task,
        version: Option<u32>,
    ) -> Result<(u32, String), Failure> {
        match self {
            Backend::Local(local) => {
                let (version, run) = local
                    .runner()
                    .approve_plan(task.id, version, Some(&whoami()))
                    .await
                    .map_err(plan_failure)?;
                local.start_worker(run.id)?;
                Ok((version, run.id.to_string()))
            }
            Backend::Remote(remote) => {
                let url = format!("{}/api/tasks/{}/plan/approve", remote.base(), task.id);
                let body = json!({ "version": version });
                remote
                    .json::<Version>("approving the plan", || {
                        remote.client.post(&url).json(&body)
                    })
                    .await
                    .map(|answer| (answer.version, answer.run.unwrap_or_default()))
                    .map_err(|err| remote.failure(err))
            }
        }
    }
}

/// Who is at this terminal, for the plan's history.
fn whoami() -> String {
    std::env::var("USER")
        .ok()
        .filter(|user| !user.trim().is_empty())
        .unwrap_or_else(|| "a person".into())
}
