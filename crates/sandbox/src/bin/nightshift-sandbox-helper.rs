//! The sandbox helper on its own, so that this crate's tests and benchmarks can start sessions
//! without the `nightshift` binary (which dispatches to the same entry point).

fn main() {
    nightshift_sandbox::run_helper_if_requested();
    eprintln!(
        "nightshift-sandbox-helper is started by nightshift with {}; it has nothing to do on its own",
        nightshift_sandbox::HELPER_ARG
    );
    std::process::exit(2);
}
