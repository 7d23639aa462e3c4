//! Who the agent runs as on an image, end to end with the real binary: the user a
//! devcontainer's Dockerfile creates and names in its last `USER` (the agent's shell commands
//! and its file tools act as that user, in its home, over a workspace that is its own, and the
//! hand-back works), and a `USER` the image does not have, which fails the task saying so; a
//! `COPY --chown` that names the image's user and group, and one that names a user it lacks.
//!
//! Each test needs host root and the tools `.ci/run` installs; without them it says so and
//! returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../image/tests/support/mod.rs"]
mod support;

use common::*;
use serde_json::json;
use support::apt::{pushed_debian_image, ready};

fn write_file(path: &str, content: &str) -> serde_json::Value {
    json!({"reply": {"tool_calls": [{"name": "write_file",
        "arguments": {"path": path, "content": content}}]}})
}

fn devcontainer_repo(dockerfile: &str) -> tempfile::TempDir {
    repo_with(&[
        (
            ".devcontainer/devcontainer.json",
            r#"{"build": {"dockerfile": "Dockerfile"}}"#,
        ),
        (".devcontainer/Dockerfile", dockerfile),
        (".devcontainer/owned.txt", "owned\n"),
        ("README.md", "hello\n"),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_runs_as_the_user_the_dockerfile_names_over_a_workspace_of_its_own() {
    if !ready() {
        return;
    }
    let work = support::workdir();
    let (registry, reference, _archive) = pushed_debian_image(work.path(), "team/users");
    let dockerfile = format!(
        "FROM {reference}\n\
         RUN groupadd -g 1600 extra && groupadd -g 1700 more && useradd -m -u 1500 -g extra -G more -s /bin/bash dev\n\
         COPY --chown=dev:extra owned.txt /opt/owned.txt\n\
         USER dev\n"
    );
    let repo = devcontainer_repo(&dockerfile);
    let probe = "id -u; id -un; id -gn; id -Gn; echo $HOME $USER; \
                 stat -c %U:%G /workspace /workspace/README.md made-by-tool.txt /opt/owned.txt; \
                 touch /workspace/new-file ~/in-home && echo writable; \
                 touch /etc/not-mine 2>/dev/null || echo the image stays root\\'s";
    let steps = json!([
        write_file("made-by-tool.txt", "written by the file tool\n"),
        shell(probe),
        shell(
            "git add -A && git -c user.name=a -c user.email=a@b commit -qm work && echo committed"
        ),
        finish("Probed"),
    ]);
    let (ns, _server) = Nightshift::with_script(script(steps)).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[images]\nplain_http = [\"{}\"]\n", registry.host()),
    )
    .unwrap();

    let (out, task) = ns.wait_task(repo.path(), "probe").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(out.status.success(), "{}\n{events:#?}", stderr(&out));
    let outputs = shell_outputs(&events);
    assert_eq!(
        outputs[0].lines().take(11).collect::<Vec<_>>(),
        [
            "1500",
            "dev",
            "extra",
            "extra more",
            "/home/dev dev",
            "dev:extra",
            "dev:extra",
            "dev:extra",
            "dev:extra",
            "writable",
            "the image stays root's",
        ],
        "{events:#?}"
    );
    assert!(outputs[1].contains("committed"), "{}", outputs[1]);
    assert!(task["head_commit"].is_string(), "a hand-back: {task}");
    let diff = ns.run(&["diff", task["id"].as_str().unwrap()]).await;
    assert!(
        stdout(&diff).contains("written by the file tool"),
        "{}",
        stdout(&diff)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_the_image_does_not_have_fails_the_task_naming_it_and_where_it_was_written() {
    if !ready() {
        return;
    }
    let work = support::workdir();
    let (registry, reference, _archive) = pushed_debian_image(work.path(), "team/ghost");
    let repo = devcontainer_repo(&format!("FROM {reference}\nUSER ghost\n"));
    let (ns, _server) = Nightshift::with_script(script(json!([finish("never")]))).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[images]\nplain_http = [\"{}\"]\n", registry.host()),
    )
    .unwrap();
    let (out, task) = ns.wait_task(repo.path(), "anything").await;
    assert!(!out.status.success());
    assert_eq!(task["state"], "failed", "{task}");
    let message = task["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("the last `USER` of .devcontainer/Dockerfile is `ghost`")
            && message.contains("the user `ghost` is not in the image's /etc/passwd"),
        "{task}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chown_naming_a_user_the_image_lacks_fails_the_step_naming_it() {
    if !ready() {
        return;
    }
    let work = support::workdir();
    let (registry, reference, _archive) = pushed_debian_image(work.path(), "team/chown");
    let repo = devcontainer_repo(&format!(
        "FROM {reference}\nCOPY --chown=ghost:staff owned.txt /opt/\n"
    ));
    let (ns, _server) = Nightshift::with_script(script(json!([finish("never")]))).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[images]\nplain_http = [\"{}\"]\n", registry.host()),
    )
    .unwrap();
    let (out, task) = ns.wait_task(repo.path(), "anything").await;
    assert!(!out.status.success());
    let message = task["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(".devcontainer/Dockerfile:2 COPY")
            && message.contains(
                "--chown=ghost:staff: the user `ghost` is not in the image's /etc/passwd"
            ),
        "{task}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn devcontainer_remote_user_wins_over_the_dockerfiles_user() {
    if !ready() {
        return;
    }
    let work = support::workdir();
    let (registry, reference, _archive) = pushed_debian_image(work.path(), "team/remote");
    let repo = repo_with(&[
        (
            ".devcontainer/devcontainer.json",
            r#"{"build": {"dockerfile": "Dockerfile"}, "remoteUser": "remote"}"#,
        ),
        (
            ".devcontainer/Dockerfile",
            &format!(
                "FROM {reference}\nRUN useradd -m -u 1500 built && useradd -m -u 1501 remote\nUSER built\n"
            ),
        ),
    ]);
    let steps = json!([shell("id -un; echo $HOME"), finish("Probed")]);
    let (ns, _server) = Nightshift::with_script(script(steps)).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[images]\nplain_http = [\"{}\"]\n", registry.host()),
    )
    .unwrap();
    let (out, task) = ns.wait_task(repo.path(), "probe").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(out.status.success(), "{}\n{events:#?}", stderr(&out));
    assert!(
        shell_outputs(&events)[0].starts_with("remote\n/home/remote\n"),
        "{events:#?}"
    );
}
