//! `nightshift diff`

use std::io::Write;
use std::process::ExitCode;

use crate::args::TaskArg;
use crate::backend::Backend;
use crate::output::Failure;

pub async fn run(args: TaskArg) -> Result<ExitCode, Failure> {
    let backend = Backend::from_env().await?;
    let task = backend.find(&args.id).await?;
    let Some(patch) = backend.diff(&task).await? else {
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
