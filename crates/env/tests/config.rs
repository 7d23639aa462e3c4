#![allow(clippy::unwrap_used, clippy::expect_used)]

//! `.nightshift.toml`: reading every key, provenance, and the errors and warnings a person sees.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nightshift_env::config::{
    ByteSize, ConfigError, ConfigSource, Ecosystem, EnvConfig, Origin, SecretScope, WarningKind,
    default_setup_hosts, describe, detect_ecosystems,
};

fn repo() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write(root: &Path, relative: &str, text: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const FULL: &str = r#"version = 1

[environment]
setup = """
apt-get install -y protobuf-compiler
cargo fetch --locked
"""
maintenance = "cargo build --offline"
workdir = "./services/api"
cache_key = ["rust-toolchain.toml", "proto/**/*.proto"]
copy = [".env", "config/local.toml"]
env = { RUST_LOG = "debug", PORT = 8080 }

[checks]
test = "cargo test --workspace"
lint = { run = "cargo clippy -- -D warnings", timeout = "10m" }

[checks.fmt]
run = "cargo fmt --check"

[network]
setup = ["@registries", "github.com", "*.githubusercontent.com"]
agent = ["docs.rs", "api.openai.com", "api.github.com"]

[limits]
wall_time = "1h30m"
memory = "8G"
cpus = 2.5
pids = 2048
disk = "20GiB"

[secrets]
NPM_TOKEN = "setup"
OPENAI_API_KEY = { scope = "proxy", hosts = ["api.openai.com"] }
GH_TOKEN = { scope = "proxy", hosts = ["api.github.com"], header = "Authorization", format = "token {value}" }
"#;

#[test]
fn a_full_file_round_trips_with_provenance() {
    let dir = repo();
    let root = dir.path();
    write(root, ".nightshift.toml", FULL);
    write(root, "Cargo.toml", "[workspace]\n");
    std::fs::create_dir_all(root.join("services/api")).unwrap();

    let loaded = EnvConfig::load(root).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        loaded.source,
        ConfigSource::File {
            path: PathBuf::from(".nightshift.toml")
        }
    );
    let config = &loaded.config;
    let environment = &config.environment;
    assert_eq!(
        environment.setup.as_deref(),
        Some("apt-get install -y protobuf-compiler\ncargo fetch --locked\n")
    );
    assert_eq!(
        environment.maintenance.as_deref(),
        Some("cargo build --offline")
    );
    assert_eq!(
        environment.workdir.as_deref(),
        Some(Path::new("services/api"))
    );
    assert_eq!(
        environment.cache_key,
        ["rust-toolchain.toml", "proto/**/*.proto"]
    );
    assert_eq!(
        environment.copy,
        [PathBuf::from(".env"), PathBuf::from("config/local.toml")]
    );
    assert_eq!(environment.env["RUST_LOG"], "debug");
    assert_eq!(environment.env["PORT"], "8080");

    let names: Vec<&str> = config
        .checks
        .iter()
        .map(|check| check.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["test", "lint", "fmt"],
        "checks keep the order they were written in"
    );
    assert_eq!(config.check("test").unwrap().run, "cargo test --workspace");
    assert_eq!(config.check("test").unwrap().timeout, None);
    assert_eq!(
        config.check("lint").unwrap().timeout.unwrap().as_duration(),
        Duration::from_secs(600)
    );

    let mut setup_hosts = default_setup_hosts(&[Ecosystem::Cargo]);
    setup_hosts.extend([
        "github.com".to_string(),
        "*.githubusercontent.com".to_string(),
    ]);
    assert_eq!(config.network.setup, setup_hosts);
    assert_eq!(
        config.network.agent,
        ["docs.rs", "api.openai.com", "api.github.com"]
    );

    let limits = &config.limits;
    assert_eq!(limits.wall_time.as_duration(), Duration::from_secs(5400));
    assert_eq!(limits.memory.bytes(), 8 * ByteSize::GIB);
    assert_eq!(limits.cpus, Some(2.5));
    assert_eq!(limits.pids, Some(2048));
    assert_eq!(limits.disk.bytes(), 20 * ByteSize::GIB);

    assert_eq!(
        config.secret("NPM_TOKEN").unwrap().scope,
        SecretScope::Setup
    );
    assert_eq!(
        config.secret("OPENAI_API_KEY").unwrap().scope,
        SecretScope::Proxy {
            hosts: vec!["api.openai.com".into()],
            header: "Authorization".into(),
            format: "Bearer {value}".into(),
        }
    );
    match &config.secret("GH_TOKEN").unwrap().scope {
        SecretScope::Proxy { format, .. } => assert_eq!(format, "token {value}"),
        other => panic!("{other:?}"),
    }

    let line = |key: &str| match loaded.origin(key) {
        Some(Origin::File { path, line }) => {
            assert_eq!(path, Path::new(".nightshift.toml"));
            *line
        }
        other => panic!("{key}: {other:?}"),
    };
    assert_eq!(line("version"), 1);
    assert_eq!(line("environment.setup"), 4);
    assert_eq!(line("environment.maintenance"), 8);
    assert_eq!(line("environment.env.PORT"), 12);
    assert_eq!(line("checks.test"), 15);
    assert_eq!(line("checks.fmt"), 18);
    assert_eq!(line("network.setup"), 22);
    assert_eq!(line("limits.pids"), 29);
    assert_eq!(line("secrets.GH_TOKEN"), 35);

    let text = describe(&loaded);
    assert!(text.contains("source: .nightshift.toml"), "{text}");
    assert!(
        text.contains("environment.setup: (.nightshift.toml:4)\n    | apt-get install"),
        "{text}"
    );
    assert!(
        text.contains("environment.maintenance = \"cargo build --offline\"  (.nightshift.toml:8)"),
        "{text}"
    );
    assert!(
        text.contains(
            "checks.lint = \"cargo clippy -- -D warnings\" (timeout 10m)  (.nightshift.toml:16)"
        ),
        "{text}"
    );
    assert!(
        text.contains("limits.wall_time = 1h30m  (.nightshift.toml:26)"),
        "{text}"
    );
    assert!(text.contains("secrets.NPM_TOKEN = setup"), "{text}");
    assert!(
        text.contains("ecosystems: Rust (Cargo) (Cargo.toml)"),
        "{text}"
    );

    let json = serde_json::to_value(&loaded).unwrap();
    assert_eq!(json["config"]["limits"]["wall_time"], "1h30m");
    assert_eq!(json["config"]["limits"]["memory"], "8G");
    assert_eq!(json["source"]["kind"], "file");
    assert_eq!(json["provenance"]["environment.setup"]["line"], 4);
    assert_eq!(json["config"]["secrets"][1]["scope"]["scope"], "proxy");
}

#[test]
fn no_file_and_nothing_to_import_means_defaults() {
    let dir = repo();
    let loaded = EnvConfig::load(dir.path()).unwrap();
    assert_eq!(loaded.source, ConfigSource::Defaults);
    let config = &loaded.config;
    assert_eq!(
        config.limits.wall_time.as_duration(),
        Duration::from_secs(59 * 60)
    );
    assert_eq!(config.limits.memory.bytes(), 4 * ByteSize::GIB);
    assert_eq!(config.limits.disk.bytes(), 10 * ByteSize::GIB);
    assert!(config.network.setup.is_empty());
    assert!(config.network.agent.is_empty());
    assert!(config.checks.is_empty());
    assert!(matches!(
        loaded.origin("limits.wall_time"),
        Some(Origin::Default { .. })
    ));
    let text = describe(&loaded);
    assert!(text.contains("limits.wall_time = 59m  (default)"), "{text}");
    assert!(text.contains("environment.setup: not set"), "{text}");
    assert!(text.contains("environment.copy = []  (default)"), "{text}");
    assert!(text.contains("checks: none declared"), "{text}");
}

#[test]
fn malformed_toml_names_file_line_column_and_key() {
    let dir = repo();
    write(
        dir.path(),
        ".nightshift.toml",
        "[environment]\nsetup = \"cargo fetch\"\nworkdir = [\"unclosed\"\n",
    );
    let err = EnvConfig::load(dir.path()).unwrap_err();
    let text = err.to_string();
    let at = err.location().unwrap();
    assert!(at.path.ends_with(".nightshift.toml"), "{text}");
    assert!(
        text.contains(&format!(".nightshift.toml:{}:{}", at.line, at.column)),
        "{text}"
    );
    assert!(at.line >= 3, "{text}");
    assert!(text.contains("invalid TOML"), "{text}");
    assert!(matches!(err, ConfigError::Syntax { .. }));

    write(
        dir.path(),
        ".nightshift.toml",
        "[limits]\nmemory = \"4G\nwall_time = \"1h\"\n",
    );
    let err = EnvConfig::load(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(".nightshift.toml:2:"), "{text}");
    assert_eq!(err.key(), Some("limits.memory"), "{text}");
    assert!(text.contains("in `limits.memory`"), "{text}");
}

#[test]
fn wrong_types_name_the_key_and_position() {
    let dir = repo();
    write(
        dir.path(),
        ".nightshift.toml",
        "[environment]\nsetup = 42\n",
    );
    let err = EnvConfig::load(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(".nightshift.toml:2:9"), "{text}");
    assert!(
        text.contains("`environment.setup` must be a string, not an integer"),
        "{text}"
    );

    write(dir.path(), ".nightshift.toml", "environment = \"npm ci\"\n");
    let text = EnvConfig::load(dir.path()).unwrap_err().to_string();
    assert!(
        text.contains("`environment` must be a table, not a string"),
        "{text}"
    );

    write(
        dir.path(),
        ".nightshift.toml",
        "[network]\nsetup = [\"a.com\", 3]\n",
    );
    let text = EnvConfig::load(dir.path()).unwrap_err().to_string();
    assert!(
        text.contains("`network.setup` must be a list of strings, not an integer"),
        "{text}"
    );
}

#[test]
fn unknown_keys_warn_with_the_nearest_key_and_lose_nothing_else() {
    let dir = repo();
    write(
        dir.path(),
        ".nightshift.toml",
        "[enviroment]\nsetup = \"ignored\"\n\n[environment]\nsetpu = \"x\"\nmaintenance = \"make\"\nwall_time = \"2h\"\n\n[limits]\nmemroy = \"2G\"\ncpus = 2\n\n[checks.test]\nrun = \"make test\"\ntimout = \"5m\"\n",
    );
    let loaded = EnvConfig::load(dir.path()).unwrap();
    let messages: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 5, "{messages:#?}");
    assert!(
        loaded
            .warnings
            .iter()
            .all(|warning| warning.kind == WarningKind::UnknownKey)
    );
    assert!(
        messages[0].starts_with(
            ".nightshift.toml:1:2: unknown key `enviroment`; did you mean `environment`?"
        ),
        "{messages:#?}"
    );
    assert!(
        messages[1].contains("unknown key `environment.setpu`; did you mean `environment.setup`?")
    );
    assert!(
        messages[2]
            .contains("unknown key `environment.wall_time`; did you mean `limits.wall_time`?")
    );
    assert!(messages[3].contains("did you mean `limits.memory`?"));
    assert!(
        messages[4]
            .contains("unknown key `checks.test.timout`; did you mean `checks.test.timeout`?")
    );
    // The valid keys around them are kept.
    let config = &loaded.config;
    assert_eq!(config.environment.setup, None);
    assert_eq!(config.environment.maintenance.as_deref(), Some("make"));
    assert_eq!(config.limits.cpus, Some(2.0));
    assert_eq!(config.check("test").unwrap().run, "make test");
    assert!(describe(&loaded).contains("warnings (5):"));
}

fn load_error(toml: &str) -> String {
    let dir = repo();
    write(dir.path(), ".nightshift.toml", toml);
    EnvConfig::load(dir.path()).unwrap_err().to_string()
}

#[test]
fn invalid_values_name_the_key_and_the_value() {
    let text = load_error("[environment]\nworkdir = \"../elsewhere\"\n");
    assert!(
        text.contains(
            ".nightshift.toml:2:11: `environment.workdir` = \"../elsewhere\": leaves the repository"
        ),
        "{text}"
    );
    let text = load_error("[environment]\nworkdir = \"/srv/app\"\n");
    assert!(text.contains("is absolute"), "{text}");
    let text = load_error("[environment]\ncopy = [\"*.env\"]\n");
    assert!(
        text.contains("`environment.copy` = \"*.env\": is a pattern"),
        "{text}"
    );
    let text = load_error("[environment]\ncache_key = [\"src/[a\"]\n");
    assert!(text.contains("is not a valid glob"), "{text}");
    let text = load_error("[environment.env]\n\"MY-VAR\" = \"1\"\n");
    assert!(text.contains("`environment.env.MY-VAR`"), "{text}");

    let text = load_error("[limits]\nwall_time = \"an hour\"\n");
    assert!(
        text.contains("`limits.wall_time` = \"an hour\": expected a number"),
        "{text}"
    );
    let text = load_error("[limits]\nwall_time = \"90\"\n");
    assert!(
        text.contains("`limits.wall_time` = \"90\": `90` has no unit"),
        "{text}"
    );
    let text = load_error("[limits]\nwall_time = \"0m\"\n");
    assert!(text.contains("must be longer than zero"), "{text}");
    let text = load_error("[limits]\nmemory = \"4 gigs\"\n");
    assert!(
        text.contains("`limits.memory` = \"4 gigs\": `gigs` is not a unit of size"),
        "{text}"
    );
    let text = load_error("[limits]\ndisk = 4\n");
    assert!(text.contains("did you forget the unit"), "{text}");
    let text = load_error("[limits]\ncpus = 0\n");
    assert!(
        text.contains("`limits.cpus` = 0: must be more than 0"),
        "{text}"
    );
    let text = load_error("[limits]\npids = -1\n");
    assert!(text.contains("`limits.pids` = -1"), "{text}");

    let text = load_error("[checks.test]\ntimeout = \"5m\"\n");
    assert!(
        text.contains("`checks.test`") && text.contains("has no `run`"),
        "{text}"
    );
    let text = load_error("[checks]\n\"unit tests\" = \"make\"\n");
    assert!(text.contains("not a valid check name"), "{text}");

    let text = load_error("[network]\nsetup = [\"https://pypi.org/simple\"]\n");
    assert!(
        text.contains("`network.setup` = \"https://pypi.org/simple\": is a URL"),
        "{text}"
    );

    let text = load_error("[secrets]\nTOKEN = \"proxy\"\n");
    assert!(text.contains("needs the hosts"), "{text}");
    let text = load_error("[secrets]\nTOKEN = \"everywhere\"\n");
    assert!(text.contains("is not a scope"), "{text}");
    let text = load_error("[secrets]\nTOKEN = { scope = \"setup\", hosts = [\"a.com\"] }\n");
    assert!(
        text.contains("`secrets.TOKEN.hosts`")
            && text.contains("only applies to scope = \"proxy\""),
        "{text}"
    );
    let text = load_error(
        "[secrets]\nTOKEN = { scope = \"proxy\", hosts = [\"a.com\"], format = \"Bearer\" }\n",
    );
    assert!(text.contains("does not contain `{value}`"), "{text}");

    let text = load_error("version = 2\n");
    assert!(
        text.contains("`version` = 2: this nightshift understands version 1"),
        "{text}"
    );
}

#[test]
fn a_workdir_that_links_outside_the_repository_is_refused() {
    let outside = repo();
    let dir = repo();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("linked")).unwrap();
    write(
        dir.path(),
        ".nightshift.toml",
        "[environment]\nworkdir = \"linked\"\n",
    );
    let text = EnvConfig::load(dir.path()).unwrap_err().to_string();
    assert!(
        text.contains("symbolic link to outside the repository"),
        "{text}"
    );

    write(
        dir.path(),
        ".nightshift.toml",
        "[environment]\nworkdir = \"not/yet\"\n",
    );
    let loaded = EnvConfig::load(dir.path()).unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].kind, WarningKind::MissingPath);
    assert_eq!(
        loaded.config.environment.workdir.as_deref(),
        Some(Path::new("not/yet"))
    );
}

#[test]
fn ecosystems_are_detected_from_manifests() {
    let dir = repo();
    let root = dir.path();
    write(root, "Cargo.toml", "");
    write(root, "web/package.json", "{}");
    write(root, "services/ml/requirements-dev.txt", "");
    write(root, "tools/go.mod", "module x\n");
    write(root, "node_modules/left-pad/Gemfile", "");
    write(root, ".hidden/pom.xml", "");
    write(root, "a/b/c/build.gradle", "");
    assert_eq!(
        detect_ecosystems(root),
        [
            Ecosystem::Cargo,
            Ecosystem::Npm,
            Ecosystem::Python,
            Ecosystem::Go
        ]
    );
    let hosts = default_setup_hosts(&detect_ecosystems(root));
    for host in [
        "crates.io",
        "static.crates.io",
        "index.crates.io",
        "registry.npmjs.org",
        "pypi.org",
        "files.pythonhosted.org",
        "proxy.golang.org",
        "sum.golang.org",
    ] {
        assert!(hosts.iter().any(|seen| seen == host), "{host} in {hosts:?}");
    }
    let loaded = EnvConfig::load(root).unwrap();
    assert_eq!(loaded.config.network.setup, hosts);
    match loaded.origin("network.setup") {
        Some(Origin::Default {
            reason: Some(reason),
        }) => {
            assert!(
                reason.contains("JavaScript (npm) from web/package.json"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }

    let empty = repo();
    write(empty.path(), "README.md", "");
    assert!(detect_ecosystems(empty.path()).is_empty());
    write(empty.path(), "Gemfile", "");
    write(empty.path(), "pom.xml", "");
    assert_eq!(
        detect_ecosystems(empty.path()),
        [Ecosystem::RubyGems, Ecosystem::Maven]
    );
}

#[test]
fn the_example_in_the_docs_loads_cleanly() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md"))
            .unwrap();
    let example = docs
        .split("## Example\n\n```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let dir = repo();
    write(dir.path(), ".nightshift.toml", example);
    write(dir.path(), "Cargo.toml", "");
    std::fs::create_dir_all(dir.path().join("services/api")).unwrap();
    let loaded = EnvConfig::load(dir.path()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    // The `nightshift env check` sample in the docs is this example's output.
    let text = describe(&loaded);
    for line in text.lines().filter(|line| !line.is_empty()) {
        assert!(
            docs.contains(line),
            "docs/config.md lacks the line {line:?}"
        );
    }
}

#[test]
fn review_auto_is_a_boolean_off_by_default() {
    let dir = repo();
    write(
        dir.path(),
        ".nightshift.toml",
        "[checks]\ntest = \"true\"\n",
    );
    assert!(!EnvConfig::load(dir.path()).unwrap().config.review.auto);
    write(
        dir.path(),
        ".nightshift.toml",
        "[review]\nauto = true\nautosend = true\n",
    );
    let loaded = EnvConfig::load(dir.path()).unwrap();
    assert!(loaded.config.review.auto);
    assert!(describe(&loaded).contains("review.auto"));
    let messages: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert!(
        messages[0].contains("unknown key `review.autosend`"),
        "{messages:#?}"
    );
    let text = load_error("[review]\nauto = \"yes\"\n");
    assert!(
        text.contains("`review.auto` must be true or false, not a string"),
        "{text}"
    );
}
