//! What a session's root is built from, staged outside it by the init: the working copy, the
//! session's state directory, the layers and the image's layers, each attached at a short path
//! of the staging tmpfs, and the layers' parts (`workspace`, `home`, `system/usr`...) as
//! overlayfs lists its lower directories.

use std::path::{Path, PathBuf};

use super::Handles;
use super::rootfs::{STAGING, Source, attach, mkdir_p};

/// What `rootfs::build` stages outside the new root: the working copy, the session's state
/// directory, each layer, each of the image's layers, and an empty directory for overlays with
/// nothing below them. The overlays hold on to them; they go with the host's root when it is detached.
pub(super) struct Staged {
    pub lower: PathBuf,
    pub state: PathBuf,
    /// The layers' directories, lowest first.
    layers: Vec<PathBuf>,
    /// The image's layers' directories, lowest first.
    pub image: Vec<PathBuf>,
    pub empty: PathBuf,
    /// Layers' parts staged on their own (idmapped for an image's user), by part and layer
    /// index: they stand in for that part of that layer.
    own_parts: Vec<(&'static str, usize, PathBuf)>,
}

impl Staged {
    pub(super) fn attach(
        staging: &Path,
        workspace: &Source,
        state: &Source,
        (layers, image): (&[Source], &[Source]),
    ) -> Result<Staged, String> {
        let lower = staging.join("lower");
        let staged_state = staging.join("state");
        for (source, at) in [(workspace, &lower), (state, &staged_state)] {
            mkdir_p(at, 0o755)?;
            attach(source, at)?;
        }
        // Short names: overlayfs takes its lower directories in one page of options.
        let stage = |sources: &[Source], prefix: &str| {
            let mut staged = Vec::new();
            for (i, source) in sources.iter().enumerate() {
                let at = staging.join(format!("{prefix}{i}"));
                mkdir_p(&at, 0o755)?;
                attach(source, &at)?;
                staged.push(at);
            }
            Ok::<_, String>(staged)
        };
        let staged_layers = stage(layers, "l")?;
        let staged_image = stage(image, "i")?;
        let empty = staging.join("empty");
        mkdir_p(&empty, 0o755)?;
        Ok(Staged {
            lower,
            state: staged_state,
            layers: staged_layers,
            image: staged_image,
            empty,
            own_parts: Vec::new(),
        })
    }

    /// Stages the layers' parts the host sent as trees of their own (see
    /// `trees::user_parts`), which [`Staged::parts`] then gives in place of the layers'.
    pub(super) fn attach_user_parts(
        &mut self,
        layers: &[PathBuf],
        handles: &mut Handles,
    ) -> Result<(), String> {
        for (index, layer) in layers.iter().enumerate() {
            for part in super::super::trees::USER_PARTS {
                let Some(tree) = handles.take(&layer.join(part)) else {
                    continue;
                };
                let at = Path::new(STAGING).join(format!("{}{index}", &part[..1]));
                mkdir_p(&at, 0o755)?;
                attach(&Source::Tree(tree), &at)?;
                self.own_parts.push((part, index, at));
            }
        }
        Ok(())
    }

    /// The layers' parts at `part` (`workspace`, `home`, `system/usr`...), topmost first, as
    /// overlayfs lists lower layers.
    pub(super) fn parts(&self, part: &str) -> Vec<PathBuf> {
        let own: Vec<_> = self
            .own_parts
            .iter()
            .filter(|(name, _, _)| *name == part)
            .collect();
        if own.is_empty() {
            return directories_at(&self.layers, part);
        }
        let mut parts: Vec<PathBuf> = self
            .layers
            .iter()
            .enumerate()
            .filter_map(|(index, layer)| {
                match own.iter().find(|(_, at_index, _)| *at_index == index) {
                    Some((_, _, at)) => Some(at.clone()),
                    None => {
                        let dir = layer.join(part);
                        std::fs::symlink_metadata(&dir)
                            .is_ok_and(|meta| meta.is_dir())
                            .then_some(dir)
                    }
                }
            })
            .collect();
        parts.reverse();
        parts
    }

    /// The image's layers' parts at `part` (`usr`...), topmost first.
    pub(super) fn image_parts(&self, part: &str) -> Vec<PathBuf> {
        directories_at(&self.image, part)
    }
}

/// `part` of each of `layers` (lowest first) where it is a directory, topmost first. A link is
/// not followed: this runs with the host's view, and an image's `usr` may lead anywhere.
fn directories_at(layers: &[PathBuf], part: &str) -> Vec<PathBuf> {
    layers
        .iter()
        .rev()
        .map(|layer| layer.join(part))
        .filter(|dir| std::fs::symlink_metadata(dir).is_ok_and(|meta| meta.is_dir()))
        .collect()
}
