//! `nightshift doctor`

use std::process::ExitCode;

use crate::args::DoctorArgs;
use crate::home::Home;
use crate::output::{Failure, print_json};
use crate::toolchains::hints::{self, HostLookup};

pub fn run(args: DoctorArgs) -> Result<ExitCode, Failure> {
    let report = nightshift_sandbox::doctor();
    // Not tied to a repository: every ecosystem's tools.
    let toolchains = Home::from_env().and_then(|home| toolchain_report(&home, hints::ALL_TOOLS));
    if args.json {
        print_json(&report)?;
        // Standard output stays one JSON document.
        match &toolchains {
            Ok(Some(text)) => eprint!("{text}"),
            Ok(None) => {}
            Err(failure) => eprintln!("{failure}"),
        }
    } else {
        print!("{report}");
        if !report.can_isolate() {
            println!();
            println!(
                "Tasks cannot run isolated here. Fix the above, or set NIGHTSHIFT_SANDBOX=unisolated"
            );
            println!(
                "to run the agent's commands directly on this host (only for code and prompts you trust)."
            );
        }
        println!();
        match &toolchains {
            Ok(Some(text)) => print!("{text}"),
            Ok(None) => println!(
                "Toolchains: the sandbox finds the same {} as this host's PATH (those installed).",
                hints::ALL_TOOLS.join(", ")
            ),
            Err(failure) => println!("Toolchains: {failure}"),
        }
    }
    Ok(if report.can_isolate() && toolchains.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Which of `tools` this host runs from outside what the sandbox sees, and the `[sandbox]` lines
/// that would show them; `None` when there are none. An invalid `[sandbox]` is the error.
pub fn toolchain_report(home: &Home, tools: &[&'static str]) -> Result<Option<String>, Failure> {
    let settings = home.settings()?;
    let configured = home.host_toolchains()?;
    let host = home.host_paths();
    let path_var = std::env::var_os("PATH");
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .filter(|home| !home.is_empty())
        .map(std::path::PathBuf::from);
    let lookup = HostLookup {
        path_var: path_var.as_deref(),
        rustup_home: rustup_home.as_deref(),
    };
    let unseen = hints::unseen_tools(tools, lookup, &configured, &host);
    if unseen.is_empty() {
        return Ok(None);
    }
    Ok(Some(hints::render(
        &unseen,
        &settings.sandbox,
        &home.config_file(),
        host.home.as_deref(),
    )))
}
