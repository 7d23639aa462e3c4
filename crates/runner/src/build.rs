//! Building over a task's image what its devcontainer.json asks for: a Dockerfile's steps,
//! then features. Each step is a layer of the layer cache, keyed by its parent's key and its
//! own inputs, so that the next task on the same repository finds them all and starts at once.
//! `RUN` steps and feature install scripts run as root of a sandbox over the image and the
//! steps before (with the setup allowlist, and no secrets); `COPY` and `ADD` are written by
//! nightshift from the build context, read inside it only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nightshift_agent::SinkError;
use nightshift_env::build::add_archive::Archives;
use nightshift_env::build::context::Copy;
use nightshift_env::build::dockerfile::{Plan, Step, StepKind};
use nightshift_env::build::features::Feature;
use nightshift_env::build::users::ImageEtc;
use nightshift_env::build::words::shell_quote;
use nightshift_env::cache::{CacheKey, Lookup, SetupCache};
use nightshift_protocol::{CommandPhase, ErrorKind, Event, TaskState};
use nightshift_sandbox::SessionSpec;
use tokio_util::sync::CancellationToken;

use crate::Runner;
use crate::ending::{Ending, fail, set_state};
use crate::environment;
use crate::handoff::Run;
use crate::image::TaskImage;
use crate::prepare::session_spec;

/// One step to build, however it is done.
enum Work<'a> {
    Step(&'a Step),
    Feature(&'a Feature),
}

impl Work<'_> {
    fn describe(&self, dockerfile: &str) -> String {
        match self {
            Work::Step(step) => format!(
                "{dockerfile}:{} {}",
                step.line,
                step.text.lines().next().unwrap_or("")
            ),
            Work::Feature(feature) => format!("feature {}", feature.id),
        }
    }
}

impl Runner {
    /// Builds (or finds) the layers of `plan`'s steps and then of `features` over `image`,
    /// adding them to it: its layers to stack, its environment, and its key (what a setup
    /// layer over it is keyed by). The task's ending when a step fails.
    pub(crate) async fn build_over_image(
        &self,
        run: &Run<'_>,
        image: &mut TaskImage,
        (dockerfile, plan): (&str, Option<&Plan>),
        features: &[Feature],
        stop: &CancellationToken,
    ) -> Result<Result<(), Ending>, SinkError> {
        let log = run.log;
        let Some(dir) = &self.config.layers_dir else {
            let message = "building over an image needs the layer cache, and this runner has none"
                .to_string();
            return fail(log, ErrorKind::Internal, message, None).await.map(Err);
        };
        let cache = SetupCache::new(dir, self.config.layers_budget);
        let mut work: Vec<Work<'_>> = Vec::new();
        if let Some(plan) = plan {
            work.extend(plan.steps.iter().map(Work::Step));
            for (key, value) in &plan.env {
                image.env.retain(|(name, _)| name != key);
                image.env.push((key.clone(), value.clone()));
            }
            if let Some(text) = &plan.user {
                image.user = Some(crate::image::WantedUser {
                    text: text.clone(),
                    origin: format!("the last `USER` of {dockerfile}"),
                });
            }
        }
        work.extend(features.iter().map(Work::Feature));
        for (index, step) in work.iter().enumerate() {
            let name = step.describe(dockerfile);
            let key = match self.step_key(run, image, step).await {
                Ok(key) => key,
                Err(message) => {
                    let message = format!("{name}: {message}");
                    return fail(log, ErrorKind::Setup, message, None).await.map(Err);
                }
            };
            let index_name = format!("{}#build{index}", run.task.spec.repo);
            let locked = {
                let (cache, key) = (cache.clone(), key.clone());
                tokio::task::spawn_blocking(move || cache.lock(&key)).await
            };
            let _lock = match locked {
                Ok(Ok(lock)) => lock,
                Ok(Err(err)) => {
                    let message = format!("locking the layer cache: {err}");
                    return fail(log, ErrorKind::Internal, message, None).await.map(Err);
                }
                Err(err) => {
                    let message = format!("locking the layer cache: {err}");
                    return fail(log, ErrorKind::Internal, message, None).await.map(Err);
                }
            };
            let reasons = match cache.lookup(&index_name, &key) {
                Lookup::Hit { layer } => {
                    log.append(Event::BuildStep {
                        step: name,
                        key: key.key.clone(),
                        hit: true,
                        reasons: Vec::new(),
                    })
                    .await?;
                    image.built.push(layer);
                    image.key = key.key;
                    continue;
                }
                Lookup::Miss { reasons } => reasons,
            };
            log.append(Event::BuildStep {
                step: name.clone(),
                key: key.key.clone(),
                hit: false,
                reasons,
            })
            .await?;
            set_state(log, TaskState::Preparing, Some(&format!("building {name}"))).await?;
            let staged = match cache.staging(&key) {
                Ok(staged) => staged,
                Err(err) => {
                    let message = format!("preparing the layer of {name}: {err}");
                    return fail(log, ErrorKind::Internal, message, None).await.map(Err);
                }
            };
            let built = match step {
                Work::Step(Step {
                    kind:
                        StepKind::Copy {
                            sources,
                            dest,
                            chown,
                            unpack,
                        },
                    ..
                }) => {
                    let chown = chown.as_deref();
                    self.copy_step(run, image, (sources, dest, chown, *unpack), &staged)
                        .await
                }
                Work::Step(Step {
                    kind: StepKind::Run { command, env },
                    ..
                }) => {
                    self.run_step(run, image, &name, command, env, &staged, stop)
                        .await?
                }
                Work::Feature(feature) => {
                    let command = feature_command(feature);
                    let mut env = feature.env.clone();
                    for (key, value) in [
                        ("_REMOTE_USER", "root"),
                        ("_REMOTE_USER_HOME", "/root"),
                        ("_CONTAINER_USER", "root"),
                        ("_CONTAINER_USER_HOME", "/root"),
                    ] {
                        env.push((key.to_string(), value.to_string()));
                    }
                    let built = self
                        .run_step(run, image, &name, &command, &env, &staged, stop)
                        .await?;
                    for (key, value) in &feature.container_env {
                        image.env.retain(|(name, _)| name != key);
                        image.env.push((key.clone(), value.clone()));
                    }
                    built
                }
            };
            if let Err(message) = built {
                let _ = tokio::fs::remove_dir_all(&staged).await;
                if stop.is_cancelled() {
                    return Ok(Err(Ending::cancelled()));
                }
                return fail(log, ErrorKind::Setup, format!("{name}: {message}"), None)
                    .await
                    .map(Err);
            }
            let committed = {
                let (cache, key, index_name) = (cache.clone(), key.clone(), index_name.clone());
                tokio::task::spawn_blocking(move || cache.commit(&index_name, &key, &staged)).await
            };
            match committed {
                Ok(Ok(layer)) => {
                    image.built.push(layer);
                    image.key = key.key;
                }
                Ok(Err(err)) => {
                    let message = format!("keeping the layer of {name}: {err}");
                    return fail(log, ErrorKind::Internal, message, None).await.map(Err);
                }
                Err(err) => {
                    let message = format!("keeping the layer of {name}: {err}");
                    return fail(log, ErrorKind::Internal, message, None).await.map(Err);
                }
            }
        }
        Ok(Ok(()))
    }

    /// A step's key: its parent's (the image's, or the step before), what the step does, and
    /// for a copy or a feature, what it reads from the repository.
    async fn step_key(
        &self,
        run: &Run<'_>,
        image: &TaskImage,
        step: &Work<'_>,
    ) -> Result<CacheKey, String> {
        let mut inputs = BTreeMap::new();
        inputs.insert("parent".to_string(), image.key.clone());
        let root = run.copy.root().to_path_buf();
        match step {
            Work::Step(step) => {
                inputs.insert("step".to_string(), step.text.clone());
                match &step.kind {
                    StepKind::Run { env, .. } => {
                        let env: Vec<String> =
                            env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        inputs.insert("env".to_string(), env.join("\n"));
                    }
                    StepKind::Copy { sources, dest, .. } => {
                        let context = root.join(self.context_of(run));
                        let (sources, dest) = (sources.clone(), dest.clone());
                        let files = tokio::task::spawn_blocking(move || {
                            Copy::plan(&context, &sources, &dest)?.fingerprint()
                        })
                        .await
                        .map_err(|err| err.to_string())??;
                        inputs.insert("files".to_string(), files);
                    }
                }
            }
            Work::Feature(feature) => {
                inputs.insert("feature".to_string(), feature.id.clone());
                if let Some(digest) = &feature.digest {
                    inputs.insert("digest".to_string(), digest.clone());
                }
                let options: Vec<String> = feature
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                inputs.insert("options".to_string(), options.join("\n"));
                let dir = root.join(&feature.dir);
                let files = tokio::task::spawn_blocking(move || {
                    Copy::plan(&dir, &[".".to_string()], "/")?.fingerprint()
                })
                .await
                .map_err(|err| err.to_string())??;
                inputs.insert("files".to_string(), files);
            }
        }
        Ok(CacheKey::of(inputs))
    }

    /// The build context, relative to the working copy's root.
    fn context_of(&self, run: &Run<'_>) -> PathBuf {
        run.env
            .config
            .environment
            .build
            .as_ref()
            .map(|build| build.context.clone())
            .unwrap_or_default()
    }

    /// `COPY`/`ADD`: the context's files written into the staged layer, owned by root of the
    /// image as this host stores it; for `ADD`, local tar archives unpacked.
    async fn copy_step(
        &self,
        run: &Run<'_>,
        image: &TaskImage,
        (sources, dest, chown, unpack): (&[String], &str, Option<&str>, bool),
        staged: &Path,
    ) -> Result<(), String> {
        let context = run.copy.root().join(self.context_of(run));
        let (sources, dest, staged) = (sources.to_vec(), dest.to_string(), staged.to_path_buf());
        let chown = chown.map(str::to_string);
        // `--chown`'s names are the image's, as built so far.
        let etc = ImageEtc::new(&image.layers, &image.built);
        let root_owner = image.root_owner;
        tokio::task::spawn_blocking(move || {
            let chown = chown.map(|text| chown_ids(&etc, &text)).transpose()?;
            // The image's ids are shifted by the root's host id (as root); unprivileged, every
            // file is the caller's and `--chown` cannot be honoured.
            let root = root_owner.map(|id| (id, id));
            let chowned = match (root_owner, chown) {
                (Some(base), Some((uid, gid))) => Some((base + uid, base + gid)),
                _ => None,
            };
            let owner = chowned.or(root);
            let archives = unpack.then_some(Archives {
                ids: match root_owner {
                    Some(base) => nightshift_image::Owner::Shift(base),
                    None => nightshift_image::Owner::Caller,
                },
                chown: chowned,
                max_bytes: ARCHIVE_BYTES,
            });
            std::fs::create_dir_all(&staged).map_err(|err| err.to_string())?;
            Copy::plan(&context, &sources, &dest)?.write(&staged, owner, root, archives.as_ref())
        })
        .await
        .map_err(|err| err.to_string())?
    }

    /// A `RUN` step or a feature's install script: `command` as root over the image and the
    /// layers built so far, its changes kept at `staged` (all but the working copy's).
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        run: &Run<'_>,
        image: &TaskImage,
        name: &str,
        command: &str,
        env: &[(String, String)],
        staged: &Path,
        stop: &CancellationToken,
    ) -> Result<Result<(), String>, SinkError> {
        let log = run.log;
        let built_so_far = Run {
            image: Some(image),
            layers: &[],
            ..*run
        };
        let mut spec = SessionSpec {
            root: true,
            credentials: Vec::new(),
            ..session_spec(run.copy.root(), &built_so_far, self.setup_network(run))
        };
        spec.env = vec![("HOME".to_string(), "/root".to_string())];
        let session = match self.sandbox.start(spec).await {
            Ok(session) => session,
            Err(err) => return Ok(Err(err.to_string())),
        };
        let outcome = environment::run_command(
            log,
            self.store.as_ref(),
            run.task.id,
            session.as_ref(),
            None,
            CommandPhase::Build,
            name,
            command,
            env,
            None,
            stop,
        )
        .await?;
        log.add_cpu(session.cpu_seconds());
        if !outcome.ok || stop.is_cancelled() {
            let _ = session.close().await;
            return Ok(Err(format!(
                "failed (exit {}); no layer was kept:\n{}",
                outcome.exit_code, outcome.tail
            )));
        }
        if let Err(err) = session.close_keeping_changes(staged).await {
            return Ok(Err(format!("keeping its layer: {err}")));
        }
        // What the step did to the working copy is not the image's.
        let workspace = staged.join("workspace");
        let cleared = async {
            tokio::fs::remove_dir_all(&workspace).await?;
            tokio::fs::create_dir(&workspace).await
        };
        if let Err(err) = cleared.await {
            return Ok(Err(format!("clearing {}: {err}", workspace.display())));
        }
        Ok(Ok(()))
    }
}

/// `--chown=USER[:GROUP]` as the image's uid and gid: names from its `/etc/passwd` and
/// `/etc/group`, ids as written; ids the sandbox does not map are refused.
fn chown_ids(etc: &ImageEtc, text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = etc
        .owner(text)
        .map_err(|err| format!("--chown={text}: {err}"))?;
    if uid >= 65536 || gid >= 65536 {
        return Err(format!(
            "--chown={text} is {uid}:{gid}; ids from 65536 up are not mapped into the sandbox"
        ));
    }
    Ok((uid, gid))
}

/// The most one archive an `ADD` step unpacks may hold, unpacked.
const ARCHIVE_BYTES: u64 = 8 << 30;

/// The shell line that runs a feature's `install.sh` in its directory in the working copy.
fn feature_command(feature: &Feature) -> String {
    let dir = shell_quote(&format!("/workspace/{}", feature.dir.display()));
    format!("cd {dir} && if [ -x ./install.sh ]; then ./install.sh; else sh ./install.sh; fi")
}
