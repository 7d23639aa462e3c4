//! `nightshift cancel`

use std::process::ExitCode;

use nightshift_store::CancelOutcome;

use crate::args::TaskArg;
use crate::backend::Backend;
use crate::output::Failure;

pub async fn run(args: TaskArg) -> Result<ExitCode, Failure> {
    let backend = Backend::from_env().await?;
    let task = backend.find(&args.id).await?;
    let short = task.id.short();
    match backend.cancel(&task).await? {
        CancelOutcome::CancelledWhileQueued => println!("{short}: cancelled before it started"),
        CancelOutcome::Requested => {
            println!(
                "{short}: cancellation requested; the task stops within a second and commits its work so far"
            )
        }
        CancelOutcome::AlreadyEnded(state) => {
            println!("{short}: already {state}; nothing to cancel")
        }
    }
    Ok(ExitCode::SUCCESS)
}
