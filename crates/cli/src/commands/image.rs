//! `nightshift image`: the image store tasks start from. `pull` fetches an image as a task
//! would (each layer checked against its digest and unpacked once), `ls` lists what the store
//! holds, `rm` forgets an image and `prune` removes the layers no image uses.

use std::process::ExitCode;
use std::sync::Arc;

use nightshift_image::{Image, PullEvent, PullOptions, Reference, Store};
use serde_json::json;

use crate::args::{ImageArgs, ImageCommand};
use crate::home::Home;
use crate::output::{Failure, print_json};

pub async fn run(args: ImageArgs) -> Result<ExitCode, Failure> {
    let home = Home::from_env()?;
    let settings = home.image_settings(&home.settings()?);
    let store = Store::open(&settings.dir, settings.owner)
        .map_err(|err| Failure::error(format!("opening the image store: {err}")))?;
    match args.command {
        ImageCommand::Pull { reference, json } => {
            let reference = parse(&reference)?;
            let credentials = login(&home, &settings.logins, &reference).await?;
            let options = PullOptions {
                credentials,
                plain_http: settings.plain_http.clone(),
                allow_private: settings.allow_private.clone(),
                progress: Some(Arc::new(|event: PullEvent| {
                    if let Some(line) = progress_line(&event) {
                        eprintln!("{line}");
                    }
                })),
            };
            let image = store
                .pull(&reference, &options)
                .await
                .map_err(|err| Failure::error(format!("pulling {reference}: {err}")))?;
            if json {
                print_json(&describe(&image))?;
            } else {
                println!("{} {}", image.reference, image.digest);
            }
        }
        ImageCommand::Ls { json } => {
            let images = store
                .list()
                .map_err(|err| Failure::error(format!("reading the image store: {err}")))?;
            if json {
                print_json(&images.iter().map(describe).collect::<Vec<_>>())?;
            } else if images.is_empty() {
                eprintln!("no images yet; `nightshift image pull REF` fetches one");
            } else {
                for image in &images {
                    println!(
                        "{}\t{}\t{} layers",
                        image.reference,
                        image.digest,
                        image.layers.len()
                    );
                }
            }
        }
        ImageCommand::Rm { reference } => {
            let reference = parse(&reference)?;
            let removed = store
                .remove(&reference)
                .map_err(|err| Failure::error(format!("removing {reference}: {err}")))?;
            if !removed {
                return Err(Failure::usage(format!(
                    "the image store has no {reference}; `nightshift image ls` lists what it has"
                )));
            }
            eprintln!(
                "removed {reference}; `nightshift image prune` frees the layers no other image uses"
            );
        }
        ImageCommand::Prune => {
            let report = store
                .prune()
                .map_err(|err| Failure::error(format!("pruning the image store: {err}")))?;
            println!("removed {} layers, {} bytes", report.layers, report.bytes);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse(text: &str) -> Result<Reference, Failure> {
    Reference::parse(text).map_err(|err| {
        Failure::usage(format!("{text:?} is not an image reference: {err}")).with_hint(Some(
            "write `REGISTRY/NAME[:TAG][@DIGEST]` (`rust:1.86` on Docker Hub), `oci:PATH[:TAG]`, `oci-archive:PATH` or `docker-archive:PATH`".into(),
        ))
    })
}

/// A line for the terminal about one step of a pull.
fn progress_line(event: &PullEvent) -> Option<String> {
    match event {
        PullEvent::Resolved { reference, digest } => Some(format!("{reference} is {digest}")),
        PullEvent::Layer {
            digest,
            bytes,
            fetched,
        } => Some(format!(
            "  {} {} ({bytes} bytes)",
            &digest[..digest.len().min(19)],
            if *fetched { "fetched" } else { "in the store" }
        )),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

fn describe(image: &Image) -> serde_json::Value {
    json!({
        "reference": image.reference,
        "digest": image.digest,
        "layers": image.layers,
        "env": image.config.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "working_dir": image.config.working_dir,
        "user": image.config.user,
        "architecture": image.config.architecture,
        "os": image.config.os,
    })
}

/// The login for the registry of `reference`: the stored secret `[images] logins` of
/// `config.toml` names for it, else the host's login files.
async fn login(
    home: &Home,
    logins: &std::collections::BTreeMap<String, String>,
    reference: &Reference,
) -> Result<Option<nightshift_image::Credentials>, Failure> {
    // The store is opened only for a registry that has a login there.
    let named =
        matches!(reference, Reference::Registry { registry, .. } if logins.contains_key(registry));
    if !named {
        return Ok(nightshift_image::host_credentials(reference));
    }
    let store = home.store().await?;
    let key = || {
        home.secret_key()
            .map(Arc::new)
            .map_err(|err| err.to_string())
    };
    nightshift_runner::registry_login(store.as_ref(), logins, key, reference)
        .await
        .map_err(|err| match err {
            nightshift_runner::LoginError::Config(message) => Failure::usage(message),
            nightshift_runner::LoginError::Unavailable(message) => Failure::error(message),
        })
}
