//! MCP servers' tools in the agent's hands: each configured server is started (a stdio server
//! as a long-lived process inside the task's sandbox), its tools are listed once, and they are
//! offered to the model as `SERVER__TOOL` after the built-in tools, in a fixed order, so that the
//! tool definitions stay byte for byte the same across turns. A server that fails to start, times
//! out or crashes never hangs the task: its calls come back as tool errors that say what
//! happened, and a crashed server is started again for the next call.

mod connection;
mod relay;
mod sse;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nightshift_model::ToolSpec;
use nightshift_sandbox::SandboxSession;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::tools::ToolOutput;
use connection::{Connection, Listing};
use nightshift_protocol::{floor_char_boundary, printable};

/// Between a server's name and its tool's in the name the model sees.
pub const SEPARATOR: &str = "__";

/// The longest tool name the providers accept (OpenAI's limit; Anthropic's is the same).
const MAX_TOOL_NAME: usize = 64;

/// The most tools of one server offered to the model.
const MAX_TOOLS: usize = 128;

/// The longest description of a tool offered to the model, in bytes; longer ones are cut.
pub(super) const MAX_DESCRIPTION: usize = 4096;

/// The largest input schema of a tool (as JSON) offered to the model; a tool with a larger one
/// is left out.
pub(super) const MAX_SCHEMA: usize = 64 << 10;

/// How many times a server that crashed is started again in one task.
const MAX_RESTARTS: u32 = 3;

/// One MCP server, as the configuration says.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServerSpec {
    /// Its name: the prefix of its tools' names (letters, digits, `-` and `_`, no `__`).
    pub name: String,
    /// A program started inside the sandbox, spoken to over its standard input and output
    /// (empty for a remote server).
    pub command: String,
    pub args: Vec<String>,
    /// A remote server's URL, spoken to through the session's egress proxy; `None` for a
    /// stdio server.
    pub url: Option<String>,
    /// How a remote server is spoken to.
    pub remote_transport: RemoteTransport,
    /// Variables for it, over the sandbox's environment.
    pub env: Vec<(String, String)>,
    /// Only these of its tools, when given.
    pub tools: Option<Vec<String>>,
    /// Never these of its tools.
    pub exclude_tools: Vec<String>,
    /// How long starting it (up to its tool list) may take.
    pub startup_timeout: Duration,
    /// How long one call may take; past it the server is stopped.
    pub call_timeout: Duration,
    /// Where it was declared (`.nightshift.toml`, `config.toml`), for messages.
    pub origin: String,
}

impl McpServerSpec {
    /// A stdio server with the default timeouts and every tool.
    pub fn stdio(name: impl Into<String>, command: impl Into<String>, args: Vec<String>) -> Self {
        McpServerSpec {
            name: name.into(),
            command: command.into(),
            args,
            url: None,
            remote_transport: RemoteTransport::StreamableHttp,
            env: Vec::new(),
            tools: None,
            exclude_tools: Vec::new(),
            startup_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(120),
            origin: String::new(),
        }
    }

    /// A remote server at `url`, with the default timeouts and every tool.
    pub fn remote(name: impl Into<String>, url: impl Into<String>) -> Self {
        McpServerSpec {
            url: Some(url.into()),
            ..McpServerSpec::stdio(name, "", Vec::new())
        }
    }

    fn offers(&self, tool: &str) -> bool {
        let chosen = self
            .tools
            .as_ref()
            .is_none_or(|tools| tools.iter().any(|t| t == tool));
        chosen && !self.exclude_tools.iter().any(|t| t == tool)
    }
}

/// The transports a remote server may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemoteTransport {
    /// Streamable HTTP (protocol 2025-03-26 and later): one URL that takes every message.
    #[default]
    StreamableHttp,
    /// The older HTTP+SSE (2024-11-05): an event stream that names where messages go.
    Sse,
}

/// What starting one server came to, for the task's log.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerReport {
    pub name: String,
    /// The tools offered to the model, as the model sees their names.
    pub tools: Vec<String>,
    /// Why it offers nothing, or what of it was left out.
    pub warnings: Vec<String>,
}

/// The MCP tools of one agent run.
pub struct McpTools {
    servers: Vec<Server>,
    specs: Vec<ToolSpec>,
    reports: Vec<ServerReport>,
}

struct Server {
    spec: McpServerSpec,
    /// The tools offered, by their own name.
    tools: BTreeSet<String>,
    connection: Mutex<Option<Connection>>,
    restarts: Mutex<u32>,
}

impl McpTools {
    /// No servers.
    pub fn none() -> Self {
        McpTools {
            servers: Vec::new(),
            specs: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// Starts every server in `session`, all at once, and lists their tools. Never fails: a
    /// server that cannot start (or is still starting when `cancel` fires) offers no tools, and
    /// its report says why. What a server says of its tools passes through `redact` before the
    /// model sees it.
    pub async fn start(
        specs: &[McpServerSpec],
        session: &dyn SandboxSession,
        cancel: &CancellationToken,
        redact: &(dyn Fn(&str) -> String + Sync),
    ) -> Self {
        let started = futures::future::join_all(
            specs
                .iter()
                .map(|spec| start_or_cancel(spec, session, cancel)),
        )
        .await;
        let mut tools = McpTools::none();
        for (spec, started) in specs.iter().zip(started) {
            let mut report = ServerReport {
                name: spec.name.clone(),
                tools: Vec::new(),
                warnings: Vec::new(),
            };
            let (connection, offered) = match started {
                Ok((connection, listing)) => {
                    let offered = offer(spec, listing, redact, &mut report);
                    tools.specs.extend(offered.iter().cloned());
                    (Some(connection), offered)
                }
                Err(why) => {
                    report.warnings.push(format!(
                        "the MCP server `{}` did not start, so its tools are not available: {}",
                        spec.name,
                        printable(&why)
                    ));
                    (None, Vec::new())
                }
            };
            let prefix = format!("{}{SEPARATOR}", spec.name);
            tools.reports.push(report);
            tools.servers.push(Server {
                spec: spec.clone(),
                tools: offered
                    .iter()
                    .filter_map(|tool| tool.name.strip_prefix(&prefix).map(str::to_string))
                    .collect(),
                connection: Mutex::new(connection),
                restarts: Mutex::new(0),
            });
        }
        tools
    }

    /// The tools as the model sees them, after the built-in ones: by server, in the
    /// configuration's order, and by tool name within a server.
    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    /// What each server offers, and what went wrong with it.
    pub fn reports(&self) -> &[ServerReport] {
        &self.reports
    }

    /// Whether `name` is one of these tools.
    pub fn handles(&self, name: &str) -> bool {
        self.specs.iter().any(|spec| spec.name == name)
    }

    /// Calls the tool `name` (as the model sees it) with the model's raw JSON `arguments`,
    /// taking no longer than the server's timeout nor past `deadline` (the task's time).
    /// Never fails: every problem is a failed [`ToolOutput`] that says what happened.
    pub async fn call(
        &self,
        name: &str,
        arguments: &str,
        session: &dyn SandboxSession,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> ToolOutput {
        let left = || {
            deadline.map_or(Duration::MAX, |deadline| {
                deadline.saturating_duration_since(Instant::now())
            })
        };
        if left().is_zero() {
            return ToolOutput::failure("the task's time is up");
        }
        let Some((server, tool)) = self.route(name) else {
            return ToolOutput::failure(format!("unknown tool `{name}`"));
        };
        let arguments = match parse_arguments(arguments) {
            Ok(arguments) => arguments,
            Err(why) => return ToolOutput::failure(why),
        };
        let mut slot = server.connection.lock().await;
        if slot.as_ref().is_none_or(Connection::ended) {
            let ended = slot.take().map(|connection| connection.describe_end());
            let mut restarts = server.restarts.lock().await;
            if *restarts >= MAX_RESTARTS {
                return ToolOutput::failure(format!(
                    "the MCP server `{}` is not running{}, and it was restarted {MAX_RESTARTS} \
                     times already in this task; its tools are unavailable",
                    server.spec.name,
                    ended.map(|why| format!(" ({why})")).unwrap_or_default(),
                ));
            }
            *restarts += 1;
            let restarted =
                tokio::time::timeout(left(), start_or_cancel(&server.spec, session, cancel));
            match restarted
                .await
                .unwrap_or_else(|_| Err("the task's time ran out".into()))
            {
                Ok((connection, _)) => *slot = Some(connection),
                Err(why) => {
                    return ToolOutput::failure(format!(
                        "the MCP server `{}` could not be started: {why}",
                        server.spec.name
                    ));
                }
            }
        }
        let Some(connection) = slot.as_ref() else {
            return ToolOutput::failure(format!("the MCP server `{}` is not running", name));
        };
        let outcome = connection
            .call(
                tool,
                arguments,
                server.spec.call_timeout.min(left()),
                cancel,
            )
            .await;
        if connection.ended() {
            // Kept for its account of the end; the next call starts it again.
            connection.stop();
        }
        outcome
    }

    /// Stops every server, all at once. (A server whose tools are dropped without this is
    /// killed: its process goes with its last handle.)
    pub async fn stop(&self) {
        let mut running = Vec::new();
        for server in &self.servers {
            running.extend(server.connection.lock().await.take());
        }
        futures::future::join_all(running.into_iter().map(Connection::shut_down)).await;
    }

    fn route<'a>(&'a self, name: &'a str) -> Option<(&'a Server, &'a str)> {
        let (prefix, tool) = name.split_once(SEPARATOR)?;
        let server = self.servers.iter().find(|s| s.spec.name == prefix)?;
        server.tools.contains(tool).then_some((server, tool))
    }
}

/// Starts `spec`'s server unless `cancel` fires first (which drops, and so kills, what had
/// started).
async fn start_or_cancel(
    spec: &McpServerSpec,
    session: &dyn SandboxSession,
    cancel: &CancellationToken,
) -> Result<(Connection, Listing), String> {
    tokio::select! {
        started = Connection::start(spec, session) => started,
        _ = cancel.cancelled() => Err("the task was cancelled while it started".into()),
    }
}

/// What of a server's listing is offered to the model, by name, within the bounds above; what
/// is left out, and why, goes to `report`.
fn offer(
    spec: &McpServerSpec,
    listing: Listing,
    redact: &(dyn Fn(&str) -> String + Sync),
    report: &mut ServerReport,
) -> Vec<ToolSpec> {
    let mut listed = listing.tools;
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let before = listed.len();
    listed.dedup_by(|a, b| a.name == b.name);
    let repeated = before - listed.len();
    let (mut invalid, mut too_large, mut over, mut secret_names) =
        (Vec::new(), Vec::new(), 0usize, 0usize);
    let mut offered = Vec::new();
    for tool in &listed {
        if !spec.offers(&tool.name) {
            continue;
        }
        if redact(&tool.name) != tool.name {
            // A secret (a token fits a valid name) goes nowhere, not even into a warning.
            secret_names += 1;
            continue;
        }
        let name = format!("{}{SEPARATOR}{}", spec.name, tool.name);
        if !valid_tool_name(&name) {
            invalid.push(shown(&tool.name));
            continue;
        }
        let Some(schema) = &tool.schema else {
            too_large.push(shown(&tool.name));
            continue;
        };
        if offered.len() == MAX_TOOLS {
            over += 1;
            continue;
        }
        offered.push(ToolSpec {
            name: name.clone(),
            description: cut(&redact(&tool.description), MAX_DESCRIPTION),
            parameters: redacted_schema(schema, redact),
        });
        report.tools.push(name);
    }
    let warnings = &mut report.warnings;
    if listing.truncated {
        warnings.push(format!(
            "its tool list goes on past the {before} tools read from its first {} pages, which \
             is as far as it is read",
            listing.pages
        ));
    }
    if repeated > 0 {
        warnings.push(format!(
            "it lists {repeated} tool names more than once; each is offered once, as first listed"
        ));
    }
    if !invalid.is_empty() {
        warnings.push(format!(
            "left out {} of its tools whose names models do not accept (with the `{}{SEPARATOR}` \
             prefix, at most {MAX_TOOL_NAME} letters, digits, `_` and `-`): {}",
            invalid.len(),
            spec.name,
            some_of(&invalid)
        ));
    }
    if !too_large.is_empty() {
        warnings.push(format!(
            "left out {} of its tools whose input schema is over {} KiB: {}",
            too_large.len(),
            MAX_SCHEMA >> 10,
            some_of(&too_large)
        ));
    }
    if secret_names > 0 {
        warnings.push(format!(
            "left out {secret_names} of its tools whose name holds a secret (not shown)"
        ));
    }
    if over > 0 {
        warnings.push(format!(
            "only its first {MAX_TOOLS} tools (by name) are offered and {over} more are left \
             out; choose the ones the task needs with `tools = [...]`"
        ));
    }
    for wanted in spec.tools.iter().flatten() {
        if !listed.iter().any(|tool| &tool.name == wanted) {
            warnings.push(format!(
                "`tools` names {}, which the server does not offer",
                shown(wanted)
            ));
        }
    }
    offered
}

/// A tool's input schema as the model gets it: every key and string redacted (the JSON text
/// would hide a secret that JSON escapes).
fn redacted_schema(schema: &Value, redact: &(dyn Fn(&str) -> String + Sync)) -> Value {
    match schema {
        Value::String(text) => Value::String(redact(text)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| redacted_schema(item, redact))
                .collect(),
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, value)| (redact(key), redacted_schema(value, redact)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), marked where it was cut.
pub(super) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    format!("{}…", &text[..floor_char_boundary(text, max)])
}

/// A name a server (or a configuration) gave, for a message: quoted, escaped, bounded.
fn shown(name: &str) -> String {
    let head: String = name.chars().take(MAX_TOOL_NAME).collect();
    let more = if head.len() < name.len() { "…" } else { "" };
    format!("{head:?}{more}")
}

/// The first few of `names`, and how many more.
fn some_of(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// A name every provider accepts as a tool's.
pub fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_arguments(arguments: &str) -> Result<serde_json::Map<String, Value>, String> {
    if arguments.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the arguments must be a JSON object".into()),
        Err(e) => Err(format!("the arguments are not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_and_exclude_tools_choose() {
        let mut spec = McpServerSpec::stdio("docs", "server", Vec::new());
        assert!(spec.offers("search"));
        spec.exclude_tools = vec!["delete".into()];
        assert!(spec.offers("search") && !spec.offers("delete"));
        spec.tools = Some(vec!["search".into(), "delete".into()]);
        assert!(spec.offers("search") && !spec.offers("delete") && !spec.offers("other"));
    }

    #[test]
    fn secrets_reach_neither_the_model_nor_a_warning() {
        let secret = "sk-0123456789abcdef";
        let redact = |text: &str| text.replace(secret, "[secret]");
        let tool = |name: &str, description: String, schema: Value| connection::ListedTool {
            name: name.into(),
            description,
            schema: Some(schema),
        };
        let object = serde_json::json!({"type": "object"});
        let listing = Listing {
            tools: vec![
                tool(&format!("get_{secret}"), String::new(), object.clone()),
                // The secret crosses the 4 KiB cut: redacted before it is cut.
                tool(
                    "edge",
                    format!("{}{secret}", "x".repeat(MAX_DESCRIPTION - 6)),
                    object.clone(),
                ),
                tool(
                    "schema",
                    String::new(),
                    serde_json::json!({"type": "object", "description": secret}),
                ),
                // Quoted in JSON text, where a search for the secret would miss it.
                tool(
                    "quoted",
                    String::new(),
                    serde_json::json!({"enum": [format!("\"{secret}\"")]}),
                ),
            ],
            pages: 1,
            truncated: false,
        };
        let mut report = ServerReport {
            name: "s".into(),
            tools: Vec::new(),
            warnings: Vec::new(),
        };
        let spec = McpServerSpec::stdio("s", "x", Vec::new());
        let offered = offer(&spec, listing, &redact, &mut report);
        let everything = format!("{offered:?} {report:?}");
        assert!(!everything.contains("sk-01"), "{everything}");
        assert_eq!(report.tools, ["s__edge", "s__quoted", "s__schema"]);
        assert_eq!(offered[1].parameters["enum"][0], "\"[secret]\"");
        assert_eq!(offered[2].parameters["description"], "[secret]");
        assert_eq!(
            report.warnings,
            ["left out 1 of its tools whose name holds a secret (not shown)"]
        );
    }

    #[test]
    fn names_models_accept() {
        assert!(valid_tool_name("docs__search-all"));
        assert!(!valid_tool_name("docs__search all"));
        assert!(!valid_tool_name("docs__café"));
        assert!(!valid_tool_name(&"x".repeat(65)));
    }

    #[test]
    fn arguments_must_be_an_object() {
        assert!(parse_arguments("").unwrap().is_empty());
        assert_eq!(parse_arguments(r#"{"q":1}"#).unwrap()["q"], 1);
        assert!(parse_arguments("[1]").unwrap_err().contains("JSON object"));
        assert!(parse_arguments("{").unwrap_err().contains("not valid JSON"));
    }
}
