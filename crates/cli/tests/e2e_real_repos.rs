//! What real repositories need from a task: setup that runs as root over a writable system (a
//! Debian package installed from a mirror, through the egress proxy), a home directory whose
//! contents setup leaves for the agent and the checks, and a branch that holds only what the
//! agent changed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

fn shell(command: &str) -> Value {
    json!({"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": command}}]}})
}

fn finish(summary: &str) -> Value {
    json!({"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": summary}}]}})
}

fn shell_outputs(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "tool_finished" && e["tool"] == "shell")
        .map(|e| e["output"].as_str().unwrap().to_string())
        .collect()
}

/// The `command_finished` event of `phase` (`setup`, `check`...), which must exist.
fn finished<'a>(events: &'a [Value], phase: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == "command_finished" && e["phase"] == phase)
        .unwrap_or_else(|| panic!("no {phase} command in {events:#?}"))
}

fn host_is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: setup over a writable system needs nightshift to run as root");
    }
    root
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_leaves_the_starting_point_and_the_branch_holds_only_the_agents_change() {
    // Setup (as root) generates two files that .gitignore does not cover, changes a tracked
    // file, and fills HOME; maintenance adds one more file. The agent fixes the bug, edits one
    // generated file and deletes the other one's sibling that setup changed.
    let repo = buggy_repo_with_config(
        r#"
[environment]
setup = "id -u > ~/setup-uid; echo cached > ~/.cache-marker; echo one > gen-kept.txt; echo two > gen-edited.txt; echo '# tuned by setup' >> test.sh"
maintenance = "echo maintained > maint.txt"

[checks]
test = "sh test.sh && cat ~/.cache-marker"
"#,
    );
    let mut steps = vec![shell(
        "cat ~/setup-uid ~/.cache-marker; git status --porcelain | sort",
    )];
    let fix: Value = serde_json::to_value(fixing_script()).unwrap()["steps"].clone();
    let fix = fix.as_array().unwrap();
    // The fix without its `finish`, then the agent's own edit of a generated file.
    steps.extend(fix[..fix.len() - 1].iter().cloned());
    steps.push(shell("echo 'edited by the agent' >> gen-edited.txt"));
    steps.push(finish("Fix add"));
    let (ns, _server) = Nightshift::with_script(script(Value::Array(steps))).await;
    let (out, task) = ns.wait_task(repo.path(), "fix add").await;
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    assert_eq!(task["state"], "succeeded", "{task}");
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let seen = &shell_outputs(&events)[0];
    assert!(
        seen.starts_with("0\ncached\n"),
        "setup ran as root and its HOME is the agent's: {seen}"
    );
    // The working copy the agent starts from is what setup and maintenance left.
    for line in [
        " M test.sh",
        "?? gen-edited.txt",
        "?? gen-kept.txt",
        "?? maint.txt",
    ] {
        assert!(seen.contains(line), "{line} in {seen}");
    }
    // The check ran on the committed tree with the setup layer (HOME included).
    let check = finished(&events, "check");
    assert_eq!(check["ok"], true, "{check}");
    assert!(check["output_tail"].as_str().unwrap().contains("cached"));

    let branch = task["branch"].as_str().unwrap();
    let files = git(
        repo.path(),
        &["diff", "--name-only", &format!("main..{branch}")],
    );
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["calc.sh", "gen-edited.txt"],
        "only the agent's changes are on the branch"
    );
    let edited = git(repo.path(), &["show", &format!("{branch}:gen-edited.txt")]);
    assert_eq!(edited, "two\nedited by the agent");
    let test_sh = git(repo.path(), &["show", &format!("{branch}:test.sh")]);
    assert!(!test_sh.contains("tuned by setup"), "{test_sh}");
}

/// A Debian package built here, in a repository served over loopback as a flat apt archive.
struct LocalArchive {
    /// Kept until the server is gone: it serves from here.
    _dir: tempfile::TempDir,
    server: std::process::Child,
    port: u16,
}

impl Drop for LocalArchive {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl LocalArchive {
    /// `nightshift-hello`, whose program prints a greeting, or `None` where dpkg-deb,
    /// apt-get or python3 (the archive's server) is missing.
    fn start() -> Option<LocalArchive> {
        for tool in ["/usr/bin/dpkg-deb", "/usr/bin/apt-get", "/usr/bin/python3"] {
            if !Path::new(tool).exists() {
                eprintln!("skipped: {tool} is missing");
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("pkg");
        std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(pkg.join("usr/bin")).unwrap();
        std::fs::write(
            pkg.join("DEBIAN/control"),
            "Package: nightshift-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: says hello\n",
        )
        .unwrap();
        let program = pkg.join("usr/bin/nightshift-hello");
        std::fs::write(&program, "#!/bin/sh\necho hello from a debian package\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let deb = repo.join("nightshift-hello_1.0_all.deb");
        let built = std::process::Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&pkg)
            .arg(&deb)
            .output()
            .unwrap();
        assert!(built.status.success(), "{built:?}");
        let bytes = std::fs::read(&deb).unwrap();
        let sha256 = std::process::Command::new("sha256sum")
            .arg(&deb)
            .output()
            .unwrap();
        let sha256 = String::from_utf8(sha256.stdout).unwrap();
        let sha256 = sha256.split_whitespace().next().unwrap();
        std::fs::write(
            repo.join("Packages"),
            format!(
                "Package: nightshift-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.invalid>\n\
                 Filename: ./nightshift-hello_1.0_all.deb\nSize: {}\nSHA256: {sha256}\nDescription: says hello\n\n",
                bytes.len()
            ),
        )
        .unwrap();
        let (server, port) = serve(&repo);
        Some(LocalArchive {
            _dir: dir,
            server,
            port,
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_installs_a_debian_package_that_the_agent_and_the_checks_use() {
    if !host_is_root() {
        return;
    }
    let Some(archive) = LocalArchive::start() else {
        return;
    };
    let port = archive.port;
    // A setup as a hosted agent's would be: sudo, apt-get update, apt-get install -y. Only
    // the local archive is asked for (the host's own sources are not reachable from a test),
    // and since it is on the host's loopback, not the sandbox's, loopback is not exempt from
    // the proxy here.
    let config = format!(
        r#"
[environment]
setup = """
export no_proxy= NO_PROXY=
echo 'deb [trusted=yes] http://127.0.0.1:{port}/ ./' > /etc/apt/sources.list.d/local.list
sudo apt-get update -o Dir::Etc::sourcelist=sources.list.d/local.list -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0
sudo apt-get install -y --no-install-recommends nightshift-hello
"""

[network]
setup = ["127.0.0.1:{port}"]

[checks]
hello = "nightshift-hello"
"#
    );
    let repo = buggy_repo_with_config(&config);
    let steps = json!([
        shell("nightshift-hello | tee greeting.txt; id -u"),
        finish("Greet")
    ]);
    let (ns, _server) = Nightshift::with_script(script(steps)).await;
    ns.allow_loopback(&[port]);
    let (out, task) = ns.wait_task(repo.path(), "say hello").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let setup = finished(&events, "setup");
    assert_eq!(setup["ok"], true, "{setup}");
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    let seen = &shell_outputs(&events)[0];
    assert!(
        seen.starts_with("hello from a debian package\n1000\n"),
        "the agent, unprivileged, runs what setup installed: {seen}"
    );
    // apt fetched as its own unprivileged user: every user inside reaches the system.
    let setup_output = setup["output_tail"].as_str().unwrap();
    assert!(
        !setup_output.contains("unsandboxed"),
        "apt could not drop to _apt: {setup_output}"
    );
    let check = finished(&events, "check");
    assert_eq!(check["ok"], true, "{check}");
    // The host's system is untouched.
    assert!(!Path::new("/usr/bin/nightshift-hello").exists());
    assert!(!Path::new("/etc/apt/sources.list.d/local.list").exists());
    // The apt requests went through the egress proxy, and were logged.
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "egress" && e["port"] == port && e["allowed"] == true),
        "no egress event for the archive"
    );
    drop(archive);
}

/// A sparse cargo registry served over loopback, holding one crate, `nsdep` 0.1.0 (`pub fn
/// answer() -> u32 { 42 }`), packaged here with the host's cargo.
struct LocalRegistry {
    _dir: tempfile::TempDir,
    server: std::process::Child,
    port: u16,
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Starts `python3 -m http.server` over `dir` on a free loopback port.
fn serve(dir: &Path) -> (std::process::Child, u16) {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let server = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (server, port)
}

impl LocalRegistry {
    fn start(cargo: &Path) -> LocalRegistry {
        let dir = tempfile::tempdir().unwrap();
        let krate = dir.path().join("nsdep");
        std::fs::create_dir_all(krate.join("src")).unwrap();
        std::fs::write(
            krate.join("Cargo.toml"),
            "[package]\nname = \"nsdep\"\nversion = \"0.1.0\"\nedition = \"2021\"\nlicense = \"MIT\"\ndescription = \"test\"\n",
        )
        .unwrap();
        std::fs::write(krate.join("src/lib.rs"), "pub fn answer() -> u32 { 42 }\n").unwrap();
        let packaged = std::process::Command::new(cargo)
            .args(["package", "--no-verify", "--allow-dirty", "--offline", "-q"])
            .current_dir(&krate)
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .unwrap();
        assert!(packaged.status.success(), "{packaged:?}");
        let crate_file = krate.join("target/package/nsdep-0.1.0.crate");
        let served = dir.path().join("registry");
        let download = served.join("crates/nsdep/0.1.0");
        std::fs::create_dir_all(&download).unwrap();
        std::fs::copy(&crate_file, download.join("download")).unwrap();
        let sum = std::process::Command::new("sha256sum")
            .arg(&crate_file)
            .output()
            .unwrap();
        let sum = String::from_utf8(sum.stdout).unwrap();
        let sum = sum.split_whitespace().next().unwrap().to_string();
        let index = served.join("index");
        std::fs::create_dir_all(index.join("ns/de")).unwrap();
        std::fs::write(
            index.join("ns/de/nsdep"),
            format!(
                "{{\"name\":\"nsdep\",\"vers\":\"0.1.0\",\"deps\":[],\"cksum\":\"{sum}\",\"features\":{{}},\"yanked\":false}}\n"
            ),
        )
        .unwrap();
        let (server, port) = serve(&served);
        std::fs::write(
            index.join("config.json"),
            format!("{{\"dl\": \"http://127.0.0.1:{port}/crates\"}}\n"),
        )
        .unwrap();
        LocalRegistry {
            _dir: dir,
            server,
            port,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rust_crate_fetched_in_setup_builds_offline_with_the_hosts_toolchain() {
    // The host's rustup toolchain, bound read-only by the installation's config.toml.
    let Some(home) = std::env::var_os("HOME").map(std::path::PathBuf::from) else {
        eprintln!("skipped: no HOME");
        return;
    };
    let cargo = home.join(".cargo/bin/cargo");
    if !home.join(".rustup/toolchains").is_dir() || !cargo.exists() {
        eprintln!("skipped: no rustup toolchain under {}", home.display());
        return;
    }
    let registry = LocalRegistry::start(&cargo);
    let port = registry.port;
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join(".cargo")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nnsdep = \"0.1\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join(".cargo/config.toml"),
        format!(
            "[source.crates-io]\nreplace-with = \"local\"\n\n[source.local]\nregistry = \"sparse+http://127.0.0.1:{port}/index/\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("src/lib.rs"),
        "pub fn answer() -> u32 { nsdep::answer() + 1 }\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn answers() {\n        assert_eq!(super::answer(), 42);\n    }\n}\n",
    )
    .unwrap();
    std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
    std::fs::write(
        root.join(".nightshift.toml"),
        format!(
            r#"
[environment]
# The registry is on the host's loopback, which the sandbox reaches only through the proxy.
setup = "export no_proxy= NO_PROXY=; cargo fetch --locked"

[network]
setup = ["127.0.0.1:{port}"]

[checks]
test = "cargo test --offline --locked"
"#
        ),
    )
    .unwrap();
    // The lockfile, made on the host (which reaches its own loopback directly).
    let locked = std::process::Command::new(&cargo)
        .arg("generate-lockfile")
        .current_dir(root)
        .env("CARGO_HOME", root.join("target/cargo-home"))
        .output()
        .unwrap();
    assert!(locked.status.success(), "{locked:?}");
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "a crate with a dependency"]);

    let steps = json!([
        shell("cargo test --offline --locked 2>&1 | tail -n 3"),
        {"reply": {"tool_calls": [{"name": "edit_file", "arguments": {"path": "src/lib.rs", "old_string": "nsdep::answer() + 1", "new_string": "nsdep::answer()"}}]}},
        shell("cargo test --offline --locked 2>&1 | grep 'test result'"),
        finish("Fix answer")
    ]);
    let (mut ns, _server) = Nightshift::with_script(script(steps)).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        "[sandbox]\nbinds = [\"~/.rustup\", \"~/.cargo/bin\"]\npath = [\"~/.cargo/bin\"]\n",
    )
    .unwrap();
    ns.allow_loopback(&[port]);
    ns.env.push(("HOME".into(), home.display().to_string()));
    let (out, task) = ns.wait_task(root, "fix answer").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let setup = finished(&events, "setup");
    assert_eq!(setup["ok"], true, "{setup}");
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    let outputs = shell_outputs(&events);
    assert!(outputs[0].contains("test result: FAILED"), "{}", outputs[0]);
    assert!(
        outputs[1].contains("test result: ok. 1 passed"),
        "{}",
        outputs[1]
    );
    let check = finished(&events, "check");
    assert_eq!(check["ok"], true, "{check}");
    let branch = task["branch"].as_str().unwrap();
    let files = git(root, &["diff", "--name-only", &format!("main..{branch}")]);
    assert_eq!(files, "src/lib.rs");
    drop(registry);
}

/// A directory of wheels served over loopback: `nshello` 1.0, whose `greet()` says hello.
fn wheel_index() -> (tempfile::TempDir, std::process::Child, u16) {
    let dir = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1], 'w') as w:\n\
             \x20   w.writestr('nshello/__init__.py', 'def greet():\\n    return \"hello from a wheel\"\\n')\n\
             \x20   w.writestr('nshello-1.0.dist-info/METADATA', 'Metadata-Version: 2.1\\nName: nshello\\nVersion: 1.0\\n')\n\
             \x20   w.writestr('nshello-1.0.dist-info/WHEEL', 'Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n\
             \x20   w.writestr('nshello-1.0.dist-info/RECORD', 'nshello/__init__.py,,\\nnshello-1.0.dist-info/METADATA,,\\nnshello-1.0.dist-info/WHEEL,,\\nnshello-1.0.dist-info/RECORD,,\\n')\n",
        )
        .arg(dir.path().join("nshello-1.0-py3-none-any.whl"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let (server, port) = serve(dir.path());
    (dir, server, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_package_setup_installs_with_pip_user_is_the_agents() {
    let pip = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "pip", "--version"])
        .output();
    if !pip.is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: the system python3 has no pip (apt-get install python3-pip)");
        return;
    }
    let (_dir, mut server, port) = wheel_index();
    let repo = buggy_repo_with_config(&format!(
        r#"
[environment]
# Debian marks its python as externally managed; --user into $HOME is what setup keeps.
setup = "export no_proxy= NO_PROXY=; python3 -m pip install --user --break-system-packages --no-index --find-links http://127.0.0.1:{port}/ nshello"

[network]
setup = ["127.0.0.1:{port}"]

[checks]
import = "python3 -c 'import nshello; print(nshello.greet())'"
"#
    ));
    let steps = json!([
        shell("python3 -c 'import nshello; print(nshello.greet())' | tee greeting.txt"),
        finish("Greet")
    ]);
    let (ns, _model) = Nightshift::with_script(script(steps)).await;
    ns.allow_loopback(&[port]);
    let (out, task) = ns.wait_task(repo.path(), "greet").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let setup = finished(&events, "setup");
    assert_eq!(setup["ok"], true, "{setup}");
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    assert!(
        shell_outputs(&events)[0].starts_with("hello from a wheel\n"),
        "{:?}",
        shell_outputs(&events)
    );
    let check = finished(&events, "check");
    assert_eq!(check["ok"], true, "{check}");
    let _ = server.kill();
    let _ = server.wait();
}
