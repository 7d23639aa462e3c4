//! Why an image could not be resolved, pulled, unpacked or stored.
//!
//! Each variant is one thing a person can act on: a reference that does not parse, an image or
//! tag the registry does not have, a registry that cannot be reached, data that is not what its
//! digest promised, a layer that tries to write outside its root. Every pull that fails leaves
//! the store as it was, except for layers that were completely unpacked and checked before the
//! failure (they are kept and reused by the next pull); the messages say so.

use std::path::PathBuf;

/// An error from the image crate.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The text is not an image reference in any of the accepted forms.
    #[error(
        "`{input}` is not an image reference: {reason}; write REGISTRY/NAME[:TAG][@DIGEST], \
         oci:PATH[:TAG], oci-archive:PATH[:TAG] or docker-archive:PATH[:REF]"
    )]
    InvalidReference { input: String, reason: String },

    /// The registry does not know the repository.
    #[error(
        "the registry has no image named `{repository}` (asked for {reference}); check the name \
         and the registry"
    )]
    RepositoryNotFound {
        reference: String,
        repository: String,
    },

    /// The repository exists but the tag does not.
    #[error(
        "{reference}: the repository has no tag `{tag}`; nothing was pulled, check the tag's \
         spelling or pull by digest"
    )]
    TagNotFound { reference: String, tag: String },

    /// A manifest or blob named by digest is not in the registry or the archive.
    #[error("{reference}: {what} {digest} does not exist in the source; nothing was pulled")]
    NotFound {
        reference: String,
        what: &'static str,
        digest: String,
    },

    /// The registry refused access: it needs credentials, or rejected the ones given, or hides
    /// a repository that does not exist behind the same answer (Docker Hub does).
    #[error(
        "{registry} refused access to {reference} ({detail}); {}",
        if *with_credentials {
            "the credentials were rejected: check the user name and password or token"
        } else {
            "the image needs credentials (or does not exist): give credentials for this registry"
        }
    )]
    Unauthorized {
        registry: String,
        reference: String,
        with_credentials: bool,
        detail: String,
    },

    /// The registry's host resolves to an address of this host's own network, and the host
    /// configuration does not list it: nothing was asked of it.
    #[error(
        "the registry {registry} (for {reference}) resolves to a private address ({address}); \
         nothing was asked of it: only registries listed in `[images] allow_private` or \
         `[images] plain_http` of config.toml are reached at private addresses"
    )]
    PrivateAddress {
        registry: String,
        reference: String,
        address: String,
    },

    /// The registry could not be reached (DNS, connection refused, timeouts), after retries.
    #[error(
        "cannot reach the registry {registry} ({detail}); nothing was pulled: check the network \
         and the registry's address (a registry spoken to over plain HTTP must be listed as such)"
    )]
    Unreachable { registry: String, detail: String },

    /// The registry answered with an error this crate does not map to a more precise variant.
    #[error("the registry {registry} failed for {reference}: {detail}")]
    Registry {
        registry: String,
        reference: String,
        detail: String,
        retryable: bool,
    },

    /// Data did not hash to the digest that named it. The data was discarded.
    #[error(
        "{what} should hash to {expected} but hashes to {actual}; it was discarded and nothing \
         of it was kept: the source is corrupt or was tampered with"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// A layer could not be decompressed or read as a tar archive. Nothing of it was kept.
    #[error("layer {digest} is corrupt or truncated ({detail}); nothing of it was kept")]
    CorruptLayer { digest: String, detail: String },

    /// A layer entry would write outside the layer's root. Nothing of the layer was kept.
    #[error(
        "layer {digest} is unsafe: entry `{path}` {reason}; the layer was rejected and nothing \
         of it was kept"
    )]
    UnsafeEntry {
        digest: String,
        path: String,
        reason: String,
    },

    /// The image exists, but not for this machine's platform.
    #[error(
        "{reference} has no image for {wanted}; it is available for: {}; pick an image built \
         for {wanted}",
        available.join(", ")
    )]
    WrongArchitecture {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },

    /// A manifest, index or configuration is not one this crate can read.
    #[error("{reference}: {what} is not usable: {detail}")]
    InvalidImage {
        reference: String,
        what: String,
        detail: String,
    },

    /// A local OCI layout or archive is missing, unreadable or not in the expected form.
    #[error("{path}: {detail}")]
    InvalidArchive { path: PathBuf, detail: String },

    /// A local OCI layout or archive holds several images and the reference did not say which,
    /// or named one it does not hold.
    #[error(
        "{path} has no image tagged `{}`; it holds: {}",
        tag.as_deref().unwrap_or("(none given)"),
        if available.is_empty() { "no tagged images".to_string() } else { available.join(", ") }
    )]
    TagNotInArchive {
        path: PathBuf,
        tag: Option<String>,
        available: Vec<String>,
    },

    /// The store was created for another ownership mode than the one asked for.
    #[error(
        "the image store {path} holds layers owned as {found}, not {wanted}; use a separate \
         store directory for each ownership mode (nothing was changed)"
    )]
    OwnerMismatch {
        path: PathBuf,
        found: String,
        wanted: String,
    },

    /// A file system operation in the store failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A record in the store could not be read or written.
    #[error("the image store's record {path} is unreadable ({detail}); remove it to forget it")]
    CorruptRecord { path: PathBuf, detail: String },
}

impl ImageError {
    /// Whether trying the same operation again may succeed without anything changing: network
    /// failures and registry overload. Everything about the data or the reference is final.
    pub fn is_retryable(&self) -> bool {
        match self {
            ImageError::Unreachable { .. } => true,
            ImageError::Registry { retryable, .. } => *retryable,
            ImageError::InvalidReference { .. }
            | ImageError::RepositoryNotFound { .. }
            | ImageError::TagNotFound { .. }
            | ImageError::NotFound { .. }
            | ImageError::Unauthorized { .. }
            | ImageError::PrivateAddress { .. }
            | ImageError::DigestMismatch { .. }
            | ImageError::CorruptLayer { .. }
            | ImageError::UnsafeEntry { .. }
            | ImageError::WrongArchitecture { .. }
            | ImageError::InvalidImage { .. }
            | ImageError::InvalidArchive { .. }
            | ImageError::TagNotInArchive { .. }
            | ImageError::OwnerMismatch { .. }
            | ImageError::Io { .. }
            | ImageError::CorruptRecord { .. } => false,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }
}
