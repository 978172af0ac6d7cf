//! Campaign builders and bounded waits over the real `CampaignService`, for the campaign e2e
//! tests: specs that patch a `CampaignFleet` (`bin/patch` on each host), the four-eyes path
//! (operator writes, approver approves the frozen digest), and polls with deadlines.
// The kit waits on real processes, so it reads real time.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use anyhow::bail;
use muster::pb::{self, campaign_service_client::CampaignServiceClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::{APPROVER_TOKEN, Bearer, OPERATOR_TOKEN, TestServer, bearer};

/// A CampaignService client.
pub type CampaignClient = CampaignServiceClient<InterceptedService<Channel, Bearer>>;

/// A CampaignService client sending `token`.
pub async fn campaigns_as(s: &TestServer, token: &str) -> anyhow::Result<CampaignClient> {
    Ok(CampaignServiceClient::with_interceptor(
        s.channel().await?,
        bearer(token),
    ))
}

fn secs(s: i64) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

/// The audit context every test write carries.
pub fn ctx(reason: &str) -> Option<pb::ChangeContext> {
    Some(pb::ChangeContext {
        reason: reason.into(),
        ticket: "CHG-42".into(),
        origin: "e2e".into(),
    })
}

/// An SSH step.
pub fn ssh_step(name: &str, command: &str, timeout_s: i64, idempotent: bool) -> pb::CampaignStep {
    pb::CampaignStep {
        name: name.into(),
        action: Some(pb::campaign_step::Action::SshCommand(command.into())),
        timeout: secs(timeout_s),
        idempotent,
    }
}

/// A reboot step.
pub fn reboot_step(name: &str, timeout_s: i64) -> pb::CampaignStep {
    pb::CampaignStep {
        name: name.into(),
        action: Some(pb::campaign_step::Action::Reboot(true)),
        timeout: secs(timeout_s),
        idempotent: false,
    }
}

/// An expect rule.
pub fn rule(path: &str, op: &str, value: &str) -> pb::ExpectRule {
    pb::ExpectRule {
        path: path.into(),
        op: op.into(),
        value: value.into(),
    }
}

/// Patches every host labelled `fleet=FLEET` to `version` with `bin/patch apply` (taking
/// `sleep_s` seconds, not idempotent), verified by the reported external fact; rolls back to
/// 1.0. Any time (no window), no canary, one wave, budget `allowed` hosts, soft tolerance (all
/// hosts at once) unless the test changes it.
pub fn patch_spec(fleet: &str, version: &str, sleep_s: u32, allowed: u32) -> pb::CampaignSpec {
    pb::CampaignSpec {
        selector: format!("fleet={fleet}"),
        description: format!("patch {fleet} to {version}"),
        steps: vec![ssh_step(
            "patch",
            &format!("\"$MUSTER_TEST_HOST/bin/patch\" apply {version} {sleep_s}"),
            30,
            false,
        )],
        desired: Some(pb::DesiredState {
            expect: vec![rule("facts.external.patch.version", "==", version)],
            ..Default::default()
        }),
        rollback: vec![ssh_step(
            "unpatch",
            "\"$MUSTER_TEST_HOST/bin/patch\" rollback 1.0",
            30,
            true,
        )],
        strategy: Some(pb::CampaignStrategy {
            failure_threshold: Some(pb::Count {
                value: Some(pb::count::Value::Hosts(allowed)),
            }),
            tolerance: pb::FailureTolerance::ToleranceSoft as i32,
            ..Default::default()
        }),
        approval: Some(pb::ApprovalPolicy {
            approvers: vec!["role:approver".into()],
            required: 1,
            auto_after_clean_canary: false,
        }),
        verify_timeout: secs(15),
        window_margin: secs(1),
        any_time: true,
        ..Default::default()
    }
}

/// Creates (operator), submits (operator), approves the frozen digest (approver) and starts
/// (operator) a campaign; returns the digest that was approved.
pub async fn launch(s: &TestServer, name: &str, spec: pb::CampaignSpec) -> anyhow::Result<String> {
    let mut op = campaigns_as(s, OPERATOR_TOKEN).await?;
    let mut ap = campaigns_as(s, APPROVER_TOKEN).await?;
    op.create(pb::CreateCampaignRequest {
        campaign: Some(pb::Campaign {
            meta: Some(pb::ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(spec),
            status: None,
        }),
        context: ctx("e2e campaign"),
    })
    .await?;
    op.submit(action(name)).await?;
    let plan = op
        .plan(pb::PlanCampaignRequest {
            name: name.into(),
            campaign: None,
        })
        .await?
        .into_inner();
    ap.approve(pb::ApproveCampaignRequest {
        name: name.into(),
        digest: plan.digest.clone(),
        context: ctx("reviewed the frozen plan"),
    })
    .await?;
    op.start(action(name)).await?;
    Ok(plan.digest)
}

/// A name-and-context request.
pub fn action(name: &str) -> pb::CampaignActionRequest {
    pb::CampaignActionRequest {
        name: name.into(),
        context: ctx("e2e"),
    }
}

/// The campaign now.
pub async fn get(c: &mut CampaignClient, name: &str) -> anyhow::Result<pb::CampaignResponse> {
    Ok(c.get(pb::GetCampaignRequest {
        name: name.into(),
        summary_only: false,
    })
    .await?
    .into_inner())
}

/// The campaign's state.
pub fn state_of(r: &pb::CampaignResponse) -> pb::CampaignState {
    r.summary
        .as_ref()
        .and_then(|s| pb::CampaignState::try_from(s.state).ok())
        .unwrap_or_default()
}

/// Each host's state, by device name.
pub fn host_states(r: &pb::CampaignResponse) -> Vec<(String, pb::HostState)> {
    r.campaign
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .map(|s| {
            s.hosts
                .iter()
                .map(|h| {
                    (
                        h.device.clone(),
                        pb::HostState::try_from(h.state).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The state of one host.
pub fn host_state(r: &pb::CampaignResponse, device: &str) -> pb::HostState {
    host_states(r)
        .into_iter()
        .find(|(d, _)| d == device)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

/// A host still doing something (a halted campaign lets these finish).
pub fn in_flight(s: pb::HostState) -> bool {
    matches!(
        s,
        pb::HostState::HostRunning | pb::HostState::HostVerifying | pb::HostState::HostRollingBack
    )
}

/// Polls the campaign until `pred` holds or `within` passes (then fails with what it saw).
pub async fn wait_until(
    c: &mut CampaignClient,
    name: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&pb::CampaignResponse) -> bool,
) -> anyhow::Result<pb::CampaignResponse> {
    let deadline = Instant::now() + within;
    loop {
        let r = get(c, name).await?;
        if pred(&r) {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: not reached within {within:?}; campaign {:?} ({:?}), hosts {:?}",
                state_of(&r),
                r.summary.as_ref().map(|s| (&s.message, &s.waiting)),
                host_states(&r)
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Waits until the campaign is COMPLETED, ABORTED, or HALTED with nothing in flight.
pub async fn wait_settled(
    c: &mut CampaignClient,
    name: &str,
    within: Duration,
) -> anyhow::Result<pb::CampaignResponse> {
    wait_until(c, name, within, "campaign settled", |r| match state_of(r) {
        pb::CampaignState::Completed | pb::CampaignState::Aborted => true,
        pb::CampaignState::Halted => !host_states(r).iter().any(|(_, s)| in_flight(*s)),
        _ => false,
    })
    .await
}

/// The campaign's report.
pub async fn report(c: &mut CampaignClient, name: &str) -> anyhow::Result<pb::CampaignReport> {
    Ok(c.report(pb::CampaignReportRequest { name: name.into() })
        .await?
        .into_inner())
}
