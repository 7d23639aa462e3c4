//! Which package ecosystems a repository uses, told from their manifest files, so that setup can
//! reach exactly those registries without the person listing them.
//!
//! Only the root and two levels below it are looked at (monorepos keep `web/package.json` or
//! `services/api/go.mod`), skipping hidden, vendored and build directories: a cheap, bounded
//! look that runs on every `nightshift env check`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A language's package ecosystem, as far as network access for setup is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ecosystem {
    Cargo,
    Npm,
    Python,
    Go,
    RubyGems,
    Maven,
    Gradle,
    Composer,
    NuGet,
    Pub,
    Hex,
}

impl Ecosystem {
    pub const ALL: [Ecosystem; 11] = [
        Ecosystem::Cargo,
        Ecosystem::Npm,
        Ecosystem::Python,
        Ecosystem::Go,
        Ecosystem::RubyGems,
        Ecosystem::Maven,
        Ecosystem::Gradle,
        Ecosystem::Composer,
        Ecosystem::NuGet,
        Ecosystem::Pub,
        Ecosystem::Hex,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Ecosystem::Cargo => "Rust (Cargo)",
            Ecosystem::Npm => "JavaScript (npm)",
            Ecosystem::Python => "Python",
            Ecosystem::Go => "Go",
            Ecosystem::RubyGems => "Ruby (Bundler)",
            Ecosystem::Maven => "Java (Maven)",
            Ecosystem::Gradle => "JVM (Gradle)",
            Ecosystem::Composer => "PHP (Composer)",
            Ecosystem::NuGet => ".NET (NuGet)",
            Ecosystem::Pub => "Dart (pub)",
            Ecosystem::Hex => "Elixir (Hex)",
        }
    }

    /// The hosts its package manager downloads from.
    pub fn registry_hosts(self) -> &'static [&'static str] {
        match self {
            Ecosystem::Cargo => &["crates.io", "index.crates.io", "static.crates.io"],
            Ecosystem::Npm => &["registry.npmjs.org", "registry.yarnpkg.com"],
            Ecosystem::Python => &["pypi.org", "files.pythonhosted.org"],
            Ecosystem::Go => &["proxy.golang.org", "sum.golang.org"],
            Ecosystem::RubyGems => &["rubygems.org", "index.rubygems.org"],
            Ecosystem::Maven => &["repo.maven.apache.org", "repo1.maven.org"],
            Ecosystem::Gradle => &[
                "services.gradle.org",
                "plugins.gradle.org",
                "repo.maven.apache.org",
                "repo1.maven.org",
            ],
            Ecosystem::Composer => &["repo.packagist.org"],
            Ecosystem::NuGet => &["api.nuget.org"],
            Ecosystem::Pub => &["pub.dev"],
            Ecosystem::Hex => &["hex.pm", "repo.hex.pm"],
        }
    }

    /// Whether a file with this name marks the ecosystem.
    fn is_marker(self, file_name: &str) -> bool {
        match self {
            Ecosystem::Cargo => file_name == "Cargo.toml",
            Ecosystem::Npm => file_name == "package.json",
            Ecosystem::Python => {
                matches!(
                    file_name,
                    "pyproject.toml" | "setup.py" | "setup.cfg" | "Pipfile" | "uv.lock"
                ) || (file_name.starts_with("requirements") && file_name.ends_with(".txt"))
            }
            Ecosystem::Go => file_name == "go.mod",
            Ecosystem::RubyGems => file_name == "Gemfile",
            Ecosystem::Maven => file_name == "pom.xml",
            Ecosystem::Gradle => matches!(
                file_name,
                "build.gradle" | "build.gradle.kts" | "settings.gradle" | "settings.gradle.kts"
            ),
            Ecosystem::Composer => file_name == "composer.json",
            Ecosystem::NuGet => {
                file_name.ends_with(".csproj")
                    || file_name.ends_with(".fsproj")
                    || file_name.ends_with(".sln")
            }
            Ecosystem::Pub => file_name == "pubspec.yaml",
            Ecosystem::Hex => file_name == "mix.exs",
        }
    }
}

/// An ecosystem and the first manifest that showed it (relative to the repository root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetectedEcosystem {
    pub ecosystem: Ecosystem,
    pub marker: PathBuf,
}

/// How deep below the root manifests are looked for.
const MAX_DEPTH: usize = 2;
/// Directories never looked into: dependencies and build output, not the repository's own code.
const SKIPPED_DIRS: &[&str] = &["node_modules", "target", "vendor", "dist", "build", "venv"];
/// A bound on directory entries read, so a huge checkout cannot make this slow.
const MAX_ENTRIES: usize = 20_000;

/// The ecosystems used in the repository, in [`Ecosystem::ALL`] order.
pub fn detect_ecosystems(repo_root: &Path) -> Vec<Ecosystem> {
    detect_ecosystems_with_markers(repo_root)
        .into_iter()
        .map(|detected| detected.ecosystem)
        .collect()
}

/// Like [`detect_ecosystems`], with the manifest that showed each one (shallowest first).
pub fn detect_ecosystems_with_markers(repo_root: &Path) -> Vec<DetectedEcosystem> {
    let mut found: Vec<DetectedEcosystem> = Vec::new();
    let mut level = vec![PathBuf::new()];
    let mut entries_read = 0;
    for depth in 0..=MAX_DEPTH {
        let mut next_level = Vec::new();
        for dir in &level {
            let Ok(entries) = fs::read_dir(repo_root.join(dir)) else {
                continue;
            };
            let mut names: Vec<(String, bool)> = Vec::new();
            for entry in entries.flatten() {
                entries_read += 1;
                if entries_read > MAX_ENTRIES {
                    break;
                }
                let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
                if let Ok(name) = entry.file_name().into_string() {
                    names.push((name, is_dir));
                }
            }
            names.sort();
            for (name, is_dir) in names {
                if is_dir {
                    if depth < MAX_DEPTH
                        && !name.starts_with('.')
                        && !SKIPPED_DIRS.contains(&name.as_str())
                    {
                        next_level.push(dir.join(&name));
                    }
                    continue;
                }
                for ecosystem in Ecosystem::ALL {
                    if ecosystem.is_marker(&name)
                        && !found.iter().any(|seen| seen.ecosystem == ecosystem)
                    {
                        found.push(DetectedEcosystem {
                            ecosystem,
                            marker: dir.join(&name),
                        });
                    }
                }
            }
        }
        level = next_level;
    }
    found.sort_by_key(|detected| detected.ecosystem);
    found
}

/// The registry hosts of `ecosystems`, without duplicates, in order.
pub fn default_setup_hosts(ecosystems: &[Ecosystem]) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for ecosystem in ecosystems {
        for host in ecosystem.registry_hosts() {
            if !hosts.iter().any(|seen| seen == host) {
                hosts.push((*host).to_string());
            }
        }
    }
    hosts
}
