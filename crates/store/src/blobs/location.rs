//! Where blobs live, from configuration: a blob URL (`NIGHTSHIFT_BLOB_URL`) and the `AWS_*`
//! settings that go with an `s3://` one, turned into an [`ObjectStore`].
//!
//! The settings are passed in rather than read here, so that tests (which never touch the
//! process environment) can point a store at their own server; the binaries pass the process
//! environment, which makes this `AmazonS3Builder::from_env()` with an explicit environment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::ClientConfigKey;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use url::Url;

use crate::StoreError;
use crate::open::without_credentials;

/// The forms a blob URL may take, for messages.
pub(crate) const ACCEPTED: &str = "use s3://BUCKET or s3://BUCKET/PREFIX (credentials, region and \
     endpoint come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ENDPOINT_URL), \
     or file:///ABSOLUTE/PATH, or leave NIGHTSHIFT_BLOB_URL unset for the blobs directory in the \
     nightshift home";

/// How often and for how long a failed request is retried. object_store's default (10 times
/// over up to 3 minutes) would leave `nightshift diff` hanging for minutes when the endpoint is
/// down; a few quick retries ride out a blip and then say what is wrong.
const RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);

/// An object store and a description of it for messages (never with credentials).
pub(crate) struct Opened {
    pub objects: Arc<dyn ObjectStore>,
    pub place: String,
}

/// A local directory, created if missing.
pub(crate) fn directory(root: &Path) -> Result<Opened, StoreError> {
    std::fs::create_dir_all(root).map_err(|cause| StoreError::Io {
        action: "create the blobs directory",
        path: root.to_path_buf(),
        cause,
    })?;
    let place = root.display().to_string();
    let files = LocalFileSystem::new_with_prefix(root)
        .map_err(|cause| StoreError::Blob {
            action: "open the blobs directory",
            place: place.as_str().into(),
            key: String::new(),
            cause: Box::new(cause),
        })?
        // Deleting a task's last blob removes its directory too.
        .with_automatic_cleanup(true);
    Ok(Opened {
        objects: Arc::new(files),
        place,
    })
}

/// The store a blob URL names: `file:///path` or `s3://bucket[/prefix]`, with `AWS_*` settings
/// taken from `env` (name, value) pairs; other names in `env` are ignored.
pub(crate) fn from_url<I, K, V>(url: &str, env: I) -> Result<Opened, StoreError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    let invalid = |reason: String| StoreError::BlobUrl {
        url: without_credentials(url.trim()),
        reason,
    };
    let parsed =
        Url::parse(url.trim()).map_err(|err| invalid(format!("it is not a URL ({err})")))?;
    match parsed.scheme() {
        "file" => {
            if parsed.host_str().is_some_and(|host| !host.is_empty()) {
                return Err(invalid(
                    "a file URL names a directory on this machine: file:///PATH, with three \
                     slashes"
                        .into(),
                ));
            }
            let path: PathBuf = parsed
                .to_file_path()
                .map_err(|()| invalid("it does not name an absolute directory".into()))?;
            directory(&path)
        }
        "s3" => s3(&parsed, env).map_err(invalid),
        other => Err(invalid(format!(
            "`{other}:` is not a kind of blob store nightshift knows"
        ))),
    }
}

/// An S3 bucket (AWS or any S3-compatible server), with the URL's path as a key prefix.
fn s3<I, K, V>(url: &Url, env: I) -> Result<Opened, String>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials do not go in the URL: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                .into(),
        );
    }
    if url.port().is_some() {
        return Err(
            "an s3:// URL names a bucket, not a server: put the server in AWS_ENDPOINT_URL".into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("an s3:// URL takes no `?` or `#` part".into());
    }
    let bucket = url.host_str().unwrap_or_default();
    if bucket.is_empty() {
        return Err("it names no bucket: s3://BUCKET or s3://BUCKET/PREFIX".into());
    }
    let prefix = url.path().trim_matches('/');
    if prefix.contains('%') {
        return Err(format!(
            "the prefix `{prefix}` holds a `%` escape (a space or another character a URL must escape); use a prefix of letters, digits, `-`, `_`, `.` and `/`"
        ));
    }
    let prefix = object_store::path::Path::parse(prefix)
        .map_err(|err| format!("the prefix `{prefix}` is not usable as a key prefix: {err}"))?;

    let mut builder = AmazonS3Builder::new().with_retry(RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: RETRIES,
        retry_timeout: RETRY_TIMEOUT,
    });
    let (mut endpoint, mut s3_endpoint): (Option<String>, Option<String>) = (None, None);
    let mut allow_http = false;
    for (name, value) in env {
        let name = name.as_ref();
        if !name.starts_with("AWS_") {
            continue;
        }
        // What object_store's `from_env` does; names it does not know are not its business.
        if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            let value = value.into();
            match key {
                AmazonS3ConfigKey::Endpoint => endpoint = Some(value.clone()),
                AmazonS3ConfigKey::S3Endpoint => s3_endpoint = Some(value.clone()),
                AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp) => {
                    allow_http = is_truthy(&value)
                }
                _ => {}
            }
            builder = builder.with_config(key, value);
        }
    }
    // As object_store decides: the S3-specific endpoint wins.
    let endpoint = s3_endpoint.or(endpoint);
    // Otherwise every request fails with reqwest's bare "builder error".
    if let Some(endpoint) = &endpoint
        && endpoint
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("http://")
        && !allow_http
    {
        return Err(format!(
            "the endpoint {} is plain http, which is refused unless AWS_ALLOW_HTTP=true \
             (only for a server on a trusted network: requests are signed but not encrypted)",
            without_credentials(endpoint)
        ));
    }
    // reqwest's rustls has no crypto provider of its own here (no aws-lc-rs), and panics
    // without one: install ring, as the binary does at start-up, unless one already is.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let bucket_store = builder
        .with_bucket_name(bucket)
        .build()
        .map_err(|err| format!("the S3 settings do not work: {err}"))?;

    let mut place = if prefix.as_ref().is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    };
    if let Some(endpoint) = endpoint {
        place.push_str(&format!(" at {}", without_credentials(&endpoint)));
    }
    let objects: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
        Arc::new(bucket_store)
    } else {
        Arc::new(PrefixStore::new(bucket_store, prefix))
    };
    Ok(Opened { objects, place })
}

/// A true value as object_store reads one.
fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "on" | "yes" | "y"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    fn refusal(url: &str) -> String {
        match from_url(url, NO_ENV) {
            Ok(opened) => panic!("`{url}` was accepted as {}", opened.place),
            Err(error) => {
                assert!(matches!(error, StoreError::BlobUrl { .. }), "{error}");
                error.to_string()
            }
        }
    }

    #[test]
    fn s3_urls_name_a_bucket_and_a_prefix() {
        let env = [
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "very-secret"),
            ("AWS_ENDPOINT_URL", "http://minio.internal:9000"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_PROFILE", "ignored"),
            ("HOME", "/ignored"),
        ];
        let opened = from_url("s3://blobs/team/nightshift/", env).unwrap();
        assert_eq!(
            opened.place,
            "s3://blobs/team/nightshift at http://minio.internal:9000"
        );
        let opened = from_url("s3://blobs", NO_ENV).unwrap();
        assert_eq!(opened.place, "s3://blobs");
        assert!(!format!("{:?}", opened.objects).contains("very-secret"));
    }

    #[test]
    fn file_urls_name_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a b/blobs");
        let url = Url::from_file_path(&dir).unwrap();
        let opened = from_url(url.as_str(), NO_ENV).unwrap();
        assert_eq!(opened.place, dir.display().to_string());
        assert!(dir.is_dir());
    }

    #[test]
    fn bad_urls_say_what_is_wrong_and_what_is_accepted() {
        for (url, says) in [
            ("gs://bucket/x", "`gs:` is not a kind of blob store"),
            ("/var/lib/blobs", "relative URL without a base"),
            ("s3://", "names no bucket"),
            (
                "s3://AKIA:hunter2@bucket",
                "credentials do not go in the URL",
            ),
            ("s3://bucket:9000/x", "AWS_ENDPOINT_URL"),
            ("s3://bucket?region=x", "no `?`"),
            ("file://host/path", "three slashes"),
        ] {
            let text = refusal(url);
            assert!(text.contains(says), "{url}: {text}");
            assert!(text.contains("s3://BUCKET/PREFIX"), "{url}: {text}");
            assert!(text.contains("file:///"), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{url}: {text}");
        }
    }

    #[test]
    fn a_plain_http_endpoint_needs_allow_http() {
        let endpoint = ("AWS_ENDPOINT_URL", "http://minio:9000");
        let text = match from_url("s3://bucket", [endpoint]) {
            Ok(_) => panic!("accepted"),
            Err(error) => error.to_string(),
        };
        assert!(text.contains("AWS_ALLOW_HTTP=true"), "{text}");
        for yes in ["true", "1", "YES"] {
            assert!(from_url("s3://bucket", [endpoint, ("AWS_ALLOW_HTTP", yes)]).is_ok());
        }
        let https = ("AWS_ENDPOINT_URL", "https://minio:9000");
        assert!(from_url("s3://bucket", [https]).is_ok());
    }

    #[test]
    fn settings_object_store_refuses_are_reported_as_such() {
        let text = match from_url("s3://bucket", [("AWS_ALLOW_HTTP", "perhaps")]) {
            Ok(_) => panic!("accepted"),
            Err(error) => error.to_string(),
        };
        assert!(text.contains("S3 settings do not work"), "{text}");
    }
}
