//! `nightshift env check`

use std::process::ExitCode;

use nightshift_env::SourceRepo;
use nightshift_env::config::EnvConfig;

use crate::args::{EnvArgs, EnvCommand};
use crate::output::{Failure, print_json};

pub async fn run(args: EnvArgs) -> Result<ExitCode, Failure> {
    match args.command {
        EnvCommand::Check { repo, json } => {
            let source = SourceRepo::open(&repo)
                .await
                .map_err(|err| Failure::usage(err.to_string()).with_hint(err.hint()))?;
            let root = source.root().to_path_buf();
            let loaded = tokio::task::spawn_blocking(move || EnvConfig::load(&root))
                .await
                .map_err(|err| Failure::error(err.to_string()))?
                .map_err(|err| {
                    let hint = err.hint();
                    Failure::usage(err.to_string()).with_hint(Some(hint))
                })?;
            if json {
                print_json(&loaded)?;
            } else {
                print!("{}", nightshift_env::config::describe(&loaded));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
