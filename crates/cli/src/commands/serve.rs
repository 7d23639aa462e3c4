//! `nightshift serve`: the HTTP API, with a worker pool in the same process unless
//! `--workers 0`.

use std::process::ExitCode;
use std::sync::Arc;

use nightshift_model::ProviderConfig;
use nightshift_runner::WorkerConfig;
use nightshift_server::{ServerConfig, ServerState};
use tokio_util::sync::CancellationToken;

use crate::args::ServeArgs;
use crate::home::Home;
use crate::output::Failure;

pub async fn run(args: ServeArgs) -> Result<ExitCode, Failure> {
    let home = Home::from_env()?;
    // Without workers here, the keys that matter are those of the workers elsewhere.
    let runner = home
        .worker_runner(ProviderConfig::from_env())
        .await?
        .with_provider_key_check(args.workers > 0);
    let runner = Arc::new(runner);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|err| Failure::usage(format!("cannot listen on {}: {err}", args.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|err| Failure::error(err.to_string()))?;
    let shutdown = CancellationToken::new();
    super::worker::cancel_on_signals(shutdown.clone());

    let workers = if args.workers > 0 {
        runner.warm_up();
        let config = WorkerConfig {
            concurrency: args.workers,
            ..WorkerConfig::default()
        };
        Some(tokio::spawn(
            runner.clone().run_worker(config, shutdown.clone()),
        ))
    } else {
        None
    };
    let mut server_config = ServerConfig::new(args.model);
    server_config.github_webhook_secret = std::env::var("NIGHTSHIFT_GITHUB_WEBHOOK_SECRET")
        .ok()
        .filter(|secret| !secret.trim().is_empty());
    let state = ServerState::new(runner.clone(), server_config);
    eprintln!(
        "nightshift API on http://{address} ({}); SIGTERM or Ctrl-C stops it",
        match args.workers {
            0 => "no workers in this process".to_string(),
            n => format!("running up to {n} task(s) here"),
        }
    );
    let stop = shutdown.clone();
    let served =
        nightshift_server::serve(listener, state, async move { stop.cancelled().await }).await;
    shutdown.cancel();
    if let Some(workers) = workers {
        match workers.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!("the worker pool stopped: {err}"),
            Err(err) => tracing::error!("the worker pool crashed: {err}"),
        }
    }
    served.map_err(|err| Failure::error(format!("the server failed: {err}")))?;
    Ok(ExitCode::SUCCESS)
}
