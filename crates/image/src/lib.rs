//! Container images for nightshift: references, pulls and a store of unpacked layers.
//!
//! Teams describe their development environment as a container image, and nightshift runs
//! tasks on such images without Docker. This crate does the image half of that: it reads a
//! reference in the forms skopeo accepts ([`Reference`]), fetches the image from a registry or
//! a local archive for this machine's platform, checks every blob against its digest, and
//! unpacks each layer once into a content-addressed [`Store`] in the form overlayfs stacks
//! (whiteouts as 0:0 character devices, opaque directories as an xattr). The sandbox mounts
//! [`Image::layers`] as overlay lower directories; nothing here mounts anything.

mod address;
mod archive;
mod artifact;
mod codec;
mod credentials;
mod error;
mod extract;
mod local;
mod manifest;
mod pull;
mod reference;
mod registry;
mod remove;
mod store;
mod tarball;
mod unpack;

use std::path::PathBuf;
use std::sync::Arc;

pub use archive::{ArchiveUnpacked, unpack_archive};
pub use artifact::Artifact;
pub use credentials::{
    docker_config_credentials, docker_config_credentials_from, host_credentials,
};
pub use error::ImageError;
pub use reference::Reference;
pub use registry::fetch_artifact;
pub use store::{EvictReport, ImageHold, PruneReport, Store};
pub use tarball::fetch_tarball;

/// Who owns the files of unpacked layers on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// nightshift runs as host root and the sandbox maps ids `0..65536` to `base..base+65536`:
    /// a file owned by uid/gid `u` in the image is stored owned by `base + u` (ids of 65536 and
    /// above become `base + 65534`, the overflow id), so the image's ids are right inside.
    Shift(u32),
    /// nightshift runs unprivileged: every file is the caller's and no chown is attempted.
    Caller,
}

impl Owner {
    /// The host id a file owned by `id` in the image is stored with, or `None` to leave it.
    pub(crate) fn map(self, id: u64) -> Option<u32> {
        match self {
            Owner::Shift(base) => {
                let inner = if id < 65536 { id as u32 } else { 65534 };
                Some(base.saturating_add(inner))
            }
            Owner::Caller => None,
        }
    }

    /// The text recorded in the store, so a store is never used with two ownership modes.
    pub(crate) fn describe(self) -> String {
        match self {
            Owner::Shift(base) => format!("shift:{base}"),
            Owner::Caller => "caller".to_string(),
        }
    }
}

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A callback that receives pull events; called from the pulling task and from worker
/// threads, so it must be cheap and must not block.
pub type ProgressFn = Arc<dyn Fn(PullEvent) + Send + Sync>;

/// How to pull.
#[derive(Clone, Default)]
pub struct PullOptions {
    /// Credentials for the image's registry; `None` pulls anonymously (registries that issue
    /// anonymous tokens, as Docker Hub does, still work).
    pub credentials: Option<Credentials>,
    /// Registries (`host:port`) spoken to over plain HTTP, e.g. a test registry on loopback;
    /// they may be at private addresses too.
    pub plain_http: Vec<String>,
    /// Registries and feature hosts (`host:port`, or `host` for 443 and 80) that may be reached at a private address
    /// (loopback, RFC 1918, link-local and the like). Any other whose name resolves to one is
    /// refused before it is asked anything: the reference may be a repository's, and this
    /// host reaches what its tasks may not.
    pub allow_private: Vec<String>,
    /// Receives an event as the pull resolves the image and as each layer is fetched or found.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("credentials", &self.credentials)
            .field("plain_http", &self.plain_http)
            .field("allow_private", &self.allow_private)
            .field("progress", &self.progress.as_ref().map(|_| "<callback>"))
            .finish()
    }
}

/// What a pull is doing, for progress displays and the task's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The reference was resolved to a manifest for this machine's platform.
    Resolved { reference: String, digest: String },
    /// A layer that is not in the store started to download (`size` as the manifest says).
    LayerStarted { digest: String, size: u64 },
    /// Bytes of a layer received so far (at most about one event per MiB).
    LayerProgress { digest: String, received: u64 },
    /// A layer is in the store: `fetched` says whether it was fetched and unpacked by this
    /// pull (`bytes` is then what was downloaded or read) or was already there (`bytes` is its
    /// compressed size as the manifest says).
    Layer {
        digest: String,
        bytes: u64,
        fetched: bool,
    },
    /// The image is complete in the store.
    Done { reference: String, digest: String },
}

/// An image in the store, ready to be stacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The canonical reference it was pulled as.
    pub reference: String,
    /// The digest of the image manifest for this platform (`sha256:...`). For a
    /// `docker-archive:` source, which has no manifest, the digest of its configuration (the
    /// image id `docker images` shows).
    pub digest: String,
    /// Unpacked layer directories, lowest first, in overlayfs form.
    pub layers: Vec<PathBuf>,
    /// The settings from the image's configuration.
    pub config: ImageConfig,
}

/// The parts of an image's configuration a sandbox applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// `Env`, split at the first `=`, in order.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`, when set and not empty.
    pub working_dir: Option<String>,
    /// `User` (`name`, `uid`, `uid:gid` or `name:group`), when set and not empty.
    pub user: Option<String>,
    /// OCI architecture, e.g. `amd64`.
    pub architecture: String,
    /// OCI operating system, e.g. `linux`.
    pub os: String,
}
