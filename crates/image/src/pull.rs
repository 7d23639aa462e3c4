//! What every source resolves to, and fetching one layer into a directory.
//!
//! Registries, OCI layouts and archives differ in how they name an image, but each ends as a
//! [`Resolved`]: a manifest digest, a configuration and layers with their diff ids. The store
//! treats them alike from there. A registry layer streams from the network straight into the
//! unpacker (no copy of the compressed blob is kept), while the digests are checked on the
//! same pass; a local layer is read from its file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::io::SyncIoBridge;

use crate::error::ImageError;
use crate::manifest::Descriptor;
use crate::registry::RegistryImage;
use crate::remove::remove_tree;
use crate::unpack::{Expected, Unpacked, unpack_layer};
use crate::{ImageConfig, Owner, ProgressFn, PullEvent};

/// An image resolved to this platform, before its layers are fetched.
pub(crate) struct Resolved {
    /// The canonical reference.
    pub reference: String,
    /// The image manifest's digest (for a docker archive, the configuration's).
    pub digest: String,
    /// The index the manifest was chosen from, when there was one.
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub config: ImageConfig,
    /// Lowest first.
    pub layers: Vec<LayerPlan>,
    /// A scratch directory the source was unpacked into (archives), removed when dropped.
    pub scratch: Option<Scratch>,
}

/// One layer to have in the store.
pub(crate) struct LayerPlan {
    /// The blob's digest as the manifest names it (for a docker archive, the diff id).
    pub digest: String,
    /// The blob's size as the manifest says (0 when unknown).
    pub size: u64,
    /// The digest of the uncompressed tar, which names the layer in the store.
    pub diff_id: String,
    /// Whether the blob itself must hash to `digest`.
    pub verify_compressed: bool,
    pub source: LayerSource,
}

/// Where a layer's blob is read from.
pub(crate) enum LayerSource {
    Registry {
        image: Arc<RegistryImage>,
        descriptor: Descriptor,
    },
    File {
        path: PathBuf,
    },
}

/// A directory removed when the pull that needed it ends, however it ends.
pub(crate) struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove a scratch directory");
        }
    }
}

/// Fetches the layer's blob and unpacks it into `dest` (an empty directory), checking the
/// blob's digest and diff id on the way.
pub(crate) async fn fetch_and_unpack(
    plan: &LayerPlan,
    dest: &Path,
    owner: Owner,
    progress: Option<ProgressFn>,
) -> Result<Unpacked, ImageError> {
    let digest = plan.digest.clone();
    let diff_id = plan.diff_id.clone();
    let compressed = plan.verify_compressed.then(|| plan.digest.clone());
    let dest = dest.to_path_buf();
    let report = move |received: u64| {
        if let Some(progress) = &progress {
            progress(PullEvent::LayerProgress {
                digest: digest.clone(),
                received,
            });
        }
    };
    let label = plan.digest.clone();
    let unpack = move |reader: Box<dyn std::io::Read>| {
        let mut report = report;
        let expected = Expected {
            label: &label,
            compressed: compressed.as_deref(),
            diff_id: Some(&diff_id),
        };
        unpack_layer(reader, &dest, owner, &expected, Some(&mut report))
    };
    match &plan.source {
        LayerSource::File { path } => {
            let path = path.clone();
            join(
                tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&path)
                        .map_err(ImageError::io("open the layer blob", &path))?;
                    unpack(Box::new(file))
                })
                .await,
            )
        }
        LayerSource::Registry { image, descriptor } => {
            let (writer, reader) = tokio::io::duplex(1 << 20);
            let bridge = SyncIoBridge::new(reader);
            let unpacking = tokio::task::spawn_blocking(move || unpack(Box::new(bridge)));
            let fetched = image.pull_blob(descriptor, writer).await;
            let unpacked = join(unpacking.await);
            match (fetched, unpacked) {
                // A broken connection also truncates what the unpacker saw: the network is
                // the cause, and trying again may work.
                (Err(fetch), _) if fetch.is_retryable() => Err(fetch),
                (Ok(()), unpacked) => unpacked,
                // The unpacker's own verdict is the more precise one when it has one: a digest
                // mismatch it saw, or an unsafe entry it refused (which closed the stream).
                (
                    Err(_),
                    Err(
                        unpacked @ (ImageError::DigestMismatch { .. }
                        | ImageError::UnsafeEntry { .. }
                        | ImageError::CorruptLayer { .. }
                        | ImageError::Io { .. }),
                    ),
                ) => Err(unpacked),
                (Err(fetch), _) => Err(fetch),
            }
        }
    }
}

fn join<T>(joined: Result<Result<T, ImageError>, tokio::task::JoinError>) -> Result<T, ImageError> {
    joined.map_err(|e| ImageError::Io {
        action: "unpack a layer (the worker thread failed)",
        path: PathBuf::new(),
        source: std::io::Error::other(e.to_string()),
    })?
}
