//! Reading a task's log as it grows. Local mode polls the store; the log is append-only with
//! gapless sequence numbers, so "everything after seq N" never misses or repeats an event.

use std::sync::Arc;
use std::time::Duration;

use nightshift_protocol::{Event, EventRecord, TaskId};
use nightshift_store::Store;

use crate::output::Failure;

const POLL: Duration = Duration::from_millis(100);
const PAGE: u32 = 500;

/// Calls `on_event` for every event of the task after `after`, in order. With `follow`, waits
/// for new events until the task's `ended` event; without, stops at the current end.
pub async fn events(
    store: &Arc<dyn Store>,
    id: TaskId,
    follow: bool,
    mut on_event: impl FnMut(&EventRecord) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut after = 0;
    loop {
        let page = store.events(id, after, PAGE).await?;
        for record in &page {
            on_event(record)?;
            after = record.seq;
            if matches!(record.event, Event::Ended { .. }) {
                return Ok(());
            }
        }
        if page.len() as u32 == PAGE {
            continue;
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}
