//! A token change and its audit entry are one durable batch through the committer (they used
//! to be a token write flushed on the caller's thread, then a refusal record not waited for).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::sled_store::{SledStore, StoreOptions};
use super::{
    AuditEntry, AuditQuery, ChangeMeta, Refusal, RefusalKind, Store, StoredToken, TokenWrite,
    commit_tokens_durably,
};

fn token(hash: &str, name: &str) -> StoredToken {
    StoredToken {
        hash: hash.into(),
        name: name.into(),
        role: "operator".into(),
        ..StoredToken::default()
    }
}

fn entry(message: &str) -> Refusal {
    Refusal {
        seq: 0,
        kind: 0,
        name: String::new(),
        meta: ChangeMeta {
            principal: "root".into(),
            verb: "token-create".into(),
            ..ChangeMeta::default()
        },
        refusal: RefusalKind::Accepted,
        message: message.into(),
    }
}

/// (seq, message) of every refused-log entry.
fn log(store: &dyn Store) -> Vec<(u64, String)> {
    let page = store
        .audit(&AuditQuery {
            include_refused: true,
            limit: 100,
            ..AuditQuery::default()
        })
        .unwrap();
    page.entries
        .into_iter()
        .filter_map(|e| match e {
            AuditEntry::Refused(r) => Some((r.seq, r.message)),
            AuditEntry::Accepted(_) => None,
        })
        .collect()
}

/// Before: `put_token` flushed on the caller's thread, so a flush that could not open sled's
/// blob directory (out of descriptors) failed the token write (which was applied and would
/// become durable anyway: the caller was told "failed" about a token that then worked), and
/// the audit entry was written afterwards, not waited for. Now the committer applies both in
/// one batch and the flusher retries until it is durable.
#[tokio::test]
async fn a_token_change_and_its_audit_entry_are_one_durable_batch() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path(), &StoreOptions::default()).unwrap();
        store.inject_emfile(3);
        let w = TokenWrite {
            put: vec![token("aa", "ci")],
            delete: Vec::new(),
            audit: Some(entry("created token ci")),
        };
        tokio::time::timeout(Duration::from_secs(5), commit_tokens_durably(&store, w))
            .await
            .unwrap()
            .unwrap();
        // A refusal written meanwhile is numbered after it.
        store.record_refusal(entry("refused")).unwrap();
        let w = TokenWrite {
            put: Vec::new(),
            delete: vec!["aa".into()],
            audit: Some(entry("revoked token ci")),
        };
        commit_tokens_durably(&store, w).await.unwrap();
        // Housekeeping without an entry.
        let w = TokenWrite {
            put: vec![token("bb", "bot")],
            ..TokenWrite::default()
        };
        commit_tokens_durably(&store, w).await.unwrap();
    }
    let store = SledStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let names: Vec<String> = store
        .tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["bot".to_string()]);
    assert_eq!(
        log(&store),
        vec![
            (1, "created token ci".to_string()),
            (2, "refused".to_string()),
            (3, "revoked token ci".to_string()),
        ]
    );
    // The sequence continues after a restart (never reused).
    store.record_refusal(entry("later")).unwrap();
    assert_eq!(log(&store).last().unwrap().0, 4);
}
