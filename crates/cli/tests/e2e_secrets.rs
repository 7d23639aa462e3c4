//! Secrets: set once, given to setup as variables or to the egress proxy as headers, redacted
//! from everything a task records, never stored in the clear, and never committed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use nightshift_scripted_model::ScriptedModel;
use serde_json::{Value, json};

const TOKEN: &str = "tok-5ecr3t-0123456789";

fn repo_with_secret_setup() -> tempfile::TempDir {
    buggy_repo_with_config(
        "[environment]\nsetup = \"echo the token is $NPM_TOKEN; echo $NPM_TOKEN > /tmp/seen\"\n\n[secrets]\nNPM_TOKEN = \"setup\"\n",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_reaches_setup_only_and_appears_nowhere_in_the_clear() {
    let repo = repo_with_secret_setup();
    // A model that somehow knows the value says it: the recorded traffic is redacted too.
    let (mut ns, server) = Nightshift::with_script(script(json!([
        {"reply": {"text": format!("is it {TOKEN}?"), "tool_calls": [{"name": "shell", "arguments": {"command": "echo \"agent sees: [$NPM_TOKEN]\"; cat /tmp/seen"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "looked around"}}]}}
    ])))
    .await;
    let cassettes = ns.home.path().join("cassettes");
    ns.env
        .push(("NIGHTSHIFT_RECORD".into(), cassettes.display().to_string()));
    set_secret(&ns, "NPM_TOKEN", TOKEN);
    let listed = ns.run(&["secret", "ls"]).await;
    assert!(stdout(&listed).contains("NPM_TOKEN") && !stdout(&listed).contains(TOKEN));

    let (out, task) = ns.wait_task(repo.path(), "look").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = task["id"].as_str().unwrap();

    let logs = stdout(&ns.run(&["logs", id]).await);
    assert!(
        logs.contains("agent sees: []"),
        "the agent's environment must not have the secret: {logs}"
    );
    // Setup printed it: redacted in the recorded output.
    assert!(!logs.contains(TOKEN));
    let json_logs = stdout(&ns.run(&["logs", id, "--json"]).await);
    assert!(
        json_logs.contains("the token is [secret:NPM_TOKEN]"),
        "{json_logs}"
    );
    assert!(!json_logs.contains(TOKEN));
    let found = files_containing(ns.home.path(), TOKEN);
    assert!(found.is_empty(), "the secret is in the clear in {found:?}");
    let recorded = files_containing(&cassettes, "is it [secret:NPM_TOKEN]?");
    assert_eq!(
        recorded.len(),
        1,
        "the model's traffic was recorded, redacted"
    );
    assert_eq!(server.served(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_containing_a_secret_is_not_committed() {
    let repo = repo_with_secret_setup();
    let (ns, _server) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "leaked.txt", "content": format!("{TOKEN}\n")}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "oops"}}]}}
    ])))
    .await;
    set_secret(&ns, "NPM_TOKEN", TOKEN);
    let before = git(
        repo.path(),
        &["for-each-ref", "--format=%(refname)", "refs/heads/"],
    );
    let (out, task) = ns.wait_task(repo.path(), "leak").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("contains the value of secret NPM_TOKEN"),
        "{task}"
    );
    assert_eq!(
        git(
            repo.path(),
            &["for-each-ref", "--format=%(refname)", "refs/heads/"]
        ),
        before
    );
    let found = files_containing(ns.home.path(), TOKEN);
    assert!(found.is_empty(), "the secret is in the clear in {found:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_secret_fails_the_task_saying_how_to_set_it() {
    let repo = repo_with_secret_setup();
    let (ns, server) = Nightshift::with_script(fixing_script()).await;
    let (out, task) = ns.wait_task(repo.path(), "fix").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        task["error"].as_str().unwrap().contains("NPM_TOKEN"),
        "{task}"
    );
    assert_eq!(server.served(), 0);
    let bad = ns.run(&["secret", "set", "bad-name"]).await;
    assert_eq!(bad.status.code(), Some(2));
}

/// A task whose setup script (given NPM_TOKEN) is `setup`, run to its end: it fails. Returns
/// the binary's home, the model server and the task.
async fn task_with_setup_given_the_token(setup: &str) -> (Nightshift, ScriptedModel, Value) {
    let repo = buggy_repo_with_config(&format!(
        "[environment]\nsetup = \"{setup}\"\n\n[secrets]\nNPM_TOKEN = \"setup\"\n"
    ));
    let (ns, server) = Nightshift::with_script(fixing_script()).await;
    set_secret(&ns, "NPM_TOKEN", TOKEN);
    let (out, task) = ns.wait_task(repo.path(), "fix").await;
    assert_eq!(out.status.code(), Some(1));
    (ns, server, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_at_the_end_of_a_large_file_is_found_too() {
    // 12 MiB of zeros, then the value: a layer is read through, whatever the file's size.
    let (_ns, _server, task) = task_with_setup_given_the_token(
        "head -c 12582912 /dev/zero > vendor.bin; echo $NPM_TOKEN >> vendor.bin",
    )
    .await;
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("wrote the value of secret NPM_TOKEN into its layer (workspace/vendor.bin)"),
        "{task}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_written_into_home_by_setup_is_not_cached_either() {
    // HOME is part of the layer now: an .npmrc holding the token would be served to every
    // later task of the repository.
    let (ns, _server, task) = task_with_setup_given_the_token(
        "echo //registry.npmjs.org/:_authToken=$NPM_TOKEN > ~/.npmrc",
    )
    .await;
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("into its layer (home/.npmrc)") && error.contains("discarded"),
        "{task}"
    );
    let layers = ns.home.path().join("layers");
    let kept = std::fs::read_dir(&layers)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join("layer").exists())
        .count();
    assert_eq!(kept, 0, "no layer kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_setup_that_writes_a_secret_into_the_workspace_is_not_cached() {
    let (ns, server, task) =
        task_with_setup_given_the_token("echo $NPM_TOKEN > .npmrc-token").await;
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("wrote the value of secret NPM_TOKEN"),
        "{task}"
    );
    assert_eq!(server.served(), 0);
    let found = files_containing(ns.home.path(), TOKEN);
    assert!(found.is_empty(), "the secret is in the clear in {found:?}");
}

/// An HTTPS service on loopback with a certificate from a CA of the test's own: it records the
/// `authorization` header of every request and answers with it. Returns its port, the CA's
/// certificate (PEM) and the headers seen.
async fn https_service() -> (u16, String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cert, key, ca_pem) = common::loopback_certificate();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(stream).await else {
                continue;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let authorization = head
                .lines()
                .find_map(|line| line.strip_prefix("authorization: "))
                .unwrap_or("none")
                .to_string();
            // Echoed, as a debugging endpoint would: the agent's output then holds the secret.
            let body = format!("hello, you sent {authorization}");
            record.lock().unwrap().push(authorization);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    (port, ca_pem, seen)
}

/// The worker trusts the service's CA (as it would a public one) through `SSL_CERT_FILE`, and
/// API_TOKEN is set.
fn trust_and_set_token(ns: &mut Nightshift, ca_pem: &str) {
    let roots = ns.home.path().join("service-ca.pem");
    std::fs::write(&roots, ca_pem).unwrap();
    ns.env
        .push(("SSL_CERT_FILE".into(), path_str(&roots).to_string()));
    set_secret(ns, "API_TOKEN", TOKEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_secret_reaches_its_host_as_a_header_and_never_the_sandbox() {
    let (port, ca_pem, seen) = https_service().await;
    let repo = buggy_repo_with_config(&format!(
        "[network]\nagent = [\"127.0.0.1:{port}\"]\n\n[secrets]\nAPI_TOKEN = {{ scope = \"proxy\", hosts = [\"127.0.0.1:{port}\"] }}\n"
    ));
    let (mut ns, model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command":
            format!("echo \"agent sees: [$API_TOKEN]\"; curl -sS --noproxy '' --max-time 10 https://127.0.0.1:{port}/v1/me; echo")}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "called the service"}}]}}
    ])))
    .await;
    ns.allow_loopback(&[port]);
    trust_and_set_token(&mut ns, &ca_pem);

    let (out, task) = ns.wait_task(repo.path(), "call").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(*seen.lock().unwrap(), [format!("Bearer {TOKEN}")]);
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let output = shell_output(&events);
    assert!(output.contains("agent sees: []"), "{output}");
    assert!(
        output.contains("hello, you sent Bearer [secret:API_TOKEN]"),
        "{output}"
    );
    // What came back from the service went to the model redacted too.
    let sent = serde_json::to_string(&model.requests()).unwrap();
    assert!(
        sent.contains("you sent Bearer [secret:API_TOKEN]"),
        "{sent}"
    );
    assert!(!sent.contains(TOKEN), "the model was sent the secret");
    let egress = events.iter().find(|e| e["type"] == "egress").unwrap();
    assert_eq!(
        egress["detail"], "secret API_TOKEN added to 1 request",
        "{egress}"
    );
    let found = files_containing(ns.home.path(), TOKEN);
    assert!(found.is_empty(), "the secret is in the clear in {found:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_secret_for_a_host_no_allowlist_reaches_is_called_out() {
    let repo = buggy_repo_with_config(
        "[secrets]\nAPI_TOKEN = { scope = \"proxy\", hosts = [\"api.example.com\"] }\n",
    );
    let (ns, _model) = Nightshift::with_script(fixing_script()).await;
    set_secret(&ns, "API_TOKEN", TOKEN);
    let (out, task) = ns.wait_task(repo.path(), "fix").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(
        events.iter().any(|e| e["type"] == "warning"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("secret `API_TOKEN` is for api.example.com, which neither [network].agent nor [network].setup allows")),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follow_up_does_not_take_the_configuration_its_agent_wrote() {
    let (port, ca_pem, seen) = https_service().await;
    let (other, _, other_seen) = https_service().await;
    let config = |host: u16| {
        format!(
            "[network]\nagent = [\"127.0.0.1:{host}\"]\n\n[secrets]\nAPI_TOKEN = {{ scope = \"proxy\", hosts = [\"127.0.0.1:{host}\"] }}\n"
        )
    };
    let repo = buggy_repo_with_config(&config(port));
    // The first run's agent points the secret and the network at another host.
    let call_other = format!("curl -sS --noproxy '' --max-time 5 https://127.0.0.1:{other}/; echo");
    let (mut ns, _model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": ".nightshift.toml", "content": config(other)}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "moved the service"}}]}},
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": call_other}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "called it"}}]}}
    ])))
    .await;
    ns.allow_loopback(&[port, other]);
    trust_and_set_token(&mut ns, &ca_pem);
    let (out, first) = ns.wait_task(repo.path(), "move").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let first_id = first["id"].as_str().unwrap();

    let said = ns.run(&["say", first_id, "now call it"]).await;
    assert!(said.status.success(), "{}", stderr(&said));
    let follow_up = ns.follow_up_started(first_id).await;
    ns.wait_for(&follow_up, |t| t["state"] == "succeeded").await;
    let events = ns.events(&follow_up).await;
    assert!(
        events.iter().any(|e| e["type"] == "warning"
            && e["message"].as_str().unwrap().contains(
                "this follow-up gets no secrets and no network: the earlier runs changed .nightshift.toml"
            )),
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e["type"] != "egress"), "{events:#?}");
    assert!(other_seen.lock().unwrap().is_empty());
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_reaches_only_the_repositories_it_is_granted_to() {
    let granted = repo_with_secret_setup();
    let other = repo_with_secret_setup();
    let (ns, _server) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "looked"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "looked"}}]}}
    ])))
    .await;
    // A new secret must say which repositories may use it.
    let refused = ns.run(&["secret", "set", "NPM_TOKEN"]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("--repo PATH_OR_URL"),
        "{}",
        stderr(&refused)
    );
    // Granted by a directory inside the repository: the grant is its top level.
    let inside = granted.path().join("sub");
    std::fs::create_dir(&inside).unwrap();
    set_secret_with(&ns, "NPM_TOKEN", TOKEN, &["--repo", path_str(&inside)]);
    let listed = stdout(&ns.run(&["secret", "ls"]).await);
    let top = std::fs::canonicalize(granted.path()).unwrap();
    assert!(
        listed.contains(&format!("for {}", top.display())),
        "{listed}"
    );

    // The other repository's configuration names the secret too: it gets nothing, and the
    // task fails before anything runs, saying how to grant it.
    let (out, task) = ns.wait_task(other.path(), "look").await;
    assert_eq!(out.status.code(), Some(1));
    let error = task["error"].as_str().unwrap();
    assert!(error.contains("not granted to this repository"), "{task}");
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "command_finished" && e["phase"] == "setup"),
        "setup must not run"
    );
    let hinted = events.iter().any(|e| {
        e["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("nightshift secret grant NPM_TOKEN --repo"))
    });
    assert!(hinted, "{events:?}");

    // The granted repository's setup gets it.
    let (out, task) = ns.wait_task(granted.path(), "look").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let json_logs = stdout(
        &ns.run(&["logs", task["id"].as_str().unwrap(), "--json"])
            .await,
    );
    assert!(
        json_logs.contains("the token is [secret:NPM_TOKEN]"),
        "{json_logs}"
    );

    // Granting the other one, then revoking it again.
    let grant = ns
        .run(&[
            "secret",
            "grant",
            "NPM_TOKEN",
            "--repo",
            path_str(other.path()),
        ])
        .await;
    assert!(grant.status.success(), "{}", stderr(&grant));
    let revoke = ns
        .run(&[
            "secret",
            "revoke",
            "NPM_TOKEN",
            "--repo",
            path_str(granted.path()),
        ])
        .await;
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    let listed = stdout(&ns.run(&["secret", "ls"]).await);
    let other_top = std::fs::canonicalize(other.path()).unwrap();
    assert!(
        listed.contains(&format!("for {}", other_top.display()))
            && !listed.contains(&top.display().to_string()),
        "{listed}"
    );
    let unknown = ns.run(&["secret", "grant", "NOPE", "--all-repos"]).await;
    assert_eq!(unknown.status.code(), Some(2));
}

/// What `script` prints on the host with `$T` set to the token: the forms the agent's
/// commands below produce, computed the same way.
fn host_shell(script: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .env("T", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}");
    String::from_utf8(out.stdout).unwrap()
}

/// Transformations of a setup secret the agent read from a file: base64 at each alignment,
/// reversed, hex, URL-encoded, wrapped over lines.
const TRANSFORMS: [&str; 7] = [
    "printf %s \"$T\" | base64",
    "printf %s \"$T\" | rev",
    "printf %s \"$T\" | xxd -p",
    "printf %s \"$T\" | xxd -p -c 8",
    "printf 'x%s' \"$T\" | base64 -w 16",
    "printf 'xy%s!' \"$T\" | base64 | tr '+/' '-_'",
    "printf %s \"$T\" | od -An -tx1 | tr -d '\\n' | sed 's/ /%/g'",
];

/// A repository whose setup leaves NPM_TOKEN in a file of its layer, compressed: the layer's
/// scan cannot see it there, so the layer is kept and the agent can read the value.
fn repo_with_a_compressed_token() -> tempfile::TempDir {
    buggy_repo_with_config(
        "[environment]\nsetup = \"echo $NPM_TOKEN | gzip > token.gz\"\n\n[secrets]\nNPM_TOKEN = \"setup\"\n",
    )
}

/// Whether any 12 consecutive characters of a form (line breaks taken out) are in `text`.
fn holds_a_piece_of(text: &str, form: &str) -> bool {
    let form: Vec<char> = form.chars().filter(|c| !c.is_whitespace()).collect();
    form.windows(12)
        .any(|window| text.contains(&window.iter().collect::<String>()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_the_agent_encodes_or_reverses_is_redacted_in_every_form() {
    let repo = repo_with_a_compressed_token();
    let commands: Vec<String> = TRANSFORMS
        .iter()
        .map(|transform| format!("T=$(zcat token.gz); {transform}; echo"))
        .collect();
    let (ns, model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": commands.join("; ")}}]}},
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "notes.txt", "content": "looked at the token\n"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "encoded it"}}]}}
    ])))
    .await;
    set_secret(&ns, "NPM_TOKEN", TOKEN);
    let (out, task) = ns.wait_task(repo.path(), "encode").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = task["id"].as_str().unwrap();

    let events = ns.events(id).await;
    let output = shell_output(&events);
    // The agent had the value, in each form, and every one came out redacted.
    assert_eq!(
        output.matches("[secret:NPM_TOKEN]").count(),
        TRANSFORMS.len(),
        "{output}"
    );
    let logs = stdout(&ns.run(&["logs", id, "--json"]).await);
    let diff = ns.run(&["diff", id]).await;
    assert!(diff.status.success(), "{}", stderr(&diff));
    let diff = stdout(&diff);
    assert!(diff.contains("looked at the token"), "{diff}");
    let sent = serde_json::to_string(&model.requests()).unwrap();
    assert_eq!(model.served(), 3);
    for transform in TRANSFORMS {
        let form = host_shell(transform);
        for (place, text) in [("logs", &logs), ("diff", &diff), ("model requests", &sent)] {
            assert!(
                !holds_a_piece_of(text, &form),
                "`{transform}` ({form}) is in the {place}: {text}"
            );
        }
        let line = form.lines().next().unwrap_or_default();
        let found = files_containing(ns.home.path(), line);
        assert!(found.is_empty(), "`{transform}` is in {found:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encoded_secret_in_a_binary_file_or_a_commit_message_is_not_committed() {
    let repo = repo_with_a_compressed_token();
    let before = git(
        repo.path(),
        &["for-each-ref", "--format=%(refname)", "refs/heads/"],
    );
    // A patch compresses a binary file; the agent's own commit carries a message, and the
    // file is gone again from the last tree.
    let command = "T=$(zcat token.gz); { printf '\\000'; printf %s \"$T\" | base64; } > blob.bin; \
                   git add blob.bin && git -c user.name=a -c user.email=a@a commit -qm \"$(printf %s \"$T\" | xxd -p)\"; \
                   git rm -q blob.bin";
    let (ns, _model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": command}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "hid it"}}]}}
    ])))
    .await;
    set_secret(&ns, "NPM_TOKEN", TOKEN);
    let (out, task) = ns.wait_task(repo.path(), "hide").await;
    assert_eq!(out.status.code(), Some(1), "{task}");
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("contains the value of secret NPM_TOKEN"),
        "{task}"
    );
    assert_eq!(
        git(
            repo.path(),
            &["for-each-ref", "--format=%(refname)", "refs/heads/"]
        ),
        before
    );
    let diff = ns.run(&["diff", task["id"].as_str().unwrap()]).await;
    assert!(!stdout(&diff).contains("blob.bin"), "{}", stdout(&diff));
}
