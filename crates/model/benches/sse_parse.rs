//! Streaming parse throughput, in MB/s of server-sent events, for each protocol.
//!
//! The body is what the scripted model streams for a long answer: many tool calls whose
//! arguments arrive in small chunks, and text. It is measured twice: decoded from bytes in
//! memory (8 KiB reads, the same SSE parser and decoder the client uses), and end to end
//! through the real client against the scripted server over loopback.
//!
//! `cargo bench -p nightshift-model --bench sse_parse`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nightshift_model::{
    AnthropicMessages, Message, ModelClient, ModelRequest, OpenAiChat, OpenAiResponses, Provider,
    ProviderConfig, decode_event_stream,
};
use nightshift_scripted_model::{Script, ScriptedModel};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const RUNS_FROM_BYTES: usize = 30;
const RUNS_OVER_LOOPBACK: usize = 15;
const READ_SIZE: usize = 8 * 1024;

fn reply() -> Value {
    let calls: Vec<Value> = (0..40)
        .map(|n| {
            json!({"name": "write_file", "arguments": {
                "path": format!("src/module_{n}.rs"),
                "content": "fn main() { println!(\"hello, world\"); }\n".repeat(60),
            }})
        })
        .collect();
    json!({"text": "Writing the modules now. ".repeat(400), "tool_calls": calls})
}

fn script(repeat: usize) -> Script {
    let mut reply = reply();
    reply["repeat"] = json!(repeat);
    Script::from_json(&json!({"chunk_size": 16, "steps": [{"reply": reply}]}).to_string()).unwrap()
}

struct Protocol {
    name: &'static str,
    provider: Provider,
    path: &'static str,
}

const PROTOCOLS: [Protocol; 3] = [
    Protocol {
        name: "openai chat",
        provider: Provider::OpenAiChat,
        path: "/v1/chat/completions",
    },
    Protocol {
        name: "openai responses",
        provider: Provider::OpenAiResponses,
        path: "/v1/responses",
    },
    Protocol {
        name: "anthropic",
        provider: Provider::Anthropic,
        path: "/v1/messages",
    },
];

fn client(provider: Provider, server: &ScriptedModel) -> Box<dyn ModelClient> {
    let config = ProviderConfig {
        openai_base_url: Some(server.base_url()),
        anthropic_base_url: Some(server.anthropic_base_url()),
        ..ProviderConfig::default()
    };
    match provider {
        Provider::OpenAiChat => {
            Box::new(OpenAiChat::new("openai:bench".parse().unwrap(), &config).unwrap())
        }
        Provider::OpenAiResponses => Box::new(
            OpenAiResponses::new("openai-responses:bench".parse().unwrap(), &config).unwrap(),
        ),
        Provider::Anthropic => {
            Box::new(AnthropicMessages::new("anthropic:bench".parse().unwrap(), &config).unwrap())
        }
        Provider::Replay { .. } => unreachable!(),
    }
}

/// Median, p10 and p90 of MB/s.
fn summary(bytes: usize, mut times: Vec<Duration>) -> String {
    times.sort();
    let rate = |time: Duration| bytes as f64 / time.as_secs_f64() / 1e6;
    let at = |fraction: f64| times[((times.len() - 1) as f64 * fraction).round() as usize];
    // The fastest run has the highest rate: p90 of throughput is p10 of time.
    format!(
        "median {:7.1} MB/s  p10 {:7.1}  p90 {:7.1}",
        rate(at(0.5)),
        rate(at(0.9)),
        rate(at(0.1))
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    println!("streaming parse throughput (MB/s of SSE), {READ_SIZE}-byte reads");
    for protocol in PROTOCOLS {
        let server = ScriptedModel::start(script(1)).await.unwrap();
        let url = format!("http://{}{}", server.address(), protocol.path);
        let request =
            json!({"model": "bench", "stream": true, "stream_options": {"include_usage": true}});
        let body = http
            .post(url)
            .json(&request)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let events = body.windows(2).filter(|pair| pair == b"\n\n").count();

        let mut times = Vec::new();
        for _ in 0..RUNS_FROM_BYTES {
            let chunks = futures::stream::iter(
                body.chunks(READ_SIZE)
                    .map(Ok::<_, std::io::Error>)
                    .collect::<Vec<_>>(),
            );
            let started = Instant::now();
            let decoded = decode_event_stream(protocol.provider, chunks)
                .await
                .unwrap();
            times.push(started.elapsed());
            assert!(decoded.len() > 1000);
        }
        println!(
            "{:<17} from bytes     {}  ({} KiB, {events} events)",
            protocol.name,
            summary(body.len(), times),
            body.len() / 1024
        );

        let server = ScriptedModel::start(script(RUNS_OVER_LOOPBACK + 1))
            .await
            .unwrap();
        let client = client(protocol.provider, &server);
        let request = ModelRequest {
            model: "bench".into(),
            system: "bench".into(),
            messages: vec![Message::User {
                content: "go".into(),
            }],
            tools: vec![],
            max_output_tokens: None,
        };
        let cancel = CancellationToken::new();
        // One warm-up call opens the connection.
        client
            .complete(&request, &cancel, &mut |_| {})
            .await
            .unwrap();
        let mut times = Vec::new();
        for _ in 0..RUNS_OVER_LOOPBACK {
            let started = Instant::now();
            let response = client
                .complete(&request, &cancel, &mut |_| {})
                .await
                .unwrap();
            times.push(started.elapsed());
            assert_eq!(response.tool_calls.len(), 40);
        }
        println!(
            "{:<17} over loopback {}",
            protocol.name,
            summary(body.len(), times)
        );
    }
}
