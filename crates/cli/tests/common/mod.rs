//! Shared pieces of the end-to-end tests: a sample repository with a failing test, the real
//! `nightshift` binary with its own NIGHTSHIFT_HOME, and a scripted model server on loopback.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nightshift_scripted_model::{Script, ScriptedModel};

pub mod mcp;
pub mod server;
use serde_json::{Value, json};

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
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

/// A repository whose test fails: `add` subtracts.
pub fn buggy_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("calc.sh"),
        "#!/bin/sh\n# add A B: prints A + B\nadd() { echo $(($1 - $2)); }\nadd \"$@\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("test.sh"),
        "#!/bin/sh\ngot=$(sh calc.sh 2 3)\nif [ \"$got\" = 5 ]; then echo PASS; else echo \"FAIL: add 2 3 gave $got\"; exit 1; fi\n",
    )
    .unwrap();
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "calc with a bug"]);
    dir
}

/// The script of a model that fixes `buggy_repo`.
/// [`buggy_repo`] with `config` committed as its `.nightshift.toml`.
pub fn buggy_repo_with_config(config: &str) -> tempfile::TempDir {
    let repo = buggy_repo();
    std::fs::write(repo.path().join(".nightshift.toml"), config).unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "configure nightshift"]);
    repo
}

pub fn fixing_script() -> Script {
    script(Value::Array(fixing_script_steps()))
}

/// The steps of [`fixing_script`], to build longer scripts from.
pub fn fixing_script_steps() -> Vec<Value> {
    let steps = json!([
        {"reply": {"text": "Reading the code.", "tool_calls": [{"name": "read_file", "arguments": {"path": "calc.sh"}}],
                   "usage": {"prompt_tokens": 1000, "completion_tokens": 20, "cached_tokens": 0}}},
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sh test.sh"}}],
                   "usage": {"prompt_tokens": 1100, "completion_tokens": 15, "cached_tokens": 900}}},
        {"reply": {"text": "add subtracts; fixing.", "tool_calls": [{"name": "edit_file", "arguments": {"path": "calc.sh", "old_string": "$(($1 - $2))", "new_string": "$(($1 + $2))"}}],
                   "usage": {"prompt_tokens": 1200, "completion_tokens": 40, "cached_tokens": 1000}}},
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sh test.sh"}}],
                   "usage": {"prompt_tokens": 1300, "completion_tokens": 15, "cached_tokens": 1100}}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "Fix add: it subtracted\n\nsh test.sh passes now."}}],
                   "usage": {"prompt_tokens": 1400, "completion_tokens": 30, "cached_tokens": 1200}}}
    ]);
    match steps {
        Value::Array(steps) => steps,
        _ => unreachable!("a JSON array"),
    }
}

pub fn script(steps: Value) -> Script {
    Script::from_json(&json!({ "steps": steps }).to_string()).unwrap()
}

/// The binary under test, with its own home.
pub struct Nightshift {
    pub home: tempfile::TempDir,
    pub base_url: String,
    /// Variables set for every command, over the defaults.
    pub env: Vec<(String, String)>,
}

impl Nightshift {
    pub fn new(base_url: impl Into<String>) -> Self {
        Nightshift {
            home: tempfile::tempdir().unwrap(),
            base_url: base_url.into(),
            env: Vec::new(),
        }
    }

    pub async fn with_script(script: Script) -> (Self, ScriptedModel) {
        let server = ScriptedModel::start(script).await.unwrap();
        (Nightshift::new(server.base_url()), server)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nightshift"));
        command
            .args(args)
            .env("NIGHTSHIFT_HOME", self.home.path())
            .env("OPENAI_BASE_URL", &self.base_url)
            .env("OPENAI_API_KEY", "test-key")
            .env("ANTHROPIC_BASE_URL", self.base_url.trim_end_matches("/v1"))
            .env("ANTHROPIC_API_KEY", "test-key")
            .env_remove("NIGHTSHIFT_RECORD")
            .env_remove("NIGHTSHIFT_SERVER")
            .env_remove("NIGHTSHIFT_TOKEN")
            .env_remove("NIGHTSHIFT_SECRET_KEY")
            .env_remove("NIGHTSHIFT_SANDBOX")
            .env_remove("NIGHTSHIFT_DATABASE_URL")
            .env_remove("NIGHTSHIFT_BLOB_URL")
            .env_remove("NIGHTSHIFT_MACHINE_USD_PER_HOUR")
            .env_remove("NIGHTSHIFT_MODEL")
            .env_remove("NIGHTSHIFT_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        // The developer's own AWS settings would point the S3 tests elsewhere.
        for (name, _) in std::env::vars_os() {
            let aws = name.to_str().is_some_and(|n| n.starts_with("AWS_"));
            if aws
                && !self
                    .env
                    .iter()
                    .any(|(k, _)| std::ffi::OsStr::new(k) == name)
            {
                command.env_remove(&name);
            }
        }
        command
    }

    /// Lets this installation's sandboxes reach these ports of the host's loopback (where the
    /// tests' own services listen) when a task's allowlist names them: `[network]
    /// allow_private` in `config.toml`, added to what the file holds.
    pub fn allow_loopback(&self, ports: &[u16]) {
        let file = self.home.path().join("config.toml");
        let mut text = std::fs::read_to_string(&file).unwrap_or_default();
        let entries: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        text.push_str(&format!(
            "\n[network]\nallow_private = [{}]\n",
            entries.join(", ")
        ));
        std::fs::write(&file, text).unwrap();
    }

    /// Registers the repository at `path` (`nightshift repo add`), so that a server of this
    /// installation serves it.
    pub async fn serve_repo(&self, path: &Path) {
        let out = self.run(&["repo", "add", path_str(path)]).await;
        assert!(out.status.success(), "repo add: {}", stderr(&out));
    }

    /// Runs the binary to its end off the async runtime (the scripted server runs on it).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    pub async fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `run --repo REPO --model openai:m --wait --json PROMPT`: its output and the task it
    /// printed (printed whether the task succeeded or not).
    pub async fn wait_task(&self, repo: &Path, prompt: &str) -> (Output, Value) {
        let args = [
            "run",
            "--repo",
            path_str(repo),
            "--model",
            "openai:m",
            "--wait",
            "--json",
            prompt,
        ];
        let out = self.run(&args).await;
        let task = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|err| panic!("{args:?} printed no task ({err}): {}", stderr(&out)));
        (out, task)
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let out = self.run(&["logs", id, "--json"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits (up to a minute) for the ended task `id` to start the follow-up a message asked
    /// for, and returns the follow-up's id.
    pub async fn follow_up_started(&self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = self.events(id).await;
            if let Some(started) = events.iter().find(|e| e["type"] == "follow_up_started") {
                return started["task_id"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no follow-up of {id}: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A `nightshift worker --concurrency 1 --grace GRACE` on this home.
    pub fn worker(&self, grace: &str) -> std::process::Child {
        self.command(&["worker", "--concurrency", "1", "--grace", grace])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Stops a worker as a service manager does (SIGTERM) and waits for it to exit.
    pub async fn stop_worker(mut worker: std::process::Child) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        tokio::task::spawn_blocking(move || worker.wait().unwrap())
            .await
            .unwrap()
    }

    /// Polls `show --json` until `done` holds or the deadline passes.
    pub async fn wait_for(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let task = self.json(&["show", id, "--json"]).await;
            if done(&task) {
                return task;
            }
            assert!(Instant::now() < deadline, "timed out; last: {task}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The output of the first `shell` tool call among a task's events.
pub fn shell_output(events: &[Value]) -> &str {
    let shell = events
        .iter()
        .find(|e| e["type"] == "tool_finished" && e["tool"] == "shell")
        .expect("a shell call");
    shell["output"].as_str().expect("its output")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Pids of processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline: PathBuf = entry.path().join("cmdline");
        if let Ok(bytes) = std::fs::read(cmdline) {
            let text = String::from_utf8_lossy(&bytes).replace('\0', " ");
            if text.contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

pub fn shell(command: &str) -> Value {
    json!({"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": command}}]}})
}

pub fn finish(summary: &str) -> Value {
    json!({"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": summary}}]}})
}

pub fn shell_outputs(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "tool_finished" && e["tool"] == "shell")
        .map(|e| e["output"].as_str().unwrap().to_string())
        .collect()
}

/// A repository with `files` committed.
pub fn repo_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "start"]);
    dir
}

/// `secret set NAME --all-repos`, the value on standard input.
pub fn set_secret(ns: &Nightshift, name: &str, value: &str) {
    set_secret_with(ns, name, value, &["--all-repos"]);
}

pub fn set_secret_with(ns: &Nightshift, name: &str, value: &str, grants: &[&str]) {
    use std::io::Write as _;
    let mut args = vec!["secret", "set", name];
    args.extend_from_slice(grants);
    let mut child = ns
        .command(&args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path);
            }
        }
    }
    found
}

/// A certificate for 127.0.0.1 signed by a certificate authority of the test's own: the
/// certificate, its key, and the authority's certificate (PEM) for the client to trust.
pub fn loopback_certificate() -> (rcgen::Certificate, rcgen::KeyPair, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "nightshift test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (cert, key, ca_pem)
}
