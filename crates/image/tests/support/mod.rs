//! Real parts for the image tests: a Debian root filesystem built once with mmdebstrap and
//! cached under the target directory, OCI layouts written here, layers built with the `tar`
//! crate, and the CNCF distribution registry started on loopback for each test.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod apt;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nightshift_image::{PullEvent, PullOptions};
use sha2::{Digest, Sha256};

/// Returns from the test, loudly, when a tool it needs is not installed.
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+) => {
        for tool in [$($tool),+] {
            if !support::have(tool) {
                eprintln!("skipped: `{tool}` is not installed (apt-get install docker-registry skopeo mmdebstrap apache2-utils)");
                return;
            }
        }
    };
}

/// Returns from the test, loudly, when it needs host root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: this test mounts an overlay and needs root");
            return;
        }
    };
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Ids shifted by 100,000 as host root (as nightshift does); the caller's ids otherwise, where
/// chown is not allowed. Tests check the shifted ids only as root, and say so.
pub fn owner() -> nightshift_image::Owner {
    if is_root() {
        nightshift_image::Owner::Shift(100_000)
    } else {
        eprintln!(
            "note: not root, so layers keep the caller's ids and the id shift is not checked"
        );
        nightshift_image::Owner::Caller
    }
}

pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Where built images are cached between test runs: `<target>/nightshift-test-images`.
pub fn cache_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("nightshift-test-images")
}

/// A scratch directory on the same file system as the cache (so blobs can be hard-linked).
pub fn workdir() -> tempfile::TempDir {
    std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).unwrap();
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A layer blob ready for a layout: where it is, its digest, size and diff id.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

/// Gzips a tar into `dir` and describes it.
pub fn gzip_layer(dir: &Path, tar: &[u8]) -> LayerBlob {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar).unwrap();
    let blob = gz.finish().unwrap();
    raw_layer(dir, &blob, &sha256(tar))
}

/// A blob stored exactly as given, with the diff id it claims.
pub fn raw_layer(dir: &Path, blob: &[u8], diff_id: &str) -> LayerBlob {
    let digest = sha256(blob);
    let path = dir.join(format!("layer-{}", &digest[7..19]));
    std::fs::write(&path, blob).unwrap();
    LayerBlob {
        path,
        digest,
        size: blob.len() as u64,
        diff_id: diff_id.to_string(),
    }
}

/// The Debian bookworm minbase root filesystem as one gzipped layer, built with mmdebstrap
/// the first time and cached (written atomically, under a lock shared by parallel tests).
pub fn debian_base() -> Result<LayerBlob> {
    debian_variant("bookworm-minbase", &[], &[])
}

/// Debian bookworm minbase with `git` installed (what a task's hand-back needs in its image),
/// and the `.deb` files of `downloads` (with what they depend on that the image lacks) kept in
/// `<cache>/bookworm-git-debs/`, for a test's own package archive: the layer and that
/// directory.
pub fn debian_with_git(downloads: &[&str]) -> Result<(LayerBlob, PathBuf)> {
    let debs = cache_dir().join("bookworm-git-debs");
    let layer = debian_variant("bookworm-git", &["git"], downloads)?;
    Ok((layer, debs))
}

/// A Debian bookworm minbase variant named `name` with `include` installed, built once and
/// cached like [`debian_base`]; the packages `downloads` are downloaded (not installed) into
/// `<cache>/<name>-debs/`.
fn debian_variant(name: &str, include: &[&str], downloads: &[&str]) -> Result<LayerBlob> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::File::create(dir.join(".lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("lock the image cache: {e}"))?;
    let tar = dir.join(format!("{name}.tar"));
    if !tar.is_file() {
        let partial = dir.join(format!("{name}.tar.partial"));
        let mut command = Command::new("mmdebstrap");
        command.args(["--quiet", "--format=tar", "--variant=minbase"]);
        if !include.is_empty() {
            command.arg(format!("--include={}", include.join(",")));
        }
        if !downloads.is_empty() {
            let debs = dir.join(format!("{name}-debs"));
            let _ = std::fs::remove_dir_all(&debs);
            std::fs::create_dir_all(&debs)?;
            command.arg(format!(
                "--customize-hook=chroot \"$1\" apt-get install --download-only --no-install-recommends -y {}",
                downloads.join(" ")
            ));
            command.arg(format!(
                "--customize-hook=cp \"$1\"/var/cache/apt/archives/*.deb {}/",
                debs.display()
            ));
        }
        let status = command
            .arg("bookworm")
            .arg(&partial)
            .status()
            .context("run mmdebstrap")?;
        if !status.success() {
            bail!("mmdebstrap failed: {status}");
        }
        std::fs::rename(&partial, &tar)?;
    }
    let blob = dir.join(format!("{name}.tar.gz"));
    let meta = dir.join(format!("{name}.json"));
    if !blob.is_file() || !meta.is_file() {
        let bytes = std::fs::read(&tar)?;
        let diff_id = sha256(&bytes);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes)?;
        let compressed = gz.finish()?;
        let partial = dir.join(format!("{name}.tar.gz.partial"));
        std::fs::write(&partial, &compressed)?;
        let record = serde_json::json!({
            "digest": sha256(&compressed), "size": compressed.len(), "diff_id": diff_id,
        });
        std::fs::write(&meta, record.to_string())?;
        std::fs::rename(&partial, &blob)?;
    }
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta)?)?;
    Ok(LayerBlob {
        path: blob,
        digest: record["digest"].as_str().unwrap_or_default().to_string(),
        size: record["size"].as_u64().unwrap_or_default(),
        diff_id: record["diff_id"].as_str().unwrap_or_default().to_string(),
    })
}

/// OCI platform of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes (or adds to) an OCI image layout at `layout` with one image tagged `tag`.
/// Returns the manifest digest.
pub fn write_layout(layout: &Path, tag: &str, layers: &[LayerBlob], env: &[&str]) -> String {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    for layer in layers {
        let dest = blobs.join(&layer.digest[7..]);
        if !dest.exists() && std::fs::hard_link(&layer.path, &dest).is_err() {
            std::fs::copy(&layer.path, &dest).unwrap();
        }
    }
    let config = serde_json::json!({
        "architecture": host_arch(), "os": "linux",
        "config": {"Env": env, "WorkingDir": "/work", "User": "1000:1000"},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()},
    });
    let config_digest = put_blob(layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.0, "size": config_digest.1},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
    });
    let (manifest_digest, manifest_size) = put_blob(layout, manifest.to_string().as_bytes());
    add_to_index(
        layout,
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }),
    );
    manifest_digest
}

/// Stores a blob in a layout; returns its digest and size.
pub fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = sha256(bytes);
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&digest[7..]), bytes).unwrap();
    (digest, bytes.len())
}

/// Adds a descriptor to a layout's index.json (replacing one with the same tag).
pub fn add_to_index(layout: &Path, descriptor: serde_json::Value) {
    let path = layout.join("index.json");
    let mut index: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"schemaVersion": 2, "manifests": []}));
    let name = "org.opencontainers.image.ref.name";
    let manifests = index["manifests"].as_array_mut().unwrap();
    manifests.retain(|m| m["annotations"][name] != descriptor["annotations"][name]);
    manifests.push(descriptor);
    std::fs::write(&path, index.to_string()).unwrap();
}

/// Builds tar layers entry by entry, including entries the `tar` crate's safe setters refuse.
#[derive(Default)]
pub struct TarLayer {
    builder: Option<tar::Builder<Vec<u8>>>,
}

impl TarLayer {
    pub fn new() -> Self {
        TarLayer {
            builder: Some(tar::Builder::new(Vec::new())),
        }
    }

    fn header(kind: tar::EntryType, name: &str, mode: u32, uid: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(uid);
        header.set_mtime(1_700_000_000);
        header.set_size(0);
        let bytes = name.as_bytes();
        let field = &mut header.as_old_mut().name;
        field.fill(0);
        field[..bytes.len()].copy_from_slice(bytes);
        header
    }

    fn append(&mut self, mut header: tar::Header, data: &[u8]) -> &mut Self {
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder
            .as_mut()
            .unwrap()
            .append(&header, data)
            .unwrap();
        self
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.append(Self::header(tar::EntryType::Directory, name, mode, 0), b"")
    }

    pub fn file(&mut self, name: &str, content: &[u8], mode: u32, uid: u64) -> &mut Self {
        self.append(
            Self::header(tar::EntryType::Regular, name, mode, uid),
            content,
        )
    }

    fn link(&mut self, kind: tar::EntryType, name: &str, target: &str) -> &mut Self {
        let mut header = Self::header(kind, name, 0o777, 0);
        let bytes = target.as_bytes();
        let field = &mut header.as_old_mut().linkname;
        field.fill(0);
        field[..bytes.len()].copy_from_slice(bytes);
        self.append(header, b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(tar::EntryType::Symlink, name, target)
    }

    pub fn hard_link(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(tar::EntryType::Link, name, target)
    }

    pub fn fifo(&mut self, name: &str) -> &mut Self {
        self.append(Self::header(tar::EntryType::Fifo, name, 0o644, 0), b"")
    }

    pub fn finish(&mut self) -> Vec<u8> {
        self.builder.take().unwrap().into_inner().unwrap()
    }
}

/// A small image of two layers that exercises whiteouts, opaque directories and links.
pub fn tiny_layers(dir: &Path) -> Vec<LayerBlob> {
    let base = TarLayer::new()
        .dir("./", 0o755)
        .dir("etc/", 0o755)
        .file("etc/issue", b"tiny\n", 0o644, 0)
        .file("etc/hostname", b"tiny\n", 0o644, 0)
        .dir("docs/", 0o755)
        .file("docs/a", b"a", 0o644, 0)
        .file("docs/b", b"b", 0o644, 0)
        .dir("bin/", 0o755)
        .file("bin/tool", b"#!/bin/sh\n", 0o4755, 0)
        .finish();
    let top = extra_layer();
    vec![gzip_layer(dir, &base), gzip_layer(dir, &top)]
}

/// The layer the tests put on top of a base: a whiteout of `etc/issue`, `docs/` made opaque
/// with one new file, a hard link, an absolute symlink, a FIFO, a read-only directory with a
/// file in it, and files owned by a user.
pub fn extra_layer() -> Vec<u8> {
    TarLayer::new()
        .file("etc/.wh.issue", b"", 0o644, 0)
        .dir("docs/", 0o755)
        .file("docs/.wh..wh..opq", b"", 0o644, 0)
        .file("docs/only-this", b"new", 0o644, 0)
        .dir("opt/", 0o755)
        .file("opt/original", b"linked", 0o640, 1000)
        .hard_link("opt/linked", "opt/original")
        .symlink("opt/release", "/etc/os-release")
        .fifo("opt/pipe")
        .dir("opt/ro/", 0o555)
        .file("opt/ro/inside", b"x", 0o444, 0)
        .dir("home/", 0o755)
        .dir("home/user/", 0o700)
        .file("home/user/.profile", b"export X=1\n", 0o600, 1000)
        .finish()
}

/// The CNCF distribution registry on a free loopback port, stopped when dropped.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub storage: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// `users` puts the registry behind htpasswd (bcrypt) authentication.
    pub fn start(users: Option<(&str, &str)>) -> Result<Registry> {
        let dir = workdir();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let port = free_port()?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((user, password)) = users {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .context("run htpasswd")?;
            if !out.status.success() {
                bail!("htpasswd failed");
            }
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: nightshift-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = dir.path().join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log)?,
            ))
            .spawn()
            .context("start docker-registry")?;
        let registry = Registry {
            child,
            port,
            storage,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the registry did not start: {}",
                    std::fs::read_to_string(&registry.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pull options for this registry (plain HTTP) that also record every event.
    pub fn options(&self) -> (PullOptions, Arc<Mutex<Vec<PullEvent>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let options = PullOptions {
            plain_http: vec![self.host()],
            progress: Some(Arc::new(move |event| sink.lock().unwrap().push(event))),
            ..PullOptions::default()
        };
        (options, events)
    }

    /// Pushes an image from a layout with skopeo; returns the pushed reference.
    pub fn push(
        &self,
        layout: &Path,
        tag: &str,
        name: &str,
        creds: Option<&str>,
    ) -> Result<String> {
        let dest = format!("{}/{name}:{tag}", self.host());
        let mut command = Command::new("skopeo");
        command.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(creds) = creds {
            command.args(["--dest-creds", creds]);
        }
        let out = command
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{dest}"))
            .output()
            .context("run skopeo")?;
        if !out.status.success() {
            bail!(
                "skopeo copy failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(dest)
    }

    /// The blob files the registry stores, largest first.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.storage.join("docker/registry/v2/blobs")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().is_some_and(|n| n == "data") {
                    found.push(path);
                }
            }
        }
        found
            .sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
        found
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (bound and released).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Runs skopeo copy between two transports.
pub fn skopeo_copy(from: &str, to: &str) -> Result<()> {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", from, to])
        .output()
        .context("run skopeo")?;
    if !out.status.success() {
        bail!(
            "skopeo copy {from} {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// How many `Layer` events said the layer was fetched, and how many said it was cached.
pub fn fetched_and_cached(events: &[PullEvent]) -> (usize, usize) {
    let fetched = events
        .iter()
        .filter(|e| matches!(e, PullEvent::Layer { fetched: true, .. }))
        .count();
    let cached = events
        .iter()
        .filter(|e| matches!(e, PullEvent::Layer { fetched: false, .. }))
        .count();
    (fetched, cached)
}

/// Everything left in a store's `tmp/` and the layer directories it holds.
pub fn store_leftovers(store: &Path) -> (Vec<String>, Vec<String>) {
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let layers = names(&store.join("layers"))
        .into_iter()
        .filter(|n| !n.ends_with(".json"))
        .collect();
    (names(&store.join("tmp")), layers)
}

/// The permission bits of a path, without following a symlink.
pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}
