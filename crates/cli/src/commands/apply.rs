//! `nightshift apply`: a task's change into a working tree, by a three-way merge that changes
//! nothing when a file conflicts. In remote mode the change comes from the server.

use std::process::ExitCode;

use nightshift_env::{ApplyError, SourceRepo, apply_change};

use crate::args::ApplyArgs;
use crate::backend::Backend;
use crate::output::Failure;

pub async fn run(args: ApplyArgs) -> Result<ExitCode, Failure> {
    let backend = Backend::from_env().await?;
    let task = backend.find(&args.id).await?;
    let short = task.id.short();
    let Some(patch) = backend.diff(&task).await? else {
        let why = match task.state.is_terminal() {
            true => "it changed no files",
            false => "it has not handed back a result yet",
        };
        return Err(Failure::error(format!(
            "task {short} has no change to apply: {why} (state: {})",
            task.state
        )));
    };
    let repo = SourceRepo::open(&args.repo)
        .await
        .map_err(|err| Failure::usage(err.to_string()).with_hint(err.hint()))?;
    match apply_change(&repo, &patch).await {
        Ok(applied) if applied.files.is_empty() => {
            println!(
                "task {short}'s change is in {} already",
                repo.root().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(applied) => {
            for file in &applied.files {
                println!("{file}");
            }
            eprintln!(
                "applied task {short}'s change to {} ({} files); nothing is staged or committed",
                repo.root().display(),
                applied.files.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err @ ApplyError::Conflicts { .. }) => {
            let hint = match &task.branch {
                Some(branch) => format!(
                    "commit or stash your changes to those files and run it again, or merge the task's branch {branch} yourself"
                ),
                None => "commit or stash your changes to those files and run it again".to_string(),
            };
            Err(Failure::error(err.to_string()).with_hint(Some(hint)))
        }
        Err(err) => Err(Failure::error(err.to_string())),
    }
}
