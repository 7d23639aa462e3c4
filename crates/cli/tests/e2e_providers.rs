//! The same task against each provider protocol, through a 429 and a stream cut mid-answer,
//! with tokens and dollars checked against the script and the price table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn resilient_fixing_script() -> nightshift_scripted_model::Script {
    let mut steps = vec![
        json!({"error": {"status": 429, "body": "{\"error\":{\"message\":\"slow down\"}}", "headers": {"retry-after": "0"}}}),
        json!({"broken_stream": {"text": "Let me look at"}}),
    ];
    let fixing: Value = serde_json::to_value(fixing_script()).unwrap();
    steps.extend(fixing["steps"].as_array().unwrap().iter().cloned());
    script(Value::Array(steps))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_task_succeeds_with_every_protocol_and_costs_what_the_price_table_says() {
    // (spec, dollars per million: uncached input, cached input, output)
    let cases = [
        ("openai:gpt-4.1", 2.00, 0.50, 8.00),
        ("openai-responses:gpt-4.1", 2.00, 0.50, 8.00),
        ("anthropic:claude-sonnet-4-5", 3.00, 0.30, 15.00),
    ];
    for (spec, input, cached, output) in cases {
        let repo = buggy_repo();
        let (ns, server) = Nightshift::with_script(resilient_fixing_script()).await;
        let out = ns
            .run(&[
                "run",
                "--repo",
                path_str(repo.path()),
                "--model",
                spec,
                "--wait",
                "--json",
                "fix add",
            ])
            .await;
        assert!(
            out.status.success(),
            "{spec}: {}\n{}",
            stderr(&out),
            stdout(&out)
        );
        let task: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(task["state"], "succeeded", "{spec}: {task}");
        let branch = task["branch"].as_str().unwrap();
        assert!(git(repo.path(), &["show", &format!("{branch}:calc.sh")]).contains("$(($1 + $2))"));

        // 5 answers, plus the 429 and the cut stream that were asked again.
        assert_eq!(server.served(), 7, "{spec}");
        assert_eq!(
            task["usage"],
            json!({"input_tokens": 6000, "cached_input_tokens": 4200, "output_tokens": 120}),
            "{spec}"
        );
        let expected = (1800.0 * input + 4200.0 * cached + 120.0 * output) / 1_000_000.0;
        let shown = ns
            .json(&["show", task["id"].as_str().unwrap(), "--json"])
            .await;
        let cost = shown["cost"]["model_usd"].as_f64().unwrap();
        assert!(
            (cost - expected).abs() < 1e-9,
            "{spec}: {cost} != {expected}"
        );
        let text = stdout(&ns.run(&["show", task["short_id"].as_str().unwrap()]).await);
        assert!(
            text.contains(&format!("${expected:.4} model")),
            "{spec}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prices_from_config_toml_override_the_table() {
    let repo = buggy_repo();
    let (ns, _server) = Nightshift::with_script(fixing_script()).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        "[prices.\"openai:my-local-model\"]\ninput_per_mtok = 1.0\ncached_input_per_mtok = 0.0\noutput_per_mtok = 10.0\n",
    )
    .unwrap();
    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:my-local-model",
            "--wait",
            "--json",
            "fix add",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = (1800.0 * 1.0 + 120.0 * 10.0) / 1_000_000.0;
    let cost = task["cost"]["model_usd"].as_f64().unwrap();
    assert!((cost - expected).abs() < 1e-9, "{cost} != {expected}");

    std::fs::write(
        ns.home.path().join("config.toml"),
        "[prices.\"x\"]\ninput = 1\n",
    )
    .unwrap();
    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "fix add",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("config.toml is not valid"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_endpoints_can_come_from_config_toml() {
    let repo = buggy_repo();
    let (ns, server) = Nightshift::with_script(fixing_script()).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!(
            "[providers]\nopenai_base_url = \"{}\"\nopenai_api_key = \"from-config\"\n",
            server.base_url()
        ),
    )
    .unwrap();
    let mut command = ns.command(&[
        "run",
        "--repo",
        path_str(repo.path()),
        "--model",
        "openai:m",
        "--wait",
        "--json",
        "fix add",
    ]);
    command
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let headers = &server.recorded()[0].headers;
    assert_eq!(
        headers.get("authorization").map(String::as_str),
        Some("Bearer from-config")
    );
}
