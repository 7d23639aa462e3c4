//! What a running task listens for while it works: a cancel request or a message from another
//! process (through the store), and its own lease, which it renews so that other workers know
//! it is alive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nightshift_agent::Inbox;
use nightshift_protocol::{Event, TaskId};
use nightshift_store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Messages that arrived for the task, waiting for the agent's next turn.
#[derive(Default)]
pub(crate) struct Messages(Mutex<Vec<String>>);

impl Inbox for Messages {
    fn drain(&self) -> Vec<String> {
        match self.0.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// The watcher's findings, shared with the task's run.
#[derive(Default)]
pub(crate) struct Watch {
    pub(crate) messages: Messages,
    /// Another worker took the task over (or it was settled as abandoned): stop, write nothing.
    pub(crate) lease_lost: AtomicBool,
    /// Someone asked to cancel the task through the store.
    pub(crate) cancel_requested: AtomicBool,
}

pub(crate) struct WatchConfig {
    pub(crate) poll: Duration,
    pub(crate) lease: Duration,
    pub(crate) worker: String,
}

/// Polls the store for the task until `stop` fires: cancels `stop` when a cancel was requested
/// or the lease was lost, renews the lease every third of its length, and queues messages.
/// `after` is the sequence number from which messages count as new.
pub(crate) fn watch(
    store: Arc<dyn Store>,
    id: TaskId,
    stop: CancellationToken,
    config: WatchConfig,
    watch: Arc<Watch>,
    mut after: u64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(config.poll) => {}
            }
            if renewed.elapsed() >= config.lease / 3 {
                match store.renew_lease(id, &config.worker, config.lease).await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => {
                        tracing::warn!(task = %id, "lost the lease on the task; stopping");
                        watch.lease_lost.store(true, Ordering::SeqCst);
                        stop.cancel();
                        return;
                    }
                    // The store is unreachable: keep working and try again; the lease is long
                    // enough to ride out a short outage.
                    Err(err) => tracing::warn!(task = %id, "could not renew the lease: {err}"),
                }
            }
            if let Ok(Some(task)) = store.get_task(id).await
                && task.cancel_requested
            {
                watch.cancel_requested.store(true, Ordering::SeqCst);
                stop.cancel();
                return;
            }
            if let Ok(events) = store.events(id, after, 200).await {
                for record in events {
                    after = record.seq;
                    if let Event::MessageReceived { text, .. } = record.event
                        && let Ok(mut pending) = watch.messages.0.lock()
                    {
                        pending.push(text);
                    }
                }
            }
        }
    })
}
