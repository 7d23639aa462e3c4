//! Blobs: the larger things a task leaves behind (its diff, full command logs, artifacts), kept
//! beside the database rather than in it, so that the database stays small and a blob can be
//! replaced atomically.
//!
//! Built on `object_store`: by default a local directory (`NIGHTSHIFT_HOME/blobs`); with
//! `NIGHTSHIFT_BLOB_URL=s3://bucket/prefix`, a bucket of AWS S3 or of any S3-compatible server,
//! which every server and worker can reach without sharing a file system. Keys are the same in
//! both: `tasks/<id>/<name>`, under the URL's prefix.

mod location;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use nightshift_protocol::TaskId;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::StoreError;

pub(crate) use location::ACCEPTED as ACCEPTED_BLOB_URLS;

/// The longest blob name accepted.
const MAX_NAME_LEN: usize = 200;

/// Where [`Blobs::check`] looks: a prefix no task's key can have (task ids never start with
/// `-`), so that the answer is one short, empty listing however many blobs there are.
const CHECK_PREFIX: &str = "tasks/-check";

/// The blobs of every task, in a local directory or an object store bucket. Cheap to clone:
/// clones share the connection pool.
#[derive(Clone)]
pub struct Blobs {
    objects: Arc<dyn ObjectStore>,
    /// Where they are, for messages: a directory, or `s3://bucket/prefix at endpoint`. Never
    /// credentials.
    place: Arc<str>,
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Blobs").field(&self.place).finish()
    }
}

impl Blobs {
    /// Blobs under the directory `root`, which is created if missing.
    pub fn local(root: &Path) -> Result<Blobs, StoreError> {
        Ok(Blobs::from(location::directory(root)?))
    }

    /// The blobs a URL names (`NIGHTSHIFT_BLOB_URL`):
    /// - `s3://BUCKET` or `s3://BUCKET/PREFIX`: that bucket of AWS S3 or of an S3-compatible
    ///   server (MinIO, Ceph, Garage...), configured by the `AWS_*` names of `env` as
    ///   object_store's `AmazonS3Builder::from_env` reads them: `AWS_ACCESS_KEY_ID`,
    ///   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`),
    ///   `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, ...;
    /// - `file:///PATH`: that local directory, created if missing.
    ///
    /// The binaries pass the process environment as `env`. Nothing is sent over the network
    /// here: [`Blobs::check`] does that.
    pub fn from_url<I, K, V>(url: &str, env: I) -> Result<Blobs, StoreError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        Ok(Blobs::from(location::from_url(url, env)?))
    }

    /// Where the blobs are, as messages name it: a directory, or `s3://bucket/prefix` (with
    /// `at ENDPOINT` for an S3-compatible server). Never credentials.
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Checks that the blobs can be reached, read and written with the configured credentials:
    /// one listing that finds nothing, then a small probe object written and deleted under a
    /// prefix no task can have. A missing bucket, refused or read-only credentials or an
    /// unreachable endpoint is an error now rather than when a task hands back its diff.
    pub async fn check(&self) -> Result<(), StoreError> {
        let prefix = Key::from(CHECK_PREFIX);
        self.objects
            .list(Some(&prefix))
            .try_next()
            .await
            .map_err(|cause| {
                self.error("check access to the blobs by listing", CHECK_PREFIX, cause)
            })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("{CHECK_PREFIX}/probe-{}-{nanos}", std::process::id());
        let probe = Key::from(name.as_str());
        self.objects
            .put(
                &probe,
                PutPayload::from_static(b"nightshift checks it may write here\n"),
            )
            .await
            .map_err(|cause| self.error("check that blobs can be written", &name, cause))?;
        self.objects
            .delete(&probe)
            .await
            .map_err(|cause| self.error("check that blobs can be deleted", &name, cause))?;
        Ok(())
    }

    /// Stores `bytes` as the task's blob `name`, replacing one of the same name. Readers see
    /// either the old or the new content, never a mix.
    pub async fn put(&self, id: TaskId, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        let key = key(id, name)?;
        self.objects
            .put(&key, PutPayload::from_bytes(bytes))
            .await
            .map_err(|cause| self.error("write the blob", key.as_ref(), cause))?;
        Ok(())
    }

    /// The task's blob `name`, or `None` if it was never stored.
    pub async fn get(&self, id: TaskId, name: &str) -> Result<Option<Bytes>, StoreError> {
        let key = key(id, name)?;
        let read = match self.objects.get(&key).await {
            Ok(found) => found.bytes().await,
            Err(error) => Err(error),
        };
        match read {
            Ok(bytes) => Ok(Some(bytes)),
            // A missing bucket is a 404 too; only a missing blob means "none".
            Err(cause @ object_store::Error::NotFound { .. }) if !is_missing_bucket(&cause) => {
                Ok(None)
            }
            Err(cause) => Err(self.error("read the blob", key.as_ref(), cause)),
        }
    }

    /// The names of the task's blobs, sorted.
    pub async fn list(&self, id: TaskId) -> Result<Vec<String>, StoreError> {
        let prefix = task_prefix(id);
        let found: Vec<_> = self
            .objects
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|cause| self.error("list the blobs under", prefix.as_ref(), cause))?;
        let mut names: Vec<String> = found
            .into_iter()
            .filter_map(|meta| {
                let mut parts = meta.location.prefix_match(&prefix)?;
                let name = parts.next()?;
                // Only the task's own blobs, not whatever else may sit deeper.
                parts.next().is_none().then(|| name.as_ref().to_string())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes the task's blob `name`; deleting one that is not there is not an error.
    pub async fn delete(&self, id: TaskId, name: &str) -> Result<(), StoreError> {
        let key = key(id, name)?;
        match self.objects.delete(&key).await {
            Ok(()) => Ok(()),
            Err(cause @ object_store::Error::NotFound { .. }) if !is_missing_bucket(&cause) => {
                Ok(())
            }
            Err(cause) => Err(self.error("delete the blob", key.as_ref(), cause)),
        }
    }

    fn error(&self, action: &'static str, key: &str, cause: object_store::Error) -> StoreError {
        StoreError::Blob {
            action,
            place: Arc::clone(&self.place),
            key: key.to_string(),
            cause: Box::new(cause),
        }
    }
}

impl From<location::Opened> for Blobs {
    fn from(opened: location::Opened) -> Blobs {
        Blobs {
            objects: opened.objects,
            place: opened.place.into(),
        }
    }
}

/// Whether a 404 is about the bucket rather than the object: S3 says so in its error body
/// (`NoSuchBucket`), which object_store keeps in the error's message.
pub(crate) fn is_missing_bucket(error: &object_store::Error) -> bool {
    error.to_string().contains("NoSuchBucket")
}

fn task_prefix(id: TaskId) -> Key {
    let id = id.to_string();
    Key::from_iter(["tasks", id.as_str()])
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
    fn a_missing_bucket_is_not_a_missing_blob() {
        let not_found = |body: &str| object_store::Error::NotFound {
            path: "tasks/x/diff.patch".into(),
            source: format!("404 Not Found: <Error><Code>{body}</Code></Error>").into(),
        };
        assert!(is_missing_bucket(&not_found("NoSuchBucket")));
        assert!(!is_missing_bucket(&not_found("NoSuchKey")));
    }

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
