//! Watch streams resume from a revision without gaps or duplicates, across a server restart.

use std::time::Duration;

use muster::pb::{self, ResourceKind};
use muster_tests::TestServer;
use muster_tests::fixtures::{name_of, site};
use tokio_stream::StreamExt;

async fn create_site(s: &TestServer, name: &str, env: &str) -> u64 {
    let mut r = site(name);
    if let Some(pb::resource::Resource::Site(x)) = r.resource.as_mut() {
        x.meta
            .as_mut()
            .unwrap()
            .labels
            .insert("env".into(), env.into());
    }
    let out = s
        .inventory()
        .await
        .unwrap()
        .create(pb::CreateRequest {
            resource: Some(r),
            context: None,
        })
        .await
        .unwrap();
    muster_tests::fixtures::revision_of(&out.into_inner())
}

async fn next_events(
    stream: &mut tonic::Streaming<pb::WatchEvent>,
    n: usize,
) -> Vec<(u64, i32, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch event within 10 s")
            .expect("stream open")
            .expect("event ok");
        if ev.r#type == pb::EventType::Bookmark as i32 {
            continue;
        }
        out.push((
            ev.revision,
            ev.r#type,
            ev.object.as_ref().map(name_of).unwrap_or_default(),
        ));
    }
    out
}

#[tokio::test]
async fn watch_resumes_across_restart_without_gaps_or_duplicates() {
    let mut s = TestServer::start().unwrap();
    for i in 0..5 {
        create_site(&s, &format!("s{i}"), "prod").await;
    }
    let watch = |since: u64| pb::WatchRequest {
        kind: ResourceKind::Site as i32,
        selector: "env=prod".into(),
        since_revision: since,
    };
    let mut c = s.inventory().await.unwrap();
    let mut stream = c.watch(watch(2)).await.unwrap().into_inner();
    let mut seen = next_events(&mut stream, 3).await;
    create_site(&s, "dev-1", "dev").await; // filtered out by the selector
    for i in 5..8 {
        create_site(&s, &format!("s{i}"), "prod").await;
    }
    seen.extend(next_events(&mut stream, 3).await);
    let last = seen.last().unwrap().0;

    // The server dies; changes happen while the watcher is away.
    drop(stream);
    s.kill9();
    s.spawn().unwrap();
    create_site(&s, "s8", "prod").await;
    let mut c = s.inventory().await.unwrap();
    c.delete(pb::DeleteRequest {
        kind: ResourceKind::Site as i32,
        name: "s0".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = c.watch(watch(last)).await.unwrap().into_inner();
    seen.extend(next_events(&mut stream, 2).await);
    create_site(&s, "s9", "prod").await;
    seen.extend(next_events(&mut stream, 1).await);

    let revisions: Vec<u64> = seen.iter().map(|e| e.0).collect();
    let names: Vec<&str> = seen.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(
        names,
        ["s2", "s3", "s4", "s5", "s6", "s7", "s8", "s0", "s9"]
    );
    assert_eq!(
        revisions,
        [3, 4, 5, 7, 8, 9, 10, 11, 12],
        "dev-1 (rev 6) filtered; no gap, no duplicate"
    );
    assert_eq!(seen[7].1, pb::EventType::Deleted as i32);
    assert_eq!(seen[0].1, pb::EventType::Added as i32);
}

#[tokio::test]
async fn watch_stops_when_client_goes_away() {
    let s = TestServer::start().unwrap();
    create_site(&s, "before", "prod").await; // since_revision 0 means "from now": start at 1
    let mut c = s.inventory().await.unwrap();
    for _ in 0..20 {
        let stream = c
            .watch(pb::WatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        drop(stream);
    }
    // The server still serves writes and new watches promptly.
    let rev = create_site(&s, "after", "prod").await;
    let mut stream = c
        .watch(pb::WatchRequest {
            since_revision: rev - 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_events(&mut stream, 1).await[0].2, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_watches_promptly() {
    let mut s = TestServer::start().unwrap();
    let mut c = s.inventory().await.unwrap();
    let mut stream = c
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let started = std::time::Instant::now();
    s.stop().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}: the open watch held the shutdown until the 10 s grace ran out",
        started.elapsed()
    );
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap();
    match end {
        Some(Err(status)) => {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert!(
                status.message().contains("shutting down"),
                "{}",
                status.message()
            );
        }
        other => panic!("expected UNAVAILABLE at shutdown, got {other:?}"),
    }
}
