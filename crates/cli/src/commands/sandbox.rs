//! `nightshift sandbox exec`: one command in a fresh sandbox, exactly as an agent's command
//! runs, for people debugging their setup.

use std::io::Write;
use std::process::ExitCode;

use nightshift_sandbox::{
    ExecRequest, Limits, NetworkPolicy, SandboxSession, SessionOptions, SessionSpec,
};
use tokio_util::sync::CancellationToken;

use crate::args::{SandboxArgs, SandboxCommand, SandboxExecArgs};
use crate::home::Home;
use crate::output::Failure;

pub async fn run(args: SandboxArgs) -> Result<ExitCode, Failure> {
    match args.command {
        SandboxCommand::Exec(args) => exec(args).await,
    }
}

async fn exec(args: SandboxExecArgs) -> Result<ExitCode, Failure> {
    let home = Home::from_env()?;
    let sandbox = home.namespaced(&home.host_toolchains()?)?;
    let network = match args.network.trim() {
        "none" | "" => NetworkPolicy::None,
        hosts => NetworkPolicy::Allow(
            hosts
                .split(',')
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect(),
        ),
    };
    let mut limits: Limits = sandbox.config().limits.clone();
    if let Some(memory) = args.memory {
        limits.memory_bytes = Some(memory);
    }
    if let Some(pids) = args.pids {
        limits.pids = Some(pids);
    }
    let workspace = std::path::absolute(&args.workspace).map_err(|err| {
        Failure::usage(format!("--workspace {}: {err}", args.workspace.display()))
    })?;
    let (events, mut egress) = tokio::sync::mpsc::unbounded_channel();
    let options = SessionOptions {
        network: Some(network),
        limits: Some(limits),
        egress_events: Some(events),
        ..SessionOptions::default()
    };
    let session = sandbox
        .start_with(SessionSpec::new(workspace), options)
        .await
        .map_err(|err| {
            Failure::error(format!("cannot start the sandbox: {err}"))
                .with_hint(Some("run `nightshift doctor`".into()))
        })?;
    let mut request = ExecRequest::new(shell_join(&args.command));
    request.timeout = args.timeout;
    request.output_limit = 16 * 1024 * 1024;
    let cancel = CancellationToken::new();
    let interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupt.cancel();
        }
    });
    let result = session.exec(request, &cancel).await;
    let _ = session.close().await;
    let output = result
        .map_err(|err| Failure::error(format!("the sandbox could not run the command: {err}")))?;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(output.output.as_bytes());
    let _ = stdout.flush();
    while let Ok(event) = egress.try_recv() {
        eprintln!(
            "egress: {} {}:{} {:?} ({} bytes up, {} down)",
            event.method, event.host, event.port, event.verdict, event.bytes_up, event.bytes_down
        );
    }
    if let nightshift_sandbox::ExitStatus::LimitExceeded(limit) = output.status {
        eprintln!("nightshift: {}", limit.explain());
    }
    Ok(ExitCode::from(output.status.code().clamp(0, 255) as u8))
}

/// Quotes each word for `sh`, so the command runs with exactly these arguments.
fn shell_join(words: &[String]) -> String {
    if let [single] = words {
        // One word may be a whole command line: `sandbox exec -- 'make && make test'`.
        return single.clone();
    }
    words
        .iter()
        .map(|word| {
            if !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
