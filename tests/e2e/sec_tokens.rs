//! API tokens with a lifecycle (issue 12): create/list/revoke through the real CLI, revocation
//! and expiry on the next request, scoped operator tokens on every write path, bootstrap and
//! config-token rules, and the table of refusals (code, message, nothing changed, audited).

use muster::pb;
use muster_tests::{Bearer, Options, TestServer, snapshot};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod scope;

type Admin = pb::admin_service_client::AdminServiceClient<InterceptedService<Channel, Bearer>>;

async fn admin_as(s: &TestServer, token: &str) -> Admin {
    pb::admin_service_client::AdminServiceClient::with_interceptor(
        s.channel().await.unwrap(),
        muster_tests::bearer(token),
    )
}

pub(super) fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(super) fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `muster token create` through the CLI; returns the printed token.
pub(super) fn create_token(s: &TestServer, args: &[&str]) -> String {
    let mut full = vec!["token", "create"];
    full.extend_from_slice(args);
    let o = s.muster(&full);
    assert!(o.status.success(), "token create failed: {}", stderr(&o));
    let out = stdout(&o);
    let token = out.trim().to_string();
    assert!(
        token.starts_with("mst_") && !token.contains('\n'),
        "stdout must be the token alone: {out:?}"
    );
    assert!(stderr(&o).contains("shown once"), "{}", stderr(&o));
    token
}

/// The `muster token list` row of `name`, split into columns.
pub(super) fn list_row(s: &TestServer, name: &str) -> Vec<String> {
    let o = s.muster(&["token", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{}", stdout(&o)))
}

/// Audit entries (accepted token actions and refusals) of `principal` with `verb`.
async fn trail(s: &TestServer, principal: &str, verb: &str) -> Vec<pb::Change> {
    s.audit_trail(principal)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.verb == verb)
        .collect()
}

#[tokio::test]
async fn create_list_use_revoke_through_the_cli() {
    let mut s = TestServer::start().unwrap();
    let token = create_token(
        &s,
        &["ops-1", "--role", "operator", "--reason", "on-call rota"],
    );
    let row = list_row(&s, "ops-1");
    // NAME ROLE SCOPE SOURCE CREATED EXPIRES LAST-USED
    assert_eq!(&row[1..4], ["operator", "-", "store"], "{row:?}");
    assert_eq!(row[5], "never", "{row:?}");
    assert_eq!(row[6], "-", "not used yet: {row:?}");
    assert_eq!(list_row(&s, "admin")[3], "store");
    let listed = stdout(&s.muster(&["token", "list", "-o", "json"]));
    assert!(!listed.contains(&token), "the token is shown only once");

    let o = s.muster_with(&["get", "sites"], &token, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let used = list_row(&s, "ops-1");
    assert_ne!(used[6], "-", "last used after use: {used:?}");

    // Last use is kept in memory and written at shutdown at the latest.
    s.stop().unwrap();
    s.spawn().unwrap();
    assert_eq!(
        list_row(&s, "ops-1")[6],
        used[6],
        "last used survives a restart"
    );

    let o = s.muster(&["token", "revoke", "ops-1", "--reason", "left the team"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.muster_with(&["get", "sites"], &token, None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("UNAUTHENTICATED: invalid or revoked token"),
        "{}",
        stderr(&o)
    );

    let created = trail(&s, "admin", "token-create").await;
    let revoked = trail(&s, "admin", "token-revoke").await;
    assert!(
        created
            .iter()
            .any(|c| c.outcome == pb::ChangeOutcome::Accepted as i32
                && c.resource_name == "ops-1"
                && c.reason == "on-call rota"),
        "{created:#?}"
    );
    assert!(
        revoked.iter().any(|c| c.outcome == pb::ChangeOutcome::Accepted as i32
            && c.reason == "left the team"),
        "{revoked:#?}"
    );
    let all = format!("{created:?}{revoked:?}");
    assert!(!all.contains(&token), "a token leaked into the audit trail");
}

// Expiry by the clock is tested in-process with a manual clock:
// server/tests/domain/tokens.rs (no sleeping here).

#[tokio::test]
async fn bootstrap_token_revocable_only_after_another_admin_exists() {
    let s = TestServer::start().unwrap();
    let o = s.muster(&["token", "revoke", "admin"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("FAILED_PRECONDITION: token admin is the bootstrap admin token and no other unexpired admin token exists"),
        "{}",
        stderr(&o)
    );
    // An expired admin token does not count either: server/tests/domain/tokens.rs.

    let root = create_token(&s, &["root-2", "--role", "admin"]);
    let o = s.muster_with(&["token", "revoke", "admin"], &root, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.muster(&["whoami"]);
    assert!(
        stderr(&o).contains("UNAUTHENTICATED"),
        "bootstrap revoked: {}",
        stderr(&o)
    );
    let o = s.muster_with(&["whoami"], &root, None);
    assert!(o.status.success(), "{}", stderr(&o));
    // The last unexpired admin cannot go either.
    let o = s.muster_with(&["token", "revoke", "root-2"], &root, None);
    assert!(stderr(&o).contains("FAILED_PRECONDITION"), "{}", stderr(&o));
}

#[tokio::test]
async fn token_refusals_table() {
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    let mut admin = admin_as(&s, muster_tests::ADMIN_TOKEN).await;
    let mut operator = admin_as(&s, muster_tests::OPERATOR_TOKEN).await;
    let create =
        |name: &str, role: &str, ttl: Option<i64>, selector: &str| pb::CreateTokenRequest {
            name: name.into(),
            role: role.into(),
            ttl: ttl.map(|seconds| pbjson_types::Duration { seconds, nanos: 0 }),
            selector: selector.into(),
            ..Default::default()
        };
    admin
        .create_token(create("taken", "viewer", None, ""))
        .await
        .unwrap();
    let tokens = |list: pb::ListTokensResponse| {
        list.tokens
            .into_iter()
            .map(|t| (t.name, t.role, t.selector, t.source))
            .collect::<Vec<_>>()
    };
    let listed_before = tokens(
        admin
            .list_tokens(pb::ListTokensRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(listed_before.contains(&(
        "alice".into(),
        "admin".into(),
        String::new(),
        "config".into()
    )));
    let mut inv = s.inventory().await.unwrap();
    let inventory_before = snapshot(&mut inv).await.unwrap();

    // (principal, verb, name, status, code, message naming the limit)
    let cases: Vec<(&str, &str, &str, tonic::Status, Code, &str)> = vec![
        (
            "oscar",
            "token-create",
            "mine",
            operator
                .create_token(create("mine", "viewer", None, ""))
                .await
                .unwrap_err(),
            Code::PermissionDenied,
            "oscar (role operator) may not token-create: it needs the Admin permission",
        ),
        (
            "alice",
            "token-create",
            "root",
            admin
                .create_token(create("root", "superuser", None, ""))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "role: unknown role \"superuser\"",
        ),
        (
            "alice",
            "token-create",
            "Bad Name",
            admin
                .create_token(create("Bad Name", "viewer", None, ""))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "name:",
        ),
        (
            "alice",
            "token-create",
            "taken",
            admin
                .create_token(create("taken", "viewer", None, ""))
                .await
                .unwrap_err(),
            Code::AlreadyExists,
            "token \"taken\" already exists",
        ),
        (
            "alice",
            "token-create",
            "alice",
            admin
                .create_token(create("alice", "viewer", None, ""))
                .await
                .unwrap_err(),
            Code::AlreadyExists,
            "token \"alice\" already exists",
        ),
        (
            "alice",
            "token-create",
            "forever",
            admin
                .create_token(create("forever", "viewer", Some(731 * 86_400), ""))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "ttl: must be more than 0 and at most 730 days",
        ),
        (
            "alice",
            "token-create",
            "zero",
            admin
                .create_token(create("zero", "viewer", Some(0), ""))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "ttl: must be more than 0",
        ),
        (
            "alice",
            "token-create",
            "neg",
            admin
                .create_token(create("neg", "viewer", Some(-5), ""))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "ttl: must not be negative",
        ),
        (
            "alice",
            "token-create",
            "scoped-admin",
            admin
                .create_token(create("scoped-admin", "admin", None, "team=pay"))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "selector: only operator tokens can be scoped",
        ),
        (
            "alice",
            "token-create",
            "bad-sel",
            admin
                .create_token(create("bad-sel", "operator", None, "team in (pay"))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "selector: invalid selector",
        ),
        (
            "alice",
            "token-create",
            "long-sel",
            admin
                .create_token(create("long-sel", "operator", None, &"a".repeat(600)))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "selector: is longer than 512 bytes",
        ),
        (
            "alice",
            "token-revoke",
            "oscar",
            admin
                .revoke_token(pb::RevokeTokenRequest {
                    name: "oscar".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::FailedPrecondition,
            "token oscar comes from the config file; remove its [[tokens]] entry",
        ),
        (
            "alice",
            "token-revoke",
            "nobody",
            admin
                .revoke_token(pb::RevokeTokenRequest {
                    name: "nobody".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::NotFound,
            "token \"nobody\" not found",
        ),
        (
            "oscar",
            "token-revoke",
            "taken",
            operator
                .revoke_token(pb::RevokeTokenRequest {
                    name: "taken".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::PermissionDenied,
            "may not token-revoke",
        ),
        (
            "oscar",
            "token-list",
            "",
            operator
                .list_tokens(pb::ListTokensRequest {})
                .await
                .unwrap_err(),
            Code::PermissionDenied,
            "may not token-list",
        ),
    ];
    let trail = s.audit_trail("").await.unwrap();
    for (who, verb, name, e, code, message) in &cases {
        assert_eq!(e.code(), *code, "{verb} {name}: {e:?}");
        assert!(
            e.message().contains(message),
            "{verb} {name}: {:?}",
            e.message()
        );
        let outcome = if *code == Code::PermissionDenied {
            pb::ChangeOutcome::Denied
        } else {
            pb::ChangeOutcome::Rejected
        };
        assert!(
            trail.iter().any(|c| c.principal == *who
                && c.verb == *verb
                && c.resource_name == *name
                && c.outcome == outcome as i32
                && c.message == e.message()),
            "{verb} {name} not audited as {outcome:?}"
        );
    }
    let listed_after = tokens(
        admin
            .list_tokens(pb::ListTokensRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(listed_after, listed_before, "no token changed");
    assert_eq!(snapshot(&mut inv).await.unwrap(), inventory_before);
    // Config tokens keep working.
    let o = s.muster_with(&["whoami"], muster_tests::OPERATOR_TOKEN, None);
    assert!(stdout(&o).contains("oscar"), "{}", stderr(&o));
}
