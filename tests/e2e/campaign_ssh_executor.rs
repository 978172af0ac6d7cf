//! The campaign engine's SSH executor (`campaigns::remote::SshStepExecutor`) against real
//! `sshd` on loopback: steps run detached under their intent id with output captured, a
//! non-zero exit and a deadline are failures, a host-key mismatch runs nothing, a run is
//! recovered by a new executor without running again, and a reboot step waits until SSH
//! answers again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_server::campaigns::executor::{Executor, Outcome, Recovered, StepKind, StepRequest};
use muster_server::campaigns::remote::{
    RemoteSettings, ResolveError, SshStepExecutor, TargetResolver,
};
use muster_server::ssh::{HostKeyPin, PollBackoff, RunDir, SshExecutor, SshSettings, SshTarget};
use muster_tests::ssh::SshFleet;

/// Hosts by name, as a test sets them up (the real resolver reads the inventory).
#[derive(Debug, Default)]
struct Hosts(Mutex<HashMap<String, SshTarget>>);

impl TargetResolver for Hosts {
    fn resolve(&self, host: &str) -> Result<SshTarget, ResolveError> {
        self.0
            .lock()
            .unwrap()
            .get(host)
            .cloned()
            .ok_or_else(|| ResolveError::NoEndpoint(host.to_string()))
    }
}

struct Fixture {
    fleet: SshFleet,
    port: u16,
    hosts: Arc<Hosts>,
}

fn fixture() -> Fixture {
    let mut fleet = SshFleet::new().unwrap();
    let port = fleet.start_host().unwrap();
    let f = Fixture {
        fleet,
        port,
        hosts: Arc::default(),
    };
    f.pin_host("h0", f.port, f.port);
    f
}

impl Fixture {
    /// Host `name` is sshd on `port`, pinned to the key of the sshd on `pinned_port`.
    fn pin_host(&self, name: &str, port: u16, pinned_port: u16) {
        let key = std::fs::read(&self.fleet.client_key).unwrap();
        let pin = HostKeyPin::parse(&self.fleet.host_public_key(pinned_port).unwrap()).unwrap();
        let t = SshTarget::new("127.0.0.1", port, "root", &key, pin).unwrap();
        self.hosts.0.lock().unwrap().insert(name.into(), t);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.fleet.dir.path().join(name)
    }

    fn executor(&self, remote: RemoteSettings) -> SshStepExecutor {
        let ssh = SshExecutor::new(
            SshSettings {
                connect_timeout: Duration::from_secs(5),
                term_grace: Duration::from_secs(1),
                capture_bytes: 4096,
                ..SshSettings::default()
            },
            RunDir::Absolute(self.path("runs").display().to_string()),
            8,
        )
        .unwrap()
        .with_backoff(PollBackoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(500),
        });
        SshStepExecutor::new(ssh, self.hosts.clone(), remote)
    }
}

fn req(host: &str, intent: &str, kind: StepKind, timeout: Duration) -> StepRequest {
    StepRequest {
        campaign: "c".into(),
        host: host.into(),
        step: "s".into(),
        kind,
        intent_id: intent.into(),
        attempt: 1,
        timeout,
        deadline_unix: 0,
    }
}

fn ssh(cmd: &str) -> StepKind {
    StepKind::Ssh(cmd.into())
}

const MIN: Duration = Duration::from_secs(60);

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn campaign_ssh_step_runs_detached_and_its_output_is_captured() {
    let f = fixture();
    let ex = f.executor(RemoteSettings::default());
    let r = ex
        .run(req(
            "h0",
            "c1-0-s0-1",
            ssh("echo hello; echo oops >&2; seq 1 5000"),
            MIN,
        ))
        .await;
    assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
    assert!(
        r.stdout.head.starts_with(b"hello\n1\n2\n"),
        "{:?}",
        r.stdout
    );
    assert!(r.stdout.tail.ends_with(b"4999\n5000\n"));
    assert!(r.stdout.truncated_bytes > 0, "bounded: head and tail kept");
    assert_eq!(r.stderr.head, b"oops\n");
    // It ran under its intent id: the run directory holds its exit code.
    let rc = std::fs::read_to_string(f.path("runs/c1-0-s0-1/rc")).unwrap();
    assert_eq!(rc.trim(), "0");
}

#[tokio::test]
async fn campaign_ssh_step_nonzero_exit_and_timeout_are_failures() {
    let f = fixture();
    let ex = f.executor(RemoteSettings::default());
    let r = ex
        .run(req("h0", "c1-0-s0-2", ssh("echo no; exit 3"), MIN))
        .await;
    assert_eq!(r.outcome, Outcome::Exited(3));
    assert!(!r.outcome.succeeded());
    assert_eq!(r.stdout.head, b"no\n");

    let r = ex
        .run(req(
            "h0",
            "c1-0-s0-3",
            ssh("sleep 600.5151"),
            Duration::from_secs(2),
        ))
        .await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    // The host's timeout ended it: nothing is left running.
    let ssh_ex = f.executor(RemoteSettings::default());
    let left = ssh_ex
        .run(req(
            "h0",
            "c1-0-s0-4",
            ssh("pgrep -f 'sleep 600[.]5151' || echo none"),
            MIN,
        ))
        .await;
    assert_eq!(left.stdout.head, b"none\n");

    // A host without an endpoint runs nothing and says so.
    let r = ex.run(req("ghost", "c1-9-s0-1", ssh("true"), MIN)).await;
    match &r.outcome {
        Outcome::NotRun(m) => assert!(m.contains("\"ghost\" has no ssh endpoint"), "{m}"),
        other => panic!("expected not run, got {other:?}"),
    }
}

#[tokio::test]
async fn campaign_ssh_host_key_mismatch_runs_nothing() {
    let mut f = fixture();
    let other = f.fleet.start_host().unwrap();
    // h1 is the sshd on f.port, but pinned to the other host's key.
    f.pin_host("h1", f.port, other);
    let marker = f.path("must-not-exist");
    let ex = f.executor(RemoteSettings::default());
    let cmd = format!("touch {}", marker.display());
    let r = ex.run(req("h1", "c1-1-s0-1", ssh(&cmd), MIN)).await;
    let expected = HostKeyPin::parse(&f.fleet.host_public_key(other).unwrap()).unwrap();
    let seen = HostKeyPin::parse(&f.fleet.host_public_key(f.port).unwrap()).unwrap();
    assert_eq!(
        r.outcome,
        Outcome::HostKeyMismatch {
            expected: expected.fingerprint().into(),
            seen: seen.fingerprint().into(),
        }
    );
    assert!(
        !marker.exists(),
        "a command ran on a host with the wrong key"
    );
    assert!(
        !f.path("runs/c1-1-s0-1").exists(),
        "not even the run directory"
    );
    // The same step on the rightly pinned host does run: the marker can appear.
    let r = ex.run(req("h0", "c1-0-s0-1", ssh(&cmd), MIN)).await;
    assert_eq!(r.outcome, Outcome::Exited(0));
    assert!(marker.exists());
}

#[tokio::test]
async fn campaign_ssh_run_is_recovered_by_a_new_executor_without_running_again() {
    let f = fixture();
    let counter = f.path("runs-of-step");
    let cmd = format!(
        "echo run >> {c}; sleep 2; echo done; echo bad >&2; exit 7",
        c = counter.display()
    );
    let step = req("h0", "c1-0-s0-7", ssh(&cmd), MIN);
    // The first executor starts the step, and is dropped mid-run (as when musterd dies).
    let first = f.executor(RemoteSettings::default());
    let run = tokio::spawn({
        let step = step.clone();
        async move { first.run(step).await }
    });
    for _ in 0..100 {
        if lines(&counter) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines(&counter), 1, "the step started");
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());

    // A new executor finds it still running, waits, and reads how it ended.
    let second = f.executor(RemoteSettings::default());
    match second.recover(step.clone()).await {
        Recovered::Finished(r) => {
            assert_eq!(r.outcome, Outcome::Exited(7));
            assert_eq!(r.stdout.head, b"done\n");
            assert_eq!(r.stderr.head, b"bad\n");
        }
        other => panic!("expected the finished run, got {other:?}"),
    }
    // Asked again (a second restart), it is read again, still not rerun.
    assert!(matches!(
        second.recover(step.clone()).await,
        Recovered::Finished(_)
    ));
    // Even running the same intent again only reads it.
    assert_eq!(second.run(step).await.outcome, Outcome::Exited(7));
    assert_eq!(lines(&counter), 1, "the step ran more than once");

    // A run that never started is unknown, not a success or a failure.
    match second.recover(req("h0", "c1-0-s0-8", ssh(&cmd), MIN)).await {
        Recovered::Unknown(m) => assert!(m.contains("no trace of run c1-0-s0-8"), "{m}"),
        other => panic!("expected unknown, got {other:?}"),
    }
    // So is one on a host that cannot be reached.
    match second
        .recover(req("ghost", "c1-9-s0-1", ssh(&cmd), MIN))
        .await
    {
        Recovered::Unknown(m) => assert!(m.contains("no ssh endpoint"), "{m}"),
        other => panic!("expected unknown, got {other:?}"),
    }
    assert_eq!(lines(&counter), 1);
}

/// Kills, on drop, the sshd a test's "reboot" started in the background (by its pid file).
struct KillByPidFile(PathBuf);

impl Drop for KillByPidFile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn reboot_settings(cmd: String) -> RemoteSettings {
    RemoteSettings {
        reboot_command: cmd,
        reboot_poll: PollBackoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(300),
        },
    }
}

#[tokio::test]
async fn campaign_reboot_step_returns_once_ssh_answers_again_and_is_never_resent() {
    let mut f = fixture();
    let host = f.fleet.dir.path().join("host0");
    let pid_file = host.join("sshd.pid");
    let _cleanup = KillByPidFile(pid_file.clone());
    let sent = f.path("reboots-sent");
    // The test host's "reboot": its sshd goes away, and comes back with the same host key
    // two seconds later (a real reboot would also bring a new boot id).
    let cmd = format!(
        "echo reboot >> {sent}; kill $(cat {pid}); sleep 2; {sshd} -f {cfg} -E {log}",
        sent = sent.display(),
        pid = pid_file.display(),
        sshd = muster_tests::ssh::SSHD,
        cfg = host.join("sshd_config").display(),
        log = host.join("sshd-after-reboot.log").display(),
    );
    let ex = f.executor(reboot_settings(cmd));
    let step = req("h0", "c1-0-s1-1", StepKind::Reboot, MIN);
    let r = ex.run(step.clone()).await;
    assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout.head),
        "muster: SSH answers again with the pinned key\n"
    );
    assert_eq!(lines(&sent), 1);
    // The host is up again on the same port with the pinned key.
    let up = ex.run(req("h0", "c1-0-s2-1", ssh("echo up"), MIN)).await;
    assert_eq!(up.stdout.head, b"up\n");
    // The same intent again never sends the reboot a second time: the host never goes down,
    // so it only waits, and times out.
    let again = StepRequest {
        timeout: Duration::from_secs(2),
        ..step
    };
    assert_eq!(ex.run(again).await.outcome, Outcome::TimedOut);
    assert_eq!(lines(&sent), 1, "the reboot was sent twice");

    // A host that never comes back fails at the step's timeout.
    let port = f.fleet.start_host().unwrap();
    f.pin_host("h1", port, port);
    let gone = f.fleet.dir.path().join("host1/sshd.pid");
    let ex = f.executor(reboot_settings(format!("kill $(cat {})", gone.display())));
    let r = ex
        .run(req(
            "h1",
            "c1-1-s1-1",
            StepKind::Reboot,
            Duration::from_secs(3),
        ))
        .await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.stderr.head).contains("did not answer SSH again"),
        "{r:?}"
    );
}
