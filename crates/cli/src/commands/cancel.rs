//! `nightshift cancel`

use std::process::ExitCode;

use nightshift_store::CancelOutcome;

use crate::args::TaskArg;
use crate::home::Home;
use crate::output::Failure;

pub async fn run(args: TaskArg) -> Result<ExitCode, Failure> {
    let store = Home::from_env()?.store().await?;
    let task = store.find_task(&args.id).await?;
    let short = task.id.short();
    match store.request_cancel(task.id).await? {
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
