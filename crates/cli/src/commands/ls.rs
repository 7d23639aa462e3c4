//! `nightshift ls`

use std::process::ExitCode;

use crate::args::LsArgs;
use crate::backend::Backend;
use crate::output::{Failure, TaskView, print_json};
use crate::render;

pub async fn run(args: LsArgs) -> Result<ExitCode, Failure> {
    let backend = Backend::from_env().await?;
    let tasks = backend.list(&args.state, args.limit).await?;
    if args.json {
        let views: Vec<_> = tasks.iter().map(TaskView::new).collect();
        print_json(&views)?;
    } else if tasks.is_empty() {
        eprintln!("no tasks yet; start one with `nightshift run` or try `nightshift demo`");
    } else {
        println!(
            "{:<8}  {:<11} {:>8}  {:<7}  PROMPT",
            "ID", "STATE", "ELAPSED", "TOKENS"
        );
        // A task that is part of another listed one comes right under it, indented.
        let listed: std::collections::HashSet<_> = tasks.iter().map(|task| task.id).collect();
        let roots = tasks
            .iter()
            .filter(|task| render::part_of(task).is_none_or(|parent| !listed.contains(&parent)));
        for root in roots {
            print_tree(&tasks, root, 0);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `task`'s row, then those of the listed tasks that are part of it, depth first.
fn print_tree(tasks: &[nightshift_protocol::Task], task: &nightshift_protocol::Task, depth: usize) {
    println!("{}", render::task_row(task, depth));
    // Parts in the order they were made.
    for part in tasks
        .iter()
        .rev()
        .filter(|other| render::part_of(other) == Some(task.id))
    {
        print_tree(tasks, part, depth + 1);
    }
}
