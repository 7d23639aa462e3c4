//! A task's image: the reference it starts from (the task's own, else its repository's
//! `[environment] image`), pulled into the image store or found there with every layer logged,
//! and what each session of the task then stands on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nightshift_agent::SinkError;
use nightshift_env::build::features::FETCHED_DIR as FEATURES_DIR;
use nightshift_image::{PullEvent, PullOptions, Reference, Store};
use nightshift_protocol::{ErrorKind, Event, ImageLayerUse, TaskState};

use crate::Runner;
use crate::ending::{Ending, fail, set_state};
use crate::handoff::Run;
use tokio_util::sync::CancellationToken;

/// Where a runner keeps images and how it fetches them.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// The image store's directory.
    pub dir: PathBuf,
    /// Who owns an image's files on this host (see [`nightshift_image::Owner`]).
    pub owner: nightshift_image::Owner,
    /// Registries (`host:port`) spoken to over plain HTTP rather than HTTPS.
    pub plain_http: Vec<String>,
    /// Registries and feature hosts (`host:port`, or `host`) that may be reached at a private address;
    /// see [`nightshift_image::PullOptions::allow_private`].
    pub allow_private: Vec<String>,
    /// The most bytes the store's layers may hold: after each pull, the least recently used
    /// images no task holds are forgotten until the layers fit.
    pub budget: u64,
    /// Registry logins from stored secrets: registry (`host[:port]`, `docker.io`) to the name
    /// of the secret holding `USER:PASSWORD`. They come before the host's login files.
    pub logins: std::collections::BTreeMap<String, String>,
}

impl crate::Runner {
    /// The login for the registry of `reference`: the stored secret `[images] logins` names for
    /// it, else the host's login files.
    pub(crate) async fn registry_login(
        &self,
        reference: &Reference,
    ) -> Result<Option<nightshift_image::Credentials>, String> {
        let logins = match &self.config.images {
            Some(settings) => settings.logins.clone(),
            None => Default::default(),
        };
        let key = || {
            self.secret_key
                .clone()
                .ok_or_else(|| "this process has no secret key".to_string())
        };
        registry_login(self.store.as_ref(), &logins, key, reference)
            .await
            .map_err(|err| err.to_string())
    }
}

/// Why there is no registry login.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The configuration is wrong: the secret `[images] logins` names is not stored, or does
    /// not hold `USER:PASSWORD`.
    #[error("{0}")]
    Config(String),
    /// The secret is there but could not be read or unsealed.
    #[error("{0}")]
    Unavailable(String),
}

/// The login for the registry of `reference`: the stored secret `logins` names for it,
/// unsealed with the key `key` gives (asked for only then), else the host's login files
/// (`nightshift image pull` and tasks' pulls alike).
pub async fn registry_login(
    store: &dyn nightshift_store::Store,
    logins: &std::collections::BTreeMap<String, String>,
    key: impl FnOnce() -> Result<std::sync::Arc<nightshift_env::secrets::SecretKey>, String>,
    reference: &Reference,
) -> Result<Option<nightshift_image::Credentials>, LoginError> {
    let secret = match reference {
        Reference::Registry { registry, .. } => logins.get(registry),
        _ => None,
    };
    let Some(secret) = secret else {
        return Ok(nightshift_image::host_credentials(reference));
    };
    let sealed = store
        .secrets()
        .await
        .map_err(|err| LoginError::Unavailable(format!("reading the stored secrets: {err}")))?;
    let stored = sealed.into_iter().find(|s| &s.name == secret).ok_or_else(|| {
        LoginError::Config(format!(
            "the registry login `{secret}` ([images] logins of config.toml) is not a stored secret; `nightshift secret set {secret} --all-repos` stores it"
        ))
    })?;
    let unsealed = key().and_then(|key| {
        key.unseal(&stored.name, &stored.sealed)
            .map_err(|err| err.to_string())
    });
    let value = unsealed.map_err(|err| {
        LoginError::Unavailable(format!("unsealing the registry login `{secret}`: {err}"))
    })?;
    login_from_secret(secret, &value)
        .map(Some)
        .map_err(LoginError::Config)
}

/// `USER:PASSWORD` (a token as the password) as registry credentials.
pub fn login_from_secret(name: &str, value: &str) -> Result<nightshift_image::Credentials, String> {
    match value.trim().split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            Ok(nightshift_image::Credentials {
                username: user.to_string(),
                password: password.to_string(),
            })
        }
        _ => Err(format!(
            "the registry login `{name}` must hold USER:PASSWORD (a token as the password)"
        )),
    }
}

/// The image a task runs on.
#[derive(Debug, Clone)]
pub(crate) struct TaskImage {
    /// Canonical, as written (`docker.io/library/rust:1.86`).
    pub reference: String,
    /// Its unpacked layers, lowest first.
    pub layers: Vec<PathBuf>,
    /// Its configuration's environment, but for what the sandbox decides (`HOME`, `USER`),
    /// then what was built over it set.
    pub env: Vec<(String, String)>,
    /// Layers built over it (a Dockerfile's steps, features), lowest first: stacked under the
    /// setup layer.
    pub built: Vec<PathBuf>,
    /// What a setup layer over it is keyed by: the manifest digest, or the last built step's
    /// key.
    pub key: String,
    /// The host id its root's files belong to, when this host shifts ids (as root).
    pub root_owner: Option<u32>,
    /// Who the agent runs as, as written, when the image or the Dockerfile built over it says.
    pub user: Option<WantedUser>,
    /// Keeps its layers in the store while the task runs.
    pub _hold: Option<Arc<nightshift_image::ImageHold>>,
}

/// A user an image names, as written, and where.
#[derive(Debug, Clone)]
pub(crate) struct WantedUser {
    /// `NAME|UID[:GROUP|GID]`.
    pub text: String,
    /// Where it was written, for messages: "the image's `User`", "the last `USER` of ...".
    pub origin: String,
}

/// Variables of an image's configuration that the sandbox sets itself.
const SANDBOX_VARIABLES: &[&str] = &["HOME", "USER", "LOGNAME"];

impl Runner {
    /// The task's image, pulled (or found in the store when the registry cannot be reached);
    /// `None` when the task and its repository name none. The task's ending when it cannot be
    /// had.
    pub(crate) async fn task_image(
        &self,
        run: &Run<'_>,
        stop: &CancellationToken,
    ) -> Result<Result<Option<TaskImage>, Ending>, SinkError> {
        let log = run.log;
        let build = run.env.config.environment.build.as_ref();
        let plan = match build.and_then(|build| build.dockerfile.as_deref()) {
            Some(path) => match read_dockerfile(run, path) {
                Ok(plan) => Some((path.display().to_string(), plan)),
                Err(message) => {
                    let hint =
                        "docs/images.md says what nightshift builds from a Dockerfile".to_string();
                    return fail(log, ErrorKind::InvalidInput, message, Some(hint))
                        .await
                        .map(Err);
                }
            },
            None => None,
        };
        let fetched = match build {
            Some(build) => match self.fetch_features(run, &build.features).await? {
                Ok(fetched) => fetched,
                Err(ending) => return Ok(Err(ending)),
            },
            None => FetchedFeatures::default(),
        };
        let features = match build.filter(|build| !build.features.is_empty()) {
            Some(build) => {
                let resolved = nightshift_env::build::features::resolve(
                    run.copy.root(),
                    &build.config_dir,
                    &build.features,
                    &build.feature_order,
                    &fetched.dirs,
                );
                match resolved {
                    Ok(mut features) => {
                        for feature in &mut features {
                            feature.digest = fetched.digests.get(&feature.id).cloned();
                        }
                        features
                    }
                    Err(err) => {
                        return fail(log, ErrorKind::InvalidInput, err.to_string(), None)
                            .await
                            .map(Err);
                    }
                }
            }
            None => Vec::new(),
        };
        // Where the reference comes from decides what it may name: the task's own image was
        // chosen by the machine's user (the API refuses host paths before it gets here); the
        // Dockerfile's FROM and `[environment] image` were chosen by the repository.
        let wanted = match (
            &run.task.spec.image,
            &plan,
            &run.env.config.environment.image,
        ) {
            (Some(text), _, _) => Some((text.clone(), None)),
            (None, Some((path, plan)), _) => {
                Some((plan.from.clone(), Some(format!("the FROM of {path}"))))
            }
            (None, None, Some(text)) => Some((
                text.clone(),
                Some(
                    "the repository's image (`[environment] image` or devcontainer.json's `image`)"
                        .to_string(),
                ),
            )),
            (None, None, None) => None,
        };
        let Some((text, origin)) = wanted else {
            if !features.is_empty() {
                let message = "devcontainer.json asks for features, which are installed over an image, and it names no image or Dockerfile".to_string();
                return fail(log, ErrorKind::InvalidInput, message, None)
                    .await
                    .map(Err);
            }
            return Ok(Ok(None));
        };
        if !self.sandbox.supports_images() {
            let message = format!(
                "the task starts from the image {text}, and the `{}` sandbox cannot start from an image",
                self.sandbox.backend()
            );
            let hint = "use the namespaced sandbox (unset NIGHTSHIFT_SANDBOX)".to_string();
            return fail(log, ErrorKind::Sandbox, message, Some(hint))
                .await
                .map(Err);
        }
        let Some(settings) = &self.config.images else {
            let message = format!(
                "the task starts from the image {text}, and this runner keeps no image store"
            );
            return fail(log, ErrorKind::Internal, message, None).await.map(Err);
        };
        let reference = match Reference::parse(&text) {
            Ok(reference) => reference,
            Err(err) => {
                let message = format!("the image {text:?} cannot be used: {err}");
                return fail(log, ErrorKind::InvalidInput, message, None)
                    .await
                    .map(Err);
            }
        };
        if let (Some(origin), Some(path)) = (&origin, reference.host_path()) {
            let message = format!(
                "{origin} names the image {text:?}, which reads {} on this machine; a repository may only name images in a registry",
                path.display()
            );
            let hint = "push the image to a registry and name it there, or give a local image for one task with `nightshift run --image`".to_string();
            return fail(log, ErrorKind::InvalidInput, message, Some(hint))
                .await
                .map(Err);
        }
        let detail = format!("pulling the image {reference}");
        set_state(log, TaskState::Preparing, Some(&detail)).await?;
        let store = match Store::open(&settings.dir, settings.owner) {
            Ok(store) => store,
            Err(err) => {
                let message = format!("opening the image store: {err}");
                return fail(log, ErrorKind::Internal, message, None).await.map(Err);
            }
        };
        let used: Arc<Mutex<Vec<ImageLayerUse>>> = Arc::default();
        let login = match self.registry_login(&reference).await {
            Ok(login) => login,
            Err(message) => {
                return fail(log, ErrorKind::Setup, message, None).await.map(Err);
            }
        };
        let options = PullOptions {
            credentials: login,
            plain_http: settings.plain_http.clone(),
            allow_private: settings.allow_private.clone(),
            progress: Some({
                let used = used.clone();
                Arc::new(move |event: PullEvent| {
                    if let PullEvent::Layer {
                        digest,
                        bytes,
                        fetched,
                    } = event
                    {
                        let mut used = used.lock().unwrap_or_else(|p| p.into_inner());
                        used.push(ImageLayerUse {
                            digest,
                            bytes,
                            fetched,
                        });
                    }
                })
            }),
        };
        let image = match store.pull(&reference, &options).await {
            Ok(image) => image,
            Err(err) => match store.get(&reference) {
                // The store's copy was verified when it was pulled; a registry that cannot be
                // reached now does not stop the task, but it is said.
                Ok(Some(image)) => {
                    log.append(Event::Warning {
                        message: format!(
                            "could not pull {reference} ({err}); using the copy in the image store ({})",
                            image.digest
                        ),
                    })
                    .await?;
                    image
                }
                _ => {
                    let message = format!("pulling the image {reference}: {err}");
                    let hint = "check the reference (`nightshift image pull REF` tries it alone); a registry that needs a login reads it from the host's login files (`skopeo login`, `podman login` or `docker login`), as the user nightshift runs as".to_string();
                    return fail(log, ErrorKind::Setup, message, Some(hint))
                        .await
                        .map(Err);
                }
            },
        };
        // Held before anything is evicted, so this task's layers stay while it runs.
        let hold = match store.hold(&image) {
            Ok(hold) => Some(Arc::new(hold)),
            Err(err) => {
                let message = format!("holding the image's layers in the store: {err}");
                return fail(log, ErrorKind::Internal, message, None).await.map(Err);
            }
        };
        let evicting = {
            let (store, budget) = (store.clone(), settings.budget);
            tokio::task::spawn_blocking(move || store.evict(budget))
        };
        // Eviction waits for running pulls; the task does not wait for it.
        tokio::spawn(async move {
            match evicting.await {
                Ok(Ok(report)) if !report.images.is_empty() => tracing::info!(
                    images = ?report.images,
                    bytes = report.pruned.bytes,
                    "evicted the least recently used images"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    tracing::warn!(%err, "could not keep the image store in its budget")
                }
                Err(err) => tracing::warn!(%err, "could not keep the image store in its budget"),
            }
        });
        let layers = std::mem::take(&mut *used.lock().unwrap_or_else(|p| p.into_inner()));
        log.append(Event::ImageReady {
            reference: image.reference.clone(),
            digest: image.digest.clone(),
            layers,
        })
        .await?;
        let env = image
            .config
            .env
            .iter()
            .filter(|(name, _)| !SANDBOX_VARIABLES.contains(&name.as_str()))
            .cloned()
            .collect();
        let mut task_image = TaskImage {
            key: image.digest.clone(),
            reference: image.reference.clone(),
            layers: image.layers,
            env,
            built: Vec::new(),
            root_owner: match settings.owner {
                nightshift_image::Owner::Shift(id) => Some(id),
                nightshift_image::Owner::Caller => None,
            },
            user: image.config.user.clone().map(|text| WantedUser {
                text,
                origin: format!("the `User` of the image {}", image.reference),
            }),
            _hold: hold,
        };
        if plan.is_some() || !features.is_empty() {
            // The fetched features' folders leave the working copy once built, whatever the
            // outcome: the agent never sees them.
            let _fetched = fetched;
            let (file, plan) = match &plan {
                Some((file, plan)) => (file.as_str(), Some(plan)),
                None => ("", None),
            };
            if let Err(ending) = self
                .build_over_image(run, &mut task_image, (file, plan), &features, stop)
                .await?
            {
                return Ok(Err(ending));
            }
        }
        Ok(Ok(Some(task_image)))
    }
}

/// The largest feature artifact fetched, and the most it may unpack to.
const FEATURE_BYTES: u64 = 64 << 20;

/// Features fetched for a task (OCI artifacts, tarballs): each id's folder, relative to the
/// working copy.
#[derive(Default)]
pub(crate) struct FetchedFeatures {
    dirs: std::collections::BTreeMap<String, PathBuf>,
    /// What was fetched for each id: the artifact's manifest digest, the tarball's sha256.
    digests: std::collections::BTreeMap<String, String>,
    root: Option<PathBuf>,
}

impl Drop for FetchedFeatures {
    fn drop(&mut self) {
        if let Some(root) = &self.root
            && let Err(err) = std::fs::remove_dir_all(root)
        {
            tracing::warn!(%err, dir = %root.display(), "could not remove the fetched features");
        }
    }
}

impl Runner {
    /// Fetches the features among `requests` that are OCI artifacts
    /// (`ghcr.io/devcontainers/features/node:1`) or tarball URLs and unpacks each into the
    /// working copy; the task's ending when one cannot be had.
    async fn fetch_features(
        &self,
        run: &Run<'_>,
        requests: &[nightshift_env::build::features::FeatureRequest],
    ) -> Result<Result<FetchedFeatures, Ending>, SinkError> {
        let log = run.log;
        let remote: Vec<_> = requests
            .iter()
            .filter(|request| !nightshift_env::build::features::is_local(&request.id))
            .collect();
        let mut fetched = FetchedFeatures::default();
        if remote.is_empty() {
            return Ok(Ok(fetched));
        }
        let (plain_http, private) = match &self.config.images {
            Some(settings) => (settings.plain_http.clone(), settings.allow_private.clone()),
            None => Default::default(),
        };
        let root = run.copy.root().join(FEATURES_DIR);
        if let Err(err) = std::fs::create_dir(&root) {
            let message = format!(
                "making {FEATURES_DIR}/ in the working copy for the fetched features: {err} (a repository may not hold a path of that name when it asks for OCI or tarball features)"
            );
            return fail(log, ErrorKind::InvalidInput, message, None)
                .await
                .map(Err);
        }
        fetched.root = Some(root.clone());
        for (index, request) in remote.into_iter().enumerate() {
            let id = &request.id;
            set_state(
                log,
                TaskState::Preparing,
                Some(&format!("fetching the feature {id}")),
            )
            .await?;
            let artifact = if nightshift_env::build::features::is_tarball(id) {
                nightshift_image::fetch_tarball(id, &plain_http, &private, FEATURE_BYTES).await
            } else {
                match self.fetch_oci_feature(id, &plain_http, &private).await {
                    Ok(fetched) => fetched,
                    Err(message) => {
                        return fail(log, ErrorKind::InvalidInput, message, None)
                            .await
                            .map(Err);
                    }
                }
            };
            let artifact = match artifact {
                Ok(artifact) => artifact,
                Err(err) => {
                    let message = format!("fetching the feature {id}: {err}");
                    let hint = "the feature's registry or server must be reachable from this machine; a feature can also be copied into the repository and named `./folder`".to_string();
                    return fail(log, ErrorKind::Setup, message, Some(hint))
                        .await
                        .map(Err);
                }
            };
            let dest = root.join(index.to_string());
            let unpacked = {
                let dest = dest.clone();
                tokio::task::spawn_blocking(move || {
                    artifact
                        .unpack_into(&dest, FEATURE_BYTES)
                        .map(|()| artifact.digest)
                })
                .await
                .map_err(|err| err.to_string())
                .and_then(|unpacked| unpacked)
            };
            let digest = match unpacked {
                Ok(digest) => digest,
                Err(err) => {
                    let message = format!("the feature {id} cannot be unpacked: {err}");
                    return fail(log, ErrorKind::InvalidInput, message, None)
                        .await
                        .map(Err);
                }
            };
            tracing::info!(feature = %id, %digest, "fetched a feature");
            fetched
                .dirs
                .insert(id.clone(), Path::new(FEATURES_DIR).join(index.to_string()));
            fetched.digests.insert(id.clone(), digest);
        }
        Ok(Ok(fetched))
    }

    /// An OCI feature's artifact (`ghcr.io/devcontainers/features/node:1`), with the registry
    /// login of this host; `Err` with the message when `id` is no reference, `Ok(Err)` when
    /// fetching fails.
    async fn fetch_oci_feature(
        &self,
        id: &str,
        plain_http: &[String],
        private: &[String],
    ) -> Result<Result<nightshift_image::Artifact, String>, String> {
        let reference = Reference::parse(id)
            .map_err(|err| format!("the feature {id} cannot be fetched: {err}"))?;
        let login = match self.registry_login(&reference).await {
            Ok(login) => login,
            Err(message) => return Ok(Err(message)),
        };
        let options = PullOptions {
            credentials: login,
            plain_http: plain_http.to_vec(),
            allow_private: private.to_vec(),
            progress: None,
        };
        Ok(
            nightshift_image::fetch_artifact(&reference, &options, FEATURE_BYTES)
                .await
                .map_err(|err| err.to_string()),
        )
    }
}

/// The repository's Dockerfile at `path`, read inside the working copy, as steps.
fn read_dockerfile(
    run: &Run<'_>,
    path: &std::path::Path,
) -> Result<nightshift_env::build::dockerfile::Plan, String> {
    use nightshift_env::tree_files::{Links, read_regular};
    let bytes = read_regular(run.copy.root(), path, Links::FollowInside, 1 << 20)
        .map_err(|err| format!("the Dockerfile cannot be used: {err}"))?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let args = run
        .env
        .config
        .environment
        .build
        .as_ref()
        .map(|build| build.args.clone())
        .unwrap_or_default();
    nightshift_env::build::dockerfile::plan(&path.display().to_string(), &text, &args)
        .map_err(|err| err.to_string())
}
