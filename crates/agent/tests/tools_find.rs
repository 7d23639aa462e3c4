//! The agent's finding and bookkeeping tools: search, list_files, update_plan and finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

use nightshift_agent::tools::{Control, ToolLimits};
use nightshift_protocol::{PlanStep, PlanStepStatus};
use serde_json::json;

// ---- search ----

fn seed_tree(fx: &Fixture) {
    fx.write(".gitignore", "target/\n*.log\n");
    fx.write("src/main.rs", "fn main() {\n    println!(\"needle\");\n}\n");
    fx.write("src/lib.rs", "// needle in lib\npub fn f() {}\n");
    fx.write("README.md", "a needle in the readme\n");
    fx.write(".github/workflows/ci.yml", "run: needle\n");
    fx.write("target/debug/out.rs", "needle in build output\n");
    fx.write("debug.log", "needle in a log\n");
    fx.write(".git/config", "needle in git\n");
}

#[tokio::test]
async fn search_respects_gitignore_and_glob_and_reads_hidden_files() {
    let fx = Fixture::new().await;
    seed_tree(&fx);
    let out = fx.call("search", json!({"pattern": "needle"})).await;
    assert_ok(&out);
    assert_eq!(
        out.text,
        ".github/workflows/ci.yml:1:run: needle\nREADME.md:1:a needle in the readme\n\
         src/lib.rs:1:// needle in lib\nsrc/main.rs:2:    println!(\"needle\");"
    );

    let out = fx
        .call("search", json!({"pattern": "needle", "glob": "*.rs"}))
        .await;
    assert_eq!(
        out.text,
        "src/lib.rs:1:// needle in lib\nsrc/main.rs:2:    println!(\"needle\");"
    );

    let out = fx
        .call(
            "search",
            json!({"pattern": "fn \\w+\\(", "path": "src/lib.rs"}),
        )
        .await;
    assert_eq!(out.text, "src/lib.rs:2:pub fn f() {}");

    let out = fx
        .call("search", json!({"pattern": "needle", "path": "target"}))
        .await;
    assert_ok(&out);
    assert!(
        out.text.starts_with("target/debug/out.rs:1:"),
        "{}",
        out.text
    );
    assert!(out.text.contains("ignored by .gitignore"));
}

#[tokio::test]
async fn search_reports_bad_patterns_no_matches_and_caps() {
    let limits = ToolLimits {
        max_entries: 3,
        ..ToolLimits::default()
    };
    let fx = Fixture::with_limits(limits).await;
    seed_tree(&fx);
    let out = fx.call("search", json!({"pattern": "fn main("})).await;
    assert_failed(
        &out,
        &["invalid regular expression `fn main(`", "unclosed group"],
    );

    let out = fx.call("search", json!({"pattern": "haystack"})).await;
    assert_ok(&out);
    assert!(
        out.text.starts_with("no matches for `haystack`"),
        "{}",
        out.text
    );

    let out = fx.call("search", json!({"pattern": "needle"})).await;
    assert_ok(&out);
    assert_eq!(
        out.text
            .lines()
            .filter(|l| l.contains(":1:") || l.contains(":2:"))
            .count(),
        3
    );
    assert!(
        out.text
            .contains("[showing the first 3 matches; there are more"),
        "{}",
        out.text
    );
}

#[tokio::test]
async fn long_output_is_cut_with_a_marker() {
    let limits = ToolLimits {
        output_bytes: 600,
        ..ToolLimits::default()
    };
    let fx = Fixture::with_limits(limits).await;
    let content: String = (0..200).map(|i| format!("match number {i}\n")).collect();
    fx.write("many.txt", &content);
    let out = fx.call("search", json!({"pattern": "match"})).await;
    assert_ok(&out);
    assert!(out.text.len() <= 700, "{} bytes", out.text.len());
    assert!(out.text.starts_with("many.txt:1:match number 0\n"));
    assert!(out.text.contains("bytes ("), "{}", out.text);
    assert!(out.text.contains("omitted ...]"), "{}", out.text);
}

// ---- list_files ----

#[tokio::test]
async fn list_files_lists_sorted_files_respecting_gitignore() {
    let fx = Fixture::new().await;
    seed_tree(&fx);
    let out = fx.call("list_files", json!({})).await;
    assert_ok(&out);
    assert_eq!(
        out.text,
        ".github/workflows/ci.yml\n.gitignore\nREADME.md\nsrc/lib.rs\nsrc/main.rs"
    );
    let out = fx
        .call("list_files", json!({"path": "src", "glob": "m*.rs"}))
        .await;
    assert_eq!(out.text, "src/main.rs");
    let out = fx.call("list_files", json!({"glob": "src/*.rs"})).await;
    assert_eq!(out.text, "src/lib.rs\nsrc/main.rs");
    let out = fx.call("list_files", json!({"glob": "!*.rs"})).await;
    assert_eq!(out.text, ".github/workflows/ci.yml\n.gitignore\nREADME.md");
    let out = fx.call("list_files", json!({"path": "nowhere"})).await;
    assert_failed(&out, &["does not exist"]);
}

#[tokio::test]
async fn list_files_caps_the_listing_and_counts_the_rest() {
    let limits = ToolLimits {
        max_entries: 2,
        ..ToolLimits::default()
    };
    let fx = Fixture::with_limits(limits).await;
    for name in ["c", "a", "e", "b", "d"] {
        fx.write(&format!("{name}.txt"), "x\n");
    }
    let out = fx.call("list_files", json!({"path": "."})).await;
    assert_ok(&out);
    assert_eq!(
        out.text,
        "a.txt\nb.txt\n[... and 3 more files (5 in total); narrow the listing with path or glob]"
    );
}

// ---- update_plan and finish ----

#[tokio::test]
async fn update_plan_returns_the_plan_and_allows_one_step_in_progress() {
    let fx = Fixture::new().await;
    let out = fx
        .call(
            "update_plan",
            json!({"steps": [
                {"step": "Read the code", "status": "completed"},
                {"step": "Fix the bug", "status": "in_progress"},
                {"step": "Run the tests", "status": "pending"}
            ]}),
        )
        .await;
    assert_ok(&out);
    assert_eq!(
        out.text,
        "Plan updated:\n[x] Read the code\n[>] Fix the bug\n[ ] Run the tests\n"
    );
    let Some(Control::Plan { steps }) = out.control else {
        panic!("no plan: {out:?}")
    };
    assert_eq!(
        steps[1],
        PlanStep {
            step: "Fix the bug".into(),
            status: PlanStepStatus::InProgress
        }
    );

    let out = fx
        .call(
            "update_plan",
            json!({"steps": [
                {"step": "a", "status": "in_progress"},
                {"step": "b", "status": "in_progress"}
            ]}),
        )
        .await;
    assert_failed(&out, &["2 steps are in_progress", "steps 1, 2"]);
    assert!(out.control.is_none());

    let out = fx
        .call(
            "update_plan",
            json!({"steps": [{"step": "a", "status": "done"}]}),
        )
        .await;
    assert_failed(&out, &["unknown variant `done`", "in_progress"]);
}

#[tokio::test]
async fn finish_needs_a_summary() {
    let fx = Fixture::new().await;
    let out = fx
        .call(
            "finish",
            json!({"summary": "  Fixed the bug; tests pass.\n"}),
        )
        .await;
    assert_ok(&out);
    assert_eq!(
        out.control,
        Some(Control::Finish {
            summary: "Fixed the bug; tests pass.".into()
        })
    );
    let out = fx.call("finish", json!({"summary": " "})).await;
    assert_failed(&out, &["`summary` is empty"]);
    assert!(out.control.is_none());
}
