//! Holds: a task keeps the layers of the image it runs on from being removed while its
//! sandboxes stand on them, and the store is kept under a size budget by forgetting the least
//! recently used images that no task holds.
//!
//! A hold is a file `holds/<pid>-<random>` listing the held layers, locked (shared) by its
//! holder for as long as it lives. Whoever removes layers ([`Store::prune`]) counts the layers
//! of every hold still locked as used, and removes the files of holds whose holder is gone.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::{LayerRecord, Store, lock_file};
use crate::error::ImageError;
use crate::{Image, PruneReport};

/// An image's layers held for as long as this lives.
#[derive(Debug)]
pub struct ImageHold {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for ImageHold {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What [`Store::evict`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// The references of the images forgotten, least recently used first.
    pub images: Vec<String>,
    /// The layers removed and the bytes they held.
    pub pruned: PruneReport,
    /// The bytes of the layers left.
    pub bytes_left: u64,
}

impl Store {
    /// Holds `image`'s layers: no prune or eviction removes them until the hold is dropped,
    /// even when the image is removed or its tag moves meanwhile.
    pub fn hold(&self, image: &Image) -> Result<ImageHold, ImageError> {
        let dir = self.dir("holds");
        std::fs::create_dir_all(&dir).map_err(ImageError::io("create", &dir))?;
        let path = dir.join(format!(
            "{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let lock = lock_file(&path, FlockArg::LockSharedNonblock)?;
        let mut listing = String::new();
        for layer in &image.layers {
            if let Some(name) = layer.file_name().and_then(|n| n.to_str()) {
                listing.push_str(name);
                listing.push('\n');
            }
        }
        let mut file: &File = &lock;
        file.write_all(listing.as_bytes())
            .map_err(ImageError::io("write", &path))?;
        Ok(ImageHold { path, _lock: lock })
    }

    /// The layers held by living holds; the files of holds whose holder is gone are removed.
    pub(super) fn held_layers(&self) -> Result<std::collections::HashSet<String>, ImageError> {
        let dir = self.dir("holds");
        let mut held = std::collections::HashSet::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(held),
            Err(e) => return Err(ImageError::io("list", &dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(ImageError::io("list", &dir))?.path();
            match lock_file(&path, FlockArg::LockExclusiveNonblock) {
                // Nobody holds it: its holder is gone.
                Ok(_stale) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(ImageError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EWOULDBLOCK) =>
                {
                    let text =
                        std::fs::read_to_string(&path).map_err(ImageError::io("read", &path))?;
                    held.extend(text.lines().map(str::to_string));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(held)
    }

    /// Keeps the layers under `budget` bytes of file content: forgets the least recently
    /// used images (by their last pull or lookup) whose layers no task holds, one at a time,
    /// pruning after each, until the layers left fit or only held or recent images remain.
    pub fn evict(&self, budget: u64) -> Result<EvictReport, ImageError> {
        let mut report = EvictReport::default();
        let mut records = self.records()?;
        records.sort_by_key(|(path, _)| modified(path));
        let held = self.held_layers()?;
        let mut candidates = records.into_iter();
        loop {
            report.bytes_left = self.layer_bytes()?;
            if report.bytes_left <= budget {
                break;
            }
            let Some((path, record)) = candidates.next() else {
                break;
            };
            let in_use = record
                .layers
                .iter()
                .any(|layer| held.contains(super::digest_hex(&layer.diff_id)));
            if in_use {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => report.images.push(record.reference),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ImageError::io("remove", &path)(e)),
            }
            let pruned = self.prune()?;
            report.pruned.layers += pruned.layers;
            report.pruned.bytes += pruned.bytes;
        }
        Ok(report)
    }

    /// The bytes of file content of every layer in the store.
    fn layer_bytes(&self) -> Result<u64, ImageError> {
        let layers = self.dir("layers");
        let mut total = 0;
        for entry in std::fs::read_dir(&layers).map_err(ImageError::io("list", &layers))? {
            let path = entry.map_err(ImageError::io("list", &layers))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                total += std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<LayerRecord>(&b).ok())
                    .map_or(0, |r| r.file_bytes);
            }
        }
        Ok(total)
    }
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
}
