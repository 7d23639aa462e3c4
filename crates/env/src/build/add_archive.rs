//! `ADD` of a local tar archive: unpacked into its destination, as Docker does, by the image
//! crate's confined extraction (nothing written outside the destination, whatever the
//! archive's names and links say), then placed into the parts of the step's layer the paths
//! belong to (`system/usr/...`, `home/...`, `root/...`), since an archive added at `/` or
//! `/home` spans several.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nightshift_image::{Owner, unpack_archive};

use super::context::{layer_part, no_links_on_the_way};

/// How an `ADD` step's archives are unpacked.
#[derive(Debug, Clone, Copy)]
pub struct Archives {
    /// How the archive's owners are stored (the image's ids, shifted on a root host).
    pub ids: Owner,
    /// `--chown`'s host uid and gid: every unpacked entry is given them, as Docker does.
    pub chown: Option<(u32, u32)>,
    /// The most bytes one archive may unpack to.
    pub max_bytes: u64,
}

/// Unpacks `file` (named `shown` in messages) into `dest` (absolute, in the image) of the
/// layer at `layer`, when it is a tar archive; `Ok(false)`, with nothing written, when it is
/// not one. Directories made on the way to `dest` belong to `dirs_owner`.
pub(crate) fn add_archive(
    file: std::fs::File,
    shown: &Path,
    layer: &Path,
    dest: &Path,
    archives: &Archives,
    dirs_owner: Option<(u32, u32)>,
) -> Result<bool, String> {
    // Unpacked beside the layer's parts, in the shape of the image's root, then moved.
    let staging = layer.join(".add");
    let io = |path: &Path, err: std::io::Error| format!("{}: {err}", path.display());
    let _ = std::fs::remove_dir_all(&staging);
    let relative = layer_part(dest)?;
    let within = staged_path(&relative);
    let target = staging.join(&within);
    make_dirs(&staging, &target, dirs_owner)?;
    let label = format!("the archive {}", shown.display());
    let unpacked = unpack_archive(file, &target, archives.ids, &label, archives.max_bytes);
    let placed = match unpacked {
        Ok(None) => Ok(false),
        Ok(Some(_)) => {
            if let Some(owner) = archives.chown {
                chown_tree(&target, owner)?;
            }
            place(&staging, layer, dirs_owner).map(|()| true)
        }
        Err(err) => Err(err.to_string()),
    };
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|err| io(&staging, err))?;
    }
    placed
}

/// The image path a layer part's path stands for, relative to `/`: `system/usr/x` is
/// `usr/x`, `home/x` is `home/agent/x`, `root/x` is `x`.
fn staged_path(part: &Path) -> PathBuf {
    if let Ok(rest) = part.strip_prefix("system") {
        rest.to_path_buf()
    } else if let Ok(rest) = part.strip_prefix("home") {
        Path::new("home/agent").join(rest)
    } else {
        part.strip_prefix("root").unwrap_or(part).to_path_buf()
    }
}

/// Makes `dir` and the directories on the way to it from `base`, the new ones owned by
/// `owner`.
fn make_dirs(base: &Path, dir: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    no_links_on_the_way(base, dir)?;
    let mut missing = Vec::new();
    let mut at = dir;
    while std::fs::symlink_metadata(at).is_err() {
        missing.push(at);
        match at.parent() {
            Some(parent) if parent.starts_with(base) || parent == base => at = parent,
            _ => break,
        }
    }
    for made in missing.into_iter().rev() {
        std::fs::create_dir(made).map_err(|err| format!("{}: {err}", made.display()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(made, Some(uid), Some(gid))
                .map_err(|err| format!("{}: {err}", made.display()))?;
        }
    }
    Ok(())
}

/// Moves what was unpacked in `staging` (shaped as the image's root) into the layer's parts.
fn place(staging: &Path, layer: &Path, dirs_owner: Option<(u32, u32)>) -> Result<(), String> {
    for name in names(staging)? {
        let from = staging.join(&name);
        if name == "home" && is_real_dir(&from) {
            for user in names(&from)? {
                let inner = from.join(&user);
                let to = match user.to_str() {
                    Some("agent") => layer.join("home"),
                    _ => layer.join("root/home").join(&user),
                };
                merge(&inner, &to, layer, dirs_owner)?;
            }
            continue;
        }
        let part = layer_part(&Path::new("/").join(&name))?;
        if part.starts_with("system") && !is_real_dir(&from) {
            return Err(format!(
                "the archive puts a non-directory at /{}, which stays a directory in an image built here",
                Path::new(&name).display()
            ));
        }
        merge(&from, &layer.join(part), layer, dirs_owner)?;
    }
    Ok(())
}

/// Moves `from` to `to`: where both are directories, their entries one by one (what `from`
/// holds wins); else `from` replaces `to`. Only real directories are entered on either side,
/// so nothing is moved through a link.
fn merge(
    from: &Path,
    to: &Path,
    layer: &Path,
    dirs_owner: Option<(u32, u32)>,
) -> Result<(), String> {
    let io = |path: &Path, err: std::io::Error| format!("{}: {err}", path.display());
    if let Some(parent) = to.parent() {
        make_dirs(layer, parent, dirs_owner)?;
    }
    // What an earlier entry of the step made may be a link: never through it (a link at `to`
    // itself is replaced below, not followed).
    if let Some(parent) = to.parent() {
        no_links_on_the_way(layer, parent)?;
    }
    match std::fs::symlink_metadata(to) {
        Err(_) => std::fs::rename(from, to).map_err(|err| io(to, err)),
        Ok(meta) if meta.is_dir() && is_real_dir(from) => {
            for name in names(from)? {
                merge(&from.join(&name), &to.join(&name), layer, dirs_owner)?;
            }
            Ok(())
        }
        Ok(meta) => {
            if meta.is_dir() {
                std::fs::remove_dir_all(to).map_err(|err| io(to, err))?;
            } else {
                std::fs::remove_file(to).map_err(|err| io(to, err))?;
            }
            std::fs::rename(from, to).map_err(|err| io(to, err))
        }
    }
}

fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir())
}

fn names(dir: &Path) -> Result<Vec<OsString>, String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|err| format!("{}: {err}", dir.display()))? {
        let entry = entry.map_err(|err| format!("{}: {err}", dir.display()))?;
        names.push(entry.file_name());
    }
    names.sort();
    Ok(names)
}

/// Gives everything under `dir` (itself included) `owner`, links themselves rather than what
/// they point at.
fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) -> Result<(), String> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(|err| format!("{}: {err}", path.display()))?;
        if is_real_dir(&path) {
            for name in names(&path)? {
                stack.push(path.join(name));
            }
        }
    }
    Ok(())
}
