//! `muster-agent`: reports a host's hardware and OS state to musterd.
//!
//! The collectors, enrollment and offline spool arrive with the agent issue; until then the
//! binary says so and exits non-zero rather than pretending to report.

fn main() -> std::process::ExitCode {
    eprintln!("muster-agent: not built yet (collectors and enrollment come with the agent issue)");
    std::process::ExitCode::from(2)
}
