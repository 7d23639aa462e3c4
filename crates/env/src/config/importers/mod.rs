//! Reading other tools' environment files when a repository has no `.nightshift.toml`, so a
//! repository already set up for Copilot, Cursor or a devcontainer works on its first task.
//!
//! The first importer (in [`Importer::ALL`] order) whose file exists and parses is used; the
//! others are reported as shadowed rather than merged, because two tools' setup scripts usually
//! install the same things twice. A file that does not parse is a warning, and the next importer
//! is tried: an importer never makes loading fail.

mod copilot;
mod cursor;
mod devcontainer;
mod devcontainer_build;

use std::path::{Path, PathBuf};

use super::error::{ConfigWarning, WarningKind};
use super::provenance::{Importer, Origin, Provenance};
use super::schema::EnvConfig;
use super::validate;

/// What an importer took from its file, with the field each value came from.
#[derive(Debug, Default)]
pub(crate) struct Imported {
    pub(crate) setup: Option<Sourced>,
    pub(crate) maintenance: Option<Sourced>,
    /// The image, as written.
    pub(crate) image: Option<Sourced>,
    /// Who the agent runs as on the image (devcontainer.json's `remoteUser`), as written.
    pub(crate) user: Option<Sourced>,
    /// A Dockerfile and features to build.
    pub(crate) build: Option<crate::config::schema::ImageBuild>,
    /// In the order they should be applied: a later entry for the same name wins.
    pub(crate) env: Vec<(String, Sourced)>,
    pub(crate) warnings: Vec<ConfigWarning>,
}

/// A value and the field(s) of the imported file it was built from.
#[derive(Debug)]
pub(crate) struct Sourced {
    pub(crate) value: String,
    pub(crate) field: String,
}

impl Importer {
    /// The files this importer reads, relative to the repository root, the first found wins.
    pub fn candidates(self) -> &'static [&'static str] {
        match self {
            Importer::CopilotSetupSteps => &[
                ".github/workflows/copilot-setup-steps.yml",
                ".github/workflows/copilot-setup-steps.yaml",
            ],
            Importer::Cursor => &[".cursor/environment.json"],
            Importer::Devcontainer => &[".devcontainer/devcontainer.json", ".devcontainer.json"],
        }
    }

    /// The importer's file in `repo_root`, relative to it, if there is one.
    pub fn find(self, repo_root: &Path) -> Option<PathBuf> {
        self.candidates()
            .iter()
            .map(PathBuf::from)
            .find(|candidate| {
                // What stands there, even a link or a FIFO: reading it says what is wrong.
                std::fs::symlink_metadata(repo_root.join(candidate))
                    .is_ok_and(|meta| !meta.is_dir())
            })
    }

    fn read(self, repo_root: &Path, file: &Path) -> Result<Imported, ConfigWarning> {
        let text = super::read_config_file(repo_root, file).map_err(|err| {
            malformed(file, None, format!("cannot be read ({err}); it is skipped"))
        })?;
        match self {
            Importer::CopilotSetupSteps => copilot::read(file, &text),
            Importer::Cursor => cursor::read(file, &text),
            Importer::Devcontainer => devcontainer::read(file, &text),
        }
    }
}

/// The configuration built from the first importer that applies, over `config`'s defaults.
/// Returns which importer and file were used, if any.
pub(crate) fn import(
    repo_root: &Path,
    config: &mut EnvConfig,
    provenance: &mut Provenance,
    warnings: &mut Vec<ConfigWarning>,
) -> Option<(Importer, PathBuf)> {
    let mut chosen: Option<(Importer, PathBuf)> = None;
    for importer in Importer::ALL {
        let Some(file) = importer.find(repo_root) else {
            continue;
        };
        if let Some((_, used)) = &chosen {
            warnings.push(ConfigWarning {
                kind: WarningKind::Shadowed,
                file: file.clone(),
                line: None,
                column: None,
                key: None,
                message: format!(
                    "not used: {} takes precedence (write a .nightshift.toml to choose exactly)",
                    used.display()
                ),
            });
            continue;
        }
        match importer.read(repo_root, &file) {
            Ok(imported) => {
                apply(importer, &file, imported, config, provenance, warnings);
                chosen = Some((importer, file));
            }
            Err(warning) => warnings.push(warning),
        }
    }
    chosen
}

fn apply(
    importer: Importer,
    file: &Path,
    imported: Imported,
    config: &mut EnvConfig,
    provenance: &mut Provenance,
    warnings: &mut Vec<ConfigWarning>,
) {
    let origin = |field: String| Origin::Imported {
        importer,
        path: file.to_path_buf(),
        field,
    };
    warnings.extend(imported.warnings);
    if let Some(setup) = imported.setup {
        config.environment.setup = Some(setup.value);
        provenance.set("environment.setup", origin(setup.field));
    }
    if let Some(maintenance) = imported.maintenance {
        config.environment.maintenance = Some(maintenance.value);
        provenance.set("environment.maintenance", origin(maintenance.field));
    }
    if let Some(build) = imported.build {
        if build.dockerfile.is_some() {
            provenance.set(
                "environment.build.dockerfile",
                origin("build.dockerfile".into()),
            );
        }
        for feature in &build.features {
            let key = format!("environment.build.features.{:?}", feature.id);
            provenance.set(&key, origin(format!("features.{}", feature.id)));
        }
        config.environment.build = Some(build);
    }
    if let Some(image) = imported.image {
        match nightshift_image::Reference::parse(image.value.trim()) {
            Ok(reference) => {
                config.environment.image = Some(reference.to_string());
                provenance.set("environment.image", origin(image.field));
            }
            Err(err) => warnings.push(ConfigWarning {
                kind: WarningKind::Suspicious,
                file: file.to_path_buf(),
                line: None,
                column: None,
                key: Some(image.field),
                message: format!(
                    "the image cannot be used ({err}); the task starts from the host's system"
                ),
            }),
        }
    }
    if let Some(user) = imported.user {
        config.environment.user = Some(user.value);
        provenance.set("environment.user", origin(user.field));
    }
    for (name, sourced) in imported.env {
        if let Err(reason) = validate::env_name(&name) {
            warnings.push(ConfigWarning {
                kind: WarningKind::Suspicious,
                file: file.to_path_buf(),
                line: None,
                column: None,
                key: Some(sourced.field.clone()),
                message: format!("`{name}` {reason}; it is skipped"),
            });
            continue;
        }
        provenance.set(format!("environment.env.{name}"), origin(sourced.field));
        config.environment.env.insert(name, sourced.value);
    }
}

/// A warning that an importer's file could not be used.
pub(crate) fn malformed(
    file: &Path,
    position: Option<(usize, usize)>,
    message: String,
) -> ConfigWarning {
    ConfigWarning {
        kind: WarningKind::MalformedImport,
        file: file.to_path_buf(),
        line: position.map(|(line, _)| line),
        column: position.map(|(_, column)| column),
        key: None,
        message,
    }
}

/// A warning about one field of an importer's file.
pub(crate) fn field_warning(
    file: &Path,
    kind: WarningKind,
    field: &str,
    message: String,
) -> ConfigWarning {
    ConfigWarning {
        kind,
        file: file.to_path_buf(),
        line: None,
        column: None,
        key: Some(field.to_string()),
        message,
    }
}

/// One command line from an exec-form argument list (`["npm", "ci"]`), quoted for `sh`.
pub(crate) fn exec_line(args: &[String]) -> String {
    args.iter()
        .map(|arg| shell_quote(arg))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `arg` as one `sh` word: as is when it has nothing special, else single-quoted.
pub(crate) fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Whether a value still holds another tool's variable syntax (`${localEnv:HOME}`,
/// `${{ secrets.X }}`), which nightshift passes through unexpanded.
pub(crate) fn has_foreign_variable(value: &str) -> bool {
    value.contains("${")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_form_is_quoted_for_sh() {
        let args = ["npm", "run", "build:all", "it's", "a b", ""].map(String::from);
        assert_eq!(exec_line(&args), r"npm run build:all 'it'\''s' 'a b' ''");
    }
}
