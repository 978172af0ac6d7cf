use std::time::Duration;

use super::*;
use crate::ssh::{CapturedStream, Disposition};

fn exec(o: ExitOutcome) -> ExecResult {
    ExecResult {
        outcome: o,
        stdout: CapturedStream::whole(b"out".to_vec()),
        stderr: CapturedStream::whole(b"err".to_vec()),
        duration: Duration::ZERO,
        connection_lost: false,
    }
}

#[test]
fn exits_signals_and_missing_statuses_map_one_to_one() {
    assert_eq!(exit(&ExitOutcome::Exited(0)), Outcome::Exited(0));
    assert_eq!(exit(&ExitOutcome::Exited(7)), Outcome::Exited(7));
    assert_eq!(
        exit(&ExitOutcome::Exited(u32::MAX)),
        Outcome::Exited(i32::MAX)
    );
    assert_eq!(
        exit(&ExitOutcome::Signaled {
            signal: "KILL".into(),
            core_dumped: true,
            message: "x".into()
        }),
        Outcome::Signalled {
            signal: "KILL".into(),
            core_dumped: true
        }
    );
    assert_eq!(exit(&ExitOutcome::NoStatus), Outcome::NoStatus);
    assert_eq!(exit(&ExitOutcome::TimedOut), Outcome::TimedOut);
    let r = finished(exec(ExitOutcome::Exited(3)));
    assert_eq!(r.outcome, Outcome::Exited(3));
    assert_eq!(
        (r.stdout.head.as_slice(), r.stderr.head.as_slice()),
        (&b"out"[..], &b"err"[..])
    );
}

fn errors() -> Vec<SshError> {
    let addr = || "h:22".to_string();
    vec![
        SshError::InvalidTarget("t".into()),
        SshError::InvalidCredential("c".into()),
        SshError::Unreachable {
            addr: addr(),
            reason: "refused".into(),
        },
        SshError::ConnectTimeout {
            addr: addr(),
            after: Duration::from_secs(1),
        },
        SshError::HostKeyMismatch {
            addr: addr(),
            expected: "SHA256:exp".into(),
            seen: "SHA256:seen".into(),
        },
        SshError::AuthRefused {
            addr: addr(),
            user: "root".into(),
        },
        SshError::Handshake {
            addr: addr(),
            reason: "no kex".into(),
        },
        SshError::ChannelRefused {
            addr: addr(),
            reason: "no".into(),
        },
        SshError::SessionLost {
            addr: addr(),
            reason: "eof".into(),
        },
        SshError::Helper {
            addr: addr(),
            code: Some(90),
            stderr: "mkdir".into(),
        },
        SshError::RunState {
            addr: addr(),
            intent_id: "i".into(),
            reason: "probe".into(),
        },
    ]
}

#[test]
fn errors_before_the_start_fail_the_host_or_stay_unknown_by_disposition() {
    let codes: Vec<&str> = errors().iter().map(|e| before_start(e).code()).collect();
    assert_eq!(
        codes,
        [
            "not_run",
            "not_run",
            "unreachable",
            "unreachable",
            "host_key_mismatch",
            "not_run",
            "unreachable",
            "not_run",
            "unknown",
            "not_run",
            "unknown",
        ]
    );
    for e in errors() {
        let o = before_start(&e);
        // Whatever may have run is never a failure the budget charges as "nothing ran".
        assert_eq!(
            matches!(o, Outcome::Unknown(_)),
            e.disposition() == Disposition::Unknown,
            "{e}"
        );
        assert!(!o.succeeded());
    }
    assert_eq!(
        before_start(&errors()[4]),
        Outcome::HostKeyMismatch {
            expected: "SHA256:exp".into(),
            seen: "SHA256:seen".into()
        }
    );
}

#[test]
fn after_the_start_every_error_leaves_the_outcome_unknown() {
    for e in errors() {
        let o = after_start(&e);
        assert!(o.unknown() && !o.nothing_ran(), "{e}: {o:?}");
        match &e {
            // A key that changed mid-step keeps both fingerprints, for the audit trail.
            SshError::HostKeyMismatch { expected, seen, .. } => assert_eq!(
                o.key_mismatch(),
                Some((expected.as_str(), seen.as_str())),
                "{o:?}"
            ),
            _ => assert!(
                matches!(&o, Outcome::Unknown(m) if m.contains(&e.to_string())),
                "{e}: {o:?}"
            ),
        }
    }
}

#[test]
fn detached_states() {
    assert_eq!(detached(DetachedStatus::Running, "i"), None);
    let r = detached(DetachedStatus::Finished(exec(ExitOutcome::TimedOut)), "i").unwrap();
    assert_eq!(r.outcome, Outcome::TimedOut);
    let lost = detached(
        DetachedStatus::Lost {
            reason: "the host rebooted".into(),
        },
        "run-1",
    )
    .unwrap();
    assert!(
        matches!(&lost.outcome, Outcome::Unknown(m) if m.contains("run-1") && m.contains("rebooted"))
    );
    let none = detached(DetachedStatus::Unknown, "run-2").unwrap();
    assert!(matches!(&none.outcome, Outcome::Unknown(m) if m.contains("no trace of run run-2")));
}
