//! `AGENTS.md` files: the repository's own instructions for coding agents. The root one applies
//! everywhere; a nested one applies to its directory, so the agent is given the ones on the
//! paths to the directories it works in, shallowest first, each capped so one huge file cannot
//! crowd out the task.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::tree_files::{Links, TreeFileError, read_head};

/// The file name looked for in each directory.
pub const AGENTS_FILE: &str = "AGENTS.md";
/// The most bytes of one `AGENTS.md` given to the agent.
pub const AGENTS_MD_CAP: usize = 32 * 1024;

/// One `AGENTS.md` as the agent will see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentsDoc {
    /// Relative to the repository root (`AGENTS.md`, `crates/env/AGENTS.md`).
    pub path: PathBuf,
    /// The file's text, cut to [`AGENTS_MD_CAP`] bytes with a note saying so when longer.
    pub content: String,
    pub truncated: bool,
}

/// The root `AGENTS.md` and those in `dirs_touched` (relative to `repo_root`, or absolute
/// inside it; a file stands for its directory) and their ancestors, root first, then by depth
/// and path. Paths outside the repository, unreadable files and files that resolve outside the
/// repository through symbolic links are left out.
pub fn collect_agents_md(repo_root: &Path, dirs_touched: &[PathBuf]) -> Vec<AgentsDoc> {
    let canonical_root = repo_root
        .canonicalize()
        .unwrap_or_else(|_| repo_root.to_path_buf());
    let mut dirs: BTreeSet<(usize, PathBuf)> = BTreeSet::new();
    dirs.insert((0, PathBuf::new()));
    for touched in dirs_touched {
        let Some(mut relative) = inside(repo_root, &canonical_root, touched) else {
            continue;
        };
        if repo_root.join(&relative).is_file() {
            relative.pop();
        }
        let mut dir = relative;
        loop {
            dirs.insert((dir.components().count(), dir.clone()));
            if !dir.pop() {
                break;
            }
        }
    }
    dirs.into_iter()
        .filter_map(|(_, dir)| read_doc(repo_root, &dir.join(AGENTS_FILE)))
        .collect()
}

/// `path` relative to the repository root and normalised, or `None` when it leaves it.
fn inside(repo_root: &Path, canonical_root: &Path, path: &Path) -> Option<PathBuf> {
    let relative = if path.is_absolute() {
        path.strip_prefix(repo_root)
            .or_else(|_| path.strip_prefix(canonical_root))
            .ok()?
    } else {
        path
    };
    let mut normal = PathBuf::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(normal)
}

fn read_doc(repo_root: &Path, relative: &Path) -> Option<AgentsDoc> {
    // Read inside the repository only, a regular file only, and no more than is shown.
    let (bytes, len) = match read_head(
        repo_root,
        relative,
        Links::FollowInside,
        AGENTS_MD_CAP as u64,
    ) {
        Ok(read) => read,
        Err(TreeFileError::NotFound { .. }) => return None,
        Err(err) => {
            tracing::warn!(%err, "cannot read AGENTS.md; leaving it out");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let truncated = len > AGENTS_MD_CAP as u64;
    let content = if truncated {
        let mut end = AGENTS_MD_CAP.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let cut = &text[..end];
        // End on a whole line when one ends in the second half of what is kept.
        let cut = match cut.rfind('\n') {
            Some(newline) if newline > AGENTS_MD_CAP / 2 => &cut[..newline],
            _ => cut,
        };
        format!(
            "{cut}\n\n[{} is {} bytes; only the first {} are shown]",
            relative.display(),
            len,
            cut.len()
        )
    } else {
        text.into_owned()
    };
    Some(AgentsDoc {
        path: relative.to_path_buf(),
        content,
        truncated,
    })
}

/// The documents as one block for the agent's first message; empty when there are none.
pub fn render_agents_context(docs: &[AgentsDoc]) -> String {
    if docs.is_empty() {
        return String::new();
    }
    let mut text = String::from(
        "The repository gives instructions for agents in AGENTS.md files. Each applies to the \
         directory it is in and everything below it; where two conflict, the deeper one wins. \
         The task's own instructions take precedence over both.\n",
    );
    for doc in docs {
        let _ = write!(
            text,
            "\n<agents_md path=\"{}\">\n{}\n</agents_md>\n",
            doc.path.display(),
            doc.content.trim_end()
        );
    }
    text
}
