//! `Store` for `SledStore`: the trait's calls, each a thin use of `Inner`.

use super::*;

impl Store for SledStore {
    fn commit(&self, m: Mutation) -> Pending {
        let (slot, answer) = oneshot::channel();
        if let Some(tx) = &self.submit {
            // A send error means the committer is gone; the dropped slot reports it.
            let _ = tx.send(Queued::Mutation { mutation: m, slot });
        }
        Pending::new(answer)
    }

    fn commit_set(&self, ms: Vec<Mutation>) -> PendingSet {
        self.commit_set_with(ms, Vec::new())
    }

    fn commit_set_with(
        &self,
        ms: Vec<Mutation>,
        aux: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> PendingSet {
        let (slot, answer) = oneshot::channel();
        if let Some(tx) = &self.submit {
            let _ = tx.send(Queued::Set {
                mutations: ms,
                aux,
                slot,
            });
        }
        PendingSet::new(answer)
    }

    fn verify_chain(&self, from: Option<ChainAnchor>) -> Result<ChainReport, StoreError> {
        let inner = &*self.inner;
        // Only what is durable: a head hash someone anchors must survive a power loss.
        let upto = match &*inner.durable.borrow() {
            Ok(d) => *d,
            Err(e) => return Err(StoreError::Io(e.clone())),
        };
        crate::store::verify::verify(&inner.tree, upto, from)
    }

    fn commit_aux(&self, w: AuxWrite) -> PendingAux {
        let (slot, answer) = oneshot::channel();
        if let Some(tx) = &self.submit {
            let _ = tx.send(Queued::Aux { write: w, slot });
        }
        PendingAux::new(answer)
    }

    fn durable_batches(&self) -> watch::Receiver<Result<u64, String>> {
        self.inner.durable_batches.subscribe()
    }

    fn batches(&self) -> u64 {
        self.inner.batches.load(Ordering::SeqCst)
    }

    fn aux_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.tree.get(keys::aux(key))?.map(|v| v.to_vec()))
    }

    fn aux_scan(&self, prefix: &[u8]) -> Result<Vec<crate::store::AuxRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix(keys::aux(prefix)) {
            let (k, v) = item?;
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn durable(&self) -> watch::Receiver<Result<u64, String>> {
        self.inner.durable.subscribe()
    }

    fn revision(&self) -> u64 {
        self.inner.committed.load(Ordering::SeqCst)
    }

    fn get(&self, kind: KindId, name: &str) -> Result<Option<StoredObject>, StoreError> {
        let id = self.inner.indexes().id_of(kind, name);
        match id {
            Some(id) => self.inner.read_object(kind, &id),
            None => Ok(None),
        }
    }

    fn id_of(&self, kind: KindId, name: &str) -> Option<String> {
        self.inner.indexes().id_of(kind, name)
    }

    fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
        let inner = &*self.inner;
        let limit = q.limit.max(1);
        let ids = inner.indexes().select(q, limit + 1)?;
        let more = ids.len() > limit;
        let mut page = Page {
            objects: Vec::with_capacity(limit),
            more,
            last_id: ids.get(limit.min(ids.len()).saturating_sub(1)).cloned(),
        };
        for id in ids.iter().take(limit) {
            // A concurrent write may have changed or removed it since the index was read.
            if let Some(o) = inner.read_object(q.kind, id)?
                && matches(q, &o)
            {
                page.objects.push(o);
            }
        }
        Ok(page)
    }

    fn counts(&self) -> Result<BTreeMap<KindId, u64>, StoreError> {
        Ok(self.inner.indexes().counts())
    }

    fn changes(&self, after: u64, upto: u64, limit: usize) -> Result<Vec<ChangeEntry>, StoreError> {
        let mut out = Vec::new();
        if upto <= after {
            return Ok(out);
        }
        let start = keys::event(after + 1);
        let end = keys::event(upto);
        for item in self.inner.tree.range(start..=end) {
            let (_, v) = item?;
            let mut c = record::decode_change(&v)?;
            // A delete event carries the deleted object, which lives in its last change.
            if c.after.is_none() && c.before_revision > 0 {
                c.before = self.inner.body_at(c.before_revision)?;
            }
            out.push(c);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn audit(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let inner = &*self.inner;
        let upto = inner.committed.load(Ordering::SeqCst);
        crate::store::audit_scan::audit(&inner.tree, upto, q, crate::store::MAX_AUDIT_SCAN, |rev| {
            inner.body_at(rev)
        })
    }

    fn record_refusal(&self, mut r: Refusal) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut seq = lock(&inner.refusals);
        *seq += 1;
        r.seq = *seq;
        let mut batch = Batch::default();
        stage_refusal(&mut batch, r)?;
        inner.snapshots.apply(&inner.tree, batch)?;
        drop(seq);
        inner.request_flush();
        Ok(())
    }

    fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix([keys::TOKEN]) {
            let (k, v) = item?;
            let hash = String::from_utf8_lossy(&k[1..]).into_owned();
            out.push(record::decode_token(hash, &v)?);
        }
        Ok(out)
    }

    fn commit_tokens(&self, w: TokenWrite) -> PendingAux {
        let (slot, answer) = oneshot::channel();
        if let Some(tx) = &self.submit {
            let _ = tx.send(Queued::Tokens { write: w, slot });
        }
        PendingAux::new(answer)
    }

    fn backup(&self, attachment: &[u8], out: &mut dyn std::io::Write) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        // A copy-on-write snapshot: writers go on, the copy is the state at its start.
        let mut revision = 0;
        let n = inner.snapshots.copy(&inner.tree, |items| {
            let items = items.inspect(|item| {
                if let Ok((k, _)) = item
                    && k.first() == Some(&keys::EVENT)
                {
                    revision = keys::be_u64(k).unwrap_or(revision);
                }
            });
            crate::store::backup::write_snapshot(items, attachment, out)
        })?;
        tracing::info!(records = n, revision, "backup snapshot written");
        Ok(n)
    }

    fn flush_stats(&self) -> FlushStats {
        *lock(&self.inner.stats)
    }
}
