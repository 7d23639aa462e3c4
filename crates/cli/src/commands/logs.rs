//! `nightshift logs`

use std::io::Write;
use std::process::ExitCode;

use crate::args::LogsArgs;
use crate::backend::Backend;
use crate::output::Failure;
use crate::render;

pub async fn run(args: LogsArgs) -> Result<ExitCode, Failure> {
    let backend = Backend::from_env().await?;
    let task = backend.find(&args.id).await?;
    let mut stdout = std::io::stdout().lock();
    super::follow::events(&backend, task.id, args.follow, |record| {
        let line = if args.json {
            serde_json::to_string(record).map_err(|err| Failure::error(err.to_string()))?
        } else {
            render::event(record)
        };
        // A closed pipe (`logs | head`) ends the command quietly.
        if writeln!(stdout, "{line}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            return Err(Failure::error("stdout closed"));
        }
        Ok(())
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
