//! Image references as skopeo and Docker write them.
//!
//! People copy references from Dockerfiles, devcontainer.json files and skopeo command lines,
//! so the accepted forms are theirs: `REGISTRY/NAME[:TAG][@DIGEST]` (optionally prefixed with
//! `docker://`), Docker Hub short names (`rust:1.86` is `docker.io/library/rust:1.86`),
//! `oci:PATH[:TAG]`, `oci-archive:PATH[:TAG]` and `docker-archive:PATH[:REF]`. The canonical
//! text ([`std::fmt::Display`]) is what the store records, so two spellings of one image share
//! a record.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::ImageError;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// An image in a registry that speaks the OCI distribution API.
    Registry {
        /// Host and optional port, e.g. `docker.io` or `127.0.0.1:5000`.
        registry: String,
        /// The repository path, e.g. `library/rust`.
        repository: String,
        /// The tag; `latest` when neither a tag nor a digest was written.
        tag: Option<String>,
        /// The manifest digest, `sha256:<hex>`; when present it is what is pulled.
        digest: Option<String>,
    },
    /// An OCI image layout directory.
    OciLayout { path: PathBuf, tag: Option<String> },
    /// A tar archive of an OCI image layout.
    OciArchive { path: PathBuf, tag: Option<String> },
    /// The output of `docker save`.
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
}

impl Reference {
    /// Parses a reference in any accepted form. Relative paths of local sources are made
    /// absolute against the current directory, so the canonical text names one place.
    pub fn parse(s: &str) -> Result<Reference, ImageError> {
        let invalid = |reason: &str| ImageError::InvalidReference {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(invalid("it is empty"));
        }
        if let Some(rest) = trimmed.strip_prefix("oci:") {
            let (path, tag) = split_path(rest).map_err(|r| invalid(&r))?;
            return Ok(Reference::OciLayout { path, tag });
        }
        if let Some(rest) = trimmed.strip_prefix("oci-archive:") {
            let (path, tag) = split_path(rest).map_err(|r| invalid(&r))?;
            return Ok(Reference::OciArchive { path, tag });
        }
        if let Some(rest) = trimmed.strip_prefix("docker-archive:") {
            let (path, reference) = split_path(rest).map_err(|r| invalid(&r))?;
            return Ok(Reference::DockerArchive { path, reference });
        }
        let name = match trimmed.strip_prefix("docker://") {
            Some(rest) => rest,
            None if trimmed.contains("://") => {
                return Err(invalid("only the docker:// transport is understood"));
            }
            None => trimmed,
        };
        parse_registry(name).map_err(|r| invalid(&r))
    }

    /// The file or directory on this machine that the reference reads (`oci:`, `oci-archive:`,
    /// `docker-archive:`), or `None` for a registry image. A reference chosen by someone other
    /// than the machine's user (a repository, an API client) must not name one: it would read
    /// a host path into the sandbox.
    pub fn host_path(&self) -> Option<&Path> {
        match self {
            Reference::Registry { .. } => None,
            Reference::OciLayout { path, .. }
            | Reference::OciArchive { path, .. }
            | Reference::DockerArchive { path, .. } => Some(path),
        }
    }

    /// The tag or digest part as it would follow the name, for messages.
    pub(crate) fn registry_parts(&self) -> Option<(&str, &str, Option<&str>, Option<&str>)> {
        match self {
            Reference::Registry {
                registry,
                repository,
                tag,
                digest,
            } => Some((registry, repository, tag.as_deref(), digest.as_deref())),
            Reference::OciLayout { .. }
            | Reference::OciArchive { .. }
            | Reference::DockerArchive { .. } => None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Registry {
                registry,
                repository,
                tag,
                digest,
            } => {
                write!(f, "{registry}/{repository}")?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                if let Some(digest) = digest {
                    write!(f, "@{digest}")?;
                }
                Ok(())
            }
            Reference::OciLayout { path, tag } => write_local(f, "oci", path, tag.as_deref()),
            Reference::OciArchive { path, tag } => {
                write_local(f, "oci-archive", path, tag.as_deref())
            }
            Reference::DockerArchive { path, reference } => {
                write_local(f, "docker-archive", path, reference.as_deref())
            }
        }
    }
}

fn write_local(
    f: &mut fmt::Formatter<'_>,
    transport: &str,
    path: &Path,
    tag: Option<&str>,
) -> fmt::Result {
    write!(f, "{transport}:{}", path.display())?;
    if let Some(tag) = tag {
        write!(f, ":{tag}")?;
    }
    Ok(())
}

/// `PATH[:TAG]`, split at the first colon as skopeo does (a path with a colon cannot be named).
fn split_path(rest: &str) -> Result<(PathBuf, Option<String>), String> {
    let (path, tag) = match rest.split_once(':') {
        Some((path, tag)) => (path, Some(tag)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err("the path is empty".to_string());
    }
    let tag = match tag {
        Some("") => return Err("the tag after `:` is empty".to_string()),
        Some(tag) => Some(tag.to_string()),
        None => None,
    };
    let path =
        std::path::absolute(path).map_err(|e| format!("the path cannot be made absolute: {e}"))?;
    Ok((path, tag))
}

/// Docker's rules: the first component is a registry when it has a dot or a colon or is
/// `localhost`; otherwise the name is on Docker Hub, where one-component names live under
/// `library/`.
fn parse_registry(name: &str) -> Result<Reference, String> {
    let (rest, digest) = match name.split_once('@') {
        Some((rest, digest)) => (rest, Some(parse_digest(digest)?)),
        None => (name, None),
    };
    let (domain, path) = match rest.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), path)
        }
        _ => (DOCKER_HUB.to_string(), rest),
    };
    // Host names are case-insensitive: one registry gets one spelling in the store.
    let domain = domain.to_ascii_lowercase();
    let domain = if domain == "index.docker.io" || domain == "registry-1.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        domain
    };
    // The tag follows the last colon after the last slash (a colon before it is a port).
    let last_slash = path.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match path[last_slash..].rfind(':') {
        Some(i) => (
            &path[..last_slash + i],
            Some(path[last_slash + i + 1..].to_string()),
        ),
        None => (path, None),
    };
    if repository.is_empty() {
        return Err("the image name is empty".to_string());
    }
    for component in repository.split('/') {
        if !valid_path_component(component) {
            return Err(format!(
                "`{component}` is not a valid name component (lowercase letters, digits and \
                 single separators . _ __ - only)"
            ));
        }
    }
    if let Some(tag) = &tag
        && !valid_tag(tag)
    {
        return Err(format!(
            "`{tag}` is not a valid tag (up to 128 letters, digits, _ . -, not starting with . or -)"
        ));
    }
    let repository = if domain == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository.to_string()
    };
    let tag = match (tag, &digest) {
        (None, None) => Some("latest".to_string()),
        (tag, _) => tag,
    };
    Ok(Reference::Registry {
        registry: domain,
        repository,
        tag,
        digest,
    })
}

fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    // Separators: `.`, `_`, `__`, or one or more `-`, between alphanumeric runs.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let dashes = sep.bytes().all(|b| b == b'-');
        if !(sep == "." || sep == "_" || sep == "__" || dashes) {
            return false;
        }
    }
    true
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Accepts `sha256:<64 lowercase hex>`, the only algorithm registries use for images.
pub(crate) fn parse_digest(digest: &str) -> Result<String, String> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(digest.to_string())
        }
        _ => Err(format!(
            "`{digest}` is not a digest (expected sha256: and 64 lowercase hex digits)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn local_transports_name_a_host_path_and_registries_none() {
        for text in [
            "oci:/srv/layout:v1",
            "oci-archive:/tmp/a.tar",
            "docker-archive:x.tar",
        ] {
            let reference = Reference::parse(text).unwrap();
            assert!(
                reference.host_path().is_some_and(Path::is_absolute),
                "{text}"
            );
        }
        assert_eq!(Reference::parse("rust:1.86").unwrap().host_path(), None);
        assert_eq!(
            Reference::parse("docker://ghcr.io/acme/dev:1")
                .unwrap()
                .host_path(),
            None
        );
    }

    #[test]
    fn docker_hub_names_expand_as_docker_does() {
        assert_eq!(canonical("rust:1.86"), "docker.io/library/rust:1.86");
        assert_eq!(canonical("rust"), "docker.io/library/rust:latest");
        assert_eq!(canonical("docker://rust"), "docker.io/library/rust:latest");
        assert_eq!(canonical("someone/tool:v2"), "docker.io/someone/tool:v2");
        assert_eq!(
            canonical("index.docker.io/library/debian"),
            "docker.io/library/debian:latest"
        );
    }

    #[test]
    fn registries_ports_and_digests() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            canonical("127.0.0.1:5000/team/app:1.0"),
            "127.0.0.1:5000/team/app:1.0"
        );
        assert_eq!(canonical("localhost/app"), "localhost/app:latest");
        assert_eq!(canonical("ghcr.io/o/r/img"), "ghcr.io/o/r/img:latest");
        assert_eq!(
            canonical(&format!("ghcr.io/o/img@{digest}")),
            format!("ghcr.io/o/img@{digest}")
        );
        assert_eq!(
            canonical(&format!("debian:12@{digest}")),
            format!("docker.io/library/debian:12@{digest}")
        );
        match Reference::parse(&format!("127.0.0.1:5000/app@{digest}")).unwrap() {
            Reference::Registry { tag, digest: d, .. } => {
                assert_eq!(tag, None);
                assert_eq!(d.as_deref(), Some(digest.as_str()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn local_sources_split_at_the_first_colon() {
        assert_eq!(
            Reference::parse("oci:/images/layout:v1").unwrap(),
            Reference::OciLayout {
                path: "/images/layout".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(canonical("oci-archive:/x/a.tar"), "oci-archive:/x/a.tar");
        assert_eq!(
            Reference::parse("docker-archive:/x/d.tar:app:1").unwrap(),
            Reference::DockerArchive {
                path: "/x/d.tar".into(),
                reference: Some("app:1".into())
            }
        );
        match Reference::parse("oci:rel/dir").unwrap() {
            Reference::OciLayout { path, .. } => assert!(path.is_absolute()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_references_say_why() {
        for bad in [
            "",
            "Rust:1",
            "rust:",
            "rust@sha256:abc",
            "a//b",
            "https://x/y",
            "oci:",
            "oci:/x:",
            "rust:-bad",
        ] {
            let err = Reference::parse(bad).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidReference { .. }),
                "{bad}: {err}"
            );
        }
    }
}
