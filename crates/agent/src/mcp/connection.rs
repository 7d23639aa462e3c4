//! One running MCP server: a process in the sandbox with an MCP client session over its
//! standard input and output (and the tail of its standard error for when it fails), or a remote
//! server spoken to over streamable HTTP through the session's egress proxy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nightshift_sandbox::{ExitStatus, HeadTailBuffer, ProcessHandle, SandboxSession, SpawnRequest};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, PaginatedRequestParams};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::relay::{self, Relay};
use super::sse::SseTransport;
use super::{MAX_DESCRIPTION, MAX_SCHEMA, McpServerSpec, RemoteTransport, cut};
use crate::tools::ToolOutput;

/// How much of a server's standard error is kept for messages.
const STDERR_TAIL: usize = 2048;

/// The longest line (one JSON-RPC message) read from a server; longer ones are dropped.
const MAX_MESSAGE: usize = 4 << 20;

/// How long a server that was asked to end may take before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long, after its connection broke, a server's exit is waited for, for the message.
const EXIT_WAIT: Duration = Duration::from_millis(500);

/// The most pages of tools read from one server.
const MAX_PAGES: usize = 16;

/// The most tools read from one server.
const MAX_LISTED: usize = 1024;

/// The most bytes of names, descriptions and schemas kept from one server's list, each already
/// bounded: past it the list is read no further.
const MAX_LISTED_BYTES: usize = 4 << 20;

/// The longest name kept: longer ones are not names models accept anyway, and are cut for the
/// message that says so.
const MAX_NAME: usize = 128;

/// What a server listed.
#[derive(Debug, Clone, Default)]
pub(super) struct Listing {
    pub tools: Vec<ListedTool>,
    /// How many pages were read.
    pub pages: usize,
    /// It had more pages than were read.
    pub truncated: bool,
}

/// A tool as a server lists it, bounded: its name cut at [`MAX_NAME`] bytes, its description
/// at twice what the model gets (so that redaction, which comes before the final cut, sees any
/// secret that would end up in what is kept), its schema dropped when too large.
#[derive(Debug, Clone)]
pub(super) struct ListedTool {
    pub name: String,
    pub description: String,
    /// `None` when its JSON is over [`MAX_SCHEMA`].
    pub schema: Option<Value>,
}

impl ListedTool {
    /// The tool, bounded, and about how many bytes it holds.
    fn bounded(tool: rmcp::model::Tool) -> (ListedTool, usize) {
        let schema = Value::Object((*tool.input_schema).clone());
        let schema_size = serde_json::to_string(&schema).map_or(usize::MAX, |text| text.len());
        let kept_schema = schema_size <= MAX_SCHEMA;
        let tool = ListedTool {
            name: cut(&tool.name, MAX_NAME),
            description: tool
                .description
                .map(|d| cut(&d, 2 * MAX_DESCRIPTION))
                .unwrap_or_default(),
            schema: kept_schema.then_some(schema),
        };
        let size =
            tool.name.len() + tool.description.len() + if kept_schema { schema_size } else { 0 };
        (tool, size)
    }
}

pub(super) struct Connection {
    name: String,
    client: RunningService<RoleClient, ()>,
    /// The server's process, for a stdio server.
    process: Option<ProcessHandle>,
    stderr: Arc<Mutex<HeadTailBuffer>>,
    /// The way to the egress proxy, for a remote server: it lives as long as the connection.
    _relay: Option<Relay>,
    /// Set when a call timed out or the connection broke: the server is not used again.
    broken: AtomicBool,
}

impl Connection {
    /// Starts (or reaches) the server and lists its tools, within its startup timeout.
    pub async fn start(
        spec: &McpServerSpec,
        session: &dyn SandboxSession,
    ) -> Result<(Connection, Listing), String> {
        match &spec.url {
            Some(url) => Self::reach(spec, url, session).await,
            None => Self::spawn(spec, session).await,
        }
    }

    async fn spawn(
        spec: &McpServerSpec,
        session: &dyn SandboxSession,
    ) -> Result<(Connection, Listing), String> {
        let request = SpawnRequest {
            command: command_line(&spec.command, &spec.args),
            workdir: None,
            env: spec.env.clone(),
        };
        let spawned = session.spawn(request).await.map_err(|e| e.to_string())?;
        let stderr = Arc::new(Mutex::new(HeadTailBuffer::new(STDERR_TAIL)));
        tokio::spawn(pump(spawned.stderr, stderr.clone()));
        let process = spawned.handle;
        let transport =
            AsyncRwTransport::<RoleClient, _, _>::new_client(spawned.stdout, spawned.stdin)
                .with_max_line_length(MAX_MESSAGE);
        let started = async {
            let client = ().serve(transport).await.map_err(|e| e.to_string())?;
            let tools = list_tools(&client).await?;
            Ok::<_, String>((client, tools))
        };
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(spec.startup_timeout, started) => match outcome {
                Ok(outcome) => outcome,
                Err(_) => Err(format!(
                    "it did not answer within {:?} of starting",
                    spec.startup_timeout
                )),
            },
            status = process.wait() => Err(match process.failure() {
                Some(failure) => format!("the sandbox could not start it: {failure}"),
                None => format!("it exited at once ({})", describe(status)),
            }),
        };
        let (client, tools) = match outcome {
            Ok(started) => started,
            Err(why) => {
                process.kill();
                let status = tokio::time::timeout(EXIT_WAIT, process.wait()).await.ok();
                let mut message = why;
                if let Some(status) = status
                    && !message.contains("exited")
                {
                    message.push_str(&format!("; it {}", describe(status)));
                }
                return Err(with_stderr(message, &stderr));
            }
        };
        let connection = Connection {
            name: spec.name.clone(),
            client,
            process: Some(process),
            stderr,
            _relay: None,
            broken: AtomicBool::new(false),
        };
        Ok((connection, tools))
    }

    /// A remote server, through the session's egress proxy: its host must be on the session's
    /// allowlist, the request is logged as the session's egress, and the proxy adds the
    /// session's credentials for that host (a `proxy` secret), which this side never holds.
    async fn reach(
        spec: &McpServerSpec,
        url: &str,
        session: &dyn SandboxSession,
    ) -> Result<(Connection, Listing), String> {
        let Some(route) = session.egress() else {
            return Err(format!(
                "a remote server is reached through the task's egress proxy, and this task has \
                 none: allow its host in `[network] agent` ({}), and run tasks in the \
                 namespaced sandbox",
                host_of(url)
            ));
        };
        let relay = Relay::start(route.socket)
            .await
            .map_err(|e| format!("could not reach the egress proxy: {e}"))?;
        let http = http_client(url, &relay, route.ca_pem.as_deref(), spec.startup_timeout)?;
        let started = async {
            let client = match spec.remote_transport {
                RemoteTransport::StreamableHttp => {
                    let transport = StreamableHttpClientTransport::with_client(
                        http,
                        StreamableHttpClientTransportConfig::with_uri(url.to_string()),
                    );
                    ().serve(transport).await.map_err(|e| e.to_string())?
                }
                RemoteTransport::Sse => {
                    let transport = SseTransport::connect(http, url, spec.startup_timeout).await?;
                    ().serve(transport).await.map_err(|e| e.to_string())?
                }
            };
            let tools = list_tools(&client).await?;
            Ok::<_, String>((client, tools))
        };
        let (client, tools) = match tokio::time::timeout(spec.startup_timeout, started).await {
            Ok(Ok(started)) => started,
            Ok(Err(why)) => {
                return Err(format!(
                    "{why} (its host, {}, must be allowed in `[network] agent`; the task's \
                     `egress` events say what the proxy did)",
                    host_of(url)
                ));
            }
            Err(_) => {
                return Err(format!(
                    "it did not answer within {:?}",
                    spec.startup_timeout
                ));
            }
        };
        let connection = Connection {
            name: spec.name.clone(),
            client,
            process: None,
            stderr: Arc::new(Mutex::new(HeadTailBuffer::new(STDERR_TAIL))),
            _relay: Some(relay),
            broken: AtomicBool::new(false),
        };
        Ok((connection, tools))
    }

    /// Whether the server is gone or unusable.
    pub fn ended(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
            || self.exit_status().is_some()
            || self.client.is_closed()
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        self.process.as_ref().and_then(ProcessHandle::exit_status)
    }

    /// How it ended, for a message.
    pub fn describe_end(&self) -> String {
        match self.exit_status() {
            Some(status) => format!("it {}", describe(status)),
            None => "its connection broke".into(),
        }
    }

    /// The process's end; never, for a remote server.
    async fn exited(&self) -> ExitStatus {
        match &self.process {
            Some(process) => process.wait().await,
            None => std::future::pending().await,
        }
    }

    /// Calls `tool`; a call past `timeout` stops the server.
    pub async fn call(
        &self,
        tool: &str,
        arguments: serde_json::Map<String, Value>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> ToolOutput {
        let mut params = CallToolRequestParams::new(tool.to_string());
        params.arguments = Some(arguments);
        let outcome = tokio::select! {
            outcome = self.client.call_tool(params) => outcome,
            _ = tokio::time::sleep(timeout) => {
                self.stop();
                return ToolOutput::failure(self.with_stderr(format!(
                    "`{tool}` of the MCP server `{}` did not answer within {timeout:?}; the \
                     server was stopped, and the next call starts it again",
                    self.name
                )));
            }
            _ = cancel.cancelled() => {
                self.stop();
                return ToolOutput::failure("cancelled");
            }
            status = self.exited() => {
                self.broken.store(true, Ordering::SeqCst);
                return ToolOutput::failure(self.with_stderr(format!(
                    "the MCP server `{}` ended while `{tool}` ran: it {}; the next call starts \
                     it again",
                    self.name,
                    describe(status)
                )));
            }
        };
        match outcome {
            Ok(result) => render(&result),
            Err(ServiceError::McpError(error)) => ToolOutput::failure(format!(
                "the MCP server `{}` refused the call: {}",
                self.name, error.message
            )),
            Err(error) => {
                self.broken.store(true, Ordering::SeqCst);
                let status = tokio::time::timeout(EXIT_WAIT, self.exited()).await.ok();
                let how = match status {
                    Some(status) => format!("it {}", describe(status)),
                    None => format!("its connection failed ({error})"),
                };
                ToolOutput::failure(self.with_stderr(format!(
                    "the MCP server `{}` ended while `{tool}` ran: {how}; the next call starts \
                     it again",
                    self.name
                )))
            }
        }
    }

    /// Kills the server at once (drops the connection to a remote one).
    pub fn stop(&self) {
        self.broken.store(true, Ordering::SeqCst);
        self.client.cancellation_token().cancel();
        if let Some(process) = &self.process {
            process.kill();
        }
    }

    /// Asks the server to end (its input closes, or a remote session is closed), killing it if
    /// it does not.
    pub async fn shut_down(mut self) {
        let _ = self.client.close_with_timeout(SHUTDOWN_GRACE).await;
        if let Some(process) = &self.process
            && tokio::time::timeout(SHUTDOWN_GRACE, process.wait())
                .await
                .is_err()
        {
            process.kill();
        }
    }

    fn with_stderr(&self, message: String) -> String {
        with_stderr(message, &self.stderr)
    }
}

/// The server's tools, page by page, up to [`MAX_PAGES`] pages, [`MAX_LISTED`] tools and
/// [`MAX_LISTED_BYTES`]: a server that lists more is read no further.
async fn list_tools(client: &RunningService<RoleClient, ()>) -> Result<Listing, String> {
    let mut listing = Listing::default();
    let mut kept = 0;
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let params = PaginatedRequestParams::default().with_cursor(cursor);
        let page = client
            .list_tools(Some(params))
            .await
            .map_err(|e| format!("listing its tools: {e}"))?;
        listing.pages += 1;
        for tool in page.tools {
            if listing.tools.len() == MAX_LISTED || kept >= MAX_LISTED_BYTES {
                listing.truncated = true;
                return Ok(listing);
            }
            let (tool, size) = ListedTool::bounded(tool);
            kept += size;
            listing.tools.push(tool);
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            return Ok(listing);
        }
    }
    listing.truncated = true;
    Ok(listing)
}

/// The HTTP client for a remote server: every connection through the relay, presenting its
/// token; trusting the session's CA (for a host the proxy adds a credential to) besides the
/// host's roots; following no redirect (it would leave the allowlisted URL).
fn http_client(
    url: &str,
    relay: &Relay,
    ca_pem: Option<&str>,
    connect_timeout: Duration,
) -> Result<reqwest::Client, String> {
    nightshift_model::ensure_crypto_provider();
    let proxy = reqwest::Proxy::all(&relay.url)
        .map_err(|e| format!("the relay's URL: {e}"))?
        .basic_auth(relay::USER, &relay.token);
    let mut builder = reqwest::Client::builder()
        .proxy(proxy)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .user_agent(concat!("nightshift/", env!("CARGO_PKG_VERSION")));
    if url.starts_with("http://") {
        // Plain HTTP goes through the proxy request by request: the relay checks (and removes)
        // the token in each connection's first request only, so no connection is reused.
        builder = builder.pool_max_idle_per_host(0);
    }
    if let Some(pem) = ca_pem {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| format!("the session's CA: {e}"))?;
        builder = builder.tls_certs_merge([ca]);
    }
    builder
        .build()
        .map_err(|e| format!("could not set up the HTTP client: {e}"))
}

/// The `host[:port]` of a URL, for messages.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// The command line that runs `command` with `args`, each word quoted for the shell, replacing
/// the shell.
fn command_line(command: &str, args: &[String]) -> String {
    let mut line = String::from("exec");
    for word in std::iter::once(command).chain(args.iter().map(String::as_str)) {
        line.push(' ');
        line.push_str(&quote(word));
    }
    line
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn describe(status: ExitStatus) -> String {
    match status {
        ExitStatus::Exited(code) => format!("exited with code {code}"),
        ExitStatus::Signaled(signal) => format!("was killed by signal {signal}"),
        ExitStatus::LimitExceeded(limit) => limit.explain().to_string(),
        ExitStatus::TimedOut | ExitStatus::Cancelled => "was stopped".into(),
    }
}

fn with_stderr(mut message: String, stderr: &Mutex<HeadTailBuffer>) -> String {
    let tail = stderr
        .lock()
        .map(|buffer| buffer.render())
        .unwrap_or_default();
    let tail = nightshift_protocol::printable(tail.trim());
    if !tail.is_empty() {
        message.push_str("\nIts standard error ends with:\n");
        message.push_str(&tail);
    }
    message
}

async fn pump(mut from: impl AsyncReadExt + Unpin, into: Arc<Mutex<HeadTailBuffer>>) {
    let mut chunk = vec![0u8; 8192];
    while let Ok(n) = from.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        if let Ok(mut buffer) = into.lock() {
            buffer.push(&chunk[..n]);
        }
    }
}

/// A call's result as the model sees it: its text, with what is not text described.
fn render(result: &CallToolResult) -> ToolOutput {
    let mut parts = Vec::new();
    for block in &result.content {
        let Ok(block) = serde_json::to_value(block) else {
            continue;
        };
        parts.push(render_block(&block));
    }
    if parts.is_empty()
        && let Some(structured) = &result.structured_content
    {
        parts.push(structured.to_string());
    }
    let text = parts.join("\n");
    if result.is_error == Some(true) {
        ToolOutput::failure(text)
    } else {
        ToolOutput::success(text)
    }
}

fn render_block(block: &Value) -> String {
    let field =
        |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    match block.get("type").and_then(Value::as_str) {
        Some("text") => field(block, "text").unwrap_or_default(),
        Some(kind @ ("image" | "audio")) => format!(
            "[{kind}: {}, {} bytes of base64 not shown]",
            field(block, "mimeType").unwrap_or_else(|| "unknown type".into()),
            field(block, "data").map_or(0, |data| data.len())
        ),
        Some("resource") => {
            let resource = block.get("resource").cloned().unwrap_or_default();
            field(&resource, "text").unwrap_or_else(|| {
                format!("[resource {}]", field(&resource, "uri").unwrap_or_default())
            })
        }
        Some("resource_link") => format!("[resource {}]", field(block, "uri").unwrap_or_default()),
        _ => block.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_quote_what_the_shell_would_read() {
        assert_eq!(
            command_line(
                "python3",
                &["server.py".into(), "--name".into(), "a b".into()]
            ),
            "exec python3 server.py --name 'a b'"
        );
        assert_eq!(command_line("x", &["it's".into()]), r"exec x 'it'\''s'");
        assert_eq!(
            command_line("x", &["".into(), "$HOME".into()]),
            "exec x '' '$HOME'"
        );
    }

    #[test]
    fn results_render_text_and_describe_the_rest() {
        let result: CallToolResult = serde_json::from_value(serde_json::json!({
            "content": [
                {"type": "text", "text": "hello"},
                {"type": "image", "data": "aGk=", "mimeType": "image/png"}
            ]
        }))
        .unwrap();
        let output = render(&result);
        assert!(output.ok);
        assert_eq!(
            output.text,
            "hello\n[image: image/png, 4 bytes of base64 not shown]"
        );
        let error: CallToolResult = serde_json::from_value(serde_json::json!({
            "content": [{"type": "text", "text": "no such page"}],
            "isError": true
        }))
        .unwrap();
        assert!(!render(&error).ok);
    }
}
