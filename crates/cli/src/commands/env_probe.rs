//! `nightshift env check --probe`: starts the MCP servers a task would get in a sandbox over
//! the working tree, as a task's agent session would (its allowlist, the host's toolchains, the
//! cached setup layer when there is one), and lists the tools each offers.

use std::process::ExitCode;

use nightshift_agent::mcp::McpTools;
use nightshift_env::cache::{Lookup, SetupCache};
use nightshift_env::config::Loaded;
use nightshift_protocol::printable;
use nightshift_sandbox::{Sandbox, SessionSpec};
use tokio_util::sync::CancellationToken;

use crate::home::Home;
use crate::output::Failure;

pub(super) async fn probe(root: &std::path::Path, loaded: &Loaded) -> Result<ExitCode, Failure> {
    let home = Home::from_env()?;
    let installation = home.settings()?.mcp_specs();
    let (servers, mut notes) =
        nightshift_runner::mcp::task_servers(&installation, &loaded.config.mcp);
    println!();
    if servers.is_empty() {
        println!("MCP servers: none to probe");
        return Ok(ExitCode::SUCCESS);
    }
    let environment = &loaded.config.environment;
    if environment.image.is_some() || environment.build.is_some() {
        return Err(Failure::usage(
            "--probe starts servers over the host's system, and this repository's tasks run on \
             an image: their servers are listed in each task's log (`mcp_server_ready`)",
        ));
    }
    let toolchains = home.host_toolchains()?;
    let sandbox = home.namespaced(&toolchains)?;
    let mut layers = Vec::new();
    if environment.setup.is_some() {
        let key = super::env::host_key(root, loaded, sandbox.backend(), &toolchains)
            .for_repository(&root.display().to_string());
        let cache = SetupCache::new(home.root().join("layers"), u64::MAX);
        match cache.lookup(&root.display().to_string(), &key) {
            Lookup::Hit { layer } => layers.push(layer),
            Lookup::Miss { .. } => notes.push(
                "setup has not run for this configuration yet (`nightshift env explain` says \
                 why): a server that setup installs is missing until a task has run"
                    .into(),
            ),
        }
    }
    notes.push(
        "probed without secrets: a remote server that needs a `proxy` secret may refuse".into(),
    );
    let spec = SessionSpec {
        env: environment
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        network: loaded.config.network.agent.clone(),
        layers,
        ..SessionSpec::new(root)
    };
    let session = sandbox.start(spec).await.map_err(|err| {
        Failure::error(format!("cannot start the sandbox: {err}"))
            .with_hint(Some("run `nightshift doctor`".into()))
    })?;
    let tools = McpTools::start(
        &servers,
        session.as_ref(),
        &CancellationToken::new(),
        &str::to_string,
    )
    .await;
    tools.stop().await;
    let _ = session.close().await;

    println!("MCP servers (probed in a sandbox over the working tree):");
    let mut failed = false;
    for report in tools.reports() {
        if report.tools.is_empty() && !report.warnings.is_empty() {
            failed = true;
            println!("  {}: did not start", report.name);
        } else {
            println!(
                "  {}: {} tool(s): {}",
                report.name,
                report.tools.len(),
                report.tools.join(", ")
            );
        }
        for warning in &report.warnings {
            // A server's own words (its errors, its standard error) reach the terminal here.
            println!("    warning: {}", printable(warning));
        }
    }
    for note in notes {
        println!("  note: {note}");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
