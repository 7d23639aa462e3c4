#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use nightshift_env::cache::{CacheKey, Lookup, SetupCache};
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
    let a = CacheKey::compute(repo.path(), &config("cargo fetch"), "base");
    assert_eq!(
        a,
        CacheKey::compute(repo.path(), &config("cargo fetch"), "base")
    );
    assert!(a.inputs.contains_key("file:Cargo.lock"));
    assert_ne!(
        a.key,
        CacheKey::compute(repo.path(), &config("cargo build"), "base").key
    );
    assert_ne!(
        a.key,
        CacheKey::compute(repo.path(), &config("cargo fetch"), "other base").key
    );
    std::fs::write(repo.path().join("Cargo.lock"), "v2").unwrap();
    assert_ne!(
        a.key,
        CacheKey::compute(repo.path(), &config("cargo fetch"), "base").key
    );
}

#[test]
fn misses_explain_themselves_and_hits_find_the_layer_without_git() {
    let home = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("package-lock.json"), "1").unwrap();
    let cache = SetupCache::new(home.path().join("layers"), u64::MAX);
    let first = CacheKey::compute(repo.path(), &config("npm ci"), "base");
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
    let second = CacheKey::compute(repo.path(), &config("npm ci"), "base");
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
        .map(|n| CacheKey::compute(repo.path(), &config(&format!("setup {n}")), "b"))
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
