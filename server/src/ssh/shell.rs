//! The few shell lines muster sends. Nothing host- or user-supplied is interpolated: commands
//! are quoted as one word (or sent on stdin), ids and paths are validated to plain characters
//! *and* quoted, numbers are numbers.

use std::time::Duration;

/// Largest command muster sends (it travels in one exec request or on stdin).
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;

/// Quotes `s` as one POSIX shell word.
pub fn quote(s: &str) -> Result<String, String> {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .map_err(|_| "the command contains a NUL byte".to_string())
}

/// Whole seconds, rounded up, at least 1 (`timeout` takes seconds here).
pub fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// `exec timeout --kill-after=G T sh -c '<command>'`: the host ends the command (TERM to its
/// process group, KILL after G) at the deadline T itself. muster's own TERM over the channel
/// is only a second try: OpenSSH's sshd did not deliver it to the command in our tests, and
/// after a lost connection nothing would. The host's exit (status 124) then arrives within
/// the grace and muster reports `TimedOut`.
pub fn with_remote_timeout(
    command: &str,
    timeout: Duration,
    grace: Duration,
) -> Result<String, String> {
    check_command(command)?;
    Ok(format!(
        "exec timeout --kill-after={g}s {t}s sh -c {c}",
        g = ceil_secs(grace),
        t = ceil_secs(timeout),
        c = quote(command)?
    ))
}

/// A command muster is willing to send.
pub fn check_command(command: &str) -> Result<(), String> {
    if command.trim().is_empty() {
        return Err("the command is empty".into());
    }
    if command.len() > MAX_COMMAND_BYTES {
        return Err(format!(
            "the command is longer than {MAX_COMMAND_BYTES} bytes"
        ));
    }
    if command.contains('\0') {
        return Err("the command contains a NUL byte".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_one_quoted_word() {
        let line = with_remote_timeout(
            "echo 'a' $HOME; rm -rf /x",
            Duration::from_millis(1500),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(
            line.starts_with("exec timeout --kill-after=5s 2s sh -c "),
            "{line}"
        );
        let word = line.trim_start_matches("exec timeout --kill-after=5s 2s sh -c ");
        assert_eq!(
            shlex::split(word).unwrap(),
            vec!["echo 'a' $HOME; rm -rf /x".to_string()]
        );
    }

    #[test]
    fn bad_commands_are_refused() {
        assert!(check_command("").is_err());
        assert!(check_command("a\0b").is_err());
        assert!(check_command(&"x".repeat(MAX_COMMAND_BYTES + 1)).is_err());
    }
}
