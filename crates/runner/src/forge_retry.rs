//! Pushes and pull requests that a forge outage held up: the work is on the branch of the
//! mirror, and the store holds a retry for the task. Workers take due retries, push what is not
//! pushed, and report to the forge again, the wait doubling with each attempt until it succeeds
//! or is given up. Every attempt is a `forge_retry` event in the task's log.

use std::time::Duration;

use nightshift_env::{Mirrors, RemoteCredential};
use nightshift_protocol::{Event, EventRecord, TaskId};
use nightshift_store::ForgeRetry;

use crate::forge::{Outcome, Reported};
use crate::{Runner, RunnerError};

/// The most attempts before a retry is given up: with the default first wait of one minute,
/// doubling up to an hour, about nine hours of trying.
pub(crate) const MAX_ATTEMPTS: u32 = 12;

/// The longest wait between two attempts.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// How long a worker holds a retry it took (a worker that dies lets it come due again).
const HOLD: Duration = Duration::from_secs(600);

/// A push that failed: why, and whether an outage (rather than a refusal) is to blame.
pub(crate) struct PushFailure {
    pub(crate) reason: String,
    pub(crate) outage: bool,
}

impl Runner {
    /// Schedules the task's push or pull request (`action`) to be tried again after
    /// `previous` failed attempts and this one, or gives it up after [`MAX_ATTEMPTS`]; the
    /// event says which.
    pub(crate) async fn defer(
        &self,
        id: TaskId,
        action: &str,
        previous: u32,
        reason: &str,
    ) -> Event {
        let attempt = previous + 1;
        let give_up = |reason: String| Event::ForgeRetry {
            action: action.to_string(),
            attempt,
            retry_at: None,
            reason,
        };
        if attempt >= MAX_ATTEMPTS {
            if let Err(err) = self.store.finish_forge_retry(id).await {
                tracing::warn!(task = %id, %err, "could not forget a forge retry given up");
            }
            return give_up(reason.to_string());
        }
        let wait = self
            .config
            .forge_retry_wait
            .saturating_mul(1 << previous.min(16))
            .min(LONGEST_WAIT);
        let at = jiff::Timestamp::now()
            + jiff::SignedDuration::try_from(wait).unwrap_or(jiff::SignedDuration::from_secs(60));
        match self.store.schedule_forge_retry(id, at, reason).await {
            Ok(_) => Event::ForgeRetry {
                action: action.to_string(),
                attempt,
                retry_at: Some(at),
                reason: reason.to_string(),
            },
            Err(err) => give_up(format!(
                "{reason}; and the retry could not be scheduled: {err}"
            )),
        }
    }

    /// Takes the forge retries that are due and tries each once. Returns how many it took.
    pub async fn retry_forge_work(&self) -> Result<usize, RunnerError> {
        let due = self.store.claim_forge_retries(HOLD, 8).await?;
        let taken = due.len();
        for retry in due {
            let id = retry.task_id;
            if let Err(err) = self.retry_one(retry).await {
                tracing::warn!(task = %id, %err, "a forge retry failed; it comes due again later");
            }
        }
        Ok(taken)
    }

    async fn retry_one(&self, retry: ForgeRetry) -> Result<(), RunnerError> {
        let id = retry.task_id;
        let Some(task) = self.store.get_task(id).await? else {
            self.store.finish_forge_retry(id).await?;
            return Ok(());
        };
        let mut events = self.store.events(id, 0, 10_000).await?;
        if let (Some((branch, commit)), Some(mirrors)) = (unpushed(&events), &self.config.mirrors) {
            let url = task.spec.repo.trim();
            let pushed = match self.remote_credential(url).await {
                Ok(credential) => {
                    let _lock = mirrors.lock(url).await.map_err(|err| {
                        RunnerError::Sink(nightshift_agent::SinkError(err.to_string()))
                    })?;
                    push_with_retries(mirrors, url, &branch, credential.as_ref(), 1).await
                }
                Err(reason) => Err(PushFailure {
                    reason,
                    outage: false,
                }),
            };
            let event = match pushed {
                Ok(()) => Event::BranchPushed {
                    remote: url.to_string(),
                    branch,
                    commit,
                },
                Err(failure) if failure.outage => {
                    let event = self
                        .defer(id, "push", retry.attempts, &failure.reason)
                        .await;
                    self.store.append_event(id, &event).await?;
                    return Ok(());
                }
                Err(failure) => {
                    self.store.finish_forge_retry(id).await?;
                    let warning = Event::Warning {
                        message: format!(
                            "pushing {branch} to {url} again failed, and the work stays on that branch of the mirror: {}",
                            failure.reason
                        ),
                    };
                    self.store.append_event(id, &warning).await?;
                    return Ok(());
                }
            };
            self.store.append_event(id, &event).await?;
            events = self.store.events(id, 0, 10_000).await?;
        }
        let events = self.forge_view(&task, events).await;
        let mut said = Vec::new();
        let reported = self
            .report(
                &task,
                &Outcome::of_stored(&task, &events),
                &events,
                &mut said,
            )
            .await;
        for event in said {
            self.store.append_event(id, &event).await?;
        }
        match reported {
            Reported::Done => self.store.finish_forge_retry(id).await?,
            Reported::HeldUp(reason) => {
                let event = self
                    .defer(id, "pull_request", retry.attempts, &reason)
                    .await;
                self.store.append_event(id, &event).await?;
            }
        }
        Ok(())
    }
}

/// The branch and commit of the task's last commit, when no push of it is logged.
fn unpushed(events: &[EventRecord]) -> Option<(String, String)> {
    let mut last = None;
    for record in events {
        match &record.event {
            Event::Committed { branch, commit, .. } => {
                last = Some((branch.clone(), commit.clone()))
            }
            Event::BranchPushed { .. } => last = None,
            _ => {}
        }
    }
    last
}

/// Pushes `branch` to the remote, up to `attempts` times, waiting 2, 4... seconds between
/// them, while the remote cannot be reached or answers with a server error; a refusal is not
/// tried again.
pub(crate) async fn push_with_retries(
    mirrors: &Mirrors,
    url: &str,
    branch: &str,
    credential: Option<&RemoteCredential>,
    attempts: u32,
) -> Result<(), PushFailure> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match mirrors.push(url, branch, credential).await {
            Ok(()) => return Ok(()),
            Err(err) => {
                let said = err.to_string();
                let outage = remote_unreachable(&said);
                if attempt >= attempts || !outage {
                    let tries = match attempt {
                        1 => String::new(),
                        n => format!(" (after {n} attempts)"),
                    };
                    return Err(PushFailure {
                        reason: format!("{said}{tries}"),
                        outage,
                    });
                }
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
        }
    }
}

/// Whether git's words say the remote could not be reached (or failed), as opposed to refusing.
pub(crate) fn remote_unreachable(said: &str) -> bool {
    const SIGNS: [&str; 8] = [
        "Could not resolve host",
        "Connection refused",
        "Connection timed out",
        "Operation timed out",
        "The requested URL returned error: 5",
        "remote end hung up unexpectedly",
        "early EOF",
        "Connection reset",
    ];
    SIGNS.iter().any(|sign| said.contains(sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_that_cannot_be_reached_is_tried_again_and_a_refusal_is_not() {
        assert!(remote_unreachable(
            "fatal: unable to access 'https://h/x/': Could not resolve host: h"
        ));
        assert!(remote_unreachable(
            "fatal: unable to access 'https://h/x/': The requested URL returned error: 502"
        ));
        assert!(!remote_unreachable(
            "! [remote rejected] b -> b (protected branch hook declined)"
        ));
        assert!(!remote_unreachable(
            "fatal: '/srv/gone.git' does not appear to be a git repository"
        ));
        assert!(!remote_unreachable(
            "fatal: unable to access 'https://h/x/': The requested URL returned error: 403"
        ));
    }
}
