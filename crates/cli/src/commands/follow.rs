//! Reading a task's log, whole or as it grows, from either backend, so `logs` prints the same
//! lines in local and remote mode. Following stops at the task's `ended` event.

use std::ops::ControlFlow;

use nightshift_protocol::{Event, EventRecord, TaskId};

use crate::backend::Backend;
use crate::output::Failure;

const PAGE: u32 = 500;

/// Calls `on_event` for every event of the task, in order, up to its `ended` event. With
/// `follow`, waits for new events until then; without, stops at the current end.
pub async fn events(
    backend: &Backend,
    id: TaskId,
    follow: bool,
    mut on_event: impl FnMut(&EventRecord) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut until_ended = |record: &EventRecord| {
        on_event(record)?;
        Ok(match record.event {
            Event::Ended { .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
    };
    if follow {
        return backend.follow(id, 0, &mut until_ended).await;
    }
    // The whole log as it stands: a message after the end (which starts a follow-up task)
    // comes after the `ended` event.
    let mut after = 0;
    loop {
        let page = backend.events(id, after, PAGE).await?;
        for record in &page {
            after = record.seq;
            on_event(record)?;
        }
        if (page.len() as u32) < PAGE {
            return Ok(());
        }
    }
}
