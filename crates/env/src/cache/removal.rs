//! Taking layers away so that they are never served, even when they cannot be removed: a setup
//! running as root can leave directories nobody may enter or write (mode 0000), and a layer
//! half removed must not look like a layer. A layer to discard is first renamed into the
//! cache's `discarded/` directory, which nothing ever looks up, and removed from there, with
//! permissions fixed on the way; what still cannot be removed stays there, unserved, and a
//! later staging tries again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::SetupCache;

/// The directory, under the cache's root, of what is being (or could not be) removed.
const DISCARDED: &str = "discarded";

impl SetupCache {
    /// Takes the layer (or staged layer, or a key's directory) at `path` out of the cache for
    /// good: renamed aside at once, so that no lookup can find it whatever happens next, then
    /// removed. An error says where what could not be removed was left; it is never served.
    pub fn discard(&self, path: &Path) -> std::io::Result<()> {
        match std::fs::symlink_metadata(path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err),
            Ok(_) => {}
        }
        let aside = self.aside(path)?;
        remove_tree(&aside).map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!(
                    "{err}; what is left is at {}, where nothing is served from",
                    aside.display()
                ),
            )
        })
    }

    /// Moves `path` into `discarded/` under a name of its own.
    fn aside(&self, path: &Path) -> std::io::Result<PathBuf> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = self.root.join(DISCARDED);
        std::fs::create_dir_all(&dir)?;
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = dir.join(format!(
            "{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::rename(path, &aside).map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!("moving {} aside to remove it: {err}", path.display()),
            )
        })?;
        Ok(aside)
    }

    /// Tries again to remove what earlier discards left (best effort: what still resists
    /// stays, unserved).
    pub(super) fn sweep_discarded(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join(DISCARDED)) else {
            return;
        };
        for entry in entries.flatten() {
            let _ = remove_tree(&entry.path());
        }
    }
}

/// Removes the tree at `path` (a file, a link or a directory, never followed), also when a
/// command left directories without write or search permission in it: those are given them
/// back on the way.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    if std::fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    open_up(path);
    match std::fs::remove_dir_all(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Gives the owner every permission on each directory under `path` (links are not followed),
/// so that removal can enter and empty them. Iterative: a deep tree does not grow the stack.
fn open_up(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A tree as a root setup can leave it: a directory nobody may enter, another nobody may
    /// write, a file inside each.
    fn locked_tree(at: &Path) {
        for dir in ["closed", "read-only"] {
            std::fs::create_dir_all(at.join(dir).join("deeper")).unwrap();
            std::fs::write(at.join(dir).join("deeper/file"), "x").unwrap();
        }
        std::os::unix::fs::symlink("/etc", at.join("link")).unwrap();
        let mode = |path: PathBuf, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        mode(at.join("closed/deeper"), 0o000);
        mode(at.join("closed"), 0o000);
        mode(at.join("read-only"), 0o500);
    }

    #[test]
    fn a_tree_with_closed_directories_is_removed_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("layer");
        locked_tree(&tree);
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(Path::new("/etc").is_dir());
        remove_tree(&tree).unwrap();
    }

    #[test]
    fn a_discarded_layer_leaves_its_place_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SetupCache::new(dir.path().join("layers"), u64::MAX);
        let staged = dir.path().join("layers/staging/key-1");
        locked_tree(&staged);
        cache.discard(&staged).unwrap();
        assert!(!staged.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("layers").join(DISCARDED))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        cache.discard(&staged).unwrap();
    }

    /// A layer that cannot be removed (here: a mount point in it, which only root can make) is
    /// out of its place all the same, and a later sweep finishes the job.
    #[test]
    fn a_layer_that_cannot_be_removed_is_still_never_where_it_was() {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self").map_or(true, |own| own.uid() != 0) {
            eprintln!("SKIPPED: mounting a tmpfs to make a layer unremovable needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = SetupCache::new(dir.path().join("layers"), u64::MAX);
        let layer = dir.path().join("layers/0123abcd/layer");
        std::fs::create_dir_all(layer.join("workspace/busy")).unwrap();
        std::fs::write(layer.join("workspace/file"), "x").unwrap();
        let busy = layer.join("workspace/busy");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&busy)
            .status()
            .unwrap();
        assert!(mounted.success());
        let err = cache.discard(&layer).unwrap_err();
        assert!(
            !layer.exists(),
            "a layer that resists removal is moved aside first"
        );
        assert!(err.to_string().contains("nothing is served from"), "{err}");
        let aside = std::fs::read_dir(dir.path().join("layers").join(DISCARDED))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let unmounted = std::process::Command::new("umount")
            .arg(aside.join("workspace/busy"))
            .status()
            .unwrap();
        assert!(unmounted.success());
        cache.sweep_discarded();
        assert!(!aside.exists());
    }
}
