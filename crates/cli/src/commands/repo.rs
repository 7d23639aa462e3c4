//! `nightshift repo`: the repositories a server serves. A server (`nightshift serve`) accepts
//! tasks only for registered repositories, named by name or by path; `run --repo NAME` takes
//! a name in local mode too.

use std::process::ExitCode;

use nightshift_runner::{RegisterError, RepoOptions, register_repo};

use crate::args::{RepoArgs, RepoCommand};
use crate::home::Home;
use crate::output::{Failure, print_json};

pub async fn run(args: RepoArgs) -> Result<ExitCode, Failure> {
    let store = Home::from_env()?.store().await?;
    match args.command {
        RepoCommand::Add {
            path,
            name,
            credential,
            github,
            github_api,
            github_app,
        } => {
            let options = RepoOptions {
                credential: credential.as_deref(),
                github: match (github || github_app.is_some(), github_api.as_deref()) {
                    (_, Some(api)) => Some(Some(api)),
                    (true, None) => Some(None),
                    (false, None) => None,
                },
                github_app: github_app.as_deref(),
            };
            let repo = register_repo(store.as_ref(), &path, name.as_deref(), options)
                .await
                .map_err(|err| {
                    let hint = err.hint();
                    let failure = match err {
                        RegisterError::Store(err) => Failure::from(err),
                        other => Failure::usage(other.to_string()),
                    };
                    failure.with_hint(hint)
                })?;
            println!("{}", repo.name);
            eprintln!(
                "registered {} as `{}`: `nightshift run --repo {}` and the API's `repo` take that name",
                repo.location, repo.name, repo.name
            );
        }
        RepoCommand::Ls { json } => {
            let repos = store.repos().await?;
            if json {
                print_json(&repos)?;
            } else {
                println!("{:<32} {:<17} LOCATION", "NAME", "ADDED");
                for repo in &repos {
                    println!(
                        "{:<32} {:<17} {}",
                        repo.name,
                        repo.created_at.strftime("%Y-%m-%d %H:%M"),
                        repo.location
                    );
                }
            }
        }
        RepoCommand::Rm { name } => {
            if store.remove_repo(&name).await? {
                println!("forgot {name}; its tasks and branches stay");
            } else {
                return Err(Failure::usage(format!(
                    "no repository is registered as `{name}`; `nightshift repo ls` lists them"
                )));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
