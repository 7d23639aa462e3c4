//! `nightshift secret`: values tasks need that must never appear in the clear. They are sealed
//! with a key kept outside the store (`NIGHTSHIFT_SECRET_KEY` or `keys/secrets.key` under
//! NIGHTSHIFT_HOME) and redacted as `[secret:NAME]` from every event, log and artifact. Each is
//! granted to the repositories whose tasks may use it: a repository's configuration asks for a
//! secret, it never decides that it gets one.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use nightshift_env::SourceRepo;
use nightshift_env::grants::{ALL_REPOS, describe, repo_identity};
use nightshift_env::secrets::validate;
use nightshift_store::Store;

use crate::args::{RepoGrants, SecretArgs, SecretCommand};
use crate::home::Home;
use crate::output::Failure;

pub async fn run(args: SecretArgs) -> Result<ExitCode, Failure> {
    let home = Home::from_env()?;
    let store = home.store().await?;
    match args.command {
        SecretCommand::Set { name, repos } => {
            let granted = resolve(&repos).await?;
            let existing = store
                .secrets()
                .await?
                .into_iter()
                .find(|secret| secret.name == name);
            let kept = existing.map(|secret| secret.repos).unwrap_or_default();
            if granted.is_empty() && kept.is_empty() {
                return Err(Failure::usage(format!(
                    "say which repositories' tasks may use `{name}`: --repo PATH_OR_URL (repeat for several), or --all-repos"
                )));
            }
            let mut value = String::new();
            std::io::stdin().read_to_string(&mut value).map_err(|err| {
                Failure::usage(format!("reading the value from standard input: {err}"))
            })?;
            // A value typed or echoed ends with a newline that is not part of it.
            let value = value.strip_suffix('\n').unwrap_or(&value);
            let value = value.strip_suffix('\r').unwrap_or(value);
            validate(&name, value).map_err(|err| Failure::usage(err.to_string()))?;
            let key = home
                .secret_key()
                .map_err(|err| Failure::error(err.to_string()))?;
            store.put_secret(&name, &key.seal(&name, value)).await?;
            let repos = union(kept, granted);
            store.set_secret_repos(&name, &repos).await?;
            eprintln!(
                "stored secret {name} for {}; give it to setup with `[secrets] {name} = \"setup\"` in .nightshift.toml",
                describe(&repos)
            );
        }
        SecretCommand::Grant { name, repos } => {
            let granted = resolve(&repos).await?;
            if granted.is_empty() {
                return Err(Failure::usage(
                    "name the repositories: --repo PATH_OR_URL (repeat for several), or --all-repos",
                ));
            }
            let current = current_repos(store.as_ref(), &name).await?;
            let repos = union(current, granted);
            store.set_secret_repos(&name, &repos).await?;
            eprintln!("{name} is granted to {}", describe(&repos));
        }
        SecretCommand::Revoke { name, repos } => {
            let revoked = resolve(&repos).await?;
            if revoked.is_empty() {
                return Err(Failure::usage(
                    "name the repositories: --repo PATH_OR_URL (repeat for several), or --all-repos",
                ));
            }
            let current = current_repos(store.as_ref(), &name).await?;
            let repos: Vec<String> = current
                .into_iter()
                .filter(|repo| {
                    !revoked
                        .iter()
                        .any(|gone| repo_identity(gone) == repo_identity(repo))
                })
                .collect();
            store.set_secret_repos(&name, &repos).await?;
            eprintln!("{name} is granted to {}", describe(&repos));
        }
        SecretCommand::Ls => {
            for secret in store.secrets().await? {
                println!(
                    "{:<32} set {}  for {}",
                    secret.name,
                    secret.updated_at.strftime("%Y-%m-%d %H:%M UTC"),
                    describe(&secret.repos)
                );
            }
        }
        SecretCommand::Rm { name } => {
            if !store.delete_secret(&name).await? {
                return Err(no_such_secret(&name));
            }
            eprintln!("deleted secret {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn no_such_secret(name: &str) -> Failure {
    Failure::usage(format!(
        "no secret `{name}`; `nightshift secret ls` lists them"
    ))
}

async fn current_repos(store: &dyn Store, name: &str) -> Result<Vec<String>, Failure> {
    store
        .secrets()
        .await?
        .into_iter()
        .find(|secret| secret.name == name)
        .map(|secret| secret.repos)
        .ok_or_else(|| no_such_secret(name))
}

/// The grants as stored: `*`, or each repository as tasks name it (a local repository's top
/// level, a URL as given).
async fn resolve(grants: &RepoGrants) -> Result<Vec<String>, Failure> {
    if grants.all_repos {
        return Ok(vec![ALL_REPOS.to_string()]);
    }
    let mut repos = Vec::new();
    for repo in &grants.repos {
        let identity = if repo.contains("://") {
            repo_identity(repo)
        } else {
            let source = SourceRepo::open(Path::new(repo)).await.map_err(|err| {
                Failure::usage(format!(
                    "--repo {repo}: {err}; name a local repository (any directory in it) or a URL"
                ))
            })?;
            source.root().display().to_string()
        };
        if !repos.contains(&identity) {
            repos.push(identity);
        }
    }
    Ok(repos)
}

/// `current` with `added`, `*` alone once any grant is `*`.
fn union(current: Vec<String>, added: Vec<String>) -> Vec<String> {
    let mut repos = current;
    for repo in added {
        if !repos
            .iter()
            .any(|existing| repo_identity(existing) == repo_identity(&repo))
        {
            repos.push(repo);
        }
    }
    if repos.iter().any(|repo| repo == ALL_REPOS) {
        return vec![ALL_REPOS.to_string()];
    }
    repos
}
