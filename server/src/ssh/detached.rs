//! Detached, recoverable runs: a command started under an intent id keeps running when the
//! connection or musterd dies, and leaves its exit code and output in a run directory on the
//! host (`<run dir>/<intent id>/{cmd,pid,boot,out,err,rc}`), where a later session reads them.
//!
//! Safety: the run directory is created with `mkdir` (atomic), so a second start of the same
//! intent never runs the command twice: it reports `AlreadyStarted` and the caller polls. The
//! command travels on stdin with its byte count, and is launched only if all of it arrived.

use std::time::Duration;

use super::capture::CapturedStream;
use super::error::SshError;
use super::readloop::{ExecResult, ExitOutcome};
use super::session::SshSession;
use super::shell::{ceil_secs, check_command, quote};

/// The id a campaign intent gives a run: `[A-Za-z0-9-]`, 1..=64, not starting with `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IntentId(String);

impl IntentId {
    pub fn new(s: &str) -> Result<Self, SshError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('-')
            && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(SshError::InvalidTarget(format!(
                "intent id {:?} must be 1-64 characters of [A-Za-z0-9-], not starting with '-'",
                s.chars().take(80).collect::<String>()
            )))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where runs live on hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunDir {
    /// Under the login user's `$HOME` (default `.muster/runs`): works for any user.
    Home(String),
    /// An absolute directory (e.g. `/var/lib/muster/runs`) the user can write.
    Absolute(String),
}

impl Default for RunDir {
    fn default() -> Self {
        Self::Home(".muster/runs".into())
    }
}

impl RunDir {
    /// Checks the path: `[A-Za-z0-9._/-]`, no `..`, absolute only for `Absolute`.
    pub fn validate(&self) -> Result<(), SshError> {
        let (p, abs) = match self {
            Self::Home(p) => (p, false),
            Self::Absolute(p) => (p, true),
        };
        let ok = !p.is_empty()
            && p.len() <= 200
            && p.starts_with('/') == abs
            && !p.split('/').any(|c| c == "..")
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-'));
        if ok {
            Ok(())
        } else {
            Err(SshError::InvalidTarget(format!(
                "run directory {p:?} must be {} of [A-Za-z0-9._/-] without '..'",
                if abs {
                    "an absolute path"
                } else {
                    "a path relative to $HOME"
                }
            )))
        }
    }

    /// The shell expression for one run's directory (validated parts, quoted).
    fn expr(&self, id: &IntentId) -> Result<String, SshError> {
        self.validate()?;
        let q = |s: &str| quote(s).map_err(SshError::InvalidTarget);
        Ok(match self {
            Self::Home(p) => format!(
                "\"$HOME\"/{}",
                q(&format!("{}/{}", p.trim_end_matches('/'), id.0))?
            ),
            Self::Absolute(p) => q(&format!("{}/{}", p.trim_end_matches('/'), id.0))?,
        })
    }
}

/// What `start_detached` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachedStart {
    /// The command was launched now.
    Started,
    /// A run with this intent id exists already (launched before): poll it, never rerun.
    AlreadyStarted,
}

/// What the host knows of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetachedStatus {
    /// Its process is alive.
    Running,
    /// It ended; `outcome` is `Exited(rc)` with the shell's status (128+n after a signal),
    /// or `TimedOut` when the host's `timeout` ended it (status 124).
    Finished(ExecResult),
    /// It was started here but neither runs nor left an exit code (host rebooted, killed).
    Lost { reason: String },
    /// No trace of it on the host.
    Unknown,
}

// Exit codes of the start script.
const START_FAILED: u32 = 90;
const START_EXISTS: u32 = 91;
const START_SHORT: u32 = 92;

impl SshSession {
    /// [`start`] on this session.
    pub async fn start_detached(
        &self,
        dir: &RunDir,
        id: &IntentId,
        command: &str,
        timeout: Duration,
    ) -> Result<DetachedStart, SshError> {
        start(self, dir, id, command, timeout).await
    }

    /// [`poll`] on this session.
    pub async fn poll_detached(
        &self,
        dir: &RunDir,
        id: &IntentId,
    ) -> Result<DetachedStatus, SshError> {
        poll(self, dir, id).await
    }
}

/// Starts `command` detached under `id`; the host's `timeout` ends it after `timeout`
/// (TERM, then KILL after the session's grace). The run and the start script both record
/// the pid (the same one), each through its own temporary file: with one shared file, the
/// slower `mv` failed and a launched run was reported as a failed start.
pub async fn start(
    s: &SshSession,
    dir: &RunDir,
    id: &IntentId,
    command: &str,
    timeout: Duration,
) -> Result<DetachedStart, SshError> {
    check_command(command).map_err(SshError::InvalidTarget)?;
    let d = dir.expr(id)?;
    let script = format!(
        r#"umask 077
d={d}
mkdir -p -- "${{d%/*}}" || exit {START_FAILED}
if ! mkdir -- "$d" 2>/dev/null; then [ -d "$d" ] && exit {START_EXISTS}; exit {START_FAILED}; fi
cat > "$d/cmd" || exit {START_FAILED}
[ "$(wc -c < "$d/cmd")" -eq {n} ] || {{ mv -- "$d/cmd" "$d/cmd.short"; echo 'command arrived incomplete' >&2; exit {START_SHORT}; }}
cat /proc/sys/kernel/random/boot_id > "$d/boot" 2>/dev/null
setsid sh -c 'd=$1; echo $$ > "$d/pid.c" && mv -f "$d/pid.c" "$d/pid"; timeout --kill-after={g}s {t}s sh "$d/cmd" < /dev/null > "$d/out" 2> "$d/err"; echo $? > "$d/rc.tmp" && mv "$d/rc.tmp" "$d/rc"' muster-run "$d" < /dev/null > /dev/null 2>&1 &
echo $! > "$d/pid.p" && mv -f "$d/pid.p" "$d/pid"
"#,
        n = command.len(),
        g = ceil_secs(s.settings().term_grace),
        t = ceil_secs(timeout),
    );
    let r = s
        .run_line(
            script.as_bytes(),
            Some(command.as_bytes()),
            Some(s.settings().connect_timeout),
        )
        .await?;
    match r.outcome {
        ExitOutcome::Exited(0) => Ok(DetachedStart::Started),
        ExitOutcome::Exited(START_EXISTS) => Ok(DetachedStart::AlreadyStarted),
        ExitOutcome::Exited(code) => Err(SshError::Helper {
            addr: s.addr().to_string(),
            code: Some(code),
            stderr: r.stderr.to_text_lossy(),
        }),
        // It may or may not have launched: a poll tells.
        other => Err(SshError::SessionLost {
            addr: s.addr().to_string(),
            reason: format!("the start helper ended with {other:?}"),
        }),
    }
}

/// Looks the run up on the host; output is fetched (bounded) once it has finished.
pub async fn poll(s: &SshSession, dir: &RunDir, id: &IntentId) -> Result<DetachedStatus, SshError> {
    let d = dir.expr(id)?;
    let script = format!(
        r#"d={d}
[ -d "$d" ] || {{ echo absent; exit 0; }}
st() {{ printf 'finished %s %s %s\n' "$(cat "$d/rc")" "$(wc -c < "$d/out")" "$(wc -c < "$d/err")"; }}
[ -f "$d/rc" ] && {{ st; exit 0; }}
b=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)
if [ -f "$d/boot" ] && [ "$(cat "$d/boot")" != "$b" ]; then echo lost the host rebooted since the run started; exit 0; fi
p=$(cat "$d/pid" 2>/dev/null)
case "$p" in ''|*[!0-9]*) echo lost no process id was recorded; exit 0;; esac
# Alive and not a zombie (a container's init may never reap it).
if [ -r "/proc/$p/stat" ]; then
  s=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -c1)
  [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ] && {{ echo running; exit 0; }}
elif kill -0 "$p" 2>/dev/null; then echo running; exit 0
fi
[ -f "$d/rc" ] && {{ st; exit 0; }}
echo lost its process is gone and it left no exit code
"#
    );
    let state_err = |reason: String| SshError::RunState {
        addr: s.addr().to_string(),
        intent_id: id.0.clone(),
        reason,
    };
    let r = s
        .run_line(script.as_bytes(), None, Some(s.settings().connect_timeout))
        .await?;
    if r.outcome != ExitOutcome::Exited(0) {
        return Err(state_err(format!(
            "the probe ended with {:?}: {}",
            r.outcome,
            r.stderr.to_text_lossy()
        )));
    }
    let text = String::from_utf8_lossy(&r.stdout.head).into_owned();
    let line = text.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    match words.next() {
        Some("absent") => Ok(DetachedStatus::Unknown),
        Some("running") => Ok(DetachedStatus::Running),
        Some("lost") => Ok(DetachedStatus::Lost {
            reason: words.collect::<Vec<_>>().join(" "),
        }),
        Some("finished") => {
            let nums: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
            let [rc, out_len, err_len] = nums[..] else {
                return Err(state_err(format!("unreadable status line {line:?}")));
            };
            let rc = u32::try_from(rc).map_err(|_| state_err(format!("exit code {rc}")))?;
            fetch(s, &d, rc, out_len, err_len).await
        }
        _ => Err(state_err(format!("unexpected probe output {line:?}"))),
    }
}

/// Reads a finished run's output, at most the capture bound per stream (head and tail).
async fn fetch(
    s: &SshSession,
    d: &str,
    rc: u32,
    out_len: u64,
    err_len: u64,
) -> Result<DetachedStatus, SshError> {
    let limit = s.settings().capture_bytes;
    let (h, t) = (limit / 2, limit - limit / 2);
    let script = format!(
        r#"d={d}
f() {{ if [ "$(wc -c < "$1")" -le {limit} ]; then cat "$1"; else head -c {h} "$1"; tail -c {t} "$1"; fi; }}
f "$d/out"; f "$d/err" >&2
"#
    );
    let r = s
        .run_line(script.as_bytes(), None, Some(s.settings().connect_timeout))
        .await?;
    let outcome = if rc == 124 {
        ExitOutcome::TimedOut
    } else {
        ExitOutcome::Exited(rc)
    };
    Ok(DetachedStatus::Finished(ExecResult {
        outcome,
        stdout: remote_capture(r.stdout.kept(), out_len, limit),
        stderr: remote_capture(r.stderr.kept(), err_len, limit),
        duration: Duration::ZERO,
        connection_lost: false,
    }))
}

/// Rebuilds head/tail from what the host sent: all of the file, or its head then its tail.
fn remote_capture(got: Vec<u8>, size: u64, limit: usize) -> CapturedStream {
    let n = got.len() as u64;
    if size <= limit as u64 || got.len() < limit {
        let total = size.max(n);
        return CapturedStream {
            head: got,
            tail: Vec::new(),
            total_bytes: total,
            truncated_bytes: total - n,
        };
    }
    let mut head = got;
    let tail = head.split_off(limit / 2);
    CapturedStream {
        head,
        tail,
        total_bytes: size,
        truncated_bytes: size - n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_ids_are_plain() {
        assert!(IntentId::new("c1-h2-s3-a1").is_ok());
        for bad in ["", "-x", "a/b", "a b", "a;b", "a$(x)", "ä", &"a".repeat(65)] {
            assert!(IntentId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn run_dirs_are_validated_and_quoted() {
        let id = IntentId::new("abc").unwrap();
        assert_eq!(
            RunDir::default().expr(&id).unwrap(),
            "\"$HOME\"/.muster/runs/abc"
        );
        assert_eq!(
            RunDir::Absolute("/var/lib/muster/runs/".into())
                .expr(&id)
                .unwrap(),
            "/var/lib/muster/runs/abc"
        );
        for bad in [
            RunDir::Home("/abs".into()),
            RunDir::Absolute("rel".into()),
            RunDir::Home("a/../b".into()),
            RunDir::Home("a b".into()),
            RunDir::Absolute("/x;rm".into()),
        ] {
            assert!(bad.expr(&id).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn remote_capture_counts_what_the_host_left_out() {
        let c = remote_capture(b"abcdef".to_vec(), 100, 6);
        assert_eq!(
            (c.head.as_slice(), c.tail.as_slice()),
            (&b"abc"[..], &b"def"[..])
        );
        assert_eq!((c.total_bytes, c.truncated_bytes), (100, 94));
        let c = remote_capture(b"abc".to_vec(), 3, 6);
        assert_eq!((c.head.as_slice(), c.truncated_bytes), (&b"abc"[..], 0));
    }
}
