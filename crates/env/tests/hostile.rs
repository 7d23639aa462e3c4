#![allow(clippy::unwrap_used, clippy::expect_used)]

//! A hostile repository against the host side: symbolic links to host files, FIFOs and huge
//! files where the cache key, the configuration and AGENTS.md are read, fake bundles handed
//! back, and repository configuration that would run programs in host git.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use nightshift_env::cache::{Base, CacheKey};
use nightshift_env::config::{EnvConfig, collect_agents_md};
use nightshift_env::{EnvError, SourceRepo};
use sha2::{Digest, Sha256};

/// What a host file holds, which no key, message or context may show.
const HOST_SECRET: &str = "host-only: root:$6$saltsalt$hash\n";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

/// Runs `work` on a thread and fails the test when it does not finish promptly: a blocking open
/// of a FIFO would never return.
fn promptly<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    result
        .recv_timeout(Duration::from_secs(10))
        .expect("the host read blocked")
}

/// A working copy at `<outer>/repo` next to a host file `<outer>/shadow`.
struct Hostile {
    outer: tempfile::TempDir,
}

impl Hostile {
    fn new() -> Self {
        let outer = tempfile::tempdir().unwrap();
        std::fs::create_dir(outer.path().join("repo")).unwrap();
        std::fs::write(outer.path().join("shadow"), HOST_SECRET).unwrap();
        Hostile { outer }
    }

    fn root(&self) -> PathBuf {
        self.outer.path().join("repo")
    }

    fn shadow(&self) -> PathBuf {
        self.outer.path().join("shadow")
    }

    fn link(&self, target: impl AsRef<Path>, relative: &str) {
        let path = self.root().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    }

    fn fifo(&self, relative: &str) {
        let path = self.root().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        mkfifo(&path);
    }

    fn write(&self, relative: &str, text: &str) {
        let path = self.root().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn key_of(root: PathBuf, cache_key: &[&str]) -> CacheKey {
    let mut config = EnvConfig::defaults(vec![]);
    config.environment.setup = Some("cargo fetch".into());
    config.environment.cache_key = cache_key.iter().map(|glob| glob.to_string()).collect();
    promptly(move || CacheKey::compute(&root, &config, &Base::system("base")))
}

#[test]
fn the_cache_key_never_hashes_a_host_file_nor_waits_on_a_fifo() {
    let repo = Hostile::new();
    repo.link(repo.shadow(), "Cargo.lock");
    repo.link("../../shadow", "sub/go.sum");
    repo.fifo("yarn.lock");
    repo.write("vendor/uv.lock", "pinned\n");
    repo.link("vendor/uv.lock", "uv.lock");
    // A directory link to the host, and a file link, for the cache_key walk.
    repo.link(repo.outer.path(), "hostdir");
    repo.link(repo.shadow(), "keys/linked.lock");
    repo.write("keys/real.lock", "real\n");
    repo.fifo("keys/pipe.lock");

    let key = key_of(repo.root(), &["**/*.lock", "sub/*"]);
    let host_hash = sha256(HOST_SECRET.as_bytes());
    assert!(
        key.inputs.values().all(|value| *value != host_hash),
        "{:?}",
        key.inputs
    );
    assert_eq!(key.inputs["file:Cargo.lock"], "outside the working copy");
    assert_eq!(key.inputs["file:yarn.lock"], "not a regular file: a FIFO");
    // A link inside the working copy is read where it leads.
    assert_eq!(key.inputs["file:uv.lock"], sha256(b"pinned\n"));
    assert_eq!(key.inputs["file:keys/real.lock"], sha256(b"real\n"));
    // The walk neither lists links and FIFOs nor enters a linked directory.
    for absent in [
        "file:keys/linked.lock",
        "file:keys/pipe.lock",
        "file:sub/go.sum",
    ] {
        assert!(
            !key.inputs.contains_key(absent),
            "{absent}: {:?}",
            key.inputs
        );
    }
    assert!(
        !key.inputs.keys().any(|name| name.contains("hostdir")),
        "{:?}",
        key.inputs
    );
}

#[test]
fn a_huge_lockfile_is_keyed_by_its_size_not_read() {
    let repo = Hostile::new();
    let lock = std::fs::File::create(repo.root().join("Cargo.lock")).unwrap();
    // Sparse: ten GiB on paper, nothing on disk.
    lock.set_len(10 << 30).unwrap();
    let key = key_of(repo.root(), &[]);
    assert_eq!(
        key.inputs["file:Cargo.lock"],
        format!("too large: {} bytes", 10u64 << 30)
    );
}

#[test]
fn configuration_and_agents_md_are_read_inside_the_repository_only() {
    let repo = Hostile::new();
    std::fs::write(repo.shadow(), "not = [toml\nsecret-from-the-host\n").unwrap();
    repo.link(repo.shadow(), ".nightshift.toml");
    repo.link(repo.shadow(), "AGENTS.md");
    repo.fifo("sub/AGENTS.md");
    let root = repo.root();
    let err = promptly(move || EnvConfig::load(&root))
        .unwrap_err()
        .to_string();
    assert!(err.contains("leads outside"), "{err}");
    assert!(!err.contains("secret-from-the-host"), "{err}");
    let root = repo.root();
    let docs = promptly(move || collect_agents_md(&root, &[PathBuf::from("sub")]));
    assert!(docs.is_empty(), "{docs:?}");

    // A FIFO as the configuration is an error, not a hang; an imported file linked out is a
    // warning that does not quote the host file.
    let repo = Hostile::new();
    repo.fifo(".nightshift.toml");
    let root = repo.root();
    let err = promptly(move || EnvConfig::load(&root))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a FIFO"), "{err}");
    let repo = Hostile::new();
    std::fs::write(
        repo.shadow(),
        "{\"postCreateCommand\": \"secret-from-the-host\"}",
    )
    .unwrap();
    repo.link(repo.shadow(), ".devcontainer.json");
    let root = repo.root();
    let loaded = promptly(move || EnvConfig::load(&root)).unwrap();
    assert_eq!(loaded.config.environment.setup, None);
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("leads outside")),
        "{warnings:?}"
    );
    assert!(
        !warnings.iter().any(|w| w.contains("secret-from-the-host")),
        "{warnings:?}"
    );
}

async fn sample_repo() -> (tempfile::TempDir, SourceRepo) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    std::fs::create_dir(&root).unwrap();
    git(&root, &["init", "-q", "-b", "main"]);
    std::fs::write(root.join("a.txt"), "one\n").unwrap();
    git(&root, &["add", "."]);
    git(&root, &["commit", "-q", "-m", "first"]);
    let source = SourceRepo::open(&root).await.unwrap();
    (dir, source)
}

#[tokio::test]
async fn a_bundle_that_is_not_a_regular_git_bundle_is_refused_before_git_opens_it() {
    let (dir, source) = sample_repo().await;
    let base = source.resolve_base(None).await.unwrap();
    let copy = source
        .checkout(&base, &dir.path().join("wc"))
        .await
        .unwrap();
    let fifo = dir.path().join("fifo.bundle");
    mkfifo(&fifo);
    let link = dir.path().join("link.bundle");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let text = dir.path().join("text.bundle");
    std::fs::write(&text, "[core]\n\tfsmonitor = touch /tmp/pwned\n").unwrap();
    let cases = [
        (fifo, "is a FIFO"),
        (link, "is a symbolic link"),
        (text, "does not start with `# v2 git bundle`"),
    ];
    for (bundle, reason) in cases {
        let imported = tokio::time::timeout(Duration::from_secs(10), copy.import_bundle(&bundle))
            .await
            .expect("the bundle check blocked");
        let err = imported.unwrap_err();
        assert!(matches!(err, EnvError::NotABundle { .. }), "{err}");
        assert!(err.to_string().contains(reason), "{err}");
    }
}

/// An executable that leaves `marker` behind when git runs it.
fn marker_script(dir: &Path, name: &str, marker: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho \"$0\" >> {}\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn host_git_runs_no_hook_or_fsmonitor_the_repositories_configure() {
    let (dir, source) = sample_repo().await;
    let src = source.root().to_path_buf();
    let marker = dir.path().join("ran");
    let hooks = src.join(".git/hooks");
    for hook in [
        "post-checkout",
        "reference-transaction",
        "pre-auto-gc",
        "post-index-change",
    ] {
        marker_script(&hooks, hook, &marker);
    }
    let fsmonitor = marker_script(dir.path(), "fsmonitor", &marker);
    let fsmonitor = fsmonitor.to_str().unwrap();
    git(&src, &["config", "core.fsmonitor", fsmonitor]);
    // Uncommitted changes, so that status has something to ask fsmonitor about.
    std::fs::write(src.join("a.txt"), "dirty\n").unwrap();
    let status = Command::new("git")
        .args(["-C", src.to_str().unwrap(), "status", "--porcelain"])
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(marker.exists(), "the fixture's fsmonitor must work");
    std::fs::remove_file(&marker).unwrap();

    let source = SourceRepo::open(&src).await.unwrap();
    assert!(source.has_uncommitted_changes().await.unwrap());
    let base = source.resolve_base(None).await.unwrap();
    let copy = source
        .checkout(&base, &dir.path().join("wc"))
        .await
        .unwrap();
    // The same settings in the working copy.
    let wc = copy.root().to_path_buf();
    git(&wc, &["config", "core.fsmonitor", fsmonitor]);
    for hook in ["post-checkout", "reference-transaction", "post-commit"] {
        marker_script(&wc.join(".git/hooks"), hook, &marker);
    }
    // What the sandbox does, made here without the hooks.
    let tame = |args: &[&str]| {
        let mut all = vec![
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
        ];
        all.extend(args);
        git(&wc, &all)
    };
    std::fs::write(wc.join("b.txt"), "two\n").unwrap();
    tame(&["add", "b.txt"]);
    tame(&["commit", "-q", "-m", "second"]);
    let head = tame(&["rev-parse", "HEAD"]);
    let bundle = dir.path().join("result.bundle");
    let range = format!("{}..HEAD", base.commit);
    tame(&["bundle", "create", "-q", bundle.to_str().unwrap(), &range]);
    assert_eq!(copy.import_bundle(&bundle).await.unwrap(), head);
    copy.stats(&head).await.unwrap();
    copy.diff(&head).await.unwrap();
    copy.hand_off(&source, "nightshift/result", &head, false)
        .await
        .unwrap();
    assert!(source.has_branch("nightshift/result").await.unwrap());
    assert!(
        !marker.exists(),
        "host git ran: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
}
