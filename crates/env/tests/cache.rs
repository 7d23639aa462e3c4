#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use nightshift_env::cache::{
    Base, CacheKey, Lookup, SetupCache, base_identity, bind_fingerprint, packages_fingerprint,
};
use nightshift_env::config::EnvConfig;

fn config(setup: &str) -> EnvConfig {
    let mut config = EnvConfig::defaults(vec![]);
    config.environment.setup = Some(setup.to_string());
    config
}

fn staged(dir: &Path, bytes: usize) -> std::path::PathBuf {
    let path = dir.join(format!("staged-{bytes}-{}", rand_suffix()));
    std::fs::create_dir_all(path.join("workspace/.git")).unwrap();
    std::fs::write(path.join("workspace/.git/index"), "x").unwrap();
    std::fs::write(path.join("workspace/blob"), vec![b'x'; bytes]).unwrap();
    std::fs::create_dir_all(path.join("home")).unwrap();
    path
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn keys_follow_their_inputs() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("Cargo.lock"), "v1").unwrap();
    let a = CacheKey::compute(repo.path(), &config("cargo fetch"), &Base::system("base"));
    assert_eq!(
        a,
        CacheKey::compute(repo.path(), &config("cargo fetch"), &Base::system("base"))
    );
    assert!(a.inputs.contains_key("file:Cargo.lock"));
    assert_ne!(
        a.key,
        CacheKey::compute(repo.path(), &config("cargo build"), &Base::system("base")).key
    );
    assert_ne!(
        a.key,
        CacheKey::compute(
            repo.path(),
            &config("cargo fetch"),
            &Base::system("other base")
        )
        .key
    );
    std::fs::write(repo.path().join("Cargo.lock"), "v2").unwrap();
    assert_ne!(
        a.key,
        CacheKey::compute(repo.path(), &config("cargo fetch"), &Base::system("base")).key
    );
}

#[test]
fn misses_explain_themselves_and_hits_find_the_layer_without_git() {
    let home = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("package-lock.json"), "1").unwrap();
    let cache = SetupCache::new(home.path().join("layers"), u64::MAX);
    let first = CacheKey::compute(repo.path(), &config("npm ci"), &Base::system("base"));
    assert!(
        matches!(cache.lookup("r", &first), Lookup::Miss { reasons } if reasons[0].contains("no setup layer"))
    );
    let _lock = cache.lock(&first).unwrap();
    let layer = cache.commit("r", &first, &staged(home.path(), 10)).unwrap();
    assert!(
        !layer.join("workspace/.git").exists(),
        "a layer never carries .git"
    );
    assert!(layer.join("workspace/blob").exists() && layer.join("home").is_dir());
    assert_eq!(cache.lookup("r", &first), Lookup::Hit { layer });
    std::fs::write(repo.path().join("package-lock.json"), "2").unwrap();
    let second = CacheKey::compute(repo.path(), &config("npm ci"), &Base::system("base"));
    let Lookup::Miss { reasons } = cache.lookup("r", &second) else {
        panic!("expected a miss")
    };
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with("`file:package-lock.json` changed ("),
        "{reasons:?}"
    );
}

#[test]
fn the_least_recently_used_layers_go_first_when_over_budget() {
    let home = tempfile::tempdir().unwrap();
    let cache = SetupCache::new(home.path().join("layers"), 2500);
    let repo = tempfile::tempdir().unwrap();
    let keys: Vec<CacheKey> = (0..3)
        .map(|n| {
            CacheKey::compute(
                repo.path(),
                &config(&format!("setup {n}")),
                &Base::system("b"),
            )
        })
        .collect();
    let first = cache
        .commit("r", &keys[0], &staged(home.path(), 1000))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = cache
        .commit("r", &keys[1], &staged(home.path(), 1000))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // Using the first again makes the second the least recently used.
    assert!(matches!(cache.lookup("r", &keys[0]), Lookup::Hit { .. }));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let third = cache
        .commit("r", &keys[2], &staged(home.path(), 1000))
        .unwrap();
    assert!(first.exists() && third.exists());
    assert!(!second.exists(), "the least recently used layer is evicted");
}

/// A rustup home with `toolchains` installed, as rustup lays it out.
fn rustup_home(dir: &Path, toolchains: &[&str]) -> std::path::PathBuf {
    let home = dir.join("rustup");
    std::fs::create_dir_all(home.join("update-hashes")).unwrap();
    std::fs::write(
        home.join("settings.toml"),
        "default_toolchain = \"stable-x86_64-unknown-linux-gnu\"\n",
    )
    .unwrap();
    for name in toolchains {
        std::fs::create_dir_all(home.join("toolchains").join(name).join("bin")).unwrap();
        std::fs::write(home.join("update-hashes").join(name), "hash-1").unwrap();
    }
    home
}

#[test]
fn a_toolchain_upgrade_misses_naming_the_bind() {
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let rustup = rustup_home(dir.path(), &["stable-x86_64-unknown-linux-gnu"]);
    let bin = dir.path().join("cargo-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("cargo"), "proxy").unwrap();
    let binds = vec![rustup.clone(), bin.clone()];
    let cache = SetupCache::new(dir.path().join("layers"), u64::MAX);
    let first = CacheKey::compute(
        repo.path(),
        &config("cargo fetch"),
        &base_identity("namespaced", &binds),
    );
    assert!(
        first
            .inputs
            .contains_key(&format!("bind:{}", rustup.display()))
    );
    cache.commit("r", &first, &staged(dir.path(), 10)).unwrap();
    let same = CacheKey::compute(
        repo.path(),
        &config("cargo fetch"),
        &base_identity("namespaced", &binds),
    );
    assert!(matches!(cache.lookup("r", &same), Lookup::Hit { .. }));

    // `rustup update stable`: same toolchain name, new channel hash.
    std::fs::write(
        rustup.join("update-hashes/stable-x86_64-unknown-linux-gnu"),
        "hash-2",
    )
    .unwrap();
    let upgraded = CacheKey::compute(
        repo.path(),
        &config("cargo fetch"),
        &base_identity("namespaced", &binds),
    );
    let Lookup::Miss { reasons } = cache.lookup("r", &upgraded) else {
        panic!("a toolchain upgrade must miss")
    };
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with(&format!("`bind:{}` changed (", rustup.display())),
        "{reasons:?}"
    );

    // Without the binds, each is said to be gone, and the system base is unchanged.
    let unbound = CacheKey::compute(
        repo.path(),
        &config("cargo fetch"),
        &base_identity("namespaced", &[]),
    );
    let Lookup::Miss { reasons } = cache.lookup("r", &unbound) else {
        panic!("dropping the binds must miss")
    };
    assert_eq!(
        reasons,
        vec![
            format!("`bind:{}` is gone", bin.display()),
            format!("`bind:{}` is gone", rustup.display()),
        ]
    );
}

#[test]
fn a_bind_fingerprint_sees_its_top_two_levels_only() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    std::fs::create_dir_all(go.join("src/runtime/deep")).unwrap();
    std::fs::create_dir_all(go.join("bin")).unwrap();
    std::fs::write(go.join("bin/go"), "v1").unwrap();
    let before = bind_fingerprint(&go);
    assert_eq!(before, bind_fingerprint(&go), "a fingerprint is stable");
    // Deeper than two levels is not looked at: a fingerprint is cheap, not a walk.
    std::fs::write(go.join("src/runtime/deep/file.go"), "x").unwrap();
    assert_eq!(before, bind_fingerprint(&go));
    std::fs::write(go.join("bin/gofmt"), "v1").unwrap();
    assert_ne!(before, bind_fingerprint(&go));

    let rustup = rustup_home(dir.path(), &["1.95.0-x86_64-unknown-linux-gnu"]);
    let before = bind_fingerprint(&rustup);
    // rustup's downloads and scratch directories are no part of what it provides.
    std::fs::create_dir_all(rustup.join("downloads/partial")).unwrap();
    assert_eq!(before, bind_fingerprint(&rustup));
    std::fs::create_dir_all(rustup.join("toolchains/nightly-x86_64-unknown-linux-gnu")).unwrap();
    assert_ne!(before, bind_fingerprint(&rustup));
}

#[test]
fn another_repository_with_the_same_setup_gets_a_key_of_its_own() {
    let repo = tempfile::tempdir().unwrap();
    let key = CacheKey::compute(repo.path(), &config("npm ci"), &Base::system("base"));
    let mine = key.clone().for_repository("/src/app");
    let theirs = key.for_repository("/src/other");
    assert_ne!(
        mine.key, theirs.key,
        "a layer is never shared across repositories"
    );
    assert_eq!(
        mine.key,
        CacheKey::compute(repo.path(), &config("npm ci"), &Base::system("base"))
            .for_repository("/src/app")
            .key
    );
}

#[test]
fn an_upgrade_of_the_hosts_system_packages_misses_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    let database = status.to_str().unwrap();
    std::fs::write(&status, "Package: libc6\nVersion: 2.36-9\n").unwrap();
    let base = || {
        let packages = packages_fingerprint(&[database, "/nonexistent/apk/installed"]);
        Base::system("base").with_packages(packages.unwrap())
    };
    let cache = SetupCache::new(dir.path().join("layers"), u64::MAX);
    let first = CacheKey::compute(repo.path(), &config("make deps"), &base());
    assert!(first.inputs.contains_key("packages"));
    cache.commit("r", &first, &staged(dir.path(), 10)).unwrap();
    let same = CacheKey::compute(repo.path(), &config("make deps"), &base());
    assert!(matches!(cache.lookup("r", &same), Lookup::Hit { .. }));

    // `apt upgrade`: the same release, another libc under every layer.
    std::fs::write(&status, "Package: libc6\nVersion: 2.36-9+deb12u4\n").unwrap();
    let upgraded = CacheKey::compute(repo.path(), &config("make deps"), &base());
    assert_ne!(upgraded.key, first.key);
    let Lookup::Miss { reasons } = cache.lookup("r", &upgraded) else {
        panic!("an upgrade of the host's packages must miss")
    };
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with("the host's system packages changed (`packages` "),
        "{reasons:?}"
    );
    // No package database at all: no input, and the key is the one of a bare base.
    assert_eq!(packages_fingerprint(&["/nonexistent/dpkg/status"]), None);
    let bare = CacheKey::compute(repo.path(), &config("make deps"), &Base::system("base"));
    assert!(!bare.inputs.contains_key("packages"));
    // The host's own database, where it has one, is read by the base of every task.
    let host = base_identity("namespaced", &[]);
    assert_eq!(
        host.packages.is_some(),
        Path::new("/var/lib/dpkg/status").exists() || Path::new("/lib/apk/db/installed").exists()
    );
}

/// A setup that deleted `.git` leaves a whiteout in its place (a character device 0/0, which
/// only root can make here), one that replaced it a file or a link: none is kept, and the
/// commit does not stumble on it.
#[test]
fn a_layer_whose_setup_deleted_or_replaced_git_commits_without_it() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let cache = SetupCache::new(dir.path().join("layers"), u64::MAX);
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let replace = |what: &str, git: &Path| match what {
        "a file" => std::fs::write(git, "gitdir: /x\n").unwrap(),
        "a link" => std::os::unix::fs::symlink("/etc", git).unwrap(),
        _ => {
            let made = std::process::Command::new("mknod")
                .arg(git)
                .args(["c", "0", "0"])
                .status()
                .unwrap();
            assert!(made.success());
        }
    };
    for what in ["a file", "a link", "a whiteout"] {
        if what == "a whiteout" && !root {
            eprintln!("SKIPPED: making a whiteout (mknod c 0 0) needs root");
            continue;
        }
        let staged = dir
            .path()
            .join(format!("staged-{}", what.replace(' ', "-")));
        std::fs::create_dir_all(staged.join("workspace")).unwrap();
        std::fs::write(staged.join("workspace/built"), "x").unwrap();
        std::fs::create_dir_all(staged.join("home")).unwrap();
        replace(what, &staged.join("workspace/.git"));
        let key = CacheKey::compute(repo.path(), &config(what), &Base::system("base"));
        let layer = cache
            .commit("r", &key, &staged)
            .unwrap_or_else(|err| panic!("{what}: {err}"));
        assert!(
            std::fs::symlink_metadata(layer.join("workspace/.git")).is_err(),
            "{what} at .git is not kept"
        );
        assert!(layer.join("workspace/built").exists());
        assert!(Path::new("/etc").is_dir());
    }
}
