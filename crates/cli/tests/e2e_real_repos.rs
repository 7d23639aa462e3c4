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
    let check = events
        .iter()
        .find(|e| e["type"] == "command_finished" && e["phase"] == "check")
        .unwrap();
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
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let server = std::process::Command::new("/usr/bin/python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(&repo)
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
    let (out, task) = ns.wait_task(repo.path(), "say hello").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let setup = events
        .iter()
        .find(|e| e["type"] == "command_finished" && e["phase"] == "setup")
        .unwrap();
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
    let check = events
        .iter()
        .find(|e| e["type"] == "command_finished" && e["phase"] == "check")
        .unwrap();
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
