//! A repository's environment configuration: `.nightshift.toml` at its root, or, when there is
//! none, what can be imported from the tools it is already set up for (Copilot's setup steps,
//! Cursor's environment, a devcontainer), over defaults that depend on the ecosystems it uses.
//!
//! Loading never guesses silently: every effective value carries its [`Origin`], unknown keys
//! and unusable imported settings become warnings, and a value nightshift cannot honour is an
//! error that names the file, line, column and key. Also here: the `AGENTS.md` files that go
//! into the agent's context.
//!
//! Reading is synchronous: a handful of small files, read before a task starts.

mod agents_md;
mod apt_sources;
mod describe;
mod ecosystems;
mod error;
mod importers;
mod mcp;
mod provenance;
mod schema;
mod sections;
mod toml_reader;
mod units;
mod validate;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::tree_files::{Links, TreeFileError, read_regular};

pub use agents_md::{
    AGENTS_FILE, AGENTS_MD_CAP, AgentsDoc, collect_agents_md, render_agents_context,
};
pub use apt_sources::apt_source_hosts;
pub use describe::describe;
pub use ecosystems::{
    DetectedEcosystem, Ecosystem, default_setup_hosts, detect_ecosystems,
    detect_ecosystems_with_markers,
};
pub use error::{ConfigError, ConfigWarning, Location, WarningKind};
pub use mcp::read_mcp_table;
pub use provenance::{Importer, Origin, Provenance};
pub use schema::{
    CONFIG_VERSION, Check, EnvConfig, Environment, Limits, McpServer, Network, Review, SecretScope,
    SecretSpec,
};
pub use units::{ByteSize, HumanDuration};
pub use validate::{mcp_server_name, mcp_url, patterns_overlap};

/// The configuration file's name, at the repository root.
pub const CONFIG_FILE: &str = ".nightshift.toml";

/// Every file the configuration can come from, relative to the repository root: the
/// configuration file and each importer's.
pub fn config_files() -> Vec<&'static str> {
    let mut files = vec![CONFIG_FILE];
    for importer in Importer::ALL {
        files.extend(importer.candidates());
    }
    files
}

/// Where the effective configuration came from as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConfigSource {
    /// `.nightshift.toml` (path relative to the repository root).
    File { path: PathBuf },
    /// No `.nightshift.toml`; this importer's file was read.
    Imported { importer: Importer, path: PathBuf },
    /// Nothing to read: defaults only.
    Defaults,
}

/// A loaded configuration with everything needed to explain it.
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    pub config: EnvConfig,
    pub source: ConfigSource,
    /// Problems that did not stop loading; the values they concern were ignored.
    pub warnings: Vec<ConfigWarning>,
    /// Where each value came from, by key path (`environment.setup`).
    pub provenance: Provenance,
    /// The ecosystems seen in the repository, which decide the default setup network.
    pub ecosystems: Vec<DetectedEcosystem>,
}

impl Loaded {
    /// Where the value at `key` (`limits.wall_time`, `checks.test`) came from.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.provenance.get(key)
    }
}

impl EnvConfig {
    /// Reads the configuration of the repository at `repo_root`: `.nightshift.toml` if it
    /// exists, else the first importer that applies, else defaults.
    pub fn load(repo_root: &Path) -> Result<Loaded, ConfigError> {
        let ecosystems = detect_ecosystems_with_markers(repo_root);
        let registries = default_setup_hosts(
            &ecosystems
                .iter()
                .map(|detected| detected.ecosystem)
                .collect::<Vec<_>>(),
        );
        let mut config = EnvConfig::defaults(registries.clone());
        let provenance = default_provenance(&ecosystems);

        let file = repo_root.join(CONFIG_FILE);
        match read_config_file(repo_root, Path::new(CONFIG_FILE)) {
            Ok(text) => {
                let relative = Path::new(CONFIG_FILE);
                let mut reader =
                    toml_reader::TomlReader::new(repo_root, relative, &text, provenance);
                reader.read_into(&mut config, &registries)?;
                let mut warnings = reader.warnings;
                warnings.extend(unreached_secret_hosts(&config, relative));
                Ok(Loaded {
                    config,
                    source: ConfigSource::File {
                        path: relative.to_path_buf(),
                    },
                    warnings,
                    provenance: reader.provenance,
                    ecosystems,
                })
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {
                let mut provenance = provenance;
                let mut warnings = Vec::new();
                let source =
                    match importers::import(repo_root, &mut config, &mut provenance, &mut warnings)
                    {
                        Some((importer, path)) => ConfigSource::Imported { importer, path },
                        None => ConfigSource::Defaults,
                    };
                Ok(Loaded {
                    config,
                    source,
                    warnings,
                    provenance,
                    ecosystems,
                })
            }
            Err(source) => Err(ConfigError::Read { path: file, source }),
        }
    }
}

/// The most bytes of a configuration file (`.nightshift.toml` or an imported one) read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The text of the configuration file `relative`, read inside the repository (a symbolic link
/// out of it, a FIFO or a huge file is an error, never a read of the host or a hang).
pub(crate) fn read_config_file(repo_root: &Path, relative: &Path) -> std::io::Result<String> {
    let bytes = read_regular(repo_root, relative, Links::FollowInside, MAX_CONFIG_BYTES).map_err(
        |err| match err {
            TreeFileError::NotFound { .. } => std::io::Error::from(ErrorKind::NotFound),
            TreeFileError::Io { source, .. } => source,
            refused => std::io::Error::other(refused.to_string()),
        },
    )?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "it is not UTF-8 text"))
}

/// A warning for each proxy secret with hosts that neither allowlist reaches: the egress proxy
/// would never send it there.
fn unreached_secret_hosts(config: &EnvConfig, file: &Path) -> Vec<ConfigWarning> {
    let network = &config.network;
    let mut warnings = Vec::new();
    for secret in &config.secrets {
        let SecretScope::Proxy { hosts, .. } = &secret.scope else {
            continue;
        };
        let unreached: Vec<&str> = hosts
            .iter()
            .filter(|host| {
                !network
                    .agent
                    .iter()
                    .chain(&network.setup)
                    .any(|pattern| validate::patterns_overlap(pattern, host))
            })
            .map(String::as_str)
            .collect();
        if !unreached.is_empty() {
            warnings.push(ConfigWarning {
                kind: WarningKind::Ineffective,
                file: file.to_path_buf(),
                line: None,
                column: None,
                key: Some(format!("secrets.{}.hosts", secret.name)),
                message: format!(
                    "secret `{}` is for {}, which neither [network].agent nor [network].setup allows: it is never sent there",
                    secret.name,
                    unreached.join(", ")
                ),
            });
        }
    }
    warnings
}

/// Origins of the values every configuration has before anything is read.
fn default_provenance(ecosystems: &[DetectedEcosystem]) -> Provenance {
    let mut provenance = Provenance::default();
    for key in [
        "version",
        "environment.workdir",
        "environment.cache_key",
        "environment.copy",
        "limits.wall_time",
        "limits.memory",
        "limits.cpus",
        "limits.pids",
        "limits.disk",
    ] {
        provenance.set(key, Origin::default_value());
    }
    let registries = if ecosystems.is_empty() {
        "no package ecosystem detected, so no hosts".to_string()
    } else {
        let seen: Vec<String> = ecosystems
            .iter()
            .map(|detected| {
                format!(
                    "{} from {}",
                    detected.ecosystem.name(),
                    detected.marker.display()
                )
            })
            .collect();
        format!("registries of {}", seen.join(", "))
    };
    provenance.set(
        "network.setup",
        Origin::Default {
            reason: Some(registries),
        },
    );
    provenance.set(
        "network.agent",
        Origin::Default {
            reason: Some("no hosts".into()),
        },
    );
    provenance
}
