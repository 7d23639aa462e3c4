//! The web UI in a real headless Chromium, driven over WebDriver (chromedriver): sign in,
//! submit a task against the scripted model, watch its transcript stream to the end without a
//! reload, read the diff both ways and the evidence, send a follow-up and land on the linked
//! second task, check that a hostile transcript stays inert, that a read token cannot submit,
//! and that signed out every page goes to sign-in. It writes a screenshot of each page to the
//! directory it prints. Skipped (with a message) where chromium or chromedriver is missing;
//! `.ci/run` installs both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use browser::*;
use common::*;
use fantoccini::Locator;
use serde_json::{Value, json};

/// The task a repository fixes, with a hostile transcript on the way and a follow-up after it.
fn hostile_fixing_script() -> Value {
    json!([
        {"reply": {"delay_ms": 4000,
                   "text": "Reading. <script>window.__pwned = 1</script> [click me](javascript:window.__pwned=2) <img src=x onerror=\"window.__pwned=3\">",
                   "tool_calls": [{"name": "read_file", "arguments": {"path": "calc.sh"}}]}},
        {"reply": {"delay_ms": 1500,
                   "tool_calls": [{"name": "shell", "arguments": {"command": "printf '<img src=x onerror=\"window.__pwned=4\"><script>window.__pwned=5</script>\\n'; sh test.sh"}}]}},
        {"reply": {"tool_calls": [{"name": "edit_file", "arguments": {"path": "calc.sh", "old_string": "$(($1 - $2))", "new_string": "$(($1 + $2))"}}]}},
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sh test.sh"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "Fixed **add**. [details](javascript:window.__pwned=6)"}}]}},
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "NOTES.md", "content": "add() adds.\n"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "Documented add"}}]}}
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reviewer_goes_from_new_task_to_transcript_diff_and_follow_up_in_the_browser() {
    let (Some(chromium), Some(chromedriver)) = (installed("chromium"), installed("chromedriver"))
    else {
        eprintln!(
            "skipped: chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    eprintln!("screenshots in {}", shots.display());

    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let (ns, _model) = Nightshift::with_script(script(hostile_fixing_script())).await;
    ns.serve_repo(repo.path()).await;
    let submit = stdout(
        &ns.run(&["token", "create", "--scope", "submit", "--name", "reviewer"])
            .await,
    )
    .trim()
    .to_string();
    let read = stdout(
        &ns.run(&["token", "create", "--scope", "read", "--name", "watcher"])
            .await,
    )
    .trim()
    .to_string();
    assert!(submit.starts_with("ns_") && read.starts_with("ns_"));
    let server = Server::start(&ns);
    let base = server.url.clone();
    let driver = start_driver(&chromedriver).await;
    let profile = tempfile::tempdir().unwrap();
    let client = browser(&driver, &chromium, profile.path()).await;

    // Signed out, the UI is the sign-in page.
    client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(path_of(&client).await, "/signin");
    shot(&client, &shots, "01-signin").await;
    sign_in(&client, &base, &submit).await;
    shot(&client, &shots, "02-tasks-empty").await;

    // A new task from the form.
    client.goto(&format!("{base}/tasks/new")).await.unwrap();
    let form = client
        .form(Locator::Css("form[action='/tasks/new']"))
        .await
        .unwrap();
    // Every control of the form has a label.
    let unlabelled = eval(&client, "return [...document.querySelectorAll('main input:not([type=hidden]), main textarea, main select')].filter(e => e.labels.length === 0).map(e => e.name);").await;
    assert_eq!(unlabelled, json!([]));
    form.set_by_name("repo", path_str(repo.path()))
        .await
        .unwrap();
    form.set_by_name("prompt", "Fix the add function")
        .await
        .unwrap();
    shot(&client, &shots, "03-new-task").await;
    form.submit().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path_of(&client).await.starts_with("/tasks/0")
        && !path_of(&client).await.starts_with("/tasks/1")
    {
        assert!(
            Instant::now() < deadline,
            "no task page: {}",
            path_of(&client).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let task_path = path_of(&client).await;
    let task_id = task_path.trim_start_matches("/tasks/").to_string();

    // The transcript streams to the end without a reload.
    eval(&client, "window.__same_page = 42; return null;").await;
    let before = client
        .find_all(Locator::Css("#events > li"))
        .await
        .unwrap()
        .len();
    let ended_before = client
        .find_all(Locator::Css("#events > li.ev-ended"))
        .await
        .unwrap()
        .len();
    assert_eq!(
        ended_before, 0,
        "the task ended before the page loaded; the test needs a slower script"
    );
    wait_for(&client, "#events > li.ev-tool_finished", 60).await;
    shot(&client, &shots, "04-task-running").await;
    wait_for(&client, "#events > li.ev-ended", 90).await;
    assert_eq!(
        eval(&client, "return window.__same_page;").await,
        json!(42),
        "the page reloaded"
    );
    let after = client
        .find_all(Locator::Css("#events > li"))
        .await
        .unwrap()
        .len();
    assert!(
        after > before + 3,
        "events arrived live: {before} then {after}"
    );
    let state = client
        .find(Locator::Css("#state"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(state, "succeeded");

    // The hostile transcript stayed inert: no script ran, no javascript: link, no injected img.
    assert_eq!(
        eval(&client, "return window.__pwned === undefined;").await,
        json!(true)
    );
    assert_eq!(eval(&client, "return document.querySelectorAll('#events script, #events img, #events iframe, a[href^=\"javascript\"]').length;").await, json!(0));
    let transcript = client
        .find(Locator::Css("#events"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        transcript.contains("<script>window.__pwned = 1</script>"),
        "{transcript}"
    );
    assert!(
        transcript.contains("<img src=x onerror=\"window.__pwned=4\">"),
        "{transcript}"
    );
    shot(&client, &shots, "05-task-ended").await;

    // The evidence appears once the task ends, still without a reload.
    wait_for(&client, "section.evidence ul.checks li .pass", 20).await;
    assert_eq!(
        eval(&client, "return window.__same_page;").await,
        json!(42),
        "the page reloaded"
    );
    // The same page loaded afresh (server-rendered) is just as inert.
    client.refresh().await.unwrap();
    assert_eq!(
        eval(&client, "return window.__pwned === undefined;").await,
        json!(true)
    );
    assert_eq!(eval(&client, "return document.querySelectorAll('#events script, #events img, a[href^=\"javascript\"]').length;").await, json!(0));
    let evidence = client
        .find(Locator::Css("section.evidence"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        evidence.contains("passed") && evidence.contains("test"),
        "{evidence}"
    );
    assert!(evidence.contains("nightshift/"), "the branch: {evidence}");
    assert!(evidence.contains("git checkout"), "{evidence}");
    // The check's whole log, as plain text.
    let log = client
        .find(Locator::LinkText("Whole log"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    client.goto(&format!("{base}{log}")).await.unwrap();
    let text = client
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("PASS"), "{text}");
    client.back().await.unwrap();

    // The diff, unified then side by side.
    client
        .find(Locator::LinkText("View the diff"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&client, &format!("/tasks/{task_id}/diff")).await;
    let added = client
        .find(Locator::Css("table.diff tr.add"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(added.contains("$(($1 + $2))"), "{added}");
    assert!(
        client
            .find(Locator::Css(".filetree"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("calc.sh")
    );
    // calc.sh is highlighted as shell script.
    let highlighted = eval(
        &client,
        "return document.querySelectorAll('table.diff span.hl-source').length;",
    )
    .await;
    assert!(highlighted.as_u64().unwrap_or(0) > 0, "no highlighting");
    shot(&client, &shots, "06-diff-unified").await;
    client
        .find(Locator::LinkText("Side by side"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let left = wait_for(&client, "table.diff.split td.del", 10)
        .await
        .text()
        .await
        .unwrap();
    let right = client
        .find(Locator::Css("table.diff.split td.add"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        left.contains("$(($1 - $2))") && right.contains("$(($1 + $2))"),
        "{left} | {right}"
    );
    shot(&client, &shots, "07-diff-split").await;
    let patch = client
        .find(Locator::LinkText("Download the patch"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap();
    assert_eq!(
        patch.as_deref(),
        Some(format!("/tasks/{task_id}/patch").as_str())
    );

    // A follow-up from the ended task's message box lands on the linked second task.
    client.goto(&format!("{base}{task_path}")).await.unwrap();
    let form = client
        .form(Locator::Css("form[action$='/message']"))
        .await
        .unwrap();
    form.set_by_name("text", "Also document add").await.unwrap();
    form.submit().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while path_of(&client).await == task_path {
        assert!(Instant::now() < deadline, "no follow-up page");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let follows = client
        .find(Locator::Css("dl.facts a[href^='/tasks/']"))
        .await
        .unwrap();
    assert_eq!(follows.attr("href").await.unwrap(), Some(task_path.clone()));
    wait_for(&client, "#events > li.ev-ended", 90).await;
    shot(&client, &shots, "08-follow-up").await;
    // The first task's transcript links to it.
    client.goto(&format!("{base}{task_path}")).await.unwrap();
    wait_for(&client, "#events > li.ev-follow_up_started a", 10).await;

    // The list shows both.
    client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(
        client
            .find_all(Locator::Css("#task-rows tr[data-id]"))
            .await
            .unwrap()
            .len(),
        2
    );
    let first_row = client
        .find(Locator::Css(&format!("#task-rows tr[data-id='{task_id}']")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(first_row.contains("✓ 1 passed"), "{first_row}");
    // A task submitted elsewhere (here over the API) appears without a reload.
    eval(&client, "window.__same_page = 43; return null;").await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let created = reqwest::Client::new()
        .post(format!("{base}/api/tasks"))
        .bearer_auth(&submit)
        .json(&json!({"repo": path_str(repo.path()), "prompt": "Submitted over the API"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .find_all(Locator::Css("#task-rows tr[data-id]"))
        .await
        .unwrap()
        .len()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "the new task never appeared in the list"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        eval(&client, "return window.__same_page;").await,
        json!(43),
        "the page reloaded"
    );
    assert!(
        client
            .find(Locator::Css("#task-rows"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("Submitted over the API")
    );
    shot(&client, &shots, "09-tasks").await;

    // Narrow screens: nothing overflows sideways at 360 px.
    client.set_window_size(360, 800).await.unwrap();
    for (name, path) in [
        ("10-360px-tasks", "/".to_string()),
        ("11-360px-task", task_path.clone()),
        ("12-360px-diff", format!("/tasks/{task_id}/diff")),
    ] {
        client.goto(&format!("{base}{path}")).await.unwrap();
        let fits = eval(
            &client,
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
        )
        .await;
        assert_eq!(fits, json!(true), "{path} overflows at 360 px");
        shot(&client, &shots, name).await;
    }
    client.set_window_size(1280, 900).await.unwrap();

    // Sign out: every page goes to sign-in.
    client.goto(&format!("{base}/")).await.unwrap();
    client
        .find(Locator::Css("form[action='/signout'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&client, "/signin").await;
    for path in [
        "/".to_string(),
        "/tasks/new".into(),
        task_path.clone(),
        format!("/tasks/{task_id}/diff"),
    ] {
        client.goto(&format!("{base}{path}")).await.unwrap();
        assert_eq!(path_of(&client).await, "/signin", "{path}");
    }

    // A read token sees, but cannot submit, cancel or message, and is told why. This sign-in
    // is by keyboard alone: type the token, press Enter.
    client.goto(&format!("{base}/signin")).await.unwrap();
    let field = client.find(Locator::Css("#token")).await.unwrap();
    field.send_keys(&read).await.unwrap();
    field
        .send_keys(&String::from(char::from(fantoccini::key::Key::Enter)))
        .await
        .unwrap();
    wait_path(&client, "/").await;
    client.goto(&format!("{base}/tasks/new")).await.unwrap();
    let submit_button = client
        .find(Locator::Css(
            "form[action='/tasks/new'] button[type=submit]",
        ))
        .await
        .unwrap();
    assert!(!submit_button.is_enabled().await.unwrap());
    let why = client
        .find(Locator::Css("main .error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(why.contains("this needs submit"), "{why}");
    shot(&client, &shots, "13-read-token-new-task").await;
    client.goto(&format!("{base}{task_path}")).await.unwrap();
    let send = client
        .find(Locator::Css("form[action$='/message'] button"))
        .await
        .unwrap();
    assert!(!send.is_enabled().await.unwrap());
    // Even a hand-made POST (the form re-enabled in the page) is refused.
    eval(
        &client,
        "document.querySelectorAll('[disabled]').forEach(e => e.disabled = false); return null;",
    )
    .await;
    let form = client
        .form(Locator::Css("form[action$='/message']"))
        .await
        .unwrap();
    form.set_by_name("text", "sneaky").await.unwrap();
    form.submit().await.unwrap();
    // The refusal page replaces the task page; read it once the navigation has settled.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = match client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if path_of(&client).await.ends_with("/message") && body.contains("this needs submit") {
            break;
        }
        assert!(Instant::now() < deadline, "no refusal: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = ns.events(&task_id).await;
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "message_received" && e["text"] == "sneaky"),
        "{events:?}"
    );
    let tasks = ns.json(&["ls", "--json"]).await;
    assert_eq!(tasks.as_array().map_or(0, Vec::len), 3, "{tasks}");

    client.close().await.unwrap();
    drop(driver);
    drop(server);
}
