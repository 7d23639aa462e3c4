//! A repository registered as a GitHub App's: nightshift signs a JWT with the App's private key
//! (a stored secret), finds the App's installation on the repository, mints an installation
//! token limited to it, and pushes and opens the pull request with that token. GitHub is a
//! server on loopback that checks the JWT with the App's public key, as GitHub does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod forge_support;

use common::*;
use forge_support::*;
use serde_json::Value;

/// An RSA key pair in PEM form, as GitHub gives an App's private key: (private, public).
fn app_key(dir: &std::path::Path, name: &str) -> (String, String) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let made = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&private)
        .arg("2048")
        .output()
        .expect("openssl (the test makes the App's key with it)");
    assert!(made.status.success(), "{made:?}");
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        std::fs::read_to_string(private).unwrap(),
        std::fs::read_to_string(public).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_github_app_mints_a_token_for_the_repository_and_pushes_and_opens_the_pull_request_with_it()
 {
    const APP_ID: &str = "1234";
    // The installation token the App mints; git and the API take only it.
    const TOKEN: &str = "ghs_minted_installation_token";
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = app_key(keys.path(), "app");
    let (other_private, _) = app_key(keys.path(), "other");
    let git_server = GitHttp::start(TOKEN).await;
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let url = git_server.serve(repo.path(), "acme/app");
    let elsewhere = git_server.serve(repo.path(), "acme/elsewhere");
    let GitHubApi {
        url: api, recorded, ..
    } = github_api_with_app(
        TOKEN,
        Some(App {
            id: APP_ID.into(),
            public_pem: public,
        }),
    )
    .await;
    let (ns, _model) = Nightshift::with_script(script(Value::Array(fixing_script_steps()))).await;
    let add = |url: &str, name: &str, secret: &str| {
        [
            "repo",
            "add",
            url,
            "--name",
            name,
            "--credential",
            secret,
            "--github-app",
            APP_ID,
            "--github-api",
            &api,
        ]
        .map(str::to_string)
    };
    set_secret_with(&ns, "GH_APP_KEY", &private, &["--repo", &url]);
    let args = add(&url, "acme/app", "GH_APP_KEY");
    let out = ns
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = ns.run(&["repo", "ls", "--json"]).await;
    let listed: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(listed[0]["github_app"], APP_ID, "{listed}");
    assert_eq!(listed[0]["github_api"], api.as_str(), "{listed}");

    let out = ns
        .run(&["run", "--repo", "acme/app", "--wait", "--json", "Fix add"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "succeeded", "{task}");
    let id = task["id"].as_str().unwrap();
    let branch = task["branch"].as_str().unwrap();
    let events = ns.events(id).await;
    let opened = of_type(&events, "pull_request");
    assert_eq!(opened.len(), 1, "{events:#?}");
    assert_eq!(opened[0]["number"], 1);
    // The branch reached the forge with the minted token (git's server takes no other).
    let bare = git_server.root.path().join("acme/app.git");
    assert!(
        git(&bare, &["log", "-1", "--format=%B", branch])
            .contains(&format!("Nightshift-Task: {id}"))
    );
    // Tokens limited to the repository, each kept while fresh: one minted by the process that
    // queued the task (for the mirror's fetch), one by the task's worker process, whose push
    // and pull request both used it.
    let calls = recorded.lock().unwrap().clone();
    let mints: Vec<_> = calls
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/app/installations/42/access_tokens")
        .collect();
    assert_eq!(mints.len(), 2, "{calls:#?}");
    for mint in mints {
        assert_eq!(mint.2, serde_json::json!({"repositories": ["app"]}));
    }
    assert!(
        calls
            .iter()
            .any(|(m, p, _)| m == "GET" && p == "/repos/acme/app/installation")
    );
    // The key never appears in what the task recorded.
    let all = ns.run(&["logs", id]).await;
    let key_line = private.lines().nth(1).unwrap();
    assert!(!String::from_utf8_lossy(&all.stdout).contains(key_line));

    // An App not installed on a repository, or a key that is not the App's: the task is
    // refused, saying why, and nothing is queued.
    let out = ns
        .run(&["secret", "grant", "GH_APP_KEY", "--repo", &elsewhere])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    set_secret_with(&ns, "OTHER_KEY", &other_private, &["--repo", &elsewhere]);
    for (secret, why) in [
        ("GH_APP_KEY", "is not installed on acme/elsewhere"),
        ("OTHER_KEY", "JSON web token could not be decoded"),
    ] {
        let args = add(&elsewhere, "acme/elsewhere", secret);
        let out = ns
            .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
        assert!(out.status.success(), "{}", stderr(&out));
        let out = ns
            .run(&["run", "--repo", "acme/elsewhere", "--json", "Fix add"])
            .await;
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(&format!("minting a token as the GitHub App {APP_ID}")),
            "{err}"
        );
        assert!(err.contains(why), "{why:?} in {err}");
        let out = ns.run(&["repo", "rm", "acme/elsewhere"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let listed = ns.run(&["ls", "--json"]).await;
    let tasks: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_github_app_needs_an_https_repository_and_its_key() {
    let ns = Nightshift::new("http://127.0.0.1:9/v1");
    let out = ns
        .run(&[
            "repo",
            "add",
            "git@github.com:acme/app.git",
            "--github-app",
            "1234",
            "--credential",
            "KEY",
        ])
        .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("over HTTPS"), "{}", stderr(&out));
    let out = ns
        .run(&[
            "repo",
            "add",
            "https://github.com/acme/app.git",
            "--github-app",
            "1234",
        ])
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("needs its private key"),
        "{}",
        stderr(&out)
    );
    let listed = ns.run(&["repo", "ls", "--json"]).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&listed.stdout).unwrap(),
        serde_json::json!([])
    );
}
