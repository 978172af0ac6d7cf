//! Campaign RPCs the domain tests share: the change context, tokens per role, the four-eyes
//! launch (author creates, submits and starts; a second person approves), reads, and waiting
//! while the manual clock moves.

use std::time::Duration;

use muster::pb;

use crate::kit::{ADMIN_TOKEN, TestServer};

pub fn ctx() -> Option<pb::ChangeContext> {
    Some(pb::ChangeContext {
        reason: "patch openssl".into(),
        ticket: "CHG-1".into(),
        ..Default::default()
    })
}

pub fn act(name: &str) -> pb::CampaignActionRequest {
    pb::CampaignActionRequest {
        name: name.into(),
        context: ctx(),
    }
}

/// A new API token with `role`.
pub async fn token(s: &TestServer, name: &str, role: &str) -> String {
    s.admin(ADMIN_TOKEN)
        .create_token(pb::CreateTokenRequest {
            name: name.into(),
            role: role.into(),
            reason: "campaign test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// `author` creates, submits and starts the campaign; `approver` approves its digest.
pub async fn launch(
    s: &TestServer,
    author: &str,
    approver: &str,
    name: &str,
    spec: pb::CampaignSpec,
) {
    let mut c = s.campaigns(author);
    c.create(pb::CreateCampaignRequest {
        campaign: Some(pb::Campaign {
            meta: Some(pb::ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(spec),
            status: None,
        }),
        context: ctx(),
    })
    .await
    .unwrap();
    let sub = c.submit(act(name)).await.unwrap().into_inner();
    let digest = sub.campaign.unwrap().status.unwrap().digest;
    s.campaigns(approver)
        .approve(pb::ApproveCampaignRequest {
            name: name.into(),
            digest,
            context: ctx(),
        })
        .await
        .unwrap();
    c.start(act(name)).await.unwrap();
}

pub async fn get(s: &TestServer, token: &str, name: &str) -> pb::CampaignResponse {
    s.campaigns(token)
        .get(pb::GetCampaignRequest {
            name: name.into(),
            summary_only: false,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Moves the clock a second at a time until `done` holds (bounded).
pub async fn until(
    s: &TestServer,
    token: &str,
    name: &str,
    done: impl Fn(&pb::CampaignResponse) -> bool,
) -> pb::CampaignResponse {
    for _ in 0..200 {
        let r = get(s, token, name).await;
        if done(&r) {
            return r;
        }
        s.advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!(
        "campaign {name} never got there: {:#?}",
        get(s, token, name).await.summary
    );
}

pub fn state(r: &pb::CampaignResponse) -> pb::CampaignState {
    pb::CampaignState::try_from(r.summary.as_ref().unwrap().state).unwrap()
}

/// Each host's state, in plan order.
pub fn host_states(r: &pb::CampaignResponse) -> Vec<(String, pb::HostState)> {
    r.campaign
        .as_ref()
        .unwrap()
        .status
        .as_ref()
        .unwrap()
        .hosts
        .iter()
        .map(|h| (h.device.clone(), pb::HostState::try_from(h.state).unwrap()))
        .collect()
}
