//! `muster`: the operator's command-line tool for the muster fleet inventory server.
//!
//! This file only parses the command line, runs the command, and turns any failure into one
//! `error: ...` line and exit code 1 (clap's usage errors keep clap's format and exit code 2).

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

mod args;
mod client;
mod commands;
mod config;
mod errors;
mod kinds;
mod manifest;
mod output;
mod safe;

fn main() -> ExitCode {
    let matches = args::Cli::command().get_matches();
    let cli = match args::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let sources = config::Sources {
        token: matches.value_source("token"),
        token_file: matches.value_source("token_file"),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(commands::run(cli, sources));
    // Do not wait for stray background work (e.g. a half-open connection) on the way out.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<errors::PipeClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<errors::Reported>().is_some() => ExitCode::FAILURE,
        Err(e) => fail(&e),
    }
}

/// Prints the error as exactly one line.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", one_line(e));
    ExitCode::FAILURE
}

/// The error chain on one line; a status message may quote host-supplied text, so no escape
/// sequence reaches the terminal.
fn one_line(e: &anyhow::Error) -> String {
    let message = format!("{e:#}");
    let words: Vec<&str> = message.split_whitespace().collect();
    safe::line(&words.join(" ")).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_are_one_inert_line() {
        let status = tonic::Status::failed_precondition("host web-07\u{1b}]0;x\u{7} is\nRUNNING");
        let e = anyhow::Error::new(crate::errors::RpcError(status)).context("campaign retry");
        assert_eq!(
            super::one_line(&e),
            "campaign retry: FAILED_PRECONDITION: host web-07\\x1b]0;x\\x07 is RUNNING"
        );
    }
}
