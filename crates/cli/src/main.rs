//! `nightshift`: delegate coding tasks to an agent that works in the background and hands back
//! a branch.

mod args;
mod backend;
mod commands;
mod demo;
mod home;
mod output;
mod render;
mod toolchains;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    // The sandbox re-executes this binary as its helper; that must happen before any thread.
    nightshift_sandbox::run_helper_if_requested();
    // reqwest is built without a default TLS provider so that only ring is compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        match dispatch(cli.command).await {
            Ok(code) => code,
            Err(err) => err.report(),
        }
    })
}

async fn dispatch(command: Command) -> Result<ExitCode, output::Failure> {
    match command {
        Command::Run(args) => commands::run::run(args).await,
        Command::Ls(args) => commands::ls::run(args).await,
        Command::Show(args) => commands::show::run(args).await,
        Command::Compare(args) => commands::compare::run(args).await,
        Command::Mcp => commands::mcp::run().await,
        Command::Plan(args) => commands::plan::run(args).await,
        Command::Logs(args) => commands::logs::run(args).await,
        Command::Diff(args) => commands::diff::run(args).await,
        Command::Apply(args) => commands::apply::run(args).await,
        Command::Cancel(args) => commands::cancel::run(args).await,
        Command::Say(args) => commands::say::run(args).await,
        Command::Review(args) => commands::review::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Sandbox(args) => commands::sandbox::run(args).await,
        Command::Env(args) => commands::env::run(args).await,
        Command::Worker(args) => commands::worker::run_worker(args).await,
        Command::Serve(args) => commands::serve::run(args).await,
        Command::Token(args) => commands::token::run(args).await,
        Command::Repo(args) => commands::repo::run(args).await,
        Command::Secret(args) => commands::secret::run(args).await,
        Command::Image(args) => commands::image::run(args).await,
        Command::RunTask(args) => commands::worker::run_task(args).await,
    }
}

fn init_tracing(verbose: bool) {
    let default = if verbose { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIGHTSHIFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
