//! The audit query over the event log and the refusal log, with a bounded scan: a page reads
//! at most [`MAX_AUDIT_SCAN`] records of each log, so a filter that matches little (or nothing)
//! cannot make one request read the whole trail. A page cut short by the budget carries a
//! resume position like a full one; the client follows pages.

use sled::Tree;

use super::{AuditEntry, AuditPage, AuditQuery, ChangeEntry, Refusal, StoreError, keys, record};

/// Records of each log one audit page may read.
pub const MAX_AUDIT_SCAN: usize = 10_000;

/// What one log's scan found and how far it got.
struct Scanned<T> {
    matches: Vec<T>,
    /// Last key position read (revision or sequence).
    last: u64,
    /// Time of the last record read: nothing unread is older (the logs are in time order).
    frontier: i64,
    /// The log has nothing more to read.
    exhausted: bool,
}

impl<T> Scanned<T> {
    fn empty(after: u64) -> Self {
        Self {
            matches: Vec::new(),
            last: after,
            frontier: i64::MIN,
            exhausted: true,
        }
    }
}

fn accepted(
    tree: &Tree,
    upto: u64,
    q: &AuditQuery,
    limit: usize,
    budget: usize,
) -> Result<Scanned<ChangeEntry>, StoreError> {
    let in_time =
        |t: i64| q.since_nanos.is_none_or(|s| t >= s) && q.until_nanos.is_none_or(|u| t < u);
    let who = |p: &str| q.principal.as_deref().is_none_or(|w| w == p);
    let mut s = Scanned::empty(q.after_revision);
    s.exhausted = false;
    let mut read = 0usize;
    let consider = |s: &mut Scanned<ChangeEntry>, rev: u64, c: ChangeEntry| {
        s.last = rev;
        s.frontier = c.meta.time_unix_nanos;
        if q.kind.is_none_or(|k| k == c.kind)
            && q.name.as_deref().is_none_or(|n| n == c.name)
            && who(&c.meta.principal)
            && in_time(c.meta.time_unix_nanos)
        {
            s.matches.push(c);
        }
    };
    match (q.kind, &q.name) {
        (Some(kind), Some(name)) => {
            let prefix = keys::history_prefix(kind, name);
            let start = keys::history(kind, name, q.after_revision.saturating_add(1));
            let mut it = tree.range(start..);
            loop {
                if s.matches.len() >= limit || read >= budget {
                    break;
                }
                let Some(item) = it.next() else {
                    s.exhausted = true;
                    break;
                };
                let (k, _) = item?;
                let rev = match keys::be_u64(&k) {
                    Some(rev) if k.starts_with(&prefix) && rev <= upto => rev,
                    _ => {
                        s.exhausted = true;
                        break;
                    }
                };
                read += 1;
                if let Some(v) = tree.get(keys::event(rev))? {
                    consider(&mut s, rev, record::decode_change(&v)?);
                }
            }
        }
        _ => {
            let start = keys::event(q.after_revision.saturating_add(1));
            let mut it = tree.range(start..=keys::event(upto));
            loop {
                if s.matches.len() >= limit || read >= budget {
                    break;
                }
                let Some(item) = it.next() else {
                    s.exhausted = true;
                    break;
                };
                let (k, v) = item?;
                read += 1;
                let rev = keys::be_u64(&k).unwrap_or(s.last);
                consider(&mut s, rev, record::decode_change(&v)?);
            }
        }
    }
    Ok(s)
}

fn refused(
    tree: &Tree,
    q: &AuditQuery,
    limit: usize,
    budget: usize,
) -> Result<Scanned<Refusal>, StoreError> {
    let mut s = Scanned::empty(q.after_seq);
    if !q.include_refused {
        return Ok(s);
    }
    s.exhausted = false;
    let in_time =
        |t: i64| q.since_nanos.is_none_or(|s| t >= s) && q.until_nanos.is_none_or(|u| t < u);
    let mut it = tree.range(keys::refusal(q.after_seq.saturating_add(1))..);
    let mut read = 0usize;
    loop {
        if s.matches.len() >= limit || read >= budget {
            break;
        }
        let Some(item) = it.next() else {
            s.exhausted = true;
            break;
        };
        let (k, v) = item?;
        if k.first() != Some(&keys::REFUSAL) {
            s.exhausted = true;
            break;
        }
        read += 1;
        let r = record::decode_refusal(&v)?;
        s.last = r.seq;
        s.frontier = r.meta.time_unix_nanos;
        if q.kind.is_none_or(|k| k == r.kind)
            && q.name.as_deref().is_none_or(|n| n == r.name)
            && q.principal.as_deref().is_none_or(|w| w == r.meta.principal)
            && in_time(r.meta.time_unix_nanos)
        {
            s.matches.push(r);
        }
    }
    Ok(s)
}

/// One page of the trail, both logs merged by time, reading at most `budget` records of each.
/// `upto` is the newest revision to show; `body_at` fills the replaced body of an update.
pub(super) fn audit(
    tree: &Tree,
    upto: u64,
    q: &AuditQuery,
    budget: usize,
    body_at: impl Fn(u64) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<AuditPage, StoreError> {
    let limit = q.limit.max(1);
    let budget = budget.max(1);
    let a = accepted(tree, upto, q, limit, budget)?;
    let r = refused(tree, q, limit, budget)?;
    // Merge by time. An entry is shown only if the other log, where it stopped early, has read
    // past its time: an unread older entry would otherwise be skipped by the next page.
    let (a_total, r_total) = (a.matches.len(), r.matches.len());
    let a_cut = if a.exhausted { i64::MAX } else { a.frontier };
    let r_cut = if r.exhausted { i64::MAX } else { r.frontier };
    let mut entries = Vec::with_capacity(limit);
    let (mut ai, mut ri) = (
        a.matches.into_iter().peekable(),
        r.matches.into_iter().peekable(),
    );
    let (mut a_last, mut r_last) = (q.after_revision, q.after_seq);
    let (mut a_taken, mut r_taken) = (0usize, 0usize);
    while entries.len() < limit {
        let take_accepted = match (ai.peek(), ri.peek()) {
            (Some(x), Some(y)) => x.meta.time_unix_nanos <= y.meta.time_unix_nanos,
            (Some(x), None) if x.meta.time_unix_nanos <= r_cut => true,
            (None, Some(y)) if y.meta.time_unix_nanos <= a_cut => false,
            _ => break,
        };
        if take_accepted {
            if let Some(mut c) = ai.next() {
                if c.before_revision > 0 {
                    // The audit shows before and after; the log keeps each body once.
                    c.before = body_at(c.before_revision)?;
                }
                a_last = c.revision;
                a_taken += 1;
                entries.push(AuditEntry::Accepted(c));
            }
        } else if let Some(x) = ri.next() {
            r_last = x.seq;
            r_taken += 1;
            entries.push(AuditEntry::Refused(x));
        }
    }
    // Where each log resumes: past everything read when all its matches were shown, else after
    // the last one shown.
    let a_next = if a_taken == a_total { a.last } else { a_last };
    let r_next = if r_taken == r_total { r.last } else { r_last };
    let done = a.exhausted && a_taken == a_total && r.exhausted && r_taken == r_total;
    Ok(AuditPage {
        entries,
        next: (!done).then_some((a_next, r_next)),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{ChangeMeta, RefusalKind};

    /// 300 changes and 200 refusals, interleaved in time; a few by "mallory".
    fn trail() -> sled::Db {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut head = record::GENESIS;
        for rev in 1..=300u64 {
            let meta = ChangeMeta {
                principal: if rev % 37 == 0 { "mallory" } else { "alice" }.into(),
                time_unix_nanos: (rev * 10) as i64,
                ..ChangeMeta::default()
            };
            let c = ChangeEntry {
                revision: rev,
                kind: 1,
                name: format!("s{rev}"),
                id: format!("id{rev}"),
                labels: Default::default(),
                meta,
                before_revision: 0,
                before: None,
                after: Some(vec![1]),
                chain: None,
            };
            let (bytes, hash) = record::encode_change(&c, &head).unwrap();
            head = hash;
            db.insert(keys::event(rev), bytes).unwrap();
        }
        for seq in 1..=200u64 {
            let r = Refusal {
                seq,
                kind: 1,
                name: String::new(),
                meta: ChangeMeta {
                    principal: if seq % 23 == 0 { "mallory" } else { "bob" }.into(),
                    time_unix_nanos: (seq * 15 + 5) as i64,
                    ..ChangeMeta::default()
                },
                refusal: RefusalKind::Denied,
                message: String::new(),
            };
            db.insert(keys::refusal(seq), record::encode_refusal(&r).unwrap())
                .unwrap();
        }
        db
    }

    fn key(e: &AuditEntry) -> (i64, u64, u64) {
        match e {
            AuditEntry::Accepted(c) => (c.meta.time_unix_nanos, c.revision, 0),
            AuditEntry::Refused(r) => (r.meta.time_unix_nanos, 0, r.seq),
        }
    }

    /// Following pages cut short by a small scan budget gives exactly what one unbounded
    /// scan gives, in the same order, for sparse and dense filters.
    #[test]
    fn budgeted_pages_add_up_to_the_whole_answer() {
        let db = trail();
        for principal in [None, Some("mallory")] {
            let q = AuditQuery {
                principal: principal.map(String::from),
                include_refused: true,
                limit: 4,
                ..AuditQuery::default()
            };
            let whole = audit(
                &db,
                300,
                &AuditQuery {
                    limit: 10_000,
                    ..q.clone()
                },
                usize::MAX,
                |_| Ok(None),
            )
            .unwrap();
            assert!(whole.next.is_none());
            let mut paged = Vec::new();
            let mut q = q;
            let mut pages = 0;
            loop {
                let p = audit(&db, 300, &q, 7, |_| Ok(None)).unwrap();
                pages += 1;
                paged.extend(p.entries);
                match p.next {
                    Some((rev, seq)) => (q.after_revision, q.after_seq) = (rev, seq),
                    None => break,
                }
                assert!(pages < 1000, "paging does not end");
            }
            assert_eq!(
                paged.iter().map(key).collect::<Vec<_>>(),
                whole.entries.iter().map(key).collect::<Vec<_>>(),
                "{principal:?}"
            );
            assert!(pages > 10, "the budget cut pages short");
        }
    }
}
