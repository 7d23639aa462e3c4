//! Talking to registries through oci-client: resolving a reference to this platform's
//! manifest and configuration, and streaming layer blobs.
//!
//! oci-client does the distribution protocol (token and Basic authentication, manifest and
//! blob requests, digest checks of what it fetches); this module chooses the platform itself
//! so that an image built for other machines is an error naming what exists, maps the
//! client's errors onto [`ImageError`]'s distinct cases, and retries what is transient.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use tokio::io::AsyncWrite;

use crate::artifact::Artifact;
use crate::error::ImageError;
use crate::manifest::{
    ConfigBlob, DOCKER_LIST, DOCKER_MANIFEST, Descriptor, OCI_INDEX, OCI_MANIFEST, Parsed,
    host_platform_text, parse_manifest, select_platform,
};
use crate::pull::{LayerPlan, LayerSource, Resolved};
use crate::{PullOptions, Reference};

/// How often a transient failure is tried again, and the first pause between tries.
pub(crate) const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// One image's registry connection: the client, with its cached tokens, and the image's name.
pub(crate) struct RegistryImage {
    client: oci_client::Client,
    image: oci_client::Reference,
    auth: RegistryAuth,
    registry: String,
    display: String,
    tag: Option<String>,
    by_digest: bool,
}

/// A connection to the registry of `reference`, for its name.
async fn connect(
    reference: &Reference,
    options: &PullOptions,
) -> Result<Arc<RegistryImage>, ImageError> {
    let Some((registry, repository, tag, digest)) = reference.registry_parts() else {
        return Err(ImageError::InvalidReference {
            input: reference.to_string(),
            reason: "not a registry reference".to_string(),
        });
    };
    crate::address::refuse_private(registry, reference, options).await?;
    ensure_crypto_provider();
    let image = match (tag, digest) {
        (_, Some(digest)) => oci_client::Reference::with_digest(
            registry.to_string(),
            repository.to_string(),
            digest.to_string(),
        ),
        (Some(tag), None) => oci_client::Reference::with_tag(
            registry.to_string(),
            repository.to_string(),
            tag.to_string(),
        ),
        (None, None) => oci_client::Reference::with_tag(
            registry.to_string(),
            repository.to_string(),
            "latest".to_string(),
        ),
    };
    let config = ClientConfig {
        protocol: if options.plain_http.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(options.plain_http.clone())
        },
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(60)),
        user_agent: concat!("nightshift/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    let client = oci_client::Client::try_from(config).map_err(|e| ImageError::Registry {
        registry: registry.to_string(),
        reference: reference.to_string(),
        detail: format!("cannot build the HTTP client: {e}"),
        retryable: false,
    })?;
    let auth = match &options.credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    Ok(Arc::new(RegistryImage {
        client,
        image,
        auth,
        registry: registry.to_string(),
        display: reference.to_string(),
        tag: tag.map(str::to_string),
        by_digest: digest.is_some(),
    }))
}

/// Resolves a registry reference to this platform's manifest, configuration and layers.
pub(crate) async fn resolve(
    reference: &Reference,
    options: &PullOptions,
) -> Result<Resolved, ImageError> {
    connect(reference, options).await?.resolve().await
}

/// The media type of a devcontainer feature's one layer (a tar of its folder).
const FEATURE_LAYER: &str = "application/vnd.devcontainers.layer.v1+tar";

/// Fetches an OCI artifact of one layer, such as a devcontainer feature
/// (`ghcr.io/devcontainers/features/node:1`), refusing one whose layer is over `max_bytes`.
pub async fn fetch_artifact(
    reference: &Reference,
    options: &PullOptions,
    max_bytes: u64,
) -> Result<Artifact, ImageError> {
    let connection = connect(reference, options).await?;
    connection.artifact(max_bytes).await
}

impl RegistryImage {
    async fn artifact(&self, max_bytes: u64) -> Result<Artifact, ImageError> {
        let (body, digest) = match self
            .retrying(
                || {
                    self.client
                        .pull_manifest_raw(&self.image, &self.auth, &[OCI_MANIFEST])
                },
                "manifest",
            )
            .await
        {
            Ok(found) => found,
            Err(ImageError::TagNotFound { reference, tag }) => {
                return Err(self.missing_tag_or_repository(reference, tag).await);
            }
            Err(e) => return Err(e),
        };
        #[derive(serde::Deserialize)]
        struct ArtifactManifest {
            #[serde(default)]
            layers: Vec<Descriptor>,
        }
        let manifest: ArtifactManifest = serde_json::from_slice(&body)
            .map_err(|e| self.invalid("manifest", &format!("not an OCI manifest: {e}")))?;
        let layer = match manifest.layers.as_slice() {
            [only] => only,
            layers => layers
                .iter()
                .find(|layer| layer.media_type == FEATURE_LAYER)
                .ok_or_else(|| {
                    self.invalid(
                        "manifest",
                        &format!(
                            "has {} layers and none of type {FEATURE_LAYER}",
                            layers.len()
                        ),
                    )
                })?,
        };
        if layer.size > max_bytes {
            return Err(self.invalid(
                "manifest",
                &format!(
                    "its layer is {} bytes, over the {max_bytes} bytes allowed",
                    layer.size
                ),
            ));
        }
        let bytes = self.fetch_small_blob(layer, "layer").await?;
        if bytes.len() as u64 > max_bytes {
            return Err(self.invalid("layer", &format!("is over the {max_bytes} bytes allowed")));
        }
        Ok(Artifact {
            digest,
            layer: bytes,
        })
    }

    async fn resolve(self: &Arc<Self>) -> Result<Resolved, ImageError> {
        let accepted = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
        let (body, digest) = match self
            .retrying(
                || {
                    self.client
                        .pull_manifest_raw(&self.image, &self.auth, &accepted)
                },
                "manifest",
            )
            .await
        {
            Ok(found) => found,
            Err(ImageError::TagNotFound { reference, tag }) => {
                return Err(self.missing_tag_or_repository(reference, tag).await);
            }
            Err(e) => return Err(e),
        };
        let (manifest, digest, index_digest) = match self.parse(&body, "manifest")? {
            Parsed::Image(manifest) => (manifest, digest, None),
            Parsed::Index(entries) => {
                let entry = select_platform(&entries).map_err(|available| {
                    ImageError::WrongArchitecture {
                        reference: self.display.clone(),
                        wanted: host_platform_text(),
                        available,
                    }
                })?;
                let by_digest = self.image.clone_with_digest(entry.digest.clone());
                let (body, platform_digest) = self
                    .retrying(
                        || {
                            self.client
                                .pull_manifest_raw(&by_digest, &self.auth, &accepted)
                        },
                        "platform manifest",
                    )
                    .await?;
                match self.parse(&body, "platform manifest")? {
                    Parsed::Image(manifest) => (manifest, platform_digest, Some(digest)),
                    Parsed::Index(_) => {
                        return Err(self.invalid("platform manifest", "it is another index"));
                    }
                }
            }
        };
        let config_bytes = self
            .fetch_small_blob(&manifest.config, "configuration")
            .await?;
        let config =
            ConfigBlob::parse(&config_bytes).map_err(|e| self.invalid("configuration", &e))?;
        config
            .check_platform()
            .map_err(|found| ImageError::WrongArchitecture {
                reference: self.display.clone(),
                wanted: host_platform_text(),
                available: vec![found],
            })?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(self.invalid(
                "configuration",
                &format!(
                    "it lists {} layers but the manifest {}",
                    config.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            ));
        }
        let layers = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(descriptor, diff_id)| LayerPlan {
                digest: descriptor.digest.clone(),
                size: descriptor.size,
                diff_id: diff_id.clone(),
                verify_compressed: true,
                source: LayerSource::Registry {
                    image: Arc::clone(self),
                    descriptor: descriptor.clone(),
                },
            })
            .collect();
        Ok(Resolved {
            reference: self.display.clone(),
            digest,
            index_digest,
            config_digest: manifest.config.digest.clone(),
            config: config.image_config(),
            layers,
            scratch: None,
        })
    }

    /// The distribution registry answers MANIFEST_UNKNOWN for a tag of a repository it does
    /// not have; its tag list tells the two apart.
    async fn missing_tag_or_repository(&self, reference: String, tag: String) -> ImageError {
        match self
            .client
            .list_tags(&self.image, &self.auth, Some(1), None)
            .await
        {
            Err(OciDistributionError::RegistryError { envelope, .. })
                if envelope
                    .errors
                    .iter()
                    .any(|e| e.code == OciErrorCode::NameUnknown) =>
            {
                ImageError::RepositoryNotFound {
                    reference,
                    repository: self.image.repository().to_string(),
                }
            }
            Err(OciDistributionError::ServerError { code: 404, .. }) => {
                ImageError::RepositoryNotFound {
                    reference,
                    repository: self.image.repository().to_string(),
                }
            }
            _ => ImageError::TagNotFound { reference, tag },
        }
    }

    fn parse(&self, body: &[u8], what: &str) -> Result<Parsed, ImageError> {
        parse_manifest(body).map_err(|e| self.invalid(what, &e))
    }

    fn invalid(&self, what: &str, detail: &str) -> ImageError {
        ImageError::InvalidImage {
            reference: self.display.clone(),
            what: what.to_string(),
            detail: detail.to_string(),
        }
    }

    async fn fetch_small_blob(
        &self,
        descriptor: &Descriptor,
        what: &'static str,
    ) -> Result<Vec<u8>, ImageError> {
        self.retrying(
            || async {
                let mut out = Vec::new();
                self.client
                    .pull_blob(&self.image, &oci_descriptor(descriptor), &mut out)
                    .await?;
                Ok(out)
            },
            what,
        )
        .await
    }

    /// Streams one blob into `out`; oci-client checks it against its digest at the end.
    pub(crate) async fn pull_blob<W: AsyncWrite + Unpin + Send>(
        &self,
        descriptor: &Descriptor,
        out: W,
    ) -> Result<(), ImageError> {
        self.client
            .pull_blob(&self.image, &oci_descriptor(descriptor), out)
            .await
            .map_err(|e| self.map_error(e, "layer", Some(&descriptor.digest)))
    }

    async fn retrying<T, F, Fut>(&self, mut call: F, what: &'static str) -> Result<T, ImageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(e) => {
                    let error = self.map_error(e, what, None);
                    if !error.is_retryable() || attempt >= ATTEMPTS {
                        return Err(error);
                    }
                    tracing::debug!(%error, attempt, "retrying a registry request");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Says what a client error means for this image.
    pub(crate) fn map_error(
        &self,
        error: OciDistributionError,
        what: &'static str,
        digest: Option<&str>,
    ) -> ImageError {
        let registry = self.registry.clone();
        let reference = self.display.clone();
        let not_found = |code: Option<&OciErrorCode>| match (code, what) {
            (Some(OciErrorCode::NameUnknown), _) => ImageError::RepositoryNotFound {
                reference: reference.clone(),
                repository: self.image.repository().to_string(),
            },
            (_, "manifest") if !self.by_digest => ImageError::TagNotFound {
                reference: reference.clone(),
                tag: self.tag.clone().unwrap_or_else(|| "latest".to_string()),
            },
            _ => ImageError::NotFound {
                reference: reference.clone(),
                what,
                digest: digest
                    .map(str::to_string)
                    .or_else(|| self.image.digest().map(str::to_string))
                    .unwrap_or_default(),
            },
        };
        let unauthorized = |detail: String| ImageError::Unauthorized {
            registry: registry.clone(),
            reference: reference.clone(),
            with_credentials: !matches!(self.auth, RegistryAuth::Anonymous),
            detail,
        };
        let other = |detail: String, retryable: bool| ImageError::Registry {
            registry: registry.clone(),
            reference: reference.clone(),
            detail,
            retryable,
        };
        match error {
            OciDistributionError::RequestError(e) => {
                if e.is_connect() || e.is_timeout() {
                    ImageError::Unreachable {
                        registry,
                        detail: describe_reqwest(&e),
                    }
                } else {
                    other(
                        format!("the connection failed: {}", describe_reqwest(&e)),
                        true,
                    )
                }
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let code = envelope.errors.first().map(|e| &e.code);
                match code {
                    Some(OciErrorCode::NameUnknown | OciErrorCode::ManifestUnknown)
                    | Some(OciErrorCode::BlobUnknown | OciErrorCode::NotFound) => not_found(code),
                    Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                        unauthorized(format!("{envelope} at {url}"))
                    }
                    Some(OciErrorCode::Toomanyrequests) => {
                        other(format!("rate limited: {envelope}"), true)
                    }
                    _ => other(format!("{envelope} at {url}"), false),
                }
            }
            OciDistributionError::ServerError { code, url, message } => match code {
                404 => not_found(None),
                401 | 403 => unauthorized(format!("HTTP {code} at {url}")),
                408 | 429 | 500..=599 => {
                    other(format!("HTTP {code} at {url}: {}", trim(&message)), true)
                }
                _ => other(format!("HTTP {code} at {url}: {}", trim(&message)), false),
            },
            OciDistributionError::UnauthorizedError { url } => {
                unauthorized(format!("HTTP 401 at {url}"))
            }
            OciDistributionError::AuthenticationFailure(reason) => {
                unauthorized(format!("the token service refused: {}", trim(&reason)))
            }
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => ImageError::DigestMismatch {
                what: format!("{what} of {reference}"),
                expected,
                actual,
            },
            OciDistributionError::IoError(e) => {
                other(format!("writing what was received: {e}"), false)
            }
            e => other(e.to_string(), false),
        }
    }
}

fn oci_descriptor(descriptor: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: descriptor.media_type.clone(),
        digest: descriptor.digest.clone(),
        size: i64::try_from(descriptor.size).unwrap_or(i64::MAX),
        ..OciDescriptor::default()
    }
}

/// The pause before try `attempt + 1`: doubling, with a little jitter so concurrent pulls do
/// not retry in lockstep.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = FIRST_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1));
    base + Duration::from_millis(rand::random::<u64>() % 100)
}

fn trim(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); the chain says it.
pub(crate) fn describe_reqwest(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// reqwest only builds its TLS configuration with a rustls crypto provider installed; the
/// binary installs ring at start-up, this covers tests and other embedders.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
