//! The `ringline` binary: parse the command line, start logging, hand over to `cli::run`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = ringline::cli::Cli::parse();
    ringline::telemetry::init(args.verbose);
    match ringline::cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
