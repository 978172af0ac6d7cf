//! Token expiry under a manual clock: a token valid for a day is refused the moment the
//! server's clock passes its expiry, and the refusal is audited.

use std::time::Duration;

use muster::pb;

use crate::kit::{ADMIN_TOKEN, TestServer};

fn list_sites() -> pb::ListRequest {
    pb::ListRequest {
        kind: pb::ResourceKind::Site as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_token_expires_when_the_clock_passes_its_ttl() {
    let s = TestServer::start().await.unwrap();
    let created = s
        .admin(ADMIN_TOKEN)
        .create_token(pb::CreateTokenRequest {
            name: "day-pass".into(),
            role: "viewer".into(),
            ttl: Some(pbjson_types::Duration {
                seconds: 86_400,
                nanos: 0,
            }),
            reason: "on call".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let token = created.token;

    s.advance(Duration::from_secs(86_399));
    s.inventory(&token)
        .list(list_sites())
        .await
        .expect("one second before expiry the token works");

    s.advance(Duration::from_secs(1));
    let refused = s.inventory(&token).list(list_sites()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("token day-pass expired at"),
        "{}",
        refused.message()
    );

    let trail = s.trail("day-pass").await;
    assert!(
        trail
            .iter()
            .any(|c| c.outcome == pb::ChangeOutcome::Denied as i32
                && c.message.contains("expired at")),
        "{trail:#?}"
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn an_expired_admin_token_does_not_count_as_another_admin() {
    let s = TestServer::start().await.unwrap();
    let mut admin = s.admin(ADMIN_TOKEN);
    let brief = admin
        .create_token(pb::CreateTokenRequest {
            name: "brief-admin".into(),
            role: "admin".into(),
            ttl: Some(pbjson_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let lasting = admin
        .create_token(pb::CreateTokenRequest {
            name: "lasting".into(),
            role: "viewer".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    s.advance(Duration::from_secs(61));
    // The brief admin is refused, a token without ttl is not.
    let e = s
        .admin(&brief)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    s.inventory(&lasting).list(list_sites()).await.unwrap();
    // Listing shows it as expired, by the server's clock.
    let tokens = admin
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let brief_info = tokens.iter().find(|t| t.name == "brief-admin").unwrap();
    assert!(brief_info.expired, "{brief_info:?}");
    s.stop().await.unwrap();
}
