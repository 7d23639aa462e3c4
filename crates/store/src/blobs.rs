//! Blobs: the larger things a task leaves behind (its diff, full command logs, artifacts), kept
//! as files beside the database rather than in it, so that the database stays small and a blob
//! can be replaced atomically.
//!
//! Built on `object_store` so that the same keys (`tasks/<id>/<name>`) can later live in an
//! object store bucket without the callers noticing.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use nightshift_protocol::TaskId;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};

use crate::StoreError;

/// The longest blob name accepted.
const MAX_NAME_LEN: usize = 200;

/// Blobs in a local directory, one subdirectory per task.
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    files: Arc<LocalFileSystem>,
}

impl LocalBlobs {
    /// Blobs under `root`, which is created if missing.
    pub fn open(root: &Path) -> Result<LocalBlobs, StoreError> {
        std::fs::create_dir_all(root).map_err(|cause| StoreError::Io {
            action: "create the blobs directory",
            path: root.to_path_buf(),
            cause,
        })?;
        let files = LocalFileSystem::new_with_prefix(root).map_err(|cause| StoreError::Blob {
            action: "open the directory of",
            key: root.display().to_string(),
            cause,
        })?;
        Ok(LocalBlobs {
            files: Arc::new(files),
        })
    }

    /// Stores `bytes` as the task's blob `name`, replacing one of the same name. Readers see
    /// either the old or the new content, never a mix.
    pub async fn put(&self, id: TaskId, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        let key = key(id, name)?;
        self.files
            .put(&key, PutPayload::from_bytes(bytes))
            .await
            .map_err(|cause| StoreError::Blob {
                action: "write",
                key: key.to_string(),
                cause,
            })?;
        Ok(())
    }

    /// The task's blob `name`, or `None` if it was never stored.
    pub async fn get(&self, id: TaskId, name: &str) -> Result<Option<Bytes>, StoreError> {
        let key = key(id, name)?;
        let read = match self.files.get(&key).await {
            Ok(found) => found.bytes().await,
            Err(error) => Err(error),
        };
        match read {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(cause) => Err(StoreError::Blob {
                action: "read",
                key: key.to_string(),
                cause,
            }),
        }
    }
}

/// The key of a task's blob, after checking that `name` is one plain file name.
fn key(id: TaskId, name: &str) -> Result<Key, StoreError> {
    if !is_valid_name(name) {
        return Err(StoreError::InvalidBlobName {
            name: name.to_string(),
        });
    }
    let id = id.to_string();
    Ok(Key::from_iter(["tasks", id.as_str(), name]))
}

/// A deliberately small alphabet: no separators, no `..`, no hidden files, nothing that needs
/// escaping on any file system or in a URL.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_plain_file_names() {
        for good in [
            "diff.patch",
            "agent.log",
            "stdout-3.txt",
            "a",
            "a..b",
            "UPPER_case",
        ] {
            assert!(is_valid_name(good), "{good}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", ".hidden", "a b", "a#1", "é", &long,
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
