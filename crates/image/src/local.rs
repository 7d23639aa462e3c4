//! Images from local files: OCI image layouts (`oci:`), tars of them (`oci-archive:`) and
//! `docker save` output (`docker-archive:`).
//!
//! These are as untrusted as a registry: every manifest, index and configuration is checked
//! against the digest that names it, names taken from the files are validated before they
//! become paths, and archives are unpacked into a scratch directory of regular files only (no
//! links, nothing outside it) before they are read.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::codec::sha256_digest;
use crate::error::ImageError;
use crate::manifest::{
    ConfigBlob, Descriptor, Parsed, host_platform_text, parse_manifest, select_platform,
};
use crate::pull::{LayerPlan, LayerSource, Resolved, Scratch};
use crate::reference::parse_digest;

/// The annotation an OCI layout's index names its images with.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Resolves an image in an OCI layout directory.
pub(crate) fn resolve_layout(
    layout: &Path,
    tag: Option<&str>,
    display: &str,
) -> Result<Resolved, ImageError> {
    let invalid = |detail: String| ImageError::InvalidArchive {
        path: layout.to_path_buf(),
        detail,
    };
    let index_path = layout.join("index.json");
    let index_bytes = std::fs::read(&index_path).map_err(|e| {
        invalid(format!(
            "is not an OCI image layout (cannot read index.json: {e})"
        ))
    })?;
    let entries = match parse_manifest(&index_bytes) {
        Ok(Parsed::Index(entries)) => entries,
        Ok(Parsed::Image(_)) => {
            return Err(invalid("index.json is a manifest, not an index".into()));
        }
        Err(e) => return Err(invalid(format!("index.json is unusable: {e}"))),
    };
    let named = |d: &&Descriptor| d.annotations.get(REF_NAME).cloned();
    let chosen = match tag {
        Some(tag) => entries
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(tag)),
        None if entries.len() == 1 => entries.first(),
        None => None,
    };
    let Some(chosen) = chosen else {
        return Err(ImageError::TagNotInArchive {
            path: layout.to_path_buf(),
            tag: tag.map(str::to_string),
            available: entries.iter().filter_map(|d| named(&d)).collect(),
        });
    };
    let blob = |digest: &str, what: &str| read_blob(layout, digest, what);
    let bytes = blob(&chosen.digest, "manifest")?;
    let (manifest, digest, index_digest) = match parse_manifest(&bytes)
        .map_err(|e| invalid(format!("manifest {} is unusable: {e}", chosen.digest)))?
    {
        Parsed::Image(manifest) => (manifest, chosen.digest.clone(), None),
        Parsed::Index(platforms) => {
            let entry =
                select_platform(&platforms).map_err(|available| ImageError::WrongArchitecture {
                    reference: display.to_string(),
                    wanted: host_platform_text(),
                    available,
                })?;
            let bytes = blob(&entry.digest, "platform manifest")?;
            match parse_manifest(&bytes) {
                Ok(Parsed::Image(manifest)) => {
                    (manifest, entry.digest.clone(), Some(chosen.digest.clone()))
                }
                Ok(Parsed::Index(_)) => {
                    return Err(invalid(format!(
                        "{} is an index inside an index",
                        entry.digest
                    )));
                }
                Err(e) => {
                    return Err(invalid(format!(
                        "manifest {} is unusable: {e}",
                        entry.digest
                    )));
                }
            }
        }
    };
    let config_bytes = blob(&manifest.config.digest, "configuration")?;
    let config = checked_config(&config_bytes, display, manifest.layers.len())?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (descriptor, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        layers.push(LayerPlan {
            digest: descriptor.digest.clone(),
            size: descriptor.size,
            diff_id: diff_id.clone(),
            verify_compressed: true,
            source: LayerSource::File {
                path: blob_path(layout, &descriptor.digest)?,
            },
        });
    }
    Ok(Resolved {
        reference: display.to_string(),
        digest,
        index_digest,
        config_digest: manifest.config.digest.clone(),
        config: config.image_config(),
        layers,
        scratch: None,
    })
}

/// Resolves an image in a tar of an OCI layout, unpacked into `scratch` first.
pub(crate) fn resolve_oci_archive(
    archive: &Path,
    tag: Option<&str>,
    display: &str,
    scratch: PathBuf,
) -> Result<Resolved, ImageError> {
    let scratch = extract_archive(archive, scratch)?;
    let mut resolved = resolve_layout(&scratch.0, tag, display).map_err(|e| match e {
        // Name the archive, not the scratch directory, in what the user reads.
        ImageError::InvalidArchive { detail, .. } => ImageError::InvalidArchive {
            path: archive.to_path_buf(),
            detail,
        },
        ImageError::TagNotInArchive { tag, available, .. } => ImageError::TagNotInArchive {
            path: archive.to_path_buf(),
            tag,
            available,
        },
        other => other,
    })?;
    resolved.scratch = Some(scratch);
    Ok(resolved)
}

/// One image in a `docker save` archive's manifest.json.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Resolves an image in `docker save` output, unpacked into `scratch` first. Such archives
/// have no manifest digest: the image's digest is its configuration's (the image id).
pub(crate) fn resolve_docker_archive(
    archive: &Path,
    wanted: Option<&str>,
    display: &str,
    scratch: PathBuf,
) -> Result<Resolved, ImageError> {
    let invalid = |detail: String| ImageError::InvalidArchive {
        path: archive.to_path_buf(),
        detail,
    };
    let scratch = extract_archive(archive, scratch)?;
    let root = scratch.0.clone();
    let manifest_bytes = std::fs::read(root.join("manifest.json"))
        .map_err(|e| invalid(format!("is not a docker archive (no manifest.json: {e})")))?;
    let images: Vec<DockerArchiveImage> = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| invalid(format!("manifest.json is unusable: {e}")))?;
    let tags = |image: &DockerArchiveImage| image.repo_tags.clone().unwrap_or_default();
    let chosen = match wanted {
        Some(wanted) => {
            let canonical = |s: &str| crate::Reference::parse(s).map(|r| r.to_string()).ok();
            images.iter().find(|image| {
                tags(image).iter().any(|t| {
                    t == wanted || (canonical(t).is_some() && canonical(t) == canonical(wanted))
                })
            })
        }
        None if images.len() == 1 => images.first(),
        None => None,
    };
    let Some(chosen) = chosen else {
        return Err(ImageError::TagNotInArchive {
            path: archive.to_path_buf(),
            tag: wanted.map(str::to_string),
            available: images.iter().flat_map(tags).collect(),
        });
    };
    let config_path = inside(&root, &chosen.config).ok_or_else(|| {
        invalid(format!(
            "manifest.json names the configuration `{}` outside the archive",
            chosen.config
        ))
    })?;
    let config_bytes = std::fs::read(&config_path).map_err(|e| {
        invalid(format!(
            "cannot read the configuration {}: {e}",
            chosen.config
        ))
    })?;
    let digest = sha256_digest(&config_bytes);
    // The configuration's file is named after its digest (`<hex>.json` or `blobs/sha256/<hex>`).
    let stem = Path::new(&chosen.config)
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".json").to_string())
        .unwrap_or_default();
    if stem.len() == 64
        && stem.bytes().all(|b| b.is_ascii_hexdigit())
        && digest != format!("sha256:{stem}")
    {
        return Err(ImageError::DigestMismatch {
            what: format!("configuration {} in {}", chosen.config, archive.display()),
            expected: format!("sha256:{stem}"),
            actual: digest,
        });
    }
    let config = checked_config(&config_bytes, display, chosen.layers.len())?;
    let mut layers = Vec::with_capacity(chosen.layers.len());
    for (file, diff_id) in chosen.layers.iter().zip(&config.rootfs.diff_ids) {
        let path = inside(&root, file).ok_or_else(|| {
            invalid(format!(
                "manifest.json names the layer `{file}` outside the archive"
            ))
        })?;
        let size = std::fs::metadata(&path)
            .map_err(|e| invalid(format!("the layer {file} is missing: {e}")))?
            .len();
        layers.push(LayerPlan {
            digest: diff_id.clone(),
            size,
            diff_id: diff_id.clone(),
            verify_compressed: false,
            source: LayerSource::File { path },
        });
    }
    Ok(Resolved {
        reference: display.to_string(),
        digest: digest.clone(),
        index_digest: None,
        config_digest: digest,
        config: config.image_config(),
        layers,
        scratch: Some(scratch),
    })
}

/// Parses a configuration and checks its platform and its number of layers.
fn checked_config(bytes: &[u8], display: &str, layers: usize) -> Result<ConfigBlob, ImageError> {
    let invalid = |detail: String| ImageError::InvalidImage {
        reference: display.to_string(),
        what: "configuration".to_string(),
        detail,
    };
    let config = ConfigBlob::parse(bytes).map_err(invalid)?;
    config
        .check_platform()
        .map_err(|found| ImageError::WrongArchitecture {
            reference: display.to_string(),
            wanted: host_platform_text(),
            available: vec![found],
        })?;
    if config.rootfs.diff_ids.len() != layers {
        return Err(invalid(format!(
            "it lists {} layers but the manifest {layers}",
            config.rootfs.diff_ids.len()
        )));
    }
    for diff_id in &config.rootfs.diff_ids {
        parse_digest(diff_id).map_err(invalid)?;
    }
    Ok(config)
}

/// The path of a blob in a layout, after checking the digest cannot name anything else.
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    parse_digest(digest).map_err(|detail| ImageError::InvalidArchive {
        path: layout.to_path_buf(),
        detail,
    })?;
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    Ok(layout.join("blobs").join(algorithm).join(hex))
}

/// Reads a small blob (manifest, index, configuration) and checks it against its digest.
fn read_blob(layout: &Path, digest: &str, what: &str) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(layout, digest)?;
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(64 << 20).read_to_end(&mut bytes))
        .map_err(|e| ImageError::InvalidArchive {
            path: layout.to_path_buf(),
            detail: format!("the {what} {digest} is missing or unreadable: {e}"),
        })?;
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            what: format!("{what} in {}", layout.display()),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(bytes)
}

/// `name` joined to `root` when it stays inside it (the scratch directory holds no links).
fn inside(root: &Path, name: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    let mut depth = 0usize;
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => {
                path.push(part);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (depth > 0).then_some(path)
}

/// Unpacks the regular files and directories of an archive into `scratch` (created here);
/// links and special files are skipped, names that would leave it refuse the archive.
fn extract_archive(archive: &Path, scratch: PathBuf) -> Result<Scratch, ImageError> {
    let invalid = |detail: String| ImageError::InvalidArchive {
        path: archive.to_path_buf(),
        detail,
    };
    let file =
        std::fs::File::open(archive).map_err(|e| invalid(format!("cannot be opened: {e}")))?;
    std::fs::create_dir(&scratch)
        .map_err(ImageError::io("create a scratch directory", &scratch))?;
    let guard = Scratch(scratch);
    let mut reader = tar::Archive::new(crate::codec::buffered(file));
    let entries = reader
        .entries()
        .map_err(|e| invalid(format!("is not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| invalid(format!("is not a readable tar archive: {e}")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        let Some(path) = inside(&guard.0, &name) else {
            if name.trim_matches(['.', '/']).is_empty() {
                continue;
            }
            return Err(invalid(format!(
                "its entry `{name}` would be written outside the archive's root"
            )));
        };
        if kind.is_dir() {
            std::fs::create_dir_all(&path).map_err(ImageError::io("create", &path))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(ImageError::io("create", parent))?;
        }
        let mut out = std::fs::File::create(&path).map_err(ImageError::io("create", &path))?;
        std::io::copy(&mut entry, &mut out)
            .map_err(|e| invalid(format!("its entry `{name}` is unreadable: {e}")))?;
    }
    Ok(guard)
}
