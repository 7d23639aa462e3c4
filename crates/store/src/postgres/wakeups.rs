//! Queue wake-ups over LISTEN/NOTIFY: one listening connection per store, shared by every
//! [`crate::Store::wait_for_work`] call, instead of one connection per waiting worker slot.
//!
//! Notifications are transient: any sent while the connection is down are lost. So every
//! (re)connection also counts as a wake-up, and waiters always fall back to their timeout.

use std::convert::Infallible;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{oneshot, watch};

/// The channel `create_task` and `release_task` notify.
pub(super) const QUEUE_CHANNEL: &str = "nightshift_queue";

/// How long `connect` waits for the listener before going on without it (waiters then rely on
/// their timeouts until it is up).
const FIRST_LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before listening again after the connection failed.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// A counter bumped on every notification (and reconnection), by a background task that lives
/// as long as some clone of the store does.
#[derive(Debug, Clone)]
pub(super) struct Wakeups {
    count: watch::Receiver<u64>,
}

impl Wakeups {
    /// Starts listening, and returns once the first LISTEN is in place (or failed, or took too
    /// long: then the background task keeps trying).
    pub(super) async fn start(options: PgConnectOptions) -> Wakeups {
        let (bump, count) = watch::channel(0);
        let (listening, first) = oneshot::channel();
        tokio::spawn(listen(options, bump, listening));
        // An error only means the task gave up on the first attempt; it retries by itself.
        let _ = tokio::time::timeout(FIRST_LISTEN_TIMEOUT, first).await;
        Wakeups { count }
    }

    /// A receiver that sees only wake-ups from now on.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        let mut count = self.count.clone();
        count.mark_unchanged();
        count
    }
}

async fn listen(
    options: PgConnectOptions,
    bump: watch::Sender<u64>,
    listening: oneshot::Sender<()>,
) {
    let mut listening = Some(listening);
    loop {
        tokio::select! {
            Err(error) = listen_once(&options, &bump, &mut listening) => {
                tracing::warn!(%error, "listening for queued tasks failed; retrying");
            }
            () = bump.closed() => return,
        }
        // Give up on the first attempt: `start` goes on without waiting for the retries.
        listening.take();
        wake(&bump);
        tokio::select! {
            () = tokio::time::sleep(RETRY_INTERVAL) => {}
            () = bump.closed() => return,
        }
    }
}

/// Listens on one connection until it fails for good.
async fn listen_once(
    options: &PgConnectOptions,
    bump: &watch::Sender<u64>,
    listening: &mut Option<oneshot::Sender<()>>,
) -> Result<Infallible, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(QUEUE_CHANNEL).await?;
    if let Some(listening) = listening.take() {
        let _ = listening.send(());
    }
    loop {
        // `None` means the connection dropped and was re-established: whatever was sent in
        // between is lost, so everyone is woken to look.
        listener.try_recv().await?;
        wake(bump);
    }
}

fn wake(bump: &watch::Sender<u64>) {
    bump.send_modify(|count| *count = count.wrapping_add(1));
}
