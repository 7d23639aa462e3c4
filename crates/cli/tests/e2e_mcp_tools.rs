//! MCP servers as the agent's tools: a repository's `[mcp.NAME]` stdio server, written with the
//! official Python SDK (`mcp`), runs inside the task's sandbox, and the scripted model calls its
//! tools over real HTTP. An excluded tool is absent from every request; a server that crashes
//! mid-call is a tool error and starts again for the next call; a server that cannot start is a
//! warning, never a hung task. The installation's servers (`config.toml`) come first and win
//! over a repository's of the same name; a call past its timeout stops the server, and a server
//! is started again at most 3 times. A server that setup installs serves this task and the
//! next. (Remote servers: e2e_mcp_remote.rs.)
//!
//! The server needs a Python whose interpreter the sandbox sees (Debian's /usr/bin/python3) with
//! the `mcp` package: NIGHTSHIFT_TEST_MCP_PYTHON names it (`.ci/run` makes that virtual
//! environment); without it the test says so and does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::mcp::*;
use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn a_repositorys_mcp_server_runs_in_the_sandbox_and_its_tools_reach_the_model() {
    let Some((venv, python)) = python() else {
        return;
    };
    let server = notes_server();
    // A file of the host's that the server must not see.
    let host = tempfile::tempdir().unwrap();
    let marker = host.path().join("host-only");
    std::fs::write(&marker, "private").unwrap();
    let config = format!(
        r#"[mcp.notes]
command = "{python}"
args = ["notes_server.py"]
env = {{ NOTES_TOKEN = "t-123", HOST_MARKER = "{marker}" }}
exclude_tools = ["forbidden", "slow"]

[mcp.broken]
command = "/no/such/server"
startup_timeout = "10s"
"#,
        python = python.display(),
        marker = marker.display(),
    );
    let repo = repo_with(&[
        (".nightshift.toml", &config),
        ("notes_server.py", &server),
        ("NOTES.md", "lease: how long a worker holds a task\n"),
    ]);
    let (ns, model) = Nightshift::with_script(script(json!([
        call("notes__lookup", json!({"term": "lease"})),
        call("notes__crash", json!({})),
        call("notes__lookup", json!({"term": "layer"})),
        finish("Looked the terms up."),
    ])))
    .await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[sandbox]\nbinds = [\"{}\"]\n", venv.display()),
    )
    .unwrap();
    let (out, task) = ns.wait_task(repo.path(), "Look up lease").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let events = ns.events(task["id"].as_str().unwrap()).await;

    let ready: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "mcp_server_ready")
        .collect();
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert_eq!(ready[0]["server"], "notes");
    assert_eq!(ready[0]["tools"], json!(["notes__crash", "notes__lookup"]));
    let warnings = warnings(&events);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("`broken`") && w.contains("did not start")),
        "{warnings:?}"
    );

    // The model saw the built-in tools, then the server's, minus the excluded one, and the
    // same definitions, byte for byte, in every request.
    let requests = model.requests();
    assert_eq!(requests.len(), 4);
    let names = tool_names(&requests[0]);
    assert_eq!(
        &names[names.len() - 2..],
        ["notes__crash", "notes__lookup"],
        "{names:?}"
    );
    assert_eq!(names[0], "shell");
    assert!(!names.iter().any(|n| n.contains("forbidden")), "{names:?}");
    for request in &requests[1..] {
        assert_eq!(request["tools"], requests[0]["tools"]);
    }
    let lookup_schema = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "notes__lookup")
        .unwrap()["function"]["parameters"]
        .clone();
    assert_eq!(
        lookup_schema["required"],
        json!(["term"]),
        "{lookup_schema}"
    );

    // It ran in the sandbox: the workspace, the agent's user, its own environment, and none of
    // the host's files.
    let lookups = finished(&events, "notes__lookup");
    assert_eq!(lookups.len(), 2, "{lookups:?}");
    assert_eq!(lookups[0]["ok"], true, "{}", lookups[0]);
    let text = lookups[0]["output"].as_str().unwrap();
    assert!(
        text.starts_with("lease: how long a worker holds a task | cwd=/workspace user=agent"),
        "{text}"
    );
    assert!(
        text.contains("token=t-123 host_file_visible=False"),
        "{text}"
    );

    // The crash is a tool error that says what happened; the next call starts it again.
    let crash = finished(&events, "notes__crash");
    assert_eq!(crash.len(), 1);
    assert_eq!(crash[0]["ok"], false);
    let message = crash[0]["output"].as_str().unwrap();
    assert!(
        message.contains("ended while `crash` ran") && message.contains("exited with code 3"),
        "{message}"
    );
    assert!(message.contains("notes: crashing on purpose"), "{message}");
    assert_eq!(lookups[1]["ok"], true, "{}", lookups[1]);
    assert!(
        lookups[1]["output"]
            .as_str()
            .unwrap()
            .starts_with("layer: not found"),
        "{}",
        lookups[1]
    );
}

/// A server that setup installs under `$HOME` is there for the task, and for the next one,
/// which starts from the cached setup layer without running setup again.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_setup_installs_in_home_serves_this_task_and_the_next() {
    let Some((venv, python)) = python() else {
        return;
    };
    let install = format!(
        r#"set -e
mkdir -p "$HOME/bin" "$HOME/lib"
cp notes_server.py "$HOME/lib/"
printf '#!/bin/sh\nexec {python} %s/lib/notes_server.py\n' "$HOME" > "$HOME/bin/notes-server"
chmod +x "$HOME/bin/notes-server"
"#,
        python = python.display()
    );
    let config = r#"[environment]
setup = "sh install-notes.sh"

[mcp.notes]
command = "/home/agent/bin/notes-server"
tools = ["lookup"]
"#;
    let repo = repo_with(&[
        (".nightshift.toml", config),
        ("install-notes.sh", &install),
        ("notes_server.py", &notes_server()),
        ("NOTES.md", "layer: what setup left behind\n"),
    ]);
    let lookup = || call("notes__lookup", json!({"term": "layer"}));
    let (ns, model) = Nightshift::with_script(script(json!([
        lookup(),
        finish("Looked it up."),
        lookup(),
        finish("Looked it up again."),
    ])))
    .await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[sandbox]\nbinds = [\"{}\"]\n", venv.display()),
    )
    .unwrap();
    for (round, hit) in [(1, false), (2, true)] {
        let (out, task) = ns.wait_task(repo.path(), "Look up layer").await;
        let events = ns.events(task["id"].as_str().unwrap()).await;
        assert!(out.status.success(), "round {round}: {task}\n{events:#?}");
        let cache = events.iter().find(|e| e["type"] == "setup_cache").unwrap();
        assert_eq!(cache["hit"], hit, "round {round}: {cache}");
        let ready: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "mcp_server_ready")
            .collect();
        assert_eq!(ready.len(), 1, "round {round}: {:?}", warnings(&events));
        assert_eq!(ready[0]["tools"], json!(["notes__lookup"]));
        let lookups = finished(&events, "notes__lookup");
        assert_eq!(lookups.len(), 1, "round {round}");
        let text = lookups[0]["output"].as_str().unwrap();
        assert!(
            text.starts_with("layer: what setup left behind | cwd=/workspace user=agent"),
            "round {round}: {text}"
        );
    }
    assert_eq!(model.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_installations_server_times_out_restarts_and_gives_up() {
    let Some((venv, python)) = python() else {
        return;
    };
    let repo = repo_with(&[
        (
            ".nightshift.toml",
            "[mcp.notes]\ncommand = \"/bin/false\"\n",
        ),
        ("notes_server.py", &notes_server()),
        ("NOTES.md", "lease: how long a worker holds a task\n"),
    ]);
    // Each slow call differs, for the loop detector.
    let slow = |seconds: u32| call("notes__slow", json!({ "seconds": seconds }));
    let lookup = || call("notes__lookup", json!({"term": "lease"}));
    let (ns, model) = Nightshift::with_script(script(json!([
        slow(60),
        lookup(),
        slow(61),
        slow(62),
        slow(63),
        lookup(),
        finish("Gave up on the notes."),
    ])))
    .await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!(
            r#"[sandbox]
binds = ["{venv}"]

[mcp.notes]
command = "{python}"
args = ["notes_server.py"]
tools = ["lookup", "slow", "absent"]
timeout = "1s"
"#,
            venv = venv.display(),
            python = python.display(),
        ),
    )
    .unwrap();
    let (out, task) = ns.wait_task(repo.path(), "Look up lease").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(out.status.success(), "{task}\n{events:#?}");
    let events = ns.events(task["id"].as_str().unwrap()).await;

    // The installation's server, with only the tools it chose; the repository's namesake is
    // left out.
    let ready: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "mcp_server_ready")
        .collect();
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert_eq!(ready[0]["tools"], json!(["notes__lookup", "notes__slow"]));
    let warnings = warnings(&events);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("repository's MCP server `notes` is left out")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("`tools` names \"absent\"")),
        "{warnings:?}"
    );
    let names = tool_names(&model.requests()[0]);
    assert!(!names.iter().any(|n| n == "notes__crash"), "{names:?}");

    // Past its timeout a call fails and the server is stopped; the next call starts it again,
    // and after 3 restarts its tools stay unavailable.
    let slows = finished(&events, "notes__slow");
    assert_eq!(slows.len(), 4, "{slows:?}");
    for slow in &slows {
        assert_eq!(slow["ok"], false);
        let text = slow["output"].as_str().unwrap();
        assert!(text.contains("did not answer within 1s"), "{text}");
    }
    let lookups = finished(&events, "notes__lookup");
    assert_eq!(lookups.len(), 2, "{lookups:?}");
    assert_eq!(lookups[0]["ok"], true, "{}", lookups[0]);
    assert_eq!(lookups[1]["ok"], false, "{}", lookups[1]);
    let text = lookups[1]["output"].as_str().unwrap();
    assert!(text.contains("restarted 3 times already"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn env_check_probe_starts_the_servers_and_lists_their_tools() {
    let Some((venv, python)) = python() else {
        return;
    };
    let repo = repo_with(&[
        (
            ".nightshift.toml",
            &format!(
                "[mcp.notes]\ncommand = \"{}\"\nargs = [\"notes_server.py\"]\nexclude_tools = [\"slow\"]\n",
                python.display()
            ),
        ),
        ("notes_server.py", &notes_server()),
    ]);
    let ns = Nightshift::new("http://127.0.0.1:9");
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[sandbox]\nbinds = [\"{}\"]\n", venv.display()),
    )
    .unwrap();
    let out = ns
        .run(&["env", "check", "--probe", "--repo", path_str(repo.path())])
        .await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("notes: 3 tool(s): notes__crash, notes__forbidden, notes__lookup"),
        "{text}"
    );

    // A server that does not start fails the probe, saying why.
    std::fs::write(
        repo.path().join(".nightshift.toml"),
        "[mcp.broken]\ncommand = \"/no/such/server\"\n",
    )
    .unwrap();
    git(repo.path(), &["commit", "-qam", "broken"]);
    let out = ns
        .run(&["env", "check", "--probe", "--repo", path_str(repo.path())])
        .await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("broken: did not start"), "{text}");
    assert!(
        text.contains("did not start, so its tools are not available"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_mcp_section_is_refused_naming_the_key() {
    let ns = Nightshift::new("http://127.0.0.1:9");
    for (config, key, says) in [
        (
            "[mcp.docs]\nurl = \"https://user:pw@mcp.example.com/mcp\"\n",
            "mcp.docs.url",
            "proxy` secret",
        ),
        (
            "[mcp.docs]\nurl = \"ftp://mcp.example.com/\"\n",
            "mcp.docs.url",
            "https://",
        ),
        (
            "[mcp.docs]\nurl = \"https://mcp.example.com/mcp\"\ncommand = \"x\"\n",
            "mcp.docs",
            "both `url` and `command`",
        ),
        (
            "[mcp.docs]\nargs = [\"x\"]\n",
            "mcp.docs",
            "no `command` or `url`",
        ),
    ] {
        let repo = repo_with(&[(".nightshift.toml", config)]);
        let out = ns
            .run(&["env", "check", "--repo", path_str(repo.path())])
            .await;
        assert!(!out.status.success(), "{config}");
        let text = stderr(&out);
        assert!(
            text.contains(key) && text.contains(says),
            "{config}: {text}"
        );
    }

    let repo = repo_with(&[(".nightshift.toml", "[mcp.a__b]\ncommand = \"x\"\n")]);
    let out = ns
        .run(&["env", "check", "--repo", path_str(repo.path())])
        .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("`__`"), "{}", stderr(&out));

    // The installation's `[mcp]` is read by the same rules, and a task does not start on it.
    let settings = ns.home.path().join("config.toml");
    std::fs::write(
        &settings,
        "[mcp.docs]\ncommand = \"x\"\ntimeout = \"soon\"\n",
    )
    .unwrap();
    let repo = repo_with(&[("README.md", "hi\n")]);
    let out = ns
        .run(&["run", "--repo", path_str(repo.path()), "Do it"])
        .await;
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("config.toml") && text.contains("mcp.docs.timeout"),
        "{text}"
    );
    std::fs::write(
        &settings,
        "[mcp.docs]\ncommand = \"x\"\nexclude_tool = [\"delete\"]\n",
    )
    .unwrap();
    let out = ns
        .run(&["run", "--repo", path_str(repo.path()), "Do it"])
        .await;
    assert!(
        !out.status.success(),
        "a misspelt key must not drop a choice"
    );
    let text = stderr(&out);
    assert!(
        text.contains("config.toml:3") && text.contains("exclude_tool"),
        "{text}"
    );
    std::fs::remove_file(&settings).unwrap();

    // A good one is listed with what it runs and which tools it keeps.
    let repo = repo_with(&[(
        ".nightshift.toml",
        "[mcp.docs]\ncommand = \"python3\"\nargs = [\"srv.py\"]\nexclude_tools = [\"rm\"]\n",
    )]);
    let out = ns
        .run(&["env", "check", "--repo", path_str(repo.path())])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mcp.docs"), "{text}");
    assert!(text.contains("stdio, in the sandbox:"), "{text}");
    assert!(text.contains("srv.py") && text.contains("not"), "{text}");

    let repo = repo_with(&[(
        ".nightshift.toml",
        "[mcp.docs]\nurl = \"https://mcp.example.com/mcp\"\n",
    )]);
    let out = ns
        .run(&["env", "check", "--repo", path_str(repo.path())])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("remote, through the egress proxy: https://mcp.example.com/mcp"),
        "{text}"
    );
}
