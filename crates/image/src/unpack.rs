//! Unpacking one layer blob into a directory in the form overlayfs stacks.
//!
//! The blob is untrusted: its entry names may climb out with `..`, be absolute, hard-link to
//! files outside the layer, or write through a symlink the layer itself planted. Names are
//! normalised here and refused when they leave the root; [`crate::extract`] then resolves
//! every path from a descriptor of the layer's root with the kernel's help. This module
//! wires the blob through the digest checks and the decompressor into the tar reader.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use crate::Owner;
use crate::codec::{Decoder, HashingReader, buffered};
use crate::error::ImageError;
use crate::extract::Extraction;

/// What the blob must hash to.
pub(crate) struct Expected<'a> {
    /// How the layer is named in messages (its digest in the manifest).
    pub label: &'a str,
    /// The digest of the blob as stored (compressed), when known.
    pub compressed: Option<&'a str>,
    /// The digest of the uncompressed tar (the configuration's diff id), when known.
    pub diff_id: Option<&'a str>,
}

/// What unpacking a layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Unpacked {
    pub compressed_digest: String,
    pub compressed_bytes: u64,
    pub diff_id: String,
    /// Bytes of regular file content written.
    pub file_bytes: u64,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub whiteouts: u64,
    pub opaque_directories: u64,
    /// Device nodes, FIFOs, sockets and unknown entry types, which are not unpacked.
    pub skipped: u64,
}

/// Unpacks the layer blob read from `source` into `dest`, an existing empty directory.
///
/// The blob is checked against `expected` as it streams; a blob that does not hash as
/// expected is an error even when its tar unpacked cleanly, and a changed blob is reported as
/// a digest mismatch rather than as whatever decompression error it caused. On error `dest`
/// holds a partial tree the caller must remove.
pub(crate) fn unpack_layer<R: Read>(
    source: R,
    dest: &Path,
    owner: Owner,
    expected: &Expected<'_>,
    progress: Option<&mut dyn FnMut(u64)>,
) -> Result<Unpacked, ImageError> {
    let root: OwnedFd = File::open(dest)
        .map_err(ImageError::io("open the layer directory", dest))?
        .into();
    let label = expected.label;
    let corrupt = |e: io::Error| ImageError::CorruptLayer {
        digest: label.to_string(),
        detail: e.to_string(),
    };
    let compressed = HashingReader::new(source, progress);
    let mut extraction = Extraction::new(root, owner, label, dest);
    let (extracted, mut raw) = match Decoder::new(buffered(compressed)) {
        Ok(decoder) => {
            let mut archive = tar::Archive::new(HashingReader::new(decoder, None));
            let extracted = extraction.extract(&mut archive);
            let mut uncompressed = archive.into_inner();
            let outcome = extracted.and_then(|()| {
                uncompressed.drain().map_err(corrupt)?;
                Ok((uncompressed.digest(), uncompressed.count()))
            });
            (outcome, uncompressed.into_inner().into_inner().into_inner())
        }
        Err(e) => {
            // The first bytes could not even be read: report it as it is.
            return Err(corrupt(e));
        }
    };
    // Read what is left so the digest covers the whole blob, then let a wrong digest win
    // over any other complaint: the data is simply not what was asked for.
    let drained = raw.drain();
    let compressed_digest = raw.digest();
    if let Some(want) = expected.compressed
        && (drained.is_ok() || extracted.is_ok())
        && compressed_digest != want
    {
        return Err(ImageError::DigestMismatch {
            what: format!("layer {label}"),
            expected: want.to_string(),
            actual: compressed_digest,
        });
    }
    let (diff_id, _) = extracted?;
    drained.map_err(corrupt)?;
    if let Some(want) = expected.diff_id
        && diff_id != want
    {
        return Err(ImageError::DigestMismatch {
            what: format!("the uncompressed content of layer {label} (its diff id)"),
            expected: want.to_string(),
            actual: diff_id,
        });
    }
    let mut unpacked = extraction.finish()?;
    unpacked.compressed_digest = compressed_digest;
    unpacked.compressed_bytes = raw.count();
    unpacked.diff_id = diff_id;
    Ok(unpacked)
}

/// The entry's path relative to the layer root, or why it may not be written.
pub(crate) fn normalize(path: &Path) -> Result<PathBuf, &'static str> {
    let mut parts: Vec<OsString> = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err("climbs out of the layer with `..`");
                }
            }
            Component::Normal(part) => parts.push(part.to_os_string()),
        }
    }
    Ok(parts.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_beneath_the_root() {
        assert_eq!(
            normalize(Path::new("./usr/bin/")).unwrap(),
            PathBuf::from("usr/bin")
        );
        assert_eq!(normalize(Path::new("a/../b")).unwrap(), PathBuf::from("b"));
        assert_eq!(normalize(Path::new("./")).unwrap(), PathBuf::new());
        assert!(normalize(Path::new("../etc/passwd")).is_err());
        assert!(normalize(Path::new("a/../../b")).is_err());
        assert!(normalize(Path::new("/etc/passwd")).is_err());
    }
}
