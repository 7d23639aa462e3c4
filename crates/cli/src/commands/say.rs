//! `nightshift say`: a message to a task. A running task reads it before its next model turn
//! (steering); a task that has ended takes it as a follow-up.

use std::process::ExitCode;

use crate::args::SayArgs;
use crate::backend::Backend;
use crate::output::{Failure, print_json};

pub async fn run(args: SayArgs) -> Result<ExitCode, Failure> {
    let text = args.message.join(" ");
    if text.trim().is_empty() {
        return Err(Failure::usage("the message is empty; nothing was sent"));
    }
    let backend = Backend::from_env().await?;
    let task = backend.find(&args.id).await?;
    let record = backend.say(&task, &text).await?;
    if args.json {
        print_json(&record)?;
    } else if task.state.is_terminal() {
        println!(
            "{}: sent as a follow-up to the {} task",
            task.id.short(),
            task.state
        );
    } else {
        println!(
            "{}: sent; the agent reads it before its next turn",
            task.id.short()
        );
    }
    Ok(ExitCode::SUCCESS)
}
