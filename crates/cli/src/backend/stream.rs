//! Following a task's log from a server: its Server-Sent Events stream, resumed with
//! `Last-Event-ID` whenever the connection drops (a restarting server, a proxy timing out, a
//! laptop changing networks), so that every event arrives once, in order.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use nightshift_protocol::{EventRecord, TaskId};

use super::OnEvent;
use super::remote::{Remote, RemoteError};
use crate::output::Failure;

/// How long following goes on trying to reconnect without receiving anything.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) async fn follow(
    remote: &Remote,
    id: TaskId,
    mut after: u64,
    on_event: &mut OnEvent<'_>,
) -> Result<(), Failure> {
    let mut last_progress = Instant::now();
    let mut retries: u32 = 0;
    loop {
        let why = match remote.event_stream(id, after).await {
            Ok(response) => {
                let mut events = response.bytes_stream().eventsource();
                loop {
                    match events.next().await {
                        // The server closed the stream (it shuts down, or ended it early).
                        None => break "the server closed the stream".to_string(),
                        Some(Err(err)) => break err.to_string(),
                        Some(Ok(event)) if event.data.is_empty() => {}
                        Some(Ok(event)) => {
                            let record: EventRecord =
                                serde_json::from_str(&event.data).map_err(|err| {
                                    remote.failure(RemoteError::Malformed {
                                        what: "following the task's events".into(),
                                        detail: err.to_string(),
                                    })
                                })?;
                            // Never twice, even if a server resent what came before.
                            if record.seq <= after {
                                continue;
                            }
                            after = record.seq;
                            last_progress = Instant::now();
                            retries = 0;
                            if let ControlFlow::Break(()) = on_event(&record)? {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            Err(err) if err.is_retryable() => err.describe(),
            Err(err) => return Err(remote.failure(err)),
        };
        if last_progress.elapsed() > GIVE_UP_AFTER {
            return Err(Failure::error(format!(
                "lost the event stream of task {} from {} and could not resume it for {}s ({why})",
                id.short(),
                remote.base(),
                GIVE_UP_AFTER.as_secs()
            ))
            .with_hint(Some(format!(
                "the task goes on; `nightshift logs --follow {}` picks up where it left off",
                id.short()
            ))));
        }
        retries += 1;
        let backoff = Duration::from_millis(250 << retries.min(5)).min(MAX_BACKOFF);
        tracing::info!(task = %id, after, "event stream interrupted ({why}); resuming in {backoff:?}");
        tokio::time::sleep(backoff).await;
    }
}
