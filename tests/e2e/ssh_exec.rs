//! The SSH executor (muster-server's `ssh` module) against real `sshd` on loopback: outcomes,
//! bounded capture, deadlines, the host-key pin, unreachable hosts, detached runs recovered
//! after the connection is gone, and the session limit.

use std::path::Path;
use std::time::Duration;

use muster_server::ssh::{
    DetachedStart, DetachedStatus, Disposition, ExitOutcome, HostKeyPin, IntentId, RunDir,
    SshError, SshExecutor, SshSession, SshSettings, SshTarget,
};
use muster_tests::ssh::SshFleet;

struct Host {
    fleet: SshFleet,
    port: u16,
    key: Vec<u8>,
}

fn host() -> Host {
    let mut fleet = SshFleet::new().unwrap();
    let port = fleet.start_host().unwrap();
    let key = std::fs::read(&fleet.client_key).unwrap();
    Host { fleet, port, key }
}

impl Host {
    fn pin(&self) -> HostKeyPin {
        HostKeyPin::parse(&self.fleet.host_public_key(self.port).unwrap()).unwrap()
    }
    fn target_with(&self, pin: HostKeyPin) -> SshTarget {
        SshTarget::new("127.0.0.1", self.port, "root", &self.key, pin).unwrap()
    }
    fn target(&self) -> SshTarget {
        self.target_with(self.pin())
    }
    fn run_dir(&self) -> RunDir {
        RunDir::Absolute(self.fleet.dir.path().join("runs").display().to_string())
    }
    fn executor(&self, settings: SshSettings, max: usize) -> SshExecutor {
        SshExecutor::new(settings, self.run_dir(), max).unwrap()
    }
}

fn settings() -> SshSettings {
    SshSettings {
        connect_timeout: Duration::from_secs(10),
        term_grace: Duration::from_secs(2),
        ..SshSettings::default()
    }
}

const MIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn ssh_success_nonzero_exit_and_signal() {
    let h = host();
    let ex = h.executor(settings(), 4);
    let t = h.target();
    let r = ex.exec(&t, "echo hello; echo oops >&2", MIN).await.unwrap();
    assert_eq!(r.outcome, ExitOutcome::Exited(0));
    assert!(r.outcome.is_success());
    assert_eq!(r.stdout.head, b"hello\n");
    assert_eq!(r.stderr.head, b"oops\n");

    // A fingerprint-only pin (as SshEndpoint stores it) works too.
    let fp = HostKeyPin::parse(h.pin().fingerprint()).unwrap();
    let r = ex.exec(&h.target_with(fp), "exit 7", MIN).await.unwrap();
    assert_eq!(r.outcome, ExitOutcome::Exited(7));
    assert!(!r.outcome.is_success());

    let r = ex.exec(&t, "kill -TERM $$", MIN).await.unwrap();
    match &r.outcome {
        ExitOutcome::Signaled { signal, .. } => assert_eq!(signal, "TERM"),
        other => panic!("expected a TERM signal, got {other:?}"),
    }
    assert!(!r.outcome.is_success());
}

#[tokio::test]
async fn ssh_eof_before_exit_status_keeps_the_status() {
    let h = host();
    let ex = h.executor(settings(), 4);
    let r = ex
        .exec(
            &h.target(),
            "echo before; exec >&- 2>&-; sleep 1; exit 3",
            MIN,
        )
        .await
        .unwrap();
    assert_eq!(r.outcome, ExitOutcome::Exited(3));
    assert_eq!(r.stdout.head, b"before\n");
}

/// `seq 1 n` output length, computed here.
fn seq_len(n: u64) -> u64 {
    (1..=n).map(|i| i.to_string().len() as u64 + 1).sum()
}

#[tokio::test]
async fn ssh_flood_is_read_to_the_end_with_bounded_head_and_tail() {
    let h = host();
    let limit = 64 * 1024;
    let ex = h.executor(
        SshSettings {
            capture_bytes: limit,
            ..settings()
        },
        4,
    );
    // ~21 MB on stdout and ~7 MB on stderr at once, then a status after all of it.
    let r = ex
        .exec(&h.target(), "seq 1 3000000; seq 1 1000000 >&2; exit 5", MIN)
        .await
        .unwrap();
    assert_eq!(r.outcome, ExitOutcome::Exited(5));
    let total = seq_len(3_000_000);
    assert_eq!(r.stdout.total_bytes, total);
    assert_eq!(r.stdout.truncated_bytes, total - limit as u64);
    assert_eq!(r.stdout.head.len() + r.stdout.tail.len(), limit);
    assert!(r.stdout.head.starts_with(b"1\n2\n3\n"));
    assert!(r.stdout.tail.ends_with(b"2999999\n3000000\n"));
    let etotal = seq_len(1_000_000);
    assert_eq!(r.stderr.total_bytes, etotal);
    assert_eq!(r.stderr.truncated_bytes, etotal - limit as u64);
    assert!(r.stderr.tail.ends_with(b"999999\n1000000\n"));
}

#[tokio::test]
async fn ssh_deadline_kills_a_long_command_and_reports_timed_out() {
    let h = host();
    let s = settings();
    let grace = s.term_grace;
    let ex = h.executor(s, 4);
    let deadline = Duration::from_secs(2);
    // A distinctive duration, to find the process afterwards.
    let r = ex
        .exec(&h.target(), "sleep 600.4242", deadline)
        .await
        .unwrap();
    assert_eq!(r.outcome, ExitOutcome::TimedOut);
    assert!(
        r.duration <= deadline + grace + Duration::from_millis(500),
        "took {:?}",
        r.duration
    );
    // Nothing of it is left on the host (the bracket keeps pgrep from matching itself).
    let left = ex
        .exec(&h.target(), "pgrep -f 'sleep 600[.]4242' || echo none", MIN)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&left.stdout.head), "none\n");
}

#[tokio::test]
async fn ssh_host_key_mismatch_runs_nothing_and_names_both_fingerprints() {
    let mut h = host();
    let other = h.fleet.start_host().unwrap();
    let wrong = HostKeyPin::parse(&h.fleet.host_public_key(other).unwrap()).unwrap();
    let right = h.pin();
    let marker = h.fleet.dir.path().join("must-not-exist");
    let cmd = format!("touch {}", marker.display());
    let ex = h.executor(settings(), 4);
    for pin in [
        wrong.clone(),
        HostKeyPin::parse(wrong.fingerprint()).unwrap(),
    ] {
        let e = ex.exec(&h.target_with(pin), &cmd, MIN).await.unwrap_err();
        match &e {
            SshError::HostKeyMismatch { expected, seen, .. } => {
                assert_eq!(expected, wrong.fingerprint());
                assert_eq!(seen, right.fingerprint());
            }
            other => panic!("expected a host key mismatch, got {other}"),
        }
        assert_eq!(e.disposition(), Disposition::Failed);
        assert_eq!(e.code(), "HOST_KEY_MISMATCH");
        assert!(e.to_string().contains(right.fingerprint()), "{e}");
    }
    assert!(
        !marker.exists(),
        "a command ran on a host with the wrong key"
    );
    // The same command with the right pin does run: the marker test can fail.
    ex.exec(&h.target(), &cmd, MIN).await.unwrap();
    assert!(marker.exists());
}

#[tokio::test]
async fn ssh_unreachable_silent_and_refusing_hosts_are_distinct_failures() {
    let h = host();
    let ex = h.executor(
        SshSettings {
            connect_timeout: Duration::from_secs(1),
            ..settings()
        },
        4,
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let t = SshTarget::new("127.0.0.1", port, "root", &h.key, h.pin()).unwrap();
    let e = ex.exec(&t, "true", MIN).await.unwrap_err();
    assert!(matches!(e, SshError::Unreachable { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::Failed);

    // Accepts TCP, never says a word: the connect timeout ends it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sport = silent.local_addr().unwrap().port();
    let t = SshTarget::new("127.0.0.1", sport, "root", &h.key, h.pin()).unwrap();
    let e = ex.exec(&t, "true", MIN).await.unwrap_err();
    assert!(matches!(e, SshError::ConnectTimeout { .. }), "{e}");

    // A key the host does not know.
    let other = h.fleet.dir.path().join("stranger");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    let t = SshTarget::new(
        "127.0.0.1",
        h.port,
        "root",
        &std::fs::read(&other).unwrap(),
        h.pin(),
    )
    .unwrap();
    let e = ex.exec(&t, "true", MIN).await.unwrap_err();
    assert!(matches!(e, SshError::AuthRefused { .. }), "{e}");
}

fn read_count(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn ssh_detached_run_survives_a_dropped_connection_and_is_recovered() {
    let h = host();
    let ex = h.executor(settings(), 4);
    let t = h.target();
    let counter = h.fleet.dir.path().join("runs-of-step");
    let id = IntentId::new("c1-host0-s0-a1").unwrap();
    let cmd = format!(
        "echo run >> {c}; sleep 2; echo done; echo 'it went \"badly\"' >&2; exit 7",
        c = counter.display()
    );

    // Start on a session that is then dropped without a goodbye (as when musterd dies).
    let s = SshSession::connect(&t, std::sync::Arc::new(settings()))
        .await
        .unwrap();
    assert_eq!(
        s.start_detached(&h.run_dir(), &id, &cmd, MIN)
            .await
            .unwrap(),
        DetachedStart::Started
    );
    drop(s);

    // A later session sees it running; starting it again does not run it twice.
    assert_eq!(ex.poll(&t, &id).await.unwrap(), DetachedStatus::Running);
    assert_eq!(
        ex.start_detached(&t, &id, &cmd, MIN).await.unwrap(),
        DetachedStart::AlreadyStarted
    );
    match ex.wait_detached(&t, &id, MIN).await.unwrap() {
        DetachedStatus::Finished(r) => {
            assert_eq!(r.outcome, ExitOutcome::Exited(7));
            assert_eq!(r.stdout.head, b"done\n");
            assert_eq!(r.stderr.head, b"it went \"badly\"\n");
        }
        other => panic!("expected a finished run, got {other:?}"),
    }
    assert_eq!(read_count(&counter), 1, "the step ran more than once");
    // Polling a finished run again gives the same answer (the engine may poll after a crash).
    assert!(matches!(
        ex.poll(&t, &id).await.unwrap(),
        DetachedStatus::Finished(_)
    ));

    // No trace of an intent that never started.
    let never = IntentId::new("c1-host0-s9-a1").unwrap();
    assert_eq!(ex.poll(&t, &never).await.unwrap(), DetachedStatus::Unknown);
}

#[tokio::test]
async fn ssh_detached_run_whose_process_died_is_lost_not_running() {
    let h = host();
    let ex = h.executor(settings(), 4);
    let t = h.target();
    let id = IntentId::new("c1-host0-s1-a1").unwrap();
    assert_eq!(
        ex.start_detached(&t, &id, "sleep 30", Duration::from_secs(5))
            .await
            .unwrap(),
        DetachedStart::Started
    );
    let RunDir::Absolute(dir) = h.run_dir() else {
        unreachable!()
    };
    let pid = std::fs::read_to_string(Path::new(&dir).join(id.as_str()).join("pid")).unwrap();
    // Kill the run's wrapper (the process started for this test, by its id).
    let st = std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(st.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    match ex.poll(&t, &id).await.unwrap() {
        DetachedStatus::Lost { reason } => assert!(reason.contains("gone"), "{reason}"),
        other => panic!("expected a lost run, got {other:?}"),
    }
}

#[tokio::test]
async fn ssh_executor_bounds_the_sessions_open_at_once() {
    let h = host();
    let ex = h.executor(settings(), 2);
    let t = h.target();
    let log = h.fleet.dir.path().join("concurrency");
    let cmd = format!(
        "echo start >> {l}; sleep 0.4; echo end >> {l}",
        l = log.display()
    );
    let runs = (0..6).map(|_| ex.exec(&t, &cmd, MIN));
    for r in futures::future::join_all(runs).await {
        assert_eq!(r.unwrap().outcome, ExitOutcome::Exited(0));
    }
    let (mut open, mut max) = (0i32, 0i32);
    for l in std::fs::read_to_string(&log).unwrap().lines() {
        open += if l == "start" { 1 } else { -1 };
        max = max.max(open);
    }
    assert_eq!(max, 2, "at most 2 sessions, and the 2 were used");
}
