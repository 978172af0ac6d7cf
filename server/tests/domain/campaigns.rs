//! Campaigns end to end in process: real engine, store and gRPC API; steps through the
//! in-process executor; hosts seen through `Agents`, an observer standing in for agent
//! reports (a fresh, healthy report at the server's clock time, unless a host is told to
//! show drift). The manual clock moves; the engine ticks on its own.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster::clock::{Clock, ManualClock};
use muster::pb;
use muster_server::campaigns::executor::{InProcessExecutor, Outcome, Script};
use muster_server::campaigns::observe::{Expectations, Observation, Observer};
use muster_server::model::ApiError;
use tonic::Code;

use crate::campaign_rpc::{self as rpc, act, ctx, host_states, state, token};
use crate::kit::{ADMIN_TOKEN, Campaign, TestServer};

/// Agents as the campaign sees them: every device reports at the clock's time, healthy.
#[derive(Debug)]
struct Agents {
    clock: Arc<ManualClock>,
    unmet: Mutex<HashMap<String, String>>,
}

impl Observer for Agents {
    fn observe(&self, host: &str, _: &Expectations) -> Result<Option<Observation>, ApiError> {
        Ok(Some(Observation {
            report_nanos: self.clock.now_unix_nanos(),
            boot_id: "boot-1".into(),
            health: pb::Health::Ok as i32,
            health_reasons: BTreeSet::new(),
            unmet: self
                .unmet
                .lock()
                .unwrap()
                .get(host)
                .cloned()
                .into_iter()
                .collect(),
            drift: BTreeSet::new(),
        }))
    }
}

struct Fixture {
    s: TestServer,
    exec: Arc<InProcessExecutor>,
    agents: Arc<Agents>,
    operator: String,
    approver: String,
}

async fn start(
    exec: Arc<InProcessExecutor>,
    clock: Arc<ManualClock>,
    dir: Option<tempfile::TempDir>,
) -> (TestServer, Arc<Agents>) {
    let agents = Arc::new(Agents {
        clock: Arc::clone(&clock),
        unmet: Mutex::default(),
    });
    let s = TestServer::start_full(
        |_| {},
        Campaign {
            executor: Some(exec),
            observer: Some(agents.clone()),
            clock: Some(clock),
        },
        dir,
    )
    .await
    .unwrap();
    (s, agents)
}

async fn fixture(hosts: usize) -> Fixture {
    let exec = InProcessExecutor::new();
    let (s, agents) = start(Arc::clone(&exec), ManualClock::starting_now(), None).await;
    for i in 0..hosts {
        let d = pb::Device {
            meta: Some(pb::ObjectMeta {
                name: format!("h{i}"),
                labels: [
                    ("env".to_string(), "prod".to_string()),
                    ("rack".to_string(), format!("r{}", i % 2)),
                ]
                .into(),
                ..Default::default()
            }),
            kind: pb::DeviceKind::Server as i32,
            ..Default::default()
        };
        s.inventory(ADMIN_TOKEN)
            .create(pb::CreateRequest {
                resource: Some(pb::Resource {
                    resource: Some(pb::resource::Resource::Device(d)),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let operator = token(&s, "olga", "operator").await;
    let approver = token(&s, "arno", "approver").await;
    Fixture {
        s,
        exec,
        agents,
        operator,
        approver,
    }
}

fn ssh(name: &str, idempotent: bool) -> pb::CampaignStep {
    pb::CampaignStep {
        name: name.into(),
        action: Some(pb::campaign_step::Action::SshCommand(format!("run {name}"))),
        timeout: Some(pbjson_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        idempotent,
    }
}

fn spec(strategy: pb::CampaignStrategy, steps: Vec<pb::CampaignStep>) -> pb::CampaignSpec {
    pb::CampaignSpec {
        selector: "env=prod".into(),
        steps,
        any_time: true,
        strategy: Some(strategy),
        approval: Some(pb::ApprovalPolicy {
            required: 1,
            auto_after_clean_canary: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn hosts(n: u32) -> Option<pb::Count> {
    Some(pb::Count {
        value: Some(pb::count::Value::Hosts(n)),
    })
}

impl Fixture {
    /// Creates, submits, approves and starts a campaign.
    async fn launch(&self, name: &str, spec: pb::CampaignSpec) {
        rpc::launch(&self.s, &self.operator, &self.approver, name, spec).await;
    }

    /// The audit trail of `principal`, refusals included.
    async fn trail(&self, principal: &str) -> Vec<pb::Change> {
        self.s
            .audit(ADMIN_TOKEN)
            .list(pb::ListChangesRequest {
                include_refused: true,
                principal: principal.into(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .changes
    }

    async fn get(&self, name: &str) -> pb::CampaignResponse {
        rpc::get(&self.s, &self.operator, name).await
    }

    /// Moves the clock a second at a time until `done` holds (bounded).
    async fn until(
        &self,
        name: &str,
        done: impl Fn(&pb::CampaignResponse) -> bool,
    ) -> pb::CampaignResponse {
        rpc::until(&self.s, &self.operator, name, done).await
    }
}

#[tokio::test]
async fn a_campaign_runs_through_its_waves_and_completes() {
    let f = fixture(5).await;
    let strategy = pb::CampaignStrategy {
        batch_size: hosts(2),
        failure_threshold: hosts(1),
        ..Default::default()
    };
    f.launch("openssl", spec(strategy, vec![ssh("patch", false)]))
        .await;
    let r = f
        .until("openssl", |r| state(r) == pb::CampaignState::Completed)
        .await;
    let hs = host_states(&r);
    assert_eq!(hs.len(), 5);
    assert!(
        hs.iter().all(|(_, s)| *s == pb::HostState::HostSucceeded),
        "{hs:?}"
    );
    for i in 0..5 {
        assert_eq!(f.exec.runs(&format!("h{i}"), "patch"), 1, "h{i}");
    }
    assert_eq!(r.summary.as_ref().unwrap().waves, 3);
    let report =
        f.s.campaigns(&f.operator)
            .report(pb::CampaignReportRequest {
                name: "openssl".into(),
            })
            .await
            .unwrap()
            .into_inner();
    let h0 = report.hosts.iter().find(|h| h.device == "h0").unwrap();
    assert!(
        h0.steps
            .iter()
            .any(|s| s.step == "patch" && s.outcome == "exited")
    );
    assert!(
        h0.steps
            .iter()
            .any(|s| s.phase == "verify" && s.outcome == "observed")
    );
    // Waves: no host of wave 1 started before every host of wave 0 was terminal.
    let started = |d: &str| {
        report
            .hosts
            .iter()
            .find(|h| h.device == d)
            .unwrap()
            .started_at
            .unwrap()
    };
    let finished = |d: &str| {
        report
            .hosts
            .iter()
            .find(|h| h.device == d)
            .unwrap()
            .finished_at
            .unwrap()
    };
    let wave = |w: u32| -> Vec<String> {
        report
            .hosts
            .iter()
            .filter(|h| h.wave == w)
            .map(|h| h.device.clone())
            .collect()
    };
    for a in wave(0) {
        for b in wave(1) {
            assert!(
                (finished(&a).seconds, finished(&a).nanos)
                    <= (started(&b).seconds, started(&b).nanos),
                "{b} started before {a} finished"
            );
        }
    }
    let out =
        f.s.campaigns(&f.operator)
            .step_output(pb::StepOutputRequest {
                name: "openssl".into(),
                host: "h0".into(),
                intent: h0.steps[0].intent.clone(),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(out.stdout.unwrap().head, b"patch on h0: ok\n");
    // The campaign's transitions are in the audit trail with reason and ticket.
    let trail =
        f.s.audit(ADMIN_TOKEN)
            .list(pb::ListChangesRequest {
                resource_kind: pb::ResourceKind::Campaign as i32,
                resource_name: "openssl".into(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .changes;
    let verbs: Vec<&str> = trail.iter().map(|c| c.verb.as_str()).collect();
    for v in [
        "campaign create",
        "campaign submit",
        "campaign approve",
        "campaign start",
        "campaign complete",
    ] {
        assert!(verbs.contains(&v), "{v} missing from {verbs:?}");
    }
    assert!(
        trail
            .iter()
            .any(|c| c.verb == "campaign start" && c.ticket == "CHG-1" && c.principal == "olga")
    );
    f.s.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_canary_halts_before_the_first_wave() {
    let f = fixture(4).await;
    f.exec
        .script("h1", "patch", Script::Result(Outcome::Exited(3)));
    let strategy = pb::CampaignStrategy {
        canary_hosts: vec!["h1".into()],
        failure_threshold: hosts(3),
        ..Default::default()
    };
    f.launch("canary", spec(strategy, vec![ssh("patch", false)]))
        .await;
    let r = f
        .until("canary", |r| state(r) == pb::CampaignState::Halted)
        .await;
    assert!(
        r.summary
            .as_ref()
            .unwrap()
            .message
            .contains("canary h1 failed"),
        "{:?}",
        r.summary
    );
    for (h, s) in host_states(&r) {
        if h == "h1" {
            assert_eq!(s, pb::HostState::HostFailed);
        } else {
            assert_eq!(s, pb::HostState::HostPending, "{h}");
            assert_eq!(f.exec.runs(&h, "patch"), 0, "{h} ran");
        }
    }
    f.s.stop().await.unwrap();
}

#[tokio::test]
async fn a_verification_failure_counts_and_the_budget_trips_on_the_failure_after_it() {
    let f = fixture(4).await;
    // Budget 1 allows one failure and halts at the second; one host at a time.
    for h in ["h0", "h1"] {
        f.agents
            .unmet
            .lock()
            .unwrap()
            .insert(h.into(), "packages.openssl: want 3.0.2, saw 3.0.1".into());
    }
    let mut s = spec(
        pb::CampaignStrategy {
            failure_threshold: hosts(1),
            max_concurrency: 1,
            ..Default::default()
        },
        vec![ssh("patch", false)],
    );
    s.verify_timeout = Some(pbjson_types::Duration {
        seconds: 5,
        nanos: 0,
    });
    f.launch("budget", s).await;
    let r = f
        .until("budget", |r| state(r) == pb::CampaignState::Halted)
        .await;
    let sum = r.summary.clone().unwrap();
    assert_eq!((sum.failures, sum.failures_allowed), (2, 1), "{sum:?}");
    let hs: HashMap<_, _> = host_states(&r).into_iter().collect();
    assert_eq!(hs["h0"], pb::HostState::HostFailed);
    assert_eq!(hs["h1"], pb::HostState::HostFailed);
    assert_eq!(hs["h2"], pb::HostState::HostPending, "{hs:?}");
    assert_eq!(f.exec.runs("h2", "patch"), 0);
    f.s.stop().await.unwrap();
}

#[tokio::test]
async fn the_author_cannot_approve_and_an_edit_drops_approvals() {
    let f = fixture(2).await;
    let second = token(&f.s, "bea", "approver").await;
    let mut sp = spec(pb::CampaignStrategy::default(), vec![ssh("patch", false)]);
    sp.approval.as_mut().unwrap().required = 2;
    let mut admin = f.s.campaigns(ADMIN_TOKEN);
    admin
        .create(pb::CreateCampaignRequest {
            campaign: Some(pb::Campaign {
                meta: Some(pb::ObjectMeta {
                    name: "four-eyes".into(),
                    ..Default::default()
                }),
                spec: Some(sp.clone()),
                status: None,
            }),
            context: ctx(),
        })
        .await
        .unwrap();
    let digest = admin
        .submit(act("four-eyes"))
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap()
        .status
        .unwrap()
        .digest;
    let approve = |digest: &str| pb::ApproveCampaignRequest {
        name: "four-eyes".into(),
        digest: digest.into(),
        context: ctx(),
    };
    // alice (admin) wrote it: she may not approve it.
    let e = admin.approve(approve(&digest)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("four-eyes"), "{}", e.message());
    // An operator may not approve at all.
    let e =
        f.s.campaigns(&f.operator)
            .approve(approve(&digest))
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Nor may an approver start it.
    let e =
        f.s.campaigns(&f.approver)
            .start(act("four-eyes"))
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // One of two approvals, then an edit by the operator drops it.
    f.s.campaigns(&f.approver)
        .approve(approve(&digest))
        .await
        .unwrap();
    let edited =
        f.s.campaigns(&f.operator)
            .edit(pb::EditCampaignRequest {
                name: "four-eyes".into(),
                spec: Some(sp),
                context: ctx(),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(state(&edited), pb::CampaignState::Draft);
    assert!(edited.summary.unwrap().approved_by.is_empty());
    let e =
        f.s.campaigns(&second)
            .approve(approve(&digest))
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e =
        f.s.campaigns(&f.operator)
            .start(act("four-eyes"))
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // Resubmitted: the old digest is worthless, both approvers again.
    let digest2 =
        f.s.campaigns(&f.operator)
            .submit(act("four-eyes"))
            .await
            .unwrap()
            .into_inner()
            .campaign
            .unwrap()
            .status
            .unwrap()
            .digest;
    let e =
        f.s.campaigns(&second)
            .approve(approve(&"0".repeat(64)))
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    f.s.campaigns(&f.approver)
        .approve(approve(&digest2))
        .await
        .unwrap();
    let done =
        f.s.campaigns(&second)
            .approve(approve(&digest2))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(state(&done), pb::CampaignState::Scheduled);
    // Refusals are audited.
    let trail = f.trail("alice").await;
    assert!(
        trail.iter().any(
            |c| c.verb == "campaign approve" && c.outcome == pb::ChangeOutcome::Rejected as i32
        ),
        "{trail:#?}"
    );
    f.s.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_names_the_field_and_creates_nothing() {
    let f = fixture(1).await;
    let mut c = f.s.campaigns(&f.operator);
    let mut sp = spec(pb::CampaignStrategy::default(), vec![ssh("patch", false)]);
    sp.strategy.as_mut().unwrap().failure_threshold = Some(pb::Count {
        value: Some(pb::count::Value::Percent(150)),
    });
    let e = c
        .create(pb::CreateCampaignRequest {
            campaign: Some(pb::Campaign {
                meta: Some(pb::ObjectMeta {
                    name: "bad".into(),
                    ..Default::default()
                }),
                spec: Some(sp),
                status: None,
            }),
            context: ctx(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("spec.strategy.failure_threshold"),
        "{}",
        e.message()
    );
    let e = c
        .get(pb::GetCampaignRequest {
            name: "bad".into(),
            summary_only: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    f.s.stop().await.unwrap();
}

#[path = "campaigns_resume.rs"]
mod resume;

#[path = "campaigns_windows.rs"]
mod windows;
