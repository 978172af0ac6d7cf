//! The committer thread: groups of writes checked, staged and applied as one batch.

use super::*;

impl Inner {
    /// Applies the staged batch and publishes it; answers every staged writer.
    pub(super) fn apply_staged(
        &self,
        w: &mut WriterState,
        batch: Batch,
        staged: Vec<Staged>,
        head: [u8; 32],
    ) {
        if staged.is_empty() {
            return;
        }
        if let Err(e) = self.snapshots.apply(&self.tree, batch) {
            // sled may have applied part of the batch; the revision cannot safely move on.
            self.poison(&e.to_string());
            for s in staged {
                s.fail(StoreError::Io(e.to_string()));
            }
            return;
        }
        {
            let mut idx = self.indexes.write().unwrap_or_else(|p| p.into_inner());
            for s in &staged {
                match &s.publish {
                    Some(Ok(o)) => {
                        if let Err(e) = idx.insert(o) {
                            tracing::error!(error = %e, "index update failed");
                        }
                    }
                    Some(Err((kind, id))) => idx.remove(*kind, id),
                    None => {}
                }
            }
        }
        if let Some(last) = staged.iter().filter_map(|s| s.revision).max() {
            w.revision = last;
            w.head = head;
            self.committed.store(last, Ordering::SeqCst);
        }
        let batch = self.batches.fetch_add(1, Ordering::SeqCst) + 1;
        for s in staged {
            match s.answer {
                Answer::Mutation(slot) => {
                    let _ = slot.send(Ok(s.revision.unwrap_or_default()));
                }
                Answer::Aux(slot) => {
                    let _ = slot.send(Ok(AuxApplied {
                        revision: s.revision,
                        batch,
                    }));
                }
                Answer::Set(slot, revisions) => {
                    let _ = slot.send(Ok(revisions));
                }
                Answer::Silent => {}
            }
        }
        self.request_flush();
    }

    /// The committer thread: applies everything queued as one group, until every sender is gone.
    pub(super) fn run_committer(&self, rx: mpsc::Receiver<Queued>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(q) => group.push(q),
                    Err(_) => break,
                }
            }
            let mut w = lock(&self.writer);
            self.apply_group(&mut w, group);
        }
    }

    /// The current value of an auxiliary key, seen through the writes staged in this group.
    pub(super) fn aux_current(
        &self,
        staged: &HashMap<Vec<u8>, Option<Vec<u8>>>,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = staged.get(key) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(keys::aux(key))?.map(|v| v.to_vec()))
    }

    /// Applies a group of queued writes in as few batches as possible (one, unless a
    /// delete needs the referrer index to be current).
    pub(super) fn apply_group(&self, w: &mut WriterState, group: Vec<Queued>) {
        if self.poisoned.load(Ordering::SeqCst) {
            for q in group {
                q.fail(StoreError::Io(
                    "the store failed earlier; restart musterd".into(),
                ));
            }
            return;
        }
        let mut batch = Batch::default();
        let mut staged: Vec<Staged> = Vec::new();
        let mut overlay = HashMap::new();
        let mut aux_overlay: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut head = w.head;
        for q in group {
            let isolated = match &q {
                Queued::Mutation { mutation, .. } => needs_index(mutation),
                Queued::Aux { write, .. } => write.mutation.as_ref().is_some_and(needs_index),
                // A change set is applied as a batch of its own, so its failure drops only it;
                // a token write too, since it holds the refusal sequence while it is applied.
                Queued::Set { .. } | Queued::Tokens { .. } => true,
            };
            if isolated && !staged.is_empty() {
                self.apply_staged(
                    w,
                    std::mem::take(&mut batch),
                    std::mem::take(&mut staged),
                    head,
                );
                overlay.clear();
                aux_overlay.clear();
                head = w.head;
            }
            if self.poisoned.load(Ordering::SeqCst) {
                // A batch of this group failed: nothing more may be written (its revisions and
                // chain link would be reused).
                q.fail(StoreError::Io(
                    "the store failed earlier; restart musterd".into(),
                ));
                continue;
            }
            let revision = staged
                .iter()
                .filter_map(|s| s.revision)
                .max()
                .unwrap_or(w.revision)
                + 1;
            match q {
                Queued::Mutation { mutation, slot } => {
                    match self.stage(mutation, revision, &mut head, &mut overlay, &mut batch) {
                        Ok(publish) => staged.push(Staged {
                            answer: Answer::Mutation(slot),
                            revision: Some(revision),
                            publish: Some(publish),
                        }),
                        Err(e) => {
                            let _ = slot.send(Err(e));
                        }
                    }
                }
                Queued::Aux { write, slot } => {
                    match self.stage_aux(
                        write,
                        revision,
                        &mut head,
                        &mut overlay,
                        &mut aux_overlay,
                        &mut batch,
                    ) {
                        Ok((rev, publish)) => staged.push(Staged {
                            answer: Answer::Aux(slot),
                            revision: rev,
                            publish,
                        }),
                        Err(e) => {
                            let _ = slot.send(Err(e));
                        }
                    }
                }
                Queued::Tokens { write, slot } => {
                    // `staged` is empty here: a batch of its own.
                    self.apply_tokens(w, write, slot, head);
                    head = w.head;
                }
                Queued::Set {
                    mutations,
                    aux,
                    slot,
                } => {
                    // `staged` is empty here: the set is its own batch.
                    let mut set_head = head;
                    let mut set_batch = Batch::default();
                    let mut set_overlay = HashMap::new();
                    let mut publishes = Vec::with_capacity(mutations.len());
                    let size = u32::try_from(mutations.len()).unwrap_or(u32::MAX);
                    let mut failed = None;
                    for (i, mut m) in mutations.into_iter().enumerate() {
                        if needs_index(&m) || m.put.is_none() {
                            failed = Some((
                                i,
                                StoreError::Io("a change set cannot hold deletes".into()),
                            ));
                            break;
                        }
                        m.change.change_set = revision;
                        m.change.change_set_size = size;
                        let rev = revision + i as u64;
                        match self.stage(m, rev, &mut set_head, &mut set_overlay, &mut set_batch) {
                            Ok(p) => publishes.push((rev, p)),
                            Err(e) => {
                                failed = Some((i, e));
                                break;
                            }
                        }
                    }
                    match failed {
                        Some(f) => {
                            let _ = slot.send(Err(f));
                        }
                        None if publishes.is_empty() && aux.is_empty() => {
                            let _ = slot.send(Ok(Vec::new()));
                        }
                        None if publishes.is_empty() => {
                            // Records ride along with changes; alone they are `commit_aux`.
                            let _ = slot.send(Err((
                                0,
                                StoreError::Io("a change set's records need a change".into()),
                            )));
                        }
                        None => {
                            for (key, value) in aux {
                                match &value {
                                    Some(v) => set_batch.insert(keys::aux(&key), v.as_slice()),
                                    None => set_batch.remove(keys::aux(&key)),
                                }
                            }
                            let revisions: Vec<u64> = publishes.iter().map(|p| p.0).collect();
                            let mut set_staged: Vec<Staged> = publishes
                                .into_iter()
                                .map(|(rev, p)| Staged {
                                    answer: Answer::Silent,
                                    revision: Some(rev),
                                    publish: Some(p),
                                })
                                .collect();
                            // The last entry answers for the whole set.
                            if let Some(s) = set_staged.last_mut() {
                                s.answer = Answer::Set(slot, revisions);
                            }
                            self.apply_staged(w, set_batch, set_staged, set_head);
                            head = w.head;
                        }
                    }
                }
            }
        }
        self.apply_staged(w, batch, staged, head);
    }

    /// Applies a token write and its audit entry as one batch. The refusal sequence is held
    /// from numbering the entry until the batch is applied, so entries (and the stored
    /// sequence) are written in order, as `record_refusal` writes them.
    pub(super) fn apply_tokens(
        &self,
        w: &mut WriterState,
        write: TokenWrite,
        slot: AuxSlot,
        head: [u8; 32],
    ) {
        let mut seq = lock(&self.refusals);
        let mut batch = Batch::default();
        let mut next = *seq;
        let staged = (|| {
            for t in &write.put {
                batch.insert(keys::token(&t.hash), record::encode_token(t)?);
            }
            for hash in &write.delete {
                batch.remove(keys::token(hash));
            }
            if let Some(mut r) = write.audit {
                next += 1;
                r.seq = next;
                stage_refusal(&mut batch, r)?;
            }
            Ok::<(), StoreError>(())
        })();
        if let Err(e) = staged {
            let _ = slot.send(Err(e));
            return;
        }
        let answer = Staged {
            answer: Answer::Aux(slot),
            revision: None,
            publish: None,
        };
        self.apply_staged(w, batch, vec![answer], head);
        if !self.poisoned.load(Ordering::SeqCst) {
            *seq = next;
        }
    }

    /// Checks an auxiliary write's guards, stages its mutation (if any), then its puts. Nothing
    /// reaches the batch unless every part is accepted.
    pub(super) fn stage_aux(
        &self,
        write: AuxWrite,
        revision: u64,
        head: &mut [u8; 32],
        overlay: &mut HashMap<(KindId, String), Option<StoredObject>>,
        aux_overlay: &mut HashMap<Vec<u8>, Option<Vec<u8>>>,
        batch: &mut Batch,
    ) -> Result<(Option<u64>, Option<Publish>), StoreError> {
        for (key, expected) in &write.guards {
            if self.aux_current(aux_overlay, key)? != *expected {
                return Err(StoreError::AuxConflict);
            }
        }
        let (rev, publish) = match write.mutation {
            Some(m) => (
                Some(revision),
                Some(self.stage(m, revision, head, overlay, batch)?),
            ),
            None => (None, None),
        };
        for (key, value) in write.puts {
            match &value {
                Some(v) => batch.insert(keys::aux(&key), v.as_slice()),
                None => batch.remove(keys::aux(&key)),
            }
            aux_overlay.insert(key, value);
        }
        Ok((rev, publish))
    }
}
