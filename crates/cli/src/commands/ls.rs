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
        for task in &tasks {
            println!("{}", render::task_row(task));
        }
    }
    Ok(ExitCode::SUCCESS)
}
