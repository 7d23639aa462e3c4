//! `nightshift doctor`

use std::process::ExitCode;

use crate::args::DoctorArgs;
use crate::output::{Failure, print_json};

pub fn run(args: DoctorArgs) -> Result<ExitCode, Failure> {
    let report = nightshift_sandbox::doctor();
    if args.json {
        print_json(&report)?;
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
    }
    Ok(if report.can_isolate() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
