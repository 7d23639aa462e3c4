//! `nightshift diff`

use std::io::Write;
use std::process::ExitCode;

use nightshift_runner::DIFF_BLOB;

use crate::args::TaskArg;
use crate::home::Home;
use crate::output::Failure;

pub async fn run(args: TaskArg) -> Result<ExitCode, Failure> {
    let store = Home::from_env()?.store().await?;
    let task = store.find_task(&args.id).await?;
    let Some(patch) = store.get_blob(task.id, DIFF_BLOB).await? else {
        let why = if task.state.is_terminal() {
            "it changed no files"
        } else {
            "it has not handed back a result yet"
        };
        return Err(Failure::error(format!(
            "task {} has no diff: {why} (state: {})",
            task.id.short(),
            task.state
        )));
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&patch)
        .and_then(|_| stdout.flush())
        .map_err(|err| Failure::error(format!("writing the diff: {err}")))?;
    Ok(ExitCode::SUCCESS)
}
