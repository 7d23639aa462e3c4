//! `nightshift cancel`

use std::process::ExitCode;

use nightshift_store::CancelOutcome;

use crate::args::TaskArg;
use crate::backend::Backend;
use crate::output::Failure;

pub async fn run(args: TaskArg) -> Result<ExitCode, Failure> {
    let backend = Backend::from_env().await?;
    let task = backend.find(&args.id).await?;
    let outcome = backend.cancel(&task).await?;
    println!("{}", said(&task.id.short(), &outcome));
    Ok(ExitCode::SUCCESS)
}

/// What cancelling the task `short` came to, in words.
pub(crate) fn said(short: &str, outcome: &CancelOutcome) -> String {
    match outcome {
        CancelOutcome::CancelledWhileQueued => format!("{short}: cancelled before it started"),
        CancelOutcome::Requested => format!(
            "{short}: cancellation requested; the task stops within a second and commits its work so far"
        ),
        CancelOutcome::AlreadyEnded(state) => {
            format!("{short}: already {state}; nothing to cancel")
        }
    }
}
