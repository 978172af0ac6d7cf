//! The in-memory indexes: name → id, label and field postings, and each object's envelope
//! (name, revision, labels, indexed fields) for filtering without reading bodies.
//!
//! Compact on purpose, because a fleet is large and repetitive: label and field strings are
//! interned and reference-counted (`role=web` is stored once, not per device), ids are ULIDs held as `u128`, and an
//! object's labels and fields are short slices of interned pairs. About 400 bytes per object.
//! Built from the envelope records when the store opens; changed only by the writer, after a
//! batch is applied, so it never shows a write that is not in sled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use muster::selector::Selector;

use super::{KindId, ListQuery, StoreError, StoredObject};

/// An interned string.
type Sym = u32;

/// Interned strings, reference-counted: a value used by one object (a serial) is freed with it.
#[derive(Default)]
struct Interner {
    ids: HashMap<Arc<str>, Sym>,
    /// The string and its reference count, per symbol; None for a free slot.
    strings: Vec<Option<(Arc<str>, u32)>>,
    free: Vec<Sym>,
}

impl Interner {
    /// The symbol for `s`, taking one reference.
    fn acquire(&mut self, s: &str) -> Sym {
        if let Some(id) = self.ids.get(s) {
            if let Some(Some((_, refs))) = self.strings.get_mut(*id as usize) {
                *refs += 1;
            }
            return *id;
        }
        let s: Arc<str> = Arc::from(s);
        let id = match self.free.pop() {
            Some(id) => {
                self.strings[id as usize] = Some((Arc::clone(&s), 1));
                id
            }
            None => {
                self.strings.push(Some((Arc::clone(&s), 1)));
                Sym::try_from(self.strings.len() - 1).unwrap_or(Sym::MAX)
            }
        };
        self.ids.insert(s, id);
        id
    }

    /// Drops one reference; the string is freed with its last one.
    fn release(&mut self, id: Sym) {
        let Some(slot) = self.strings.get_mut(id as usize) else {
            return;
        };
        if let Some((s, refs)) = slot {
            *refs -= 1;
            if *refs == 0 {
                self.ids.remove(s);
                *slot = None;
                self.free.push(id);
            }
        }
    }

    fn lookup(&self, s: &str) -> Option<Sym> {
        self.ids.get(s).copied()
    }

    fn get(&self, id: Sym) -> &str {
        match self.strings.get(id as usize) {
            Some(Some((s, _))) => s,
            _ => "",
        }
    }
}

/// What the index keeps of one object.
struct Entry {
    name: Box<str>,
    labels: Box<[(Sym, Sym)]>,
    fields: Box<[(Sym, Sym)]>,
}

/// Which posting list: labels or indexed fields.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Space {
    Label,
    Field,
}

/// The indexes of every object in the store.
#[derive(Default)]
pub(super) struct Index {
    strings: Interner,
    objects: BTreeMap<(KindId, u128), Entry>,
    names: HashMap<(KindId, Box<str>), u128>,
    postings: HashMap<(KindId, Space, Sym, Sym), BTreeSet<u128>>,
    counts: BTreeMap<KindId, u64>,
}

/// Parses a store id (a ULID) into its sortable number.
pub(super) fn parse_id(id: &str) -> Result<u128, StoreError> {
    ulid::Ulid::from_string(id)
        .map(u128::from)
        .map_err(|e| StoreError::Corrupt(format!("object id {id:?} is not a ULID: {e}")))
}

/// The text form of an id.
pub(super) fn id_string(id: u128) -> String {
    ulid::Ulid::from(id).to_string()
}

impl Index {
    /// Adds (or replaces) an object.
    pub fn insert(&mut self, o: &StoredObject) -> Result<(), StoreError> {
        let id = parse_id(&o.id)?;
        self.remove_id(o.kind, id);
        let mut intern = |pairs: &BTreeMap<String, String>| -> Box<[(Sym, Sym)]> {
            pairs
                .iter()
                .map(|(k, v)| (self.strings.acquire(k), self.strings.acquire(v)))
                .collect()
        };
        let labels = intern(&o.labels);
        let fields = intern(&o.fields);
        for (space, pairs) in [(Space::Label, &labels), (Space::Field, &fields)] {
            for (k, v) in pairs.iter() {
                self.postings
                    .entry((o.kind, space, *k, *v))
                    .or_default()
                    .insert(id);
            }
        }
        self.names.insert((o.kind, o.name.as_str().into()), id);
        self.objects.insert(
            (o.kind, id),
            Entry {
                name: o.name.as_str().into(),
                labels,
                fields,
            },
        );
        *self.counts.entry(o.kind).or_default() += 1;
        Ok(())
    }

    /// Removes an object, if present.
    pub fn remove(&mut self, kind: KindId, id: &str) {
        if let Ok(id) = parse_id(id) {
            self.remove_id(kind, id);
        }
    }

    fn remove_id(&mut self, kind: KindId, id: u128) {
        let Some(old) = self.objects.remove(&(kind, id)) else {
            return;
        };
        self.names.remove(&(kind, old.name.clone()));
        for (space, pairs) in [(Space::Label, &old.labels), (Space::Field, &old.fields)] {
            for (k, v) in pairs.iter() {
                let key = (kind, space, *k, *v);
                if let Some(set) = self.postings.get_mut(&key) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.postings.remove(&key);
                    }
                }
                self.strings.release(*k);
                self.strings.release(*v);
            }
        }
        if let Some(n) = self.counts.get_mut(&kind) {
            *n = n.saturating_sub(1);
        }
    }

    /// The id of the object of `kind` named `name`.
    pub fn id_of(&self, kind: KindId, name: &str) -> Option<String> {
        self.names
            .get(&(kind, name.into()))
            .map(|id| id_string(*id))
    }

    /// Whether an object of `kind` named `name` exists.
    pub fn exists(&self, kind: KindId, name: &str) -> bool {
        self.names.contains_key(&(kind, name.into()))
    }

    fn posting(
        &self,
        kind: KindId,
        space: Space,
        key: &str,
        value: &str,
    ) -> Option<&BTreeSet<u128>> {
        let (k, v) = (self.strings.lookup(key)?, self.strings.lookup(value)?);
        self.postings.get(&(kind, space, k, v))
    }

    /// How many objects of `kind` have `field == value`, and the name of one of them.
    pub fn referrers(&self, kind: KindId, field: &str, value: &str) -> (usize, Option<&str>) {
        match self.posting(kind, Space::Field, field, value) {
            Some(set) => {
                let example = set.first().and_then(|id| self.objects.get(&(kind, *id)));
                (set.len(), example.map(|e| &*e.name))
            }
            None => (0, None),
        }
    }

    /// Number of objects per kind.
    pub fn counts(&self) -> BTreeMap<KindId, u64> {
        self.counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (*k, *n))
            .collect()
    }

    fn value_of<'a>(&'a self, pairs: &[(Sym, Sym)], key: &str) -> Option<&'a str> {
        let k = self.strings.lookup(key)?;
        pairs
            .iter()
            .find(|(pk, _)| *pk == k)
            .map(|(_, v)| self.strings.get(*v))
    }

    fn entry_matches(&self, q: &ListQuery, e: &Entry) -> bool {
        q.labels.matches(|k| self.value_of(&e.labels, k))
            && q.fields.matches(|k| {
                if k == "name" {
                    Some(&*e.name)
                } else {
                    self.value_of(&e.fields, k)
                }
            })
    }

    /// Candidate ids for `key in (values)` requirements of one selector.
    fn candidates(
        &self,
        kind: KindId,
        space: Space,
        sel: &Selector,
        out: &mut Vec<BTreeSet<u128>>,
    ) {
        for (key, values) in sel.indexable() {
            let mut set = BTreeSet::new();
            for v in values {
                if space == Space::Field && key == "name" {
                    set.extend(self.names.get(&(kind, v.as_str().into())));
                } else if let Some(ids) = self.posting(kind, space, key, v) {
                    set.extend(ids.iter().copied());
                }
            }
            out.push(set);
        }
    }

    /// Ids (in id order) of objects matching the query after `q.after_id`, at most `take`.
    pub fn select(&self, q: &ListQuery, take: usize) -> Result<Vec<String>, StoreError> {
        let after = q.after_id.as_deref().map(parse_id).transpose()?;
        let mut sets = Vec::new();
        self.candidates(q.kind, Space::Field, &q.fields, &mut sets);
        self.candidates(q.kind, Space::Label, &q.labels, &mut sets);
        // The most selective requirement picks the candidates; the rest filter them.
        let best = sets.into_iter().min_by_key(BTreeSet::len);
        let entry = |id: u128| self.objects.get(&(q.kind, id)).map(|e| (id, e));
        let matching = |(id, e): (u128, &Entry)| self.entry_matches(q, e).then_some(id);
        let ids: Vec<u128> = match best {
            Some(set) => {
                let start = after.map_or(Bound::Unbounded, Bound::Excluded);
                set.range((start, Bound::Unbounded))
                    .filter_map(|id| entry(*id))
                    .filter_map(matching)
                    .take(take)
                    .collect()
            }
            None => {
                let start = after.map_or(Bound::Included((q.kind, 0)), |a| {
                    Bound::Excluded((q.kind, a))
                });
                self.objects
                    .range((start, Bound::Included((q.kind, u128::MAX))))
                    .map(|((_, id), e)| (*id, e))
                    .filter_map(matching)
                    .take(take)
                    .collect()
            }
        };
        Ok(ids.into_iter().map(id_string).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(i: u128, name: &str, role: &str) -> StoredObject {
        StoredObject {
            kind: 3,
            id: id_string(i),
            name: name.into(),
            labels: [("role".to_string(), role.to_string())].into(),
            fields: [("site".to_string(), "fra1".to_string())].into(),
            revision: 1,
            body: Vec::new(),
        }
    }

    #[test]
    fn insert_select_replace_remove() {
        let mut idx = Index::default();
        for (i, role) in [(1, "db"), (2, "web"), (3, "db"), (4, "db")] {
            idx.insert(&obj(i, &format!("d{i}"), role)).unwrap();
        }
        let q = |sel: &str, after: Option<u128>| ListQuery {
            kind: 3,
            labels: Selector::parse(sel).unwrap(),
            fields: Selector::default(),
            after_id: after.map(id_string),
            limit: 10,
        };
        assert_eq!(
            idx.select(&q("role=db", None), 10).unwrap(),
            [1, 3, 4].map(id_string)
        );
        assert_eq!(
            idx.select(&q("role=db", Some(1)), 1).unwrap(),
            [id_string(3)]
        );
        assert_eq!(
            idx.select(&q("role!=db", None), 10).unwrap(),
            [id_string(2)]
        );
        // Replacing an object moves it between postings.
        idx.insert(&obj(3, "d3", "web")).unwrap();
        assert_eq!(
            idx.select(&q("role=db", None), 10).unwrap(),
            [1, 4].map(id_string)
        );
        idx.remove(3, &id_string(4));
        assert_eq!(idx.select(&q("role=db", None), 10).unwrap(), [id_string(1)]);
        assert_eq!(idx.counts().get(&3), Some(&3));
        assert_eq!(idx.id_of(3, "d2"), Some(id_string(2)));
        assert_eq!(idx.referrers(3, "site", "fra1").0, 3);
        assert_eq!(idx.referrers(3, "site", "ams1").0, 0);
        assert!(parse_id("not-a-ulid").is_err());
    }

    #[test]
    fn interned_strings_are_freed_with_their_last_user() {
        let mut idx = Index::default();
        idx.insert(&obj(1, "d1", "unique-role")).unwrap();
        assert!(idx.strings.lookup("unique-role").is_some());
        idx.insert(&obj(1, "d1", "web")).unwrap();
        assert!(
            idx.strings.lookup("unique-role").is_none(),
            "replaced value not freed"
        );
        idx.remove(3, &id_string(1));
        assert!(idx.strings.lookup("web").is_none() && idx.strings.lookup("site").is_none());
        idx.insert(&obj(2, "d2", "db")).unwrap();
        assert_eq!(
            idx.select(
                &ListQuery {
                    kind: 3,
                    labels: Selector::parse("role=db").unwrap(),
                    fields: Selector::default(),
                    after_id: None,
                    limit: 5
                },
                5
            )
            .unwrap(),
            [id_string(2)]
        );
    }
}
