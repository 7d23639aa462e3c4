//! The older HTTP+SSE transport of MCP (protocol 2024-11-05), which rmcp no longer speaks:
//! `GET` the server's URL for an event stream whose first `endpoint` event names where to `POST`
//! messages; answers come back on the stream as `message` events. Servers that predate
//! streamable HTTP still serve only this.

use std::time::Duration;

use futures::StreamExt;
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The largest event read from the stream; a server that sends more between two blank lines
/// has its stream ended.
const MAX_EVENT: usize = 4 << 20;

/// How many answers may wait for the client (each up to [`MAX_EVENT`]).
const QUEUE: usize = 4;

/// How long posting one message may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct SseError(String);

pub(super) struct SseTransport {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    messages: mpsc::Receiver<RxJsonRpcMessage<RoleClient>>,
    reader: JoinHandle<()>,
}

impl Drop for SseTransport {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl SseTransport {
    /// Opens the event stream at `url` and waits, up to `timeout`, for the endpoint it names,
    /// which must be on the same scheme, host and port.
    pub async fn connect(
        http: reqwest::Client,
        url: &str,
        timeout: Duration,
    ) -> Result<SseTransport, String> {
        let base = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let opened = async {
            let response = http
                .get(base.clone())
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .send()
                .await
                .map_err(|e| describe(&e))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("GET {url} answered {status}"));
            }
            let mut events = events(response);
            loop {
                match events.next().await {
                    Some(Ok(event)) if event.event.as_deref() == Some("endpoint") => {
                        break Ok((event.data.unwrap_or_default(), events));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Err(format!("its event stream broke: {e}")),
                    None => break Err("its event stream ended before naming an endpoint".into()),
                }
            }
        };
        let (endpoint, mut events) = tokio::time::timeout(timeout, opened)
            .await
            .map_err(|_| format!("it named no endpoint within {timeout:?}"))??;
        let endpoint = base
            .join(endpoint.trim())
            .map_err(|e| format!("its endpoint `{endpoint}` is not a URL: {e}"))?;
        if endpoint.origin() != base.origin() {
            return Err(format!(
                "its endpoint {endpoint} is not on {}; only the configured server is spoken to",
                base.origin().ascii_serialization()
            ));
        }
        let (sender, messages) = mpsc::channel(QUEUE);
        let reader = tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                if event.event.as_deref().unwrap_or("message") != "message" {
                    continue;
                }
                let Some(data) = event.data else { continue };
                match serde_json::from_str::<RxJsonRpcMessage<RoleClient>>(&data) {
                    Ok(message) => {
                        if sender.send(message).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::debug!(%e, "an MCP server sent an unreadable message"),
                }
            }
        });
        Ok(SseTransport {
            http,
            endpoint,
            messages,
            reader,
        })
    }
}

/// The response's body as server-sent events, each bounded in size.
fn events(
    response: reqwest::Response,
) -> impl futures::Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Send + Unpin {
    let mut pending = 0usize;
    let bytes = response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        // Bytes since the last blank line (one seen across two chunks is missed, which only
        // makes the bound stricter): enough to bound one event.
        pending = match last_blank_line(&chunk) {
            Some(end) => chunk.len() - end,
            None => pending + chunk.len(),
        };
        if pending > MAX_EVENT {
            return Err(std::io::Error::other(format!(
                "an event of over {} MiB",
                MAX_EVENT >> 20
            )));
        }
        Ok(chunk)
    });
    Box::pin(sse_stream::SseStream::from_bytes_stream(bytes))
}

/// Where the last blank line of `chunk` ends.
fn last_blank_line(chunk: &[u8]) -> Option<usize> {
    let lf = chunk.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = chunk
        .windows(3)
        .rposition(|w| w == b"\n\r\n")
        .map(|i| i + 3);
    lf.max(crlf)
}

fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

impl Transport<RoleClient> for SseTransport {
    type Error = SseError;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let (http, endpoint) = (self.http.clone(), self.endpoint.clone());
        async move {
            let response = http
                .post(endpoint)
                .json(&item)
                .timeout(SEND_TIMEOUT)
                .send()
                .await
                .map_err(|e| SseError(describe(&e)))?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(SseError(format!("the server answered a message {status}")))
            }
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleClient>>> {
        self.messages.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.reader.abort();
        Ok(())
    }
}
