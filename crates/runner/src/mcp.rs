//! A task's MCP servers: the installation's (`config.toml`) and then the repository's
//! (`.nightshift.toml`), started in the agent's own sandbox session, so that a repository's
//! server is repository code with no more than the agent has.

use std::time::Duration;

use nightshift_agent::SinkError;
use nightshift_agent::mcp::{McpServerSpec, McpTools, RemoteTransport};
use nightshift_env::config::McpServer;
use nightshift_protocol::Event;
use nightshift_sandbox::SandboxSession;
use tokio_util::sync::CancellationToken;

use crate::sink::TaskLog;

/// The most MCP servers one task starts (they start at once, each with its tool list in
/// memory).
pub const MAX_SERVERS: usize = 16;

/// Every server of a task, the installation's first; a repository server named like one of the
/// installation's is left out, with a warning.
pub fn task_servers(
    host: &[McpServerSpec],
    repository: &[McpServer],
) -> (Vec<McpServerSpec>, Vec<String>) {
    let mut servers = host.to_vec();
    let mut warnings = Vec::new();
    for server in repository {
        if host.iter().any(|h| h.name == server.name) {
            warnings.push(format!(
                "the repository's MCP server `{0}` is left out: the installation's config.toml has a server of that name, which the task uses",
                server.name
            ));
            continue;
        }
        servers.push(from_config(server, ".nightshift.toml"));
    }
    if servers.len() > MAX_SERVERS {
        let left_out: Vec<String> = servers
            .drain(MAX_SERVERS..)
            .map(|server| format!("`{}`", server.name))
            .collect();
        warnings.push(format!(
            "a task runs at most {MAX_SERVERS} MCP servers; left out: {}",
            left_out.join(", ")
        ));
    }
    (servers, warnings)
}

/// No server's start or call may take longer than `limit`.
fn cap_timeouts(servers: &mut [McpServerSpec], limit: Duration) {
    for server in servers {
        server.startup_timeout = server.startup_timeout.min(limit);
        server.call_timeout = server.call_timeout.min(limit);
    }
}

/// A `[mcp.NAME]` (of `origin`, a file's name) as the agent takes it.
pub fn from_config(server: &McpServer, origin: &str) -> McpServerSpec {
    let mut spec = match &server.url {
        Some(url) => {
            let mut spec = McpServerSpec::remote(&server.name, url);
            if server.sse {
                spec.remote_transport = RemoteTransport::Sse;
            }
            spec
        }
        None => McpServerSpec::stdio(&server.name, &server.command, server.args.clone()),
    };
    spec.env = server.env.clone().into_iter().collect();
    spec.tools = server.tools.clone();
    spec.exclude_tools = server.exclude_tools.clone();
    if let Some(timeout) = server.startup_timeout {
        spec.startup_timeout = timeout.as_duration();
    }
    if let Some(timeout) = server.timeout {
        spec.call_timeout = timeout.as_duration();
    }
    spec.origin = origin.into();
    spec
}

/// Starts the servers in `session`, logging what each offers and what went wrong. No server
/// may take longer than `limit` (the task's wall time) to start or to answer a call, and
/// `cancel` ends their start.
pub(crate) async fn start(
    log: &TaskLog,
    session: &dyn SandboxSession,
    (host, repository): (&[McpServerSpec], &[McpServer]),
    limit: Duration,
    cancel: &CancellationToken,
) -> Result<McpTools, SinkError> {
    let (mut servers, warnings) = task_servers(host, repository);
    cap_timeouts(&mut servers, limit);
    for message in warnings {
        log.append(Event::Warning { message }).await?;
    }
    if servers.is_empty() {
        return Ok(McpTools::none());
    }
    let redact = |text: &str| log.redact(text);
    let tools = McpTools::start(&servers, session, cancel, &redact).await;
    for report in tools.reports() {
        for message in &report.warnings {
            log.append(Event::Warning {
                message: format!("MCP server `{}`: {message}", report.name),
            })
            .await?;
        }
        if !report.tools.is_empty() || report.warnings.is_empty() {
            log.append(Event::McpServerReady {
                server: report.name.clone(),
                tools: report.tools.clone(),
            })
            .await?;
        }
    }
    Ok(tools)
}

/// The longest a task waits for its servers to end after the agent is done.
pub(crate) const STOP_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn repository_server(name: &str) -> McpServer {
        McpServer {
            name: name.into(),
            command: "server".into(),
            args: Vec::new(),
            url: None,
            sse: false,
            env: Default::default(),
            tools: None,
            exclude_tools: Vec::new(),
            startup_timeout: None,
            timeout: Some("2h".parse().unwrap()),
        }
    }

    #[test]
    fn the_installations_servers_come_first_and_a_task_runs_at_most_sixteen() {
        let host = [McpServerSpec::stdio("docs", "host-docs", Vec::new())];
        let repository: Vec<McpServer> = ["docs", "a", "b"]
            .into_iter()
            .map(repository_server)
            .chain((0..20).map(|i| repository_server(&format!("s{i}"))))
            .collect();
        let (servers, warnings) = task_servers(&host, &repository);
        assert_eq!(servers.len(), MAX_SERVERS);
        assert_eq!(servers[0].command, "host-docs");
        assert_eq!(servers[1].name, "a");
        assert_eq!(servers[1].origin, ".nightshift.toml");
        assert!(warnings[0].contains("`docs` is left out"), "{warnings:?}");
        assert!(
            warnings[1].contains("at most 16 MCP servers; left out: `s13`, `s14`"),
            "{warnings:?}"
        );
    }

    #[test]
    fn no_timeout_outlasts_the_tasks_time() {
        let (mut servers, _) = task_servers(&[], &[repository_server("slow")]);
        assert_eq!(servers[0].call_timeout, Duration::from_secs(7200));
        cap_timeouts(&mut servers, Duration::from_secs(600));
        assert_eq!(servers[0].call_timeout, Duration::from_secs(600));
        assert_eq!(servers[0].startup_timeout, Duration::from_secs(30));
    }
}
