//! `nightshift show`

use std::process::ExitCode;

use crate::args::ShowArgs;
use crate::backend::Backend;
use crate::output::{Cost, Failure, TaskView, print_json};
use crate::render;

pub async fn run(args: ShowArgs) -> Result<ExitCode, Failure> {
    let backend = Backend::from_env().await?;
    let task = backend.find(&args.id).await?;
    let cost = Cost::of(&backend, &task).await?;
    if args.json {
        print_json(&TaskView {
            cost: Some(cost),
            ..TaskView::new(&task)
        })?;
    } else {
        print!("{}", render::task(&task));
        println!("Cost      {}", render::cost(&cost));
        if !task.spec.attempts.is_empty() {
            println!(
                "Attempts  {} ({}) · nightshift compare {}",
                task.spec.attempts.len(),
                task.spec.attempts.join(", "),
                task.id.short()
            );
        }
        if let Some(of) = task.spec.attempt_of {
            println!(
                "Attempt   {} of {} · nightshift compare {}",
                of.index + 1,
                of.task.short(),
                of.task.short()
            );
        }
        if task.spec.plan || task.spec.plan_run.is_some() {
            super::plan::print_progress(&backend, &task).await?;
        }
        if task.spec.review.is_some() && task.state.is_terminal() {
            let findings = super::review::findings_of(&backend, &task).await?;
            super::review::print_findings(&findings);
        }
    }
    Ok(ExitCode::SUCCESS)
}
