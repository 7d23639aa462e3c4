//! An image's users and groups, read on the host from its `/etc/passwd` and `/etc/group`: who
//! the agent runs as (the image's `User`, a Dockerfile's last `USER`) and whom `COPY --chown`
//! names.
//!
//! The image is untrusted: its layers are read as the trees they are, each file resolved
//! inside its own layer (a link never leads to a host file), regular files only, with a bound.
//! The files are looked for from the topmost layer down, as the overlay the sessions see
//! stacks them; a whiteout (the character device a layer puts in place of a deleted file)
//! ends the search.

use std::path::PathBuf;

use crate::tree_files::{Links, read_regular};

/// The most read of `/etc/passwd` or `/etc/group`.
const MAX_BYTES: u64 = 4 << 20;

/// Where an image's `/etc` is, topmost first: each a layer's root and the path of its `etc`
/// in it (`etc` in an image's layer, `system/etc` in a layer nightshift kept).
#[derive(Debug, Clone, Default)]
pub struct ImageEtc {
    dirs: Vec<(PathBuf, PathBuf)>,
}

impl ImageEtc {
    /// From the image's layers and the layers built or set up over them, each lowest first.
    pub fn new(image: &[PathBuf], kept: &[PathBuf]) -> Self {
        let kept = kept
            .iter()
            .rev()
            .map(|layer| (layer.clone(), PathBuf::from("system/etc")));
        let image = image
            .iter()
            .rev()
            .map(|layer| (layer.clone(), PathBuf::from("etc")));
        ImageEtc {
            dirs: kept.chain(image).collect(),
        }
    }

    /// The text of `/etc/NAME` as the image shows it; `None` where no layer has it (or the
    /// topmost that names it deleted it).
    fn read(&self, name: &str) -> Result<Option<String>, UserError> {
        for (root, etc) in &self.dirs {
            let relative = etc.join(name);
            let unreadable = |reason: String| UserError::Unreadable {
                file: format!("/etc/{name}"),
                layer: root.clone(),
                reason,
            };
            if whiteout(root, &relative).map_err(|err| unreadable(err.to_string()))? {
                return Ok(None);
            }
            match read_regular(root, &relative, Links::Refuse, MAX_BYTES) {
                Ok(bytes) => return Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
                Err(err) if err.is_not_found() => continue,
                Err(err) => return Err(unreadable(err.to_string())),
            }
        }
        Ok(None)
    }

    fn passwd(&self) -> Result<Vec<PasswdEntry>, UserError> {
        Ok(self
            .read("passwd")?
            .map(|text| text.lines().filter_map(PasswdEntry::parse).collect())
            .unwrap_or_default())
    }

    fn groups(&self) -> Result<Vec<GroupEntry>, UserError> {
        Ok(self
            .read("group")?
            .map(|text| text.lines().filter_map(GroupEntry::parse).collect())
            .unwrap_or_default())
    }

    /// The user a `User` (or `USER`) of `NAME|UID[:GROUP|GID]` stands for, as Docker resolves
    /// it: a name must be in `/etc/passwd`, a number need not be (its group is then 0); the
    /// primary group is the entry's unless one is given; the supplementary groups are those
    /// `/etc/group` lists the user in. `None` for root (or an empty text): commands of the
    /// image's root are the sandbox user's.
    pub fn user(&self, text: &str) -> Result<Option<ImageUser>, UserError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let (user, group) = match text.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (text, None),
        };
        let passwd = self.passwd()?;
        let entry = match user.parse::<u32>() {
            Ok(uid) => passwd.iter().find(|entry| entry.uid == uid),
            Err(_) => Some(
                passwd
                    .iter()
                    .find(|entry| entry.name == user)
                    .ok_or_else(|| UserError::NoSuchUser(user.to_string()))?,
            ),
        };
        let uid = match (entry, user.parse::<u32>()) {
            (Some(entry), _) => entry.uid,
            (None, Ok(uid)) => uid,
            (None, Err(_)) => return Err(UserError::NoSuchUser(user.to_string())),
        };
        if uid == 0 {
            return Ok(None);
        }
        let groups = self.groups()?;
        let gid = match group {
            Some(group) => group_id(&groups, group)?,
            None => entry.map(|entry| entry.gid).unwrap_or(0),
        };
        let mut supplementary = vec![gid];
        if let Some(entry) = entry {
            for group in &groups {
                if group.members.iter().any(|member| member == &entry.name)
                    && !supplementary.contains(&group.gid)
                {
                    supplementary.push(group.gid);
                }
            }
        }
        Ok(Some(ImageUser {
            name: entry
                .map(|entry| entry.name.clone())
                .unwrap_or_else(|| uid.to_string()),
            uid,
            gid,
            groups: supplementary,
            home: entry
                .map(|entry| entry.home.clone())
                .filter(|home| home.starts_with('/')),
        }))
    }

    /// The ids `COPY --chown=USER[:GROUP]` names, as Docker resolves them: names from
    /// `/etc/passwd` and `/etc/group`, numbers as they are; without a group, the group id is
    /// the user id.
    pub fn owner(&self, text: &str) -> Result<(u32, u32), UserError> {
        let (user, group) = match text.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (text, None),
        };
        let uid = match user.parse::<u32>() {
            Ok(uid) => uid,
            Err(_) => {
                self.passwd()?
                    .iter()
                    .find(|entry| entry.name == user)
                    .ok_or_else(|| UserError::NoSuchUser(user.to_string()))?
                    .uid
            }
        };
        let gid = match group.map(|group| (group, group.parse::<u32>())) {
            Some((_, Ok(gid))) => gid,
            Some((group, Err(_))) => group_id(&self.groups()?, group)?,
            None => uid,
        };
        Ok((uid, gid))
    }
}

/// Whether `relative` in the layer at `root` is a whiteout: a character device (0:0) that
/// stands for a file the layer deleted. Resolved inside the layer, the last component not
/// followed.
fn whiteout(root: &std::path::Path, relative: &std::path::Path) -> std::io::Result<bool> {
    use cap_std::fs::FileTypeExt;
    let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority())?;
    match dir.symlink_metadata(relative) {
        Ok(meta) => Ok(meta.file_type().is_char_device()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

fn group_id(groups: &[GroupEntry], text: &str) -> Result<u32, UserError> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    groups
        .iter()
        .find(|group| group.name == text)
        .map(|group| group.gid)
        .ok_or_else(|| UserError::NoSuchGroup(text.to_string()))
}

/// A user of the image, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    /// Its name, or its uid as text where `/etc/passwd` has no entry for it.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The primary group first, then the groups `/etc/group` lists it in.
    pub groups: Vec<u32>,
    /// Its home directory, where `/etc/passwd` gives an absolute one.
    pub home: Option<String>,
}

/// Why an image's user could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("the user `{0}` is not in the image's /etc/passwd")]
    NoSuchUser(String),
    #[error("the group `{0}` is not in the image's /etc/group")]
    NoSuchGroup(String),
    #[error("the image's {file} (in the layer {}) was not read: {reason}", .layer.display())]
    Unreadable {
        file: String,
        layer: PathBuf,
        reason: String,
    },
}

#[derive(Debug)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

impl PasswdEntry {
    /// `name:password:uid:gid:gecos:home:shell`; a line that is not one is skipped, as the C
    /// library skips it.
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || fields[0].is_empty() {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0].to_string(),
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5].to_string(),
        })
    }
}

#[derive(Debug)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

impl GroupEntry {
    /// `name:password:gid:member,member`.
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || fields[0].is_empty() {
            return None;
        }
        Some(GroupEntry {
            name: fields[0].to_string(),
            gid: fields[2].parse().ok()?,
            members: fields[3]
                .split(',')
                .filter(|member| !member.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}
