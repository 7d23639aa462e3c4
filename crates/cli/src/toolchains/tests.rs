#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::hints::{self, HostLookup};
use super::*;

/// A scratch directory outside /tmp: binds under /tmp are refused (the sandbox's own /tmp
/// would hide them).
fn scratch() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(std::fs::canonicalize(base).unwrap()).unwrap()
}

/// A fake host: a HOME with rustup's layout, and a nightshift home inside it.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let host = Host { dir: scratch() };
        let home = host.home();
        std::fs::create_dir_all(home.join(".rustup/toolchains/stable-x86_64-unknown-linux-gnu"))
            .unwrap();
        std::fs::write(
            home.join(".rustup/settings.toml"),
            "profile = \"default\"\n",
        )
        .unwrap();
        executable(&home.join(".cargo/bin/cargo"));
        executable(&home.join(".cargo/bin/rustup"));
        std::fs::create_dir_all(home.join(".local/share/nightshift")).unwrap();
        host
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn paths(&self) -> HostPaths {
        let nightshift_home = self.home().join(".local/share/nightshift");
        HostPaths {
            home: Some(self.home()),
            config_file: nightshift_home.join("config.toml"),
            nightshift_home,
        }
    }

    fn resolve(&self, binds: &[&str], path: &[&str]) -> Result<HostToolchains, BindError> {
        settings(binds, path).resolve(&self.paths())
    }
}

fn settings(binds: &[&str], path: &[&str]) -> SandboxSettings {
    SandboxSettings {
        binds: binds.iter().map(|s| s.to_string()).collect(),
        path: path.iter().map(|s| s.to_string()).collect(),
    }
}

fn executable(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_sandbox_table_parses_and_rejects_unknown_keys() {
    let parsed: crate::home::Settings = toml::from_str(
        "[sandbox]\nbinds = [\"~/.rustup\", \"/opt/go\"]\npath = [\"/opt/go/bin\"]\n",
    )
    .unwrap();
    assert_eq!(parsed.sandbox.binds, ["~/.rustup", "/opt/go"]);
    assert_eq!(parsed.sandbox.path, ["/opt/go/bin"]);
    let unknown = toml::from_str::<crate::home::Settings>("[sandbox]\nbind = [\"/opt\"]\n");
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `bind`")
    );
}

#[test]
fn a_rustup_toolchain_binds_with_its_variables() {
    let host = Host::new();
    let home = std::fs::canonicalize(host.home()).unwrap();
    let toolchains = host
        .resolve(&["~/.rustup", "~/.cargo/bin"], &["~/.cargo/bin"])
        .unwrap();
    assert_eq!(
        toolchains.binds,
        [home.join(".rustup"), home.join(".cargo/bin")]
    );
    assert_eq!(toolchains.path, [home.join(".cargo/bin")]);
    assert_eq!(
        toolchains.env,
        [
            (
                "RUSTUP_HOME".to_string(),
                home.join(".rustup").display().to_string()
            ),
            ("CARGO_HOME".to_string(), "/home/agent/.cargo".to_string()),
        ]
    );
}

#[test]
fn a_go_root_gets_goroot_and_a_writable_gopath() {
    let host = Host::new();
    let go = host.dir.path().join("opt/go");
    executable(&go.join("bin/go"));
    std::fs::create_dir_all(go.join("src/runtime")).unwrap();
    let go_text = go.display().to_string();
    let bin = go.join("bin").display().to_string();
    let toolchains = host.resolve(&[&go_text], &[&bin]).unwrap();
    let go = std::fs::canonicalize(go).unwrap();
    assert_eq!(
        toolchains.env,
        [
            ("GOROOT".to_string(), go.display().to_string()),
            ("GOPATH".to_string(), "/home/agent/go".to_string()),
        ]
    );
}

#[test]
fn a_credential_store_is_refused() {
    let host = Host::new();
    std::fs::create_dir_all(host.home().join(".ssh")).unwrap();
    let err = host.resolve(&["~/.ssh"], &[]).unwrap_err();
    assert!(
        matches!(
            &err,
            BindError::Protected {
                relation: Relation::Is,
                holds: "credentials",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("`~/.ssh`"), "{err}");
    assert!(err.to_string().contains("no sandbox may see it"), "{err}");
    // Inside it, too.
    std::fs::create_dir_all(host.home().join(".ssh/keys")).unwrap();
    let err = host.resolve(&["~/.ssh/keys"], &[]).unwrap_err();
    assert!(
        matches!(
            &err,
            BindError::Protected {
                relation: Relation::Inside,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_directory_above_a_credential_is_refused_with_a_narrower_bind() {
    let host = Host::new();
    let credentials = host.home().join(".cargo/credentials.toml");
    std::fs::write(&credentials, "[registry]\ntoken = \"x\"\n").unwrap();
    let err = host.resolve(&["~/.cargo"], &[]).unwrap_err();
    let BindError::Protected {
        relation: Relation::Contains,
        protected,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*protected, std::fs::canonicalize(&credentials).unwrap());
    assert!(err.to_string().contains("credentials.toml"), "{err}");
    let hint = err.hint(Some(&host.home()));
    assert!(hint.contains("`~/.cargo/bin`"), "{hint}");
    // The whole home too, naming one of the stores in it.
    let err = host.resolve(&["~"], &[]).unwrap_err();
    assert!(
        matches!(
            &err,
            BindError::Protected {
                relation: Relation::Contains,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("credentials.toml"), "{err}");
    // Without the credentials, ~/.cargo is fine.
    std::fs::remove_file(&credentials).unwrap();
    assert!(host.resolve(&["~/.cargo"], &[]).is_ok());
}

#[test]
fn a_symlink_to_a_credential_store_is_refused() {
    let host = Host::new();
    std::fs::create_dir_all(host.home().join(".aws")).unwrap();
    let link = host.dir.path().join("innocent");
    symlink(host.home().join(".aws"), &link).unwrap();
    let err = host.resolve(&[link.to_str().unwrap()], &[]).unwrap_err();
    assert!(
        matches!(
            &err,
            BindError::Protected {
                relation: Relation::Is,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(".aws"), "{err}");
}

#[test]
fn nightshift_home_is_refused_through_a_parent() {
    let host = Host::new();
    let err = host.resolve(&["~/.local"], &[]).unwrap_err();
    assert!(
        matches!(
            &err,
            BindError::Protected {
                relation: Relation::Contains,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("secret key"), "{err}");
}

#[test]
fn missing_relative_and_homeless_entries_are_refused() {
    let host = Host::new();
    let err = host.resolve(&["~/.goenv"], &[]).unwrap_err();
    assert!(matches!(&err, BindError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = host.resolve(&["opt/go"], &[]).unwrap_err();
    assert!(matches!(&err, BindError::Relative { .. }), "{err:?}");
    assert!(err.hint(None).contains("absolute"));
    let err = host.resolve(&["~user/tools"], &[]).unwrap_err();
    assert!(matches!(&err, BindError::Relative { .. }), "{err:?}");
    let homeless = HostPaths {
        home: None,
        ..host.paths()
    };
    let err = settings(&["~/.rustup"], &[])
        .resolve(&homeless)
        .unwrap_err();
    assert!(matches!(&err, BindError::NoHome { .. }), "{err:?}");
}

#[test]
fn places_the_sandbox_makes_itself_are_refused() {
    let host = Host::new();
    for place in [
        "/",
        "/proc",
        "/proc/self",
        "/sys",
        "/dev",
        "/run",
        "/tmp",
        "/root",
        "/home",
    ] {
        if !Path::new(place).exists() {
            continue;
        }
        let err = host.resolve(&[place], &[]).unwrap_err();
        assert!(matches!(&err, BindError::System { .. }), "{place}: {err:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let err = host
        .resolve(&[tmp.path().to_str().unwrap()], &[])
        .unwrap_err();
    assert!(matches!(&err, BindError::System { .. }), "{err:?}");
}

#[test]
fn a_path_entry_must_be_visible() {
    let host = Host::new();
    let err = host.resolve(&["~/.rustup"], &["~/.cargo/bin"]).unwrap_err();
    assert!(matches!(&err, BindError::Unbound { .. }), "{err:?}");
    assert!(host.resolve(&[], &["/usr/bin"]).is_ok());
}

#[test]
fn a_symlinked_bind_is_mounted_where_it_is_written_too() {
    let host = Host::new();
    let real = host.dir.path().join("go1.22");
    std::fs::create_dir_all(real.join("bin")).unwrap();
    let link = host.dir.path().join("go");
    symlink(&real, &link).unwrap();
    let toolchains = host.resolve(&[link.to_str().unwrap()], &[]).unwrap();
    let real = std::fs::canonicalize(real).unwrap();
    assert_eq!(toolchains.binds, std::slice::from_ref(&real));
    assert_eq!(toolchains.mounts, [real, link]);
}

fn lookup(path: &std::ffi::OsStr) -> HostLookup<'_> {
    HostLookup {
        path_var: Some(path),
        rustup_home: None,
    }
}

#[test]
fn a_rustup_proxy_outside_the_sandbox_gets_the_rustup_lines() {
    let host = Host::new();
    let path = std::env::join_paths([host.home().join(".cargo/bin"), "/usr/bin".into()]).unwrap();
    let unseen = hints::unseen_tools(
        &["cargo"],
        lookup(&path),
        &HostToolchains::default(),
        &host.paths(),
    );
    assert_eq!(unseen.len(), 1, "{unseen:?}");
    assert_eq!(unseen[0].kind, Some("a rustup proxy"));
    let text = hints::render(
        &unseen,
        &SandboxSettings::default(),
        Path::new("/etc/nightshift/config.toml"),
        Some(&host.home()),
    );
    assert!(
        text.contains("binds = [\"~/.rustup\", \"~/.cargo/bin\"]"),
        "{text}"
    );
    assert!(text.contains("path = [\"~/.cargo/bin\"]"), "{text}");
    assert!(text.contains("/etc/nightshift/config.toml"), "{text}");
    // A configured entry spelled otherwise is not repeated.
    let rustup = host.home().join(".rustup").display().to_string();
    let text = hints::render(
        &unseen,
        &settings(&[&rustup], &[]),
        Path::new("config.toml"),
        Some(&host.home()),
    );
    assert!(
        text.contains(&format!("binds = [\"{rustup}\", \"~/.cargo/bin\"]")),
        "{text}"
    );

    // Once bound, nothing is left to say.
    let bound = host
        .resolve(&["~/.rustup", "~/.cargo/bin"], &["~/.cargo/bin"])
        .unwrap();
    let unseen = hints::unseen_tools(&["cargo"], lookup(&path), &bound, &host.paths());
    assert!(unseen.is_empty(), "{unseen:?}");
}

#[test]
fn a_tool_in_a_prefix_gets_its_prefix_bound_and_a_pyenv_shim_its_version() {
    let host = Host::new();
    let node = host.dir.path().join("opt/node");
    executable(&node.join("bin/node"));
    let pyenv = host.home().join(".pyenv");
    executable(&pyenv.join("shims/python3"));
    executable(&pyenv.join("versions/3.12.1/bin/python3"));
    std::fs::write(pyenv.join("version"), "3.12.1\n").unwrap();
    let path = std::env::join_paths([node.join("bin"), pyenv.join("shims")]).unwrap();
    let unseen = hints::unseen_tools(
        &["node", "python3", "go"],
        lookup(&path),
        &HostToolchains::default(),
        &host.paths(),
    );
    assert_eq!(unseen.len(), 2, "{unseen:?}");
    let node = std::fs::canonicalize(node).unwrap();
    assert_eq!(unseen[0].binds, std::slice::from_ref(&node));
    assert_eq!(unseen[0].path, [node.join("bin")]);
    assert_eq!(unseen[1].kind, Some("a pyenv shim"));
    assert_eq!(unseen[1].binds, [pyenv.join("versions/3.12.1")]);
    let text = hints::render(
        &unseen,
        &settings(&["/opt/go"], &[]),
        Path::new("config.toml"),
        Some(&host.home()),
    );
    assert!(
        text.contains(&format!(
            "binds = [\"/opt/go\", \"{}\", \"~/.pyenv/versions/3.12.1\"]",
            node.display()
        )),
        "{text}"
    );

    // With the version bound, the shim's interpreter is what the sandbox finds.
    let bound = host
        .resolve(
            &["~/.pyenv/versions/3.12.1"],
            &["~/.pyenv/versions/3.12.1/bin"],
        )
        .unwrap();
    let unseen = hints::unseen_tools(&["python3"], lookup(&path), &bound, &host.paths());
    assert!(unseen.is_empty(), "{unseen:?}");
}

#[test]
fn ecosystems_name_their_tools() {
    use nightshift_env::config::Ecosystem;
    assert_eq!(
        hints::tools_of(&[Ecosystem::Cargo, Ecosystem::Maven, Ecosystem::Gradle]),
        ["cargo", "java", "mvn", "gradle"]
    );
    assert!(hints::tools_of(&[Ecosystem::Hex]).is_empty());
}
