//! `nightshift env check`

use std::process::ExitCode;

use nightshift_env::SourceRepo;
use nightshift_env::cache::{CacheKey, Lookup, SetupCache, base_identity};
use nightshift_env::config::EnvConfig;

use crate::args::{EnvArgs, EnvCommand};
use crate::output::{Failure, print_json};
use crate::toolchains::hints::tools_of;

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
            let ecosystems: Vec<_> = loaded.ecosystems.iter().map(|d| d.ecosystem).collect();
            let tools = tools_of(&ecosystems);
            let toolchains = crate::home::Home::from_env()
                .and_then(|home| super::doctor::toolchain_report(&home, &tools));
            let toolchains = match toolchains {
                Ok(report) => report,
                Err(failure) => Some(format!("Toolchains: cannot check them: {failure}\n")),
            };
            if json {
                print_json(&loaded)?;
                // Standard output stays one JSON document.
                if let Some(text) = toolchains {
                    eprint!("{text}");
                }
            } else {
                print!("{}", nightshift_env::config::describe(&loaded));
                if let Some(text) = toolchains {
                    println!();
                    print!("{text}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        EnvCommand::Explain { repo } => explain(repo).await,
    }
}

async fn explain(repo: std::path::PathBuf) -> Result<ExitCode, Failure> {
    let home = crate::home::Home::from_env()?;
    let source = SourceRepo::open(&repo)
        .await
        .map_err(|err| Failure::usage(err.to_string()).with_hint(err.hint()))?;
    let root = source.root().to_path_buf();
    let loaded = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || EnvConfig::load(&root))
            .await
            .map_err(|err| Failure::error(err.to_string()))?
            .map_err(|err| Failure::usage(err.to_string()).with_hint(Some(err.hint())))?
    };
    if loaded.config.environment.setup.is_none() {
        println!("no setup script: tasks on this repository have no setup layer to cache");
        return Ok(ExitCode::SUCCESS);
    }
    let toolchains = home.host_toolchains()?;
    let backend = home.sandbox(&toolchains)?.backend();
    let key = CacheKey::compute(
        &root,
        &loaded.config,
        &base_identity(backend, &toolchains.binds),
    )
    .for_repository(&root.display().to_string());
    println!("setup layer key {}", key.key);
    for (name, value) in &key.inputs {
        println!("  {name:<28} {}", &value[..value.len().min(16)]);
    }
    let cache = SetupCache::new(home.root().join("layers"), u64::MAX);
    match cache.lookup(&root.display().to_string(), &key) {
        Lookup::Hit { layer } => println!("hit: the next task mounts {}", layer.display()),
        Lookup::Miss { reasons } => {
            println!("miss: the next task runs setup and keeps its result, because");
            for reason in reasons {
                println!("  - {reason}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
