//! The web UI over HTTP, without a browser: sessions, CSRF, scopes, escaping, the security
//! headers and paging (the browser test is crates/cli/tests/e2e_web.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nightshift_protocol::{Event, TaskState, ToolCallRecord, Usage};
use serde_json::json;

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The session cookie (`name=value`) for `token`.
async fn sign_in(h: &Harness, token: &str) -> String {
    let response = browser()
        .post(h.url("/signin"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    cookie.split(';').next().unwrap().to_string()
}

async fn page(h: &Harness, cookie: &str, path: &str) -> (u16, String) {
    let response = browser()
        .get(h.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..at + 64].to_string()
}

#[tokio::test]
async fn signed_out_every_page_goes_to_sign_in() {
    let h = Harness::start().await;
    let task = h.queued_task("p").await;
    for path in [
        "/".to_string(),
        "/tasks/new".into(),
        format!("/tasks/{}", task.id),
        format!("/tasks/{}/diff", task.id),
        format!("/tasks/{}/patch", task.id),
        format!("/tasks/{}/live", task.id),
        format!("/tasks/{}/artifacts/check-test.log", task.id),
    ] {
        let response = browser().get(h.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 303, "{path}");
        assert_eq!(response.headers()["location"], "/signin", "{path}");
    }
    let response = browser()
        .post(h.url("/tasks/new"))
        .form(&[("prompt", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["location"], "/signin");
    // A cookie that names no session is signed out too.
    let (status, _) = page(&h, &format!("nightshift_session={}", "0".repeat(64)), "/").await;
    assert_eq!(status, 303);
    let signin = browser().get(h.url("/signin")).send().await.unwrap();
    assert_eq!(signin.status(), 200);
    let csp = signin.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = signin.text().await.unwrap();
    let css = browser()
        .get(h.url("/static/app.css"))
        .send()
        .await
        .unwrap();
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert!(
        css.text()
            .await
            .unwrap()
            .contains("@media (prefers-color-scheme: dark)")
    );
    assert!(!html.contains("<script>"), "no inline script: {html}");
    assert!(!html.contains("style="), "no inline style: {html}");
    h.stop().await;
}

#[tokio::test]
async fn a_bad_token_is_refused_and_sign_out_ends_the_session() {
    let h = Harness::start().await;
    for bad in ["nope", "ns_0000"] {
        let response = browser()
            .post(h.url("/signin"))
            .form(&[("token", bad)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        assert!(response.headers().get("set-cookie").is_none());
    }
    // A sign-in posted from another site is refused: it would sign the browser in as someone
    // else. The same site's own form (same Origin) works.
    let host = h.base.trim_start_matches("http://").to_string();
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let forged = browser()
            .post(h.url("/signin"))
            .header(name, value)
            .form(&[("token", h.read.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403, "{name}");
        assert!(forged.headers().get("set-cookie").is_none());
    }
    let same = browser()
        .post(h.url("/signin"))
        .header("origin", format!("http://{host}"))
        .header("sec-fetch-site", "same-origin")
        .form(&[("token", h.read.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 303);
    // Behind a TLS-terminating proxy that says so, the cookie is Secure.
    let tls = browser()
        .post(h.url("/signin"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", h.read.as_str())])
        .send()
        .await
        .unwrap();
    assert!(
        tls.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    let cookie = sign_in(&h, &h.submit).await;
    assert!(!cookie.contains("Secure"));
    let (status, html) = page(&h, &cookie, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("submitter (submit)"), "{html}");
    let csrf = csrf_of(&html);
    // Sign-out needs the CSRF token too.
    let forged = browser()
        .post(h.url("/signout"))
        .header("cookie", &cookie)
        .form(&[("csrf", "0".repeat(64))])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(page(&h, &cookie, "/").await.0, 200);
    let out = browser()
        .post(h.url("/signout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(page(&h, &cookie, "/").await.0, 303);
    h.stop().await;
}

#[tokio::test]
async fn forms_need_the_session_csrf_token_and_a_submit_scope() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = h.serve_repo(git_repo(dir.path())).await;
    let repo = repo.to_str().unwrap();

    let submitter = sign_in(&h, &h.submit).await;
    let (_, html) = page(&h, &submitter, "/tasks/new").await;
    let csrf = csrf_of(&html);
    let post = |cookie: &str, csrf: &str, prompt: &str| {
        browser()
            .post(h.url("/tasks/new"))
            .header("cookie", cookie)
            .form(&[
                ("csrf", csrf),
                ("repo", repo),
                ("prompt", prompt),
                ("each_line", "on"),
            ])
            .send()
    };
    let forged = post(&submitter, &"f".repeat(64), "forged").await.unwrap();
    assert_eq!(forged.status(), 403);
    let none = h.store.list_tasks(&Default::default()).await.unwrap();
    assert!(none.is_empty(), "{none:?}");

    let one = post(&submitter, &csrf, "Fix the bug").await.unwrap();
    assert_eq!(one.status(), 303);
    let location = one.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/tasks/"), "{location}");
    let (status, html) = page(&h, &submitter, &location).await;
    assert_eq!(status, 200);
    assert!(html.contains("Fix the bug"));

    // One prompt per line: separate tasks.
    let many = post(&submitter, &csrf, "first\n\nsecond\nthird\n")
        .await
        .unwrap();
    assert_eq!(many.status(), 303);
    assert_eq!(many.headers()["location"], "/");
    assert_eq!(
        h.store.list_tasks(&Default::default()).await.unwrap().len(),
        4
    );

    // A repository the server does not serve: the form comes back with the reason, nothing
    // queued.
    let bad = browser()
        .post(h.url("/tasks/new"))
        .header("cookie", &submitter)
        .form(&[
            ("csrf", csrf.as_str()),
            ("repo", "relative/path"),
            ("prompt", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 403);
    let bad = bad.text().await.unwrap();
    assert!(bad.contains("does not serve"), "{bad}");
    assert!(
        bad.contains("value=\"relative/path\""),
        "the values are kept: {bad}"
    );

    // A read token sees the controls off, with the reason, and its POSTs are refused.
    let reader = sign_in(&h, &h.read).await;
    let (_, html) = page(&h, &reader, "/tasks/new").await;
    assert!(html.contains("You cannot submit tasks"), "{html}");
    assert!(html.contains("this needs submit"), "{html}");
    let read_csrf = csrf_of(&html);
    let refused = post(&reader, &read_csrf, "sneaky").await.unwrap();
    assert_eq!(refused.status(), 403);
    let (_, task_page) = page(&h, &reader, &location).await;
    assert!(task_page.contains("Read only"), "{task_page}");
    assert!(task_page.contains("disabled"), "{task_page}");
    let id = location.trim_start_matches("/tasks/");
    for action in ["cancel", "message"] {
        let response = browser()
            .post(h.url(&format!("/tasks/{id}/{action}")))
            .header("cookie", &reader)
            .form(&[("csrf", read_csrf.as_str()), ("text", "hi")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{action}");
    }
    assert_eq!(
        h.store.list_tasks(&Default::default()).await.unwrap().len(),
        4
    );

    // The submitter cancels through the same path as the API.
    let cancel = browser()
        .post(h.url(&format!("/tasks/{id}/cancel")))
        .header("cookie", &submitter)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 303);
    let task = h.store.find_task(id).await.unwrap();
    assert_eq!(task.state, TaskState::Cancelled);
    h.stop().await;
}

#[tokio::test]
async fn hostile_content_is_escaped() {
    let h = Harness::start().await;
    let task = h.queued_task("<script>alert('prompt')</script>").await;
    h.append(
        task.id,
        Event::ModelResponse {
            turn: 1,
            text: Some(
                "<script>alert('model')</script> [click](javascript:alert(1)) <img src=x onerror=alert(2)>"
                    .into(),
            ),
            tool_calls: vec![ToolCallRecord {
                id: "c1".into(),
                name: "<b>shell</b>".into(),
                arguments: json!({"command": "</pre><script>alert(3)</script>"}),
            }],
            usage: Usage::default(),
            cost_usd: None,
            stop_reason: "tool_calls".into(),
            duration_ms: 1,
        },
    )
    .await;
    h.append(
        task.id,
        Event::ToolFinished {
            call_id: "c1".into(),
            tool: "shell".into(),
            ok: true,
            output: "<iframe src=\"javascript:alert(4)\"></iframe>\r\n<a href=\"javascript:alert(5)\">x</a>".into(),
            exit_code: Some(0),
            duration_ms: 1,
        },
    )
    .await;
    h.finish(task.id, TaskState::Failed).await;
    let cookie = sign_in(&h, &h.read).await;
    let (status, html) = page(&h, &cookie, &format!("/tasks/{}", task.id)).await;
    assert_eq!(status, 200);
    for hostile in [
        "<script>alert",
        "<img",
        "<iframe",
        "href=\"javascript:",
        "<b>shell",
    ] {
        assert!(!html.contains(hostile), "{hostile} in {html}");
    }
    assert!(html.contains("&lt;script&gt;alert"));
    assert!(html.contains("&lt;iframe"));
    // The live stream sends the same rendering.
    let live = browser()
        .get(h.url(&format!("/tasks/{}/live", task.id)))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(
        live.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = live.text().await.unwrap();
    assert!(text.contains("&lt;iframe"), "{text}");
    assert!(
        !text.contains("<script>alert") && !text.contains("<iframe"),
        "{text}"
    );
    // The task list too.
    let (_, list) = page(&h, &cookie, "/").await;
    assert!(!list.contains("<script>alert"), "{list}");
    h.stop().await;
}

#[tokio::test]
async fn the_list_pages_through_the_store() {
    let h = Harness::start().await;
    for n in 0..60 {
        h.queued_task(&format!("task number {n}")).await;
    }
    let cookie = sign_in(&h, &h.read).await;
    let (_, first) = page(&h, &cookie, "/").await;
    assert_eq!(first.matches("<tr data-id=").count(), 50);
    assert!(first.contains("task number 59"));
    let at = first.find("&amp;before=").expect("an older page") + "&amp;before=".len();
    let next = &first[at..at + 26];
    let (_, second) = page(&h, &cookie, &format!("/?state=&before={next}")).await;
    assert_eq!(second.matches("<tr data-id=").count(), 10);
    assert!(second.contains("task number 0"));
    let (_, rows) = page(&h, &cookie, "/?partial=rows&state=queued").await;
    assert_eq!(rows.matches("<tr data-id=").count(), 50);
    let (_, none) = page(&h, &cookie, "/?state=running").await;
    assert!(none.contains("No tasks."));
    // Search and repository filters go to the store, and the pages keep them.
    let (_, found) = page(&h, &cookie, "/?q=NUMBER+5").await;
    assert_eq!(found.matches("<tr data-id=").count(), 11, "5 and 50 to 59");
    let (_, found) = page(&h, &cookie, "/?repo=%2Fnonexistent%2Frepo&q=number%2042").await;
    assert_eq!(found.matches("<tr data-id=").count(), 1);
    assert!(found.contains("data-refresh=\"/?partial=rows&amp;state=&amp;repo=/nonexistent/repo&amp;q=number%2042\""), "{found}");
    let (_, elsewhere) = page(&h, &cookie, "/?repo=%2Felsewhere").await;
    assert!(elsewhere.contains("No tasks."));
    h.stop().await;
}

#[tokio::test]
async fn revoking_the_token_ends_its_sessions() {
    let h = Harness::start().await;
    let cookie = sign_in(&h, &h.read).await;
    assert_eq!(page(&h, &cookie, "/").await.0, 200);
    let tokens: serde_json::Value = h
        .get("/api/tokens", &h.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "reader")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let revoked = h
        .client
        .delete(h.url(&format!("/api/tokens/{id}")))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let (status, _) = page(&h, &cookie, "/").await;
    assert_eq!(status, 303);
    h.stop().await;
}

#[tokio::test]
async fn messages_reach_the_log_and_the_live_view_resumes_after_last_event_id() {
    let h = Harness::start().await;
    let task = h.queued_task("p").await;
    let cookie = sign_in(&h, &h.submit).await;
    let (_, html) = page(&h, &cookie, &format!("/tasks/{}", task.id)).await;
    assert!(html.contains("Message the running task"), "{html}");
    let sent = browser()
        .post(h.url(&format!("/tasks/{}/message", task.id)))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf_of(&html).as_str()),
            ("text", "Use <b>tabs</b>"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 303);
    assert_eq!(
        sent.headers()["location"],
        format!("/tasks/{}", task.id).as_str()
    );
    let events = h.store.events(task.id, 0, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|r| matches!(&r.event, Event::MessageReceived { text, from }
            if text == "Use <b>tabs</b>" && from.as_deref() == Some("submitter"))),
        "{events:?}"
    );
    for n in 0..3 {
        h.append(task.id, warning(n)).await;
    }
    h.finish(task.id, TaskState::Failed).await;
    // The browser's reconnect sends the last seq it has; only later events come back.
    let live = browser()
        .get(h.url(&format!("/tasks/{}/live", task.id)))
        .header("cookie", &cookie)
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ids: Vec<&str> = live
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(str::trim)
        .collect();
    assert_eq!(ids, ["4", "5", "6"], "{live}");
    assert!(
        live.contains("Use &lt;b&gt;tabs&lt;/b&gt;") || live.contains("w1"),
        "{live}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_waiting_planner_shows_its_question_and_the_message_box_answers_it() {
    let h = Harness::start().await;
    let mut task = h.queued_task("plan it").await;
    task.spec.plan = true;
    task.state = TaskState::Waiting;
    h.store.update_task(&task).await.unwrap();
    h.append(
        task.id,
        Event::QuestionAsked {
            question: "Keep the <old> API?".into(),
        },
    )
    .await;
    let cookie = sign_in(&h, &h.submit).await;
    let (status, html) = page(&h, &cookie, &format!("/tasks/{}", task.id)).await;
    assert_eq!(status, 200);
    assert!(html.contains("Question for you"), "{html}");
    assert!(html.contains("Keep the &lt;old&gt; API?"), "{html}");
    assert!(
        html.contains("Answer the agent&#39;s question")
            || html.contains("Answer the agent's question"),
        "{html}"
    );
    h.stop().await;
}
