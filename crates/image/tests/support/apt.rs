//! What the end-to-end tests of tasks on images share: whether this host can run them, a
//! Debian image with git, and a flat apt archive on loopback for setup to install from.

use std::path::Path;

use super::{debian_with_git, free_port, have, sha256, write_layout};

/// Whether this host can run these tests; says why not when it cannot.
pub fn ready() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: a task on an image needs nightshift to run as root (shifted ids)");
        return false;
    }
    for tool in [
        "mmdebstrap",
        "skopeo",
        "docker-registry",
        "dpkg-deb",
        "python3",
    ] {
        if !have(tool) {
            eprintln!(
                "skipped: `{tool}` is not installed (apt-get install mmdebstrap skopeo docker-registry)"
            );
            return false;
        }
    }
    true
}

pub const IMAGE_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Debian with git (a task's hand-back runs git inside the sandbox), as an OCI layout tagged
/// `v1` under `work`, with jq's packages (not installed) served as a flat apt archive on
/// loopback.
pub fn debian_image(work: &Path) -> (std::path::PathBuf, AptArchive) {
    let (layer, debs) = debian_with_git(&["jq"]).unwrap();
    let layout = work.join("layout");
    write_layout(
        &layout,
        "v1",
        &[layer],
        &[IMAGE_PATH, "IMAGE_MARK=from-the-image"],
    );
    (layout, AptArchive::serve(&debs))
}

/// [`debian_image`], pushed as `NAME:v1` to a registry of its own on loopback: the registry
/// (serving while it lives), the pushed reference, and the apt archive.
pub fn pushed_debian_image(work: &Path, name: &str) -> (super::Registry, String, AptArchive) {
    let (layout, archive) = debian_image(work);
    let registry = super::Registry::start(None).unwrap();
    let reference = registry.push(&layout, "v1", name, None).unwrap();
    (registry, reference, archive)
}

/// A flat apt archive (`deb [trusted=yes] http://127.0.0.1:PORT/ ./`) of some `.deb` files.
pub struct AptArchive {
    _dir: tempfile::TempDir,
    server: std::process::Child,
    pub port: u16,
}

impl AptArchive {
    pub fn serve(debs: &Path) -> AptArchive {
        let dir = tempfile::tempdir().unwrap();
        let mut packages = String::new();
        for entry in std::fs::read_dir(debs).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "deb") {
                continue;
            }
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
            let control = std::process::Command::new("dpkg-deb")
                .arg("-f")
                .arg(&path)
                .output()
                .unwrap();
            assert!(control.status.success(), "{control:?}");
            let bytes = std::fs::read(&path).unwrap();
            let mut stanza = String::from_utf8(control.stdout).unwrap();
            if !stanza.ends_with('\n') {
                stanza.push('\n');
            }
            packages.push_str(&stanza);
            packages.push_str(&format!(
                "Filename: ./{name}\nSize: {}\nSHA256: {}\n\n",
                bytes.len(),
                &sha256(&bytes)[7..]
            ));
        }
        assert!(packages.contains("Package: jq\n"), "no jq among {debs:?}");
        std::fs::write(dir.path().join("Packages"), packages).unwrap();
        let port = free_port().unwrap();
        let server = std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        AptArchive {
            _dir: dir,
            server,
            port,
        }
    }
}

impl Drop for AptArchive {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
