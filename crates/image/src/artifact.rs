//! An OCI artifact of one layer, such as a devcontainer feature: its payload, and that payload
//! unpacked as the untrusted tar it is (regular files and directories only, inside the
//! destination, bounded).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// An OCI artifact's payload: the manifest's digest and its one layer's bytes (checked against
/// the layer's digest).
#[derive(Debug, Clone)]
pub struct Artifact {
    pub digest: String,
    pub layer: Vec<u8>,
}

/// The most entries an artifact's tar may hold.
const MAX_ENTRIES: usize = 10_000;

impl Artifact {
    /// Unpacks the layer (a tar, or a gzipped tar) into `dest`, a directory that must not
    /// exist yet and is made here. Only directories and regular files are written (a regular
    /// file keeps whether it is executable); symbolic and hard links, devices and FIFOs are
    /// refused, as is any path that is absolute or climbs out with `..`. At most `max_bytes`
    /// are written in all. On an error, `dest` is removed.
    pub fn unpack_into(&self, dest: &Path, max_bytes: u64) -> Result<(), String> {
        std::fs::create_dir(dest).map_err(|err| format!("making {}: {err}", dest.display()))?;
        let unpacked = self.unpack(dest, max_bytes);
        if unpacked.is_err() {
            let _ = std::fs::remove_dir_all(dest);
        }
        unpacked
    }

    fn unpack(&self, dest: &Path, max_bytes: u64) -> Result<(), String> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let reader: Box<dyn Read + '_> = if self.layer.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(self.layer.as_slice()))
        } else {
            Box::new(self.layer.as_slice())
        };
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|err| format!("reading the artifact's tar: {err}"))?;
        let mut written = 0u64;
        for (count, entry) in entries.enumerate() {
            let mut entry = entry.map_err(|err| format!("reading the artifact's tar: {err}"))?;
            if count >= MAX_ENTRIES {
                return Err(format!(
                    "the artifact holds more than {MAX_ENTRIES} entries"
                ));
            }
            let raw = entry
                .path()
                .map_err(|err| format!("an entry's path: {err}"))?
                .into_owned();
            let relative = inside(&raw)?;
            if relative.as_os_str().is_empty() {
                continue;
            }
            let to = dest.join(&relative);
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                std::fs::create_dir_all(&to).map_err(|err| format!("{}: {err}", raw.display()))?;
                continue;
            }
            if !kind.is_file() {
                return Err(format!(
                    "`{}` is a {kind:?} entry; a feature holds only files and directories",
                    raw.display()
                ));
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|err| format!("{}: {err}", raw.display()))?;
            }
            let mode = entry.header().mode().unwrap_or(0o644);
            let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            // O_NOFOLLOW and O_EXCL: nothing this tar wrote before can redirect the write.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(mode)
                .open(&to)
                .map_err(|err| format!("{}: {err}", raw.display()))?;
            let left = max_bytes.saturating_sub(written);
            let copied = std::io::copy(&mut (&mut entry).take(left + 1), &mut file)
                .map_err(|err| format!("{}: {err}", raw.display()))?;
            written += copied;
            if written > max_bytes {
                return Err(format!(
                    "the artifact unpacks to more than {max_bytes} bytes"
                ));
            }
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                .map_err(|err| format!("{}: {err}", raw.display()))?;
        }
        Ok(())
    }
}

/// `path` as a relative path with no `..`, or why not.
fn inside(path: &Path) -> Result<PathBuf, String> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            _ => return Err(format!("`{}` leaves the artifact's folder", path.display())),
        }
    }
    Ok(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o755);
            header.set_size(data.len() as u64);
            let field = &mut header.as_old_mut().name;
            field[..name.len()].copy_from_slice(name.as_bytes());
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn artifact(layer: Vec<u8>) -> Artifact {
        Artifact {
            digest: "sha256:0".into(),
            layer,
        }
    }

    #[test]
    fn files_and_directories_are_unpacked_with_their_executable_bit() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let layer = tar_of(&[
            ("./", tar::EntryType::Directory, b""),
            ("./install.sh", tar::EntryType::Regular, b"#!/bin/sh\n"),
            ("lib/x.txt", tar::EntryType::Regular, b"x"),
        ]);
        artifact(layer).unpack_into(&dest, 1 << 20).unwrap();
        let meta = std::fs::metadata(dest.join("install.sh")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::read(dest.join("lib/x.txt")).unwrap(), b"x");
    }

    #[test]
    fn links_escapes_and_oversize_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(Vec<u8>, &str); 3] = [
            (
                tar_of(&[("../evil", tar::EntryType::Regular, b"x")]),
                "leaves",
            ),
            (
                tar_of(&[("link", tar::EntryType::Symlink, b"")]),
                "only files and directories",
            ),
            (
                tar_of(&[("big", tar::EntryType::Regular, &[0u8; 4096])]),
                "more than 100 bytes",
            ),
        ];
        for (index, (layer, words)) in cases.into_iter().enumerate() {
            let dest = dir.path().join(index.to_string());
            let err = artifact(layer).unpack_into(&dest, 100).unwrap_err();
            assert!(err.contains(words), "{err}");
            assert!(!dest.exists(), "nothing is left of a refused artifact");
        }
        assert!(!dir.path().join("evil").exists());
    }
}
