//! `nightshift show`

use std::process::ExitCode;

use crate::args::ShowArgs;
use crate::home::Home;
use crate::output::{Failure, TaskView, print_json};
use crate::render;

pub async fn run(args: ShowArgs) -> Result<ExitCode, Failure> {
    let runner = Home::from_env()?.reconciled_runner().await?;
    let task = runner.store().find_task(&args.id).await?;
    if args.json {
        print_json(&TaskView::new(&task))?;
    } else {
        print!("{}", render::task(&task));
    }
    Ok(ExitCode::SUCCESS)
}
