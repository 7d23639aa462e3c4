//! `nightshift show`

use std::process::ExitCode;

use crate::args::ShowArgs;
use crate::home::Home;
use crate::output::{Cost, Failure, TaskView, print_json};
use crate::render;

pub async fn run(args: ShowArgs) -> Result<ExitCode, Failure> {
    let runner = Home::from_env()?.reconciled_runner().await?;
    let task = runner.store().find_task(&args.id).await?;
    let cost = Cost::of(runner.store(), &task).await?;
    if args.json {
        print_json(&TaskView {
            cost: Some(cost),
            ..TaskView::new(&task)
        })?;
    } else {
        print!("{}", render::task(&task));
        println!("Cost      {}", render::cost(&cost));
    }
    Ok(ExitCode::SUCCESS)
}
