//! A Dockerfile's build context, read for `COPY` and `ADD`: the repository's files (untrusted),
//! walked inside the context only (a link is copied as a link, never followed), regular files
//! and directories and links only, with `.dockerignore` honoured and a bound on what is read.
//! What a step copies is fingerprinted for its cache key and written into a layer, at the part
//! of the layer its destination belongs to (`system/usr/...`, `home/...`, `root/...`).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use cap_std::fs::Dir;
use globset::{Glob, GlobMatcher};
use sha2::{Digest, Sha256};

use super::add_archive::{Archives, add_archive};
use crate::tree_files::{Links, read_regular};

/// The most entries and bytes one step copies.
const MAX_ENTRIES: usize = 200_000;
const MAX_BYTES: u64 = 4 << 30;

/// One thing to copy: its path in the context, and where under the destination it goes.
struct Entry {
    from: PathBuf,
    to: PathBuf,
    kind: Kind,
    /// Named by a source itself (not found in a directory a source names): for `ADD`, a tar
    /// archive to unpack.
    named: bool,
}

enum Kind {
    Dir,
    File { mode: u32 },
    Link(PathBuf),
}

/// What `COPY sources dest` takes from the context at `root`.
pub struct Copy {
    root: PathBuf,
    dir: Dir,
    entries: Vec<Entry>,
    dest: PathBuf,
}

impl Copy {
    /// Resolves `sources` (relative to the context, wildcards allowed) for `dest` (absolute),
    /// as Docker does: a directory's contents go into `dest`; a file goes to `dest` itself
    /// unless `dest` ends with `/` or there are several sources.
    pub fn plan(root: &Path, sources: &[String], dest: &str) -> Result<Copy, String> {
        let dir = Dir::open_ambient_dir(root, cap_std::ambient_authority())
            .map_err(|err| format!("opening the build context {}: {err}", root.display()))?;
        let ignore = Ignore::read(root)?;
        let into_dir = dest.ends_with('/') || sources.len() > 1;
        let mut entries = Vec::new();
        for source in sources {
            let matched = matches(&dir, source, &ignore)?;
            if matched.is_empty() {
                return Err(format!("`{source}` matches nothing in the build context"));
            }
            let into_dir = into_dir || matched.len() > 1;
            for path in matched {
                let is_dir = path.as_os_str().is_empty()
                    || dir
                        .symlink_metadata(&path)
                        .map_err(|err| format!("`{}`: {err}", path.display()))?
                        .is_dir();
                if is_dir {
                    walk(&dir, &path, PathBuf::new(), &ignore, &mut entries)?;
                } else {
                    let name = path.file_name().map(PathBuf::from).unwrap_or_default();
                    let to = if into_dir { name } else { PathBuf::new() };
                    entries.push(Entry {
                        named: true,
                        ..entry(&dir, path, to)?
                    });
                }
                if entries.len() > MAX_ENTRIES {
                    return Err(format!("copies more than {MAX_ENTRIES} files"));
                }
            }
        }
        Ok(Copy {
            root: root.to_path_buf(),
            dir,
            entries,
            dest: PathBuf::from(dest),
        })
    }

    /// A digest of what is copied (paths, kinds, modes, contents) and where.
    pub fn fingerprint(&self) -> Result<String, String> {
        let mut hash = Sha256::new();
        hash.update(self.dest.as_os_str().as_encoded_bytes());
        let mut total = 0u64;
        for entry in &self.entries {
            hash.update(b"\0");
            hash.update(entry.to.as_os_str().as_encoded_bytes());
            match &entry.kind {
                Kind::Dir => hash.update(b"d"),
                Kind::Link(target) => {
                    hash.update(b"l");
                    hash.update(target.as_os_str().as_encoded_bytes());
                }
                Kind::File { mode } => {
                    hash.update(format!("f{mode:o}"));
                    let mut file = self.open(&entry.from)?;
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let read = file
                            .read(&mut buffer)
                            .map_err(|err| format!("`{}`: {err}", entry.from.display()))?;
                        if read == 0 {
                            break;
                        }
                        total += read as u64;
                        if total > MAX_BYTES {
                            return Err(format!("copies more than {MAX_BYTES} bytes"));
                        }
                        hash.update(&buffer[..read]);
                    }
                }
            }
        }
        Ok(hex::encode(hash.finalize()))
    }

    /// Writes what is copied into `layer`, owned by `owner` (host uid and gid) when given; the
    /// directories made on the way to `dest` by `dirs_owner`. With `archives` (`ADD`), a
    /// source that is a local tar archive (plain, gzip, bzip2, xz or zstd) is unpacked into
    /// `dest` instead (see [`super::add_archive`]).
    pub fn write(
        &self,
        layer: &Path,
        owner: Option<(u32, u32)>,
        dirs_owner: Option<(u32, u32)>,
        archives: Option<&Archives>,
    ) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let base = layer.join(layer_part(&self.dest)?);
        let io = |path: &Path, err: std::io::Error| format!("writing {}: {err}", path.display());
        let set_owner = |path: &Path, owner: Option<(u32, u32)>| match owner {
            Some((uid, gid)) => {
                std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|err| io(path, err))
            }
            None => Ok(()),
        };
        let chown = |path: &Path| set_owner(path, owner);
        // Every directory made on the way is the image root's (as Docker makes them), so
        // that later steps, as the sandbox's root, may write into it.
        let make_dirs = |dir: &Path| -> Result<(), String> {
            no_links_on_the_way(layer, dir)?;
            let mut missing = Vec::new();
            let mut at = dir;
            while !at.exists() && at != layer {
                missing.push(at);
                let Some(parent) = at.parent() else { break };
                at = parent;
            }
            for made in missing.into_iter().rev() {
                std::fs::create_dir(made).map_err(|err| io(made, err))?;
                set_owner(made, dirs_owner)?;
            }
            Ok(())
        };
        if let Some(parent) = base.parent() {
            make_dirs(parent)?;
        }
        for entry in &self.entries {
            if let (Some(archives), true, Kind::File { .. }) = (archives, entry.named, &entry.kind)
            {
                let file = self.open(&entry.from)?;
                if add_archive(file, &entry.from, layer, &self.dest, archives, dirs_owner)? {
                    continue;
                }
            }
            // Each entry goes to the part its own path belongs to: a directory copied to `/`
            // or `/home` spans several (its `usr/` is the layer's `system/usr/`). A file copied
            // to `dest` itself has an empty `to`; joining it would add a `/`.
            let to = match entry.to.as_os_str().is_empty() {
                true => base.clone(),
                false => layer.join(layer_part(&self.dest.join(&entry.to))?),
            };
            if let Some(parent) = to.parent() {
                make_dirs(parent)?;
            }
            // A link an earlier source of the step left at `to` is replaced, never followed.
            if !matches!(entry.kind, Kind::Dir)
                && std::fs::symlink_metadata(&to).is_ok_and(|meta| meta.file_type().is_symlink())
            {
                std::fs::remove_file(&to).map_err(|err| io(&to, err))?;
            }
            match &entry.kind {
                Kind::Dir => make_dirs(&to)?,
                Kind::Link(target) => {
                    std::os::unix::fs::symlink(target, &to).map_err(|err| io(&to, err))?;
                }
                Kind::File { mode } => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut from = self.open(&entry.from)?;
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&to)
                        .map_err(|err| io(&to, err))?;
                    std::io::copy(&mut from, &mut file).map_err(|err| io(&to, err))?;
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode & 0o777))
                        .map_err(|err| io(&to, err))?;
                }
            }
            chown(&to)?;
        }
        Ok(())
    }

    fn open(&self, path: &Path) -> Result<std::fs::File, String> {
        let opened = crate::tree_files::open_regular_in(&self.dir, &self.root, path, Links::Refuse)
            .map_err(|err| err.to_string())?;
        Ok(opened.file)
    }
}

/// Refuses `path` when a component of it below `base` (the last one included) is a link: what
/// a step writes into its layer goes through the layer's own directories only, never through a
/// link an earlier entry of the step made, which would lead out of the layer on the host.
pub(crate) fn no_links_on_the_way(base: &Path, path: &Path) -> Result<(), String> {
    let Ok(rest) = path.strip_prefix(base) else {
        return Err(format!("{} is not in {}", path.display(), base.display()));
    };
    let mut at = base.to_path_buf();
    for component in rest.components() {
        at.push(component);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "`{}` would be written through the link {} made before it in the same step",
                    path.strip_prefix(base).unwrap_or(path).display(),
                    at.strip_prefix(base).unwrap_or(&at).display()
                ));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// Where in a layer an absolute path inside the root goes: `/usr/...` (and the other system
/// directories) in `system/usr/...`, the sandbox user's home in `home/...`, the rest in
/// `root/...`.
pub fn layer_part(dest: &Path) -> Result<PathBuf, String> {
    let mut parts = Vec::new();
    for component in dest.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_os_string()),
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(format!("`{}` leaves the root", dest.display()));
                }
            }
            Component::Prefix(_) => return Err(format!("`{}` is not a path", dest.display())),
        }
    }
    let path: PathBuf = parts.iter().collect();
    let first = parts.first().and_then(|p| p.to_str()).unwrap_or("");
    Ok(if ["usr", "etc", "opt", "var"].contains(&first) {
        Path::new("system").join(path)
    } else if let Ok(rest) = path.strip_prefix("home/agent") {
        Path::new("home").join(rest)
    } else {
        Path::new("root").join(path)
    })
}

fn entry(dir: &Dir, from: PathBuf, to: PathBuf) -> Result<Entry, String> {
    use cap_std::fs::PermissionsExt;
    let meta = dir
        .symlink_metadata(&from)
        .map_err(|err| format!("`{}`: {err}", from.display()))?;
    let kind = if meta.is_dir() {
        Kind::Dir
    } else if meta.is_symlink() {
        let target = dir
            .read_link_contents(&from)
            .map_err(|err| format!("`{}`: {err}", from.display()))?;
        Kind::Link(target)
    } else if meta.is_file() {
        Kind::File {
            mode: meta.permissions().mode(),
        }
    } else {
        return Err(format!(
            "`{}` is not a file, a directory or a link; it cannot be copied",
            from.display()
        ));
    };
    Ok(Entry {
        from,
        to,
        kind,
        named: false,
    })
}

/// Everything under the directory `from` (not ignored), as entries under `to`.
fn walk(
    dir: &Dir,
    from: &Path,
    to: PathBuf,
    ignore: &Ignore,
    entries: &mut Vec<Entry>,
) -> Result<(), String> {
    let mut stack = vec![(from.to_path_buf(), to)];
    while let Some((from, to)) = stack.pop() {
        let listing = if from.as_os_str().is_empty() {
            dir.entries()
        } else {
            dir.read_dir(&from)
        }
        .map_err(|err| format!("`{}`: {err}", from.display()))?;
        let mut names: Vec<_> = listing.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            let path = from.join(&name);
            // The working copy's repository is nightshift's, never part of an image.
            if path == Path::new(".git") || ignore.ignored(&path) {
                continue;
            }
            let child = entry(dir, path.clone(), to.join(&name))?;
            if matches!(child.kind, Kind::Dir) {
                stack.push((path, to.join(&name)));
            }
            entries.push(child);
            if entries.len() > MAX_ENTRIES {
                return Err(format!("copies more than {MAX_ENTRIES} files"));
            }
        }
    }
    Ok(())
}

/// The context's paths that `source` names: itself, or with wildcards, every match.
fn matches(dir: &Dir, source: &str, ignore: &Ignore) -> Result<Vec<PathBuf>, String> {
    let relative = inside_context(source)?;
    if relative.as_os_str().is_empty() {
        return Ok(vec![relative]);
    }
    if !source.contains(['*', '?', '[']) {
        // An ignored path is not in the context at all, as Docker sends it.
        return match dir.symlink_metadata(&relative) {
            Ok(_) if !ignore.ignored(&relative) => Ok(vec![relative]),
            Ok(_) | Err(_) => Ok(Vec::new()),
        };
    }
    let glob = Glob::new(&relative.to_string_lossy())
        .map_err(|err| format!("`{source}` is not a valid pattern: {err}"))?
        .compile_matcher();
    let parent = relative
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.to_string_lossy().contains(['*', '?', '[']))
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let listing = if parent.as_os_str().is_empty() {
        dir.entries()
    } else {
        dir.read_dir(&parent)
    }
    .map_err(|err| format!("`{source}`: {err}"))?;
    let mut found: Vec<PathBuf> = listing
        .flatten()
        .map(|e| parent.join(e.file_name()))
        .filter(|path| glob.is_match(path) && !ignore.ignored(path))
        .collect();
    found.sort();
    Ok(found)
}

/// `source` as a path inside the context (a leading `/` is the context's root, as in Docker).
fn inside_context(source: &str) -> Result<PathBuf, String> {
    let mut normal = PathBuf::new();
    for component in Path::new(source).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => normal.push(part),
            Component::ParentDir => {
                if !normal.pop() {
                    return Err(format!("`{source}` leaves the build context"));
                }
            }
            Component::Prefix(_) => return Err(format!("`{source}` is not a path")),
        }
    }
    Ok(normal)
}

/// `.dockerignore` of the context: patterns (wildcards, `**`), `!` for exceptions; the last
/// pattern that matches a path or one of its parents decides.
struct Ignore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl Ignore {
    fn read(root: &Path) -> Result<Ignore, String> {
        let text = match read_regular(root, Path::new(".dockerignore"), Links::Refuse, 1 << 20) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(err) if err.is_not_found() => String::new(),
            Err(err) => return Err(err.to_string()),
        };
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keep, pattern) = match line.strip_prefix('!') {
                Some(pattern) => (true, pattern.trim()),
                None => (false, line),
            };
            let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
            let glob = Glob::new(pattern)
                .map_err(|err| format!(".dockerignore: `{line}` is not a valid pattern: {err}"))?;
            rules.push((glob.compile_matcher(), keep));
        }
        Ok(Ignore { rules })
    }

    fn ignored(&self, path: &Path) -> bool {
        // Where nightshift unpacks OCI features for the build is never part of the context.
        if path.starts_with(crate::build::features::FETCHED_DIR) {
            return true;
        }
        let mut ignored = false;
        for (glob, keep) in &self.rules {
            if path
                .ancestors()
                .any(|p| !p.as_os_str().is_empty() && glob.is_match(p))
            {
                ignored = !keep;
            }
        }
        ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn written(layer: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![layer.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.strip_prefix(layer).unwrap().display().to_string();
                if path.is_dir() {
                    found.push(format!("{name}/"));
                    stack.push(path);
                } else {
                    found.push(format!(
                        "{name}={}",
                        std::fs::read_to_string(&path).unwrap()
                    ));
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn a_directory_copied_to_the_root_lands_in_each_part_of_the_layer() {
        let ctx = context(&[
            ("tree/usr/local/bin/x", "x"),
            ("tree/srv/y", "y"),
            ("tree/home/agent/.rc", "rc"),
        ]);
        let layer = tempfile::tempdir().unwrap();
        let copy = Copy::plan(ctx.path(), &["tree".into()], "/");
        copy.unwrap().write(layer.path(), None, None, None).unwrap();
        let files: Vec<String> = written(layer.path())
            .into_iter()
            .filter(|path| !path.ends_with('/'))
            .collect();
        assert_eq!(
            files,
            ["home/.rc=rc", "root/srv/y=y", "system/usr/local/bin/x=x"]
        );
    }

    #[test]
    fn a_file_goes_to_dest_itself_or_into_a_dest_directory() {
        let ctx = context(&[("tools/hello.sh", "hi"), ("tools/bye.sh", "bye")]);
        let layer = tempfile::tempdir().unwrap();
        let copy = Copy::plan(
            ctx.path(),
            &["tools/hello.sh".into()],
            "/usr/local/bin/hello",
        );
        copy.unwrap().write(layer.path(), None, None, None).unwrap();
        let into = Copy::plan(ctx.path(), &["tools/bye.sh".into()], "/opt/t/");
        into.unwrap().write(layer.path(), None, None, None).unwrap();
        let dir = Copy::plan(ctx.path(), &["tools".into()], "/home/agent/tools");
        dir.unwrap().write(layer.path(), None, None, None).unwrap();
        assert_eq!(
            written(layer.path()),
            [
                "home/",
                "home/tools/",
                "home/tools/bye.sh=bye",
                "home/tools/hello.sh=hi",
                "system/",
                "system/opt/",
                "system/opt/t/",
                "system/opt/t/bye.sh=bye",
                "system/usr/",
                "system/usr/local/",
                "system/usr/local/bin/",
                "system/usr/local/bin/hello=hi",
            ]
        );
    }

    #[test]
    fn sources_outside_the_context_or_ignored_are_refused() {
        let ctx = context(&[
            ("a", "a"),
            ("secret.key", "k"),
            (".dockerignore", "*.key\n"),
        ]);
        assert!(Copy::plan(ctx.path(), &["../etc/passwd".into()], "/x").is_err());
        let err = match Copy::plan(ctx.path(), &["secret.key".into()], "/x") {
            Err(err) => err,
            Ok(_) => panic!("an ignored file was copied"),
        };
        assert!(err.contains("matches nothing"), "{err}");
        assert!(layer_part(Path::new("/../../etc")).is_err());
    }
}
