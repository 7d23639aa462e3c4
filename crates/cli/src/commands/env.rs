//! `nightshift env check` and `nightshift env explain`

use std::process::ExitCode;

use nightshift_env::SourceRepo;
use nightshift_env::cache::{CacheKey, Lookup, SetupCache, base_identity};
use nightshift_env::config::EnvConfig;

use crate::args::{EnvArgs, EnvCommand};
use crate::output::{Failure, print_json};
use crate::toolchains::hints::tools_of;

pub async fn run(args: EnvArgs) -> Result<ExitCode, Failure> {
    match args.command {
        EnvCommand::Check { repo, json, probe } => {
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
            if probe {
                return super::env_probe::probe(source.root(), &loaded).await;
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
    let environment = &loaded.config.environment;
    if let Some(build) = &environment.build {
        let what = match &build.dockerfile {
            Some(dockerfile) => format!("the Dockerfile {}", dockerfile.display()),
            None => "devcontainer features".to_string(),
        };
        println!(
            "tasks on this repository build {what} over their image first: the setup layer is keyed by the last built step, which a task works out (its log shows each `build_step`, hit or miss, and the `setup_cache` lookup that follows)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let key = match &environment.image {
        None => host_key(&root, &loaded, backend, &toolchains),
        Some(text) => {
            let reference = nightshift_image::Reference::parse(text)
                .map_err(|err| Failure::usage(format!("the image {text:?}: {err}")))?;
            let settings = home.image_settings(&home.settings()?);
            let store = nightshift_image::Store::open(&settings.dir, settings.owner)
                .map_err(|err| Failure::error(format!("opening the image store: {err}")))?;
            let stored = store
                .get(&reference)
                .map_err(|err| Failure::error(format!("reading the image store: {err}")))?;
            let Some(image) = stored else {
                println!(
                    "miss: the image {reference} is not in the image store yet, so the next task pulls it and runs setup over it (`nightshift image pull {text}` fetches it now)"
                );
                return Ok(ExitCode::SUCCESS);
            };
            println!(
                "image {} is {} in the image store (the next task pulls again; a tag that moved is a miss that says so)",
                image.reference, image.digest
            );
            let base = nightshift_env::cache::image_base_identity(backend);
            CacheKey::compute(&root, &loaded.config, &base).on_image(&image.reference, &image.digest)
        }
    }
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

/// The setup layer's key for a repository on the host's system (no image), before
/// [`CacheKey::for_repository`].
pub(super) fn host_key(
    root: &std::path::Path,
    loaded: &nightshift_env::config::Loaded,
    backend: &str,
    toolchains: &crate::toolchains::HostToolchains,
) -> CacheKey {
    CacheKey::compute(
        root,
        &loaded.config,
        &base_identity(backend, &toolchains.binds),
    )
}
