//! One running MCP server: a process in the sandbox, an MCP client session over its standard
//! input and output, and the tail of its standard error for when it fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nightshift_sandbox::{ExitStatus, HeadTailBuffer, ProcessHandle, SandboxSession, SpawnRequest};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::async_rw::AsyncRwTransport;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::McpServerSpec;
use crate::tools::ToolOutput;

/// How much of a server's standard error is kept for messages.
const STDERR_TAIL: usize = 2048;

/// The longest line (one JSON-RPC message) read from a server; longer ones are dropped.
const MAX_MESSAGE: usize = 8 << 20;

/// How long a server that was asked to end may take before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long, after its connection broke, a server's exit is waited for, for the message.
const EXIT_WAIT: Duration = Duration::from_millis(500);

/// A tool as a server lists it.
#[derive(Debug, Clone)]
pub(super) struct ListedTool {
    pub name: String,
    pub description: String,
    pub schema: Value,
}

pub(super) struct Connection {
    name: String,
    client: RunningService<RoleClient, ()>,
    process: ProcessHandle,
    stderr: Arc<Mutex<HeadTailBuffer>>,
    /// Set when a call timed out or the connection broke: the server is not used again.
    broken: AtomicBool,
}

impl Connection {
    /// Starts the server and lists its tools, within its startup timeout.
    pub async fn start(
        spec: &McpServerSpec,
        session: &dyn SandboxSession,
    ) -> Result<(Connection, Vec<ListedTool>), String> {
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
            let tools = client.list_all_tools().await.map_err(|e| e.to_string())?;
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
            status = process.wait() => Err(format!("it exited at once ({})", describe(status))),
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
        let tools = tools
            .into_iter()
            .map(|tool| ListedTool {
                name: tool.name.to_string(),
                description: tool.description.map(|d| d.to_string()).unwrap_or_default(),
                schema: Value::Object((*tool.input_schema).clone()),
            })
            .collect();
        let connection = Connection {
            name: spec.name.clone(),
            client,
            process,
            stderr,
            broken: AtomicBool::new(false),
        };
        Ok((connection, tools))
    }

    /// Whether the server is gone or unusable.
    pub fn ended(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
            || self.process.exit_status().is_some()
            || self.client.is_closed()
    }

    /// How it ended, for a message.
    pub fn describe_end(&self) -> String {
        match self.process.exit_status() {
            Some(status) => format!("it {}", describe(status)),
            None => "its connection broke".into(),
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
            status = self.process.wait() => {
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
                let status = tokio::time::timeout(EXIT_WAIT, self.process.wait())
                    .await
                    .ok();
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

    /// Kills the server at once.
    pub fn stop(&self) {
        self.broken.store(true, Ordering::SeqCst);
        self.process.kill();
    }

    /// Asks the server to end (its input closes), killing it if it does not.
    pub async fn shut_down(mut self) {
        let _ = self.client.close_with_timeout(SHUTDOWN_GRACE).await;
        if tokio::time::timeout(SHUTDOWN_GRACE, self.process.wait())
            .await
            .is_err()
        {
            self.process.kill();
        }
    }

    fn with_stderr(&self, message: String) -> String {
        with_stderr(message, &self.stderr)
    }
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
    let tail = tail.trim();
    if !tail.is_empty() {
        message.push_str("\nIts standard error ends with:\n");
        message.push_str(tail);
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
