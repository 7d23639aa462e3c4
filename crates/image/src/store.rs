//! The content-addressed store of unpacked layers and the images that use them.
//!
//! Layout under the store directory (mode 0700: layers hold images' setuid programs):
//!
//! ```text
//! store.json               the ownership mode the layers were unpacked with
//! store.lock               shared by pulls, exclusive for prune and start-up cleaning
//! layers/<hex>/            one unpacked layer, named by its diff id (uncompressed digest)
//! layers/<hex>.json        what is known of it; its modification time is its last use
//! locks/<hex>.lock         held while the layer is fetched, so it is fetched once
//! images/<hex>.json        one image: reference, manifest digest, config, layer diff ids;
//!                          named by the sha256 of the canonical reference; mtime = last use
//! tmp/                     layers being unpacked and archives being read
//! ```
//!
//! A layer appears under `layers/` only by a rename of a directory that was completely
//! unpacked and checked, so readers never see a partial layer; whatever is left in `tmp/` by
//! a crash is removed when the store is next opened with no pull running.

mod holds;

pub use holds::{EvictReport, ImageHold};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::codec::sha256_digest;
use crate::error::ImageError;
use crate::pull::{LayerPlan, fetch_and_unpack};
use crate::reference::parse_digest;
use crate::registry::{ATTEMPTS, backoff};
use crate::remove::remove_tree;
use crate::{Image, ImageConfig, Owner, PullEvent, PullOptions, Reference, local, registry};

/// How many layers of one image are fetched at once.
const PARALLEL_LAYERS: usize = 3;
/// The version of the records' format.
const RECORD_VERSION: u32 = 1;

/// One layer being made present, boxed so a pull's layers can run side by side.
type LayerFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ImageError>> + Send + 'a>>;

/// What [`Store::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Layers removed.
    pub layers: usize,
    /// Bytes of file content they held.
    pub bytes: u64,
}

/// A store of unpacked layers and image records in one directory.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    root: PathBuf,
    owner: Owner,
}

#[derive(Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    owner: String,
}

/// An image's record under `images/`.
#[derive(Debug, Serialize, Deserialize)]
struct ImageRecord {
    version: u32,
    reference: String,
    digest: String,
    #[serde(default)]
    index_digest: Option<String>,
    config_digest: String,
    config: ImageConfig,
    layers: Vec<LayerRef>,
    pulled_at: jiff::Timestamp,
}

/// A layer as an image uses it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerRef {
    diff_id: String,
    digest: String,
    size: u64,
}

/// A layer's record next to its directory.
#[derive(Debug, Serialize, Deserialize)]
struct LayerRecord {
    version: u32,
    diff_id: String,
    digest: String,
    compressed_bytes: u64,
    file_bytes: u64,
    files: u64,
    whiteouts: u64,
    skipped: u64,
    unpacked_at: jiff::Timestamp,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` for layers owned as `owner`.
    pub fn open(dir: &Path, owner: Owner) -> Result<Store, ImageError> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir).map_err(ImageError::io("create the image store", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(ImageError::io("restrict the image store", dir))?;
        for sub in ["layers", "images", "locks", "tmp"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(ImageError::io("create", &path))?;
        }
        let store_file = dir.join("store.json");
        match std::fs::read(&store_file) {
            Ok(bytes) => {
                let recorded: StoreFile =
                    serde_json::from_slice(&bytes).map_err(|e| ImageError::CorruptRecord {
                        path: store_file.clone(),
                        detail: e.to_string(),
                    })?;
                if recorded.owner != owner.describe() {
                    return Err(ImageError::OwnerMismatch {
                        path: dir.to_path_buf(),
                        found: recorded.owner,
                        wanted: owner.describe(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let record = StoreFile {
                    version: RECORD_VERSION,
                    owner: owner.describe(),
                };
                write_json(&dir.join("tmp"), &store_file, &record)?;
            }
            Err(e) => return Err(ImageError::io("read", &store_file)(e)),
        }
        let store = Store {
            inner: Arc::new(StoreInner {
                root: dir.to_path_buf(),
                owner,
            }),
        };
        // Leftovers of a crashed pull, when no pull is running (else that pull owns them).
        if let Some(_lock) = store.store_lock(FlockArg::LockExclusiveNonblock)? {
            store.clean_tmp()?;
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Pulls the image into the store: resolves it for this platform, fetches and unpacks each
    /// layer the store lacks (once, however many pulls want it at the same time), and records
    /// the reference. Returns the image as the store now holds it.
    pub async fn pull(
        &self,
        reference: &Reference,
        options: &PullOptions,
    ) -> Result<Image, ImageError> {
        let this = self.clone();
        let _shared = tokio::task::spawn_blocking(move || this.store_lock(FlockArg::LockShared))
            .await
            .map_err(join_error)??;
        let display = reference.to_string();
        let scratch = || self.tmp_path("source");
        let resolved = match reference {
            Reference::Registry { .. } => registry::resolve(reference, options).await?,
            Reference::OciLayout { path, tag } => {
                let (path, tag, display) = (path.clone(), tag.clone(), display.clone());
                blocking(move || local::resolve_layout(&path, tag.as_deref(), &display)).await?
            }
            Reference::OciArchive { path, tag } => {
                let (path, tag, display, scratch) =
                    (path.clone(), tag.clone(), display.clone(), scratch());
                blocking(move || {
                    local::resolve_oci_archive(&path, tag.as_deref(), &display, scratch)
                })
                .await?
            }
            Reference::DockerArchive { path, reference } => {
                let (path, wanted, display, scratch) =
                    (path.clone(), reference.clone(), display.clone(), scratch());
                blocking(move || {
                    local::resolve_docker_archive(&path, wanted.as_deref(), &display, scratch)
                })
                .await?
            }
        };
        let emit = |event: PullEvent| {
            if let Some(progress) = &options.progress {
                progress(event);
            }
        };
        emit(PullEvent::Resolved {
            reference: resolved.reference.clone(),
            digest: resolved.digest.clone(),
        });
        // Collected first: a lazy `map` closure in the stream would make the pull future
        // lose `Send` (a higher-ranked lifetime the compiler cannot prove general).
        let layers: Vec<LayerFuture<'_>> = resolved
            .layers
            .iter()
            .map(|plan| Box::pin(self.ensure_layer(plan, options)) as LayerFuture<'_>)
            .collect();
        futures::stream::iter(layers)
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect::<Vec<()>>()
            .await?;
        let record = ImageRecord {
            version: RECORD_VERSION,
            reference: resolved.reference.clone(),
            digest: resolved.digest.clone(),
            index_digest: resolved.index_digest.clone(),
            config_digest: resolved.config_digest.clone(),
            config: resolved.config.clone(),
            layers: resolved
                .layers
                .iter()
                .map(|plan| LayerRef {
                    diff_id: plan.diff_id.clone(),
                    digest: plan.digest.clone(),
                    size: plan.size,
                })
                .collect(),
            pulled_at: jiff::Timestamp::now(),
        };
        write_json(
            &self.dir("tmp"),
            &self.record_path(&resolved.reference),
            &record,
        )?;
        emit(PullEvent::Done {
            reference: resolved.reference.clone(),
            digest: resolved.digest.clone(),
        });
        drop(resolved);
        self.image_from(record)?
            .ok_or_else(|| ImageError::CorruptRecord {
                path: self.record_path(&display),
                detail: "a layer vanished right after the pull (a concurrent prune?)".to_string(),
            })
    }

    /// What the store holds for `reference`, without the network; `None` when it was never
    /// pulled or a layer it needs has since been removed. Marks the image and its layers used.
    pub fn get(&self, reference: &Reference) -> Result<Option<Image>, ImageError> {
        let Some((path, record)) = self.find_record(reference)? else {
            return Ok(None);
        };
        let image = self.image_from(record)?;
        if let Some(image) = &image {
            touch(&path);
            for layer in &image.layers {
                touch(&layer.with_extension("json"));
            }
        }
        Ok(image)
    }

    /// Every image the store holds completely, in no particular order.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut images = Vec::new();
        for (path, record) in self.records()? {
            match self.image_from(record)? {
                Some(image) => images.push(image),
                None => {
                    tracing::debug!(path = %path.display(), "an image record whose layers are gone")
                }
            }
        }
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(images)
    }

    /// Forgets `reference` (its layers stay until [`Store::prune`]). Returns whether the store
    /// had it.
    pub fn remove(&self, reference: &Reference) -> Result<bool, ImageError> {
        let Some((path, _)) = self.find_record(reference)? else {
            return Ok(false);
        };
        std::fs::remove_file(&path).map_err(ImageError::io("remove", &path))?;
        Ok(true)
    }

    /// Removes every layer no image record and no [`ImageHold`] uses, and anything left in
    /// `tmp/`. Waits for running pulls to finish first.
    pub fn prune(&self) -> Result<PruneReport, ImageError> {
        let _exclusive = self.store_lock(FlockArg::LockExclusive)?;
        self.clean_tmp()?;
        let mut used = self.held_layers()?;
        used.extend(self.records()?.into_iter().flat_map(|(_, record)| {
            record
                .layers
                .into_iter()
                .map(|l| digest_hex(&l.diff_id).to_string())
        }));
        let layers_dir = self.dir("layers");
        let mut report = PruneReport::default();
        for entry in std::fs::read_dir(&layers_dir).map_err(ImageError::io("list", &layers_dir))? {
            let entry = entry.map_err(ImageError::io("list", &layers_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.trim_end_matches(".json");
            if used.contains(hex) || !entry.path().is_dir() {
                continue;
            }
            let meta_path = layers_dir.join(format!("{hex}.json"));
            let bytes = std::fs::read(&meta_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<LayerRecord>(&b).ok())
                .map_or(0, |r| r.file_bytes);
            // Out of sight first, so nobody starts using a half-removed layer.
            let doomed = self.tmp_path("prune");
            std::fs::rename(entry.path(), &doomed)
                .map_err(ImageError::io("remove", entry.path()))?;
            let _ = std::fs::remove_file(&meta_path);
            remove_tree(&doomed).map_err(ImageError::io("remove", &doomed))?;
            report.layers += 1;
            report.bytes += bytes;
        }
        Ok(report)
    }

    /// Makes sure the layer is in the store, fetching it under its lock when it is not.
    async fn ensure_layer(
        &self,
        plan: &LayerPlan,
        options: &PullOptions,
    ) -> Result<(), ImageError> {
        let hex = parse_digest(&plan.diff_id)
            .map(|d| digest_hex(&d).to_string())
            .map_err(|detail| ImageError::InvalidImage {
                reference: plan.digest.clone(),
                what: "diff id".to_string(),
                detail,
            })?;
        let dir = self.dir("layers").join(&hex);
        let emit = |event: PullEvent| {
            if let Some(progress) = &options.progress {
                progress(event);
            }
        };
        let cached = || {
            touch(&dir.with_extension("json"));
            emit(PullEvent::Layer {
                digest: plan.digest.clone(),
                bytes: plan.size,
                fetched: false,
            });
        };
        if dir.is_dir() {
            cached();
            return Ok(());
        }
        let lock_path = self.dir("locks").join(format!("{hex}.lock"));
        let _lock = blocking(move || lock_file(&lock_path, FlockArg::LockExclusive)).await?;
        // Another pull may have fetched it while this one waited for the lock.
        if dir.is_dir() {
            cached();
            return Ok(());
        }
        emit(PullEvent::LayerStarted {
            digest: plan.digest.clone(),
            size: plan.size,
        });
        let mut attempt = 1;
        let unpacked = loop {
            let tmp = self.tmp_path(&format!("layer-{}", &hex[..12]));
            std::fs::create_dir(&tmp).map_err(ImageError::io("create", &tmp))?;
            let result =
                fetch_and_unpack(plan, &tmp, self.inner.owner, options.progress.clone()).await;
            match result {
                Ok(unpacked) => break (unpacked, tmp),
                Err(error) => {
                    let cleanup = tmp.clone();
                    blocking(move || {
                        remove_tree(&cleanup).map_err(ImageError::io("remove", &cleanup))
                    })
                    .await?;
                    if !error.is_retryable() || attempt >= ATTEMPTS {
                        return Err(error);
                    }
                    tracing::debug!(%error, attempt, layer = %plan.digest, "retrying a layer");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        };
        let (unpacked, tmp) = unpacked;
        let record = LayerRecord {
            version: RECORD_VERSION,
            diff_id: plan.diff_id.clone(),
            digest: plan.digest.clone(),
            compressed_bytes: unpacked.compressed_bytes,
            file_bytes: unpacked.file_bytes,
            files: unpacked.files,
            whiteouts: unpacked.whiteouts,
            skipped: unpacked.skipped,
            unpacked_at: jiff::Timestamp::now(),
        };
        write_json(&self.dir("tmp"), &dir.with_extension("json"), &record)?;
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = remove_tree(&tmp);
            return Err(ImageError::io("move the unpacked layer into", &dir)(e));
        }
        tracing::debug!(layer = %plan.digest, files = unpacked.files, skipped = unpacked.skipped, "layer unpacked");
        emit(PullEvent::Layer {
            digest: plan.digest.clone(),
            bytes: unpacked.compressed_bytes,
            fetched: true,
        });
        Ok(())
    }

    fn dir(&self, sub: &str) -> PathBuf {
        self.inner.root.join(sub)
    }

    /// A fresh name in `tmp/`.
    fn tmp_path(&self, what: &str) -> PathBuf {
        self.dir("tmp").join(format!(
            "{what}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    fn record_path(&self, canonical: &str) -> PathBuf {
        let key = sha256_digest(canonical.as_bytes());
        self.dir("images")
            .join(format!("{}.json", digest_hex(&key)))
    }

    fn records(&self) -> Result<Vec<(PathBuf, ImageRecord)>, ImageError> {
        let images = self.dir("images");
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&images).map_err(ImageError::io("list", &images))? {
            let path = entry.map_err(ImageError::io("list", &images))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match read_record(&path) {
                Ok(record) => records.push((path, record)),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable image record"),
            }
        }
        Ok(records)
    }

    /// The record for `reference`: by its canonical text, or, for a reference by digest, any
    /// record of the same repository with that manifest digest.
    fn find_record(
        &self,
        reference: &Reference,
    ) -> Result<Option<(PathBuf, ImageRecord)>, ImageError> {
        let path = self.record_path(&reference.to_string());
        match read_record(&path) {
            Ok(record) => return Ok(Some((path, record))),
            Err(ImageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            }
            Err(e) => return Err(e),
        }
        let Some((registry, repository, _, Some(digest))) = reference.registry_parts() else {
            return Ok(None);
        };
        let prefix = format!("{registry}/{repository}");
        Ok(self.records()?.into_iter().find(|(_, record)| {
            record.digest == digest
                && record
                    .reference
                    .strip_prefix(&prefix)
                    .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'))
        }))
    }

    /// The image a record describes, when all its layers are present.
    fn image_from(&self, record: ImageRecord) -> Result<Option<Image>, ImageError> {
        let mut layers = Vec::with_capacity(record.layers.len());
        for layer in &record.layers {
            let dir = self.dir("layers").join(digest_hex(&layer.diff_id));
            if !dir.is_dir() {
                return Ok(None);
            }
            layers.push(dir);
        }
        Ok(Some(Image {
            reference: record.reference,
            digest: record.digest,
            layers,
            config: record.config,
        }))
    }

    fn store_lock(&self, how: FlockArg) -> Result<Option<Flock<File>>, ImageError> {
        match lock_file(&self.dir("store.lock"), how) {
            Ok(lock) => Ok(Some(lock)),
            Err(ImageError::Io { source, .. })
                if source.raw_os_error() == Some(libc::EWOULDBLOCK) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn clean_tmp(&self) -> Result<(), ImageError> {
        let tmp = self.dir("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(ImageError::io("list", &tmp))? {
            let path = entry.map_err(ImageError::io("list", &tmp))?.path();
            remove_tree(&path).map_err(ImageError::io("remove a leftover", &path))?;
        }
        Ok(())
    }
}

fn digest_hex(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, hex)| hex)
}

fn read_record(path: &Path) -> Result<ImageRecord, ImageError> {
    let bytes = std::fs::read(path).map_err(ImageError::io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::CorruptRecord {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Writes JSON atomically: a temporary file in `tmp`, then a rename over `path`.
fn write_json<T: Serialize>(tmp: &Path, path: &Path, value: &T) -> Result<(), ImageError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| ImageError::CorruptRecord {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let staging = tmp.join(format!(
        "record-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::write(&staging, bytes).map_err(ImageError::io("write", &staging))?;
    std::fs::rename(&staging, path).map_err(|e| {
        let _ = std::fs::remove_file(&staging);
        ImageError::io("write", path)(e)
    })
}

/// Marks a record used now (its modification time is its last use, for an LRU prune).
fn touch(path: &Path) {
    if let Ok(file) = File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

fn lock_file(path: &Path, how: FlockArg) -> Result<Flock<File>, ImageError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(ImageError::io("open the lock", path))?;
    Flock::lock(file, how)
        .map_err(|(_, errno)| ImageError::io("lock", path)(std::io::Error::from(errno)))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(join_error)?
}

fn join_error(e: tokio::task::JoinError) -> ImageError {
    ImageError::Io {
        action: "run a store operation (the worker thread failed)",
        path: PathBuf::new(),
        source: std::io::Error::other(e.to_string()),
    }
}
