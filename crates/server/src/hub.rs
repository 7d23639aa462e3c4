//! Fan-out of task event logs to live readers.
//!
//! The store has no push (SQLite cannot notify another process, and the runner may be another
//! process), so someone has to poll. Rather than each SSE client polling on its own, the hub keeps
//! one feed per task that at least one client follows: a single poller reads new events from the
//! store, serialises each once, and sends it through a `tokio::sync::broadcast` channel to every
//! subscriber. 100 clients on one task cost one query per poll interval, not 100. The poller
//! stops, and the feed goes away, when the last subscriber leaves.
//!
//! The broadcast is only a fast path. The log in the store stays the truth: a subscriber that
//! sees a gap in sequence numbers (it joined between two polls, or lagged behind the channel's
//! capacity) reads the missing events from the store itself (see `events.rs`), so no event is
//! lost or duplicated whatever the timing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nightshift_protocol::{Event, EventRecord, TaskId};
use nightshift_store::Store;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

/// Events a feed buffers for a slow subscriber before it has to catch up from the store.
const FEED_CAPACITY: usize = 1024;

/// One event, serialised once for every subscriber.
#[derive(Debug)]
pub(crate) struct Frame {
    pub seq: u64,
    pub kind: &'static str,
    /// The `EventRecord` as JSON.
    pub json: String,
    pub ended: bool,
}

impl Frame {
    /// `None` (after logging) if the record does not serialise, which would be a bug.
    pub(crate) fn new(record: &EventRecord) -> Option<Frame> {
        match serde_json::to_string(record) {
            Ok(json) => Some(Frame {
                seq: record.seq,
                kind: record.event.kind(),
                json,
                ended: matches!(record.event, Event::Ended { .. }),
            }),
            Err(error) => {
                tracing::error!(task = %record.task_id, seq = record.seq, %error,
                    "an event does not serialise; it is left out of the stream");
                None
            }
        }
    }
}

/// The live feeds, shared by every request.
#[derive(Clone)]
pub(crate) struct EventHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    store: Arc<dyn Store>,
    poll: Duration,
    feeds: Mutex<HashMap<TaskId, Feed>>,
    shutdown: CancellationToken,
}

struct Feed {
    sender: broadcast::Sender<Arc<Frame>>,
    wake: Arc<Notify>,
}

impl EventHub {
    pub(crate) fn new(store: Arc<dyn Store>, poll: Duration) -> Self {
        EventHub {
            inner: Arc::new(HubInner {
                store,
                poll,
                feeds: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Follows the task's new events. `seen` is the last sequence number the caller already has
    /// from the store; a new feed starts polling after it (an existing one ignores it).
    pub(crate) fn subscribe(&self, id: TaskId, seen: u64) -> broadcast::Receiver<Arc<Frame>> {
        let mut feeds = self.inner.lock_feeds();
        if let Some(feed) = feeds.get(&id) {
            return feed.sender.subscribe();
        }
        let (sender, receiver) = broadcast::channel(FEED_CAPACITY);
        let wake = Arc::new(Notify::new());
        feeds.insert(
            id,
            Feed {
                sender: sender.clone(),
                wake: wake.clone(),
            },
        );
        tokio::spawn(poll_feed(self.inner.clone(), id, sender, wake, seen));
        receiver
    }

    /// Makes the task's feed (if anyone follows it) poll now rather than at its next tick:
    /// used after the server itself appended an event.
    pub(crate) fn nudge(&self, id: TaskId) {
        if let Some(feed) = self.inner.lock_feeds().get(&id) {
            feed.wake.notify_one();
        }
    }

    /// How many tasks are being followed.
    pub(crate) fn feeds(&self) -> usize {
        self.inner.lock_feeds().len()
    }

    /// Fires when the server shuts down: streams end so that the shutdown does not wait on them.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    pub(crate) fn shut_down(&self) {
        self.inner.shutdown.cancel();
    }
}

impl HubInner {
    fn lock_feeds(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Feed>> {
        // A panic while holding the lock leaves the map consistent (every change is one call).
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn poll_feed(
    hub: Arc<HubInner>,
    id: TaskId,
    sender: broadcast::Sender<Arc<Frame>>,
    wake: Arc<Notify>,
    mut cursor: u64,
) {
    let mut failing = false;
    loop {
        let mut full_page = false;
        match hub.store.events(id, cursor, 0).await {
            Ok(records) => {
                if failing {
                    tracing::info!(task = %id, "the event feed reads the store again");
                    failing = false;
                }
                full_page = records.len() >= 1000;
                for record in &records {
                    cursor = record.seq;
                    if let Some(frame) = Frame::new(record) {
                        // No receivers is not an error: the exit check below handles it.
                        let _ = sender.send(Arc::new(frame));
                    }
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(task = %id, %error,
                        "the event feed cannot read the store; retrying");
                    failing = true;
                }
            }
        }
        {
            // Checked under the map's lock: `subscribe` takes it too, so no subscriber can join a
            // feed that is being removed.
            let mut feeds = hub.lock_feeds();
            if sender.receiver_count() == 0 || hub.shutdown.is_cancelled() {
                feeds.remove(&id);
                return;
            }
        }
        if full_page {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(hub.poll) => {}
            () = wake.notified() => {}
            () = hub.shutdown.cancelled() => {}
        }
    }
}
