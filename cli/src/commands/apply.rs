//! `muster apply -f FILE`: parse every document first, then upsert them in dependency order
//! (sites, racks, credentials, profiles and windows, devices by parent depth, campaigns) with
//! bounded concurrency inside each group.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use muster::pb;
use muster::pb::resource::Resource as R;

use crate::args::ApplyArgs;
use crate::client::Clients;
use crate::errors::{Reported, RpcError};
use crate::kinds::Kind;
use crate::manifest::{self, Document};
use crate::output;

/// Above this many documents, per-object lines give way to a progress bar.
const VERBOSE_LIMIT: usize = 20;

/// Reads and parses the whole input; any bad document fails it before anything is sent.
pub fn load(args: &ApplyArgs) -> Result<Vec<Document>> {
    let (label, text) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        ("standard input".to_string(), text)
    } else {
        let text = std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        (args.file.display().to_string(), text)
    };
    let docs = manifest::parse(&text).with_context(|| label.clone())?;
    if docs.is_empty() {
        bail!("no resources found in {label}");
    }
    let mut seen = HashMap::with_capacity(docs.len());
    for doc in &docs {
        if let Some(first) = seen.insert((doc.kind, doc.name.as_str()), doc.index) {
            bail!(
                "{label}: document {} ({}) repeats document {first}",
                doc.index,
                doc.qualified_name()
            );
        }
    }
    Ok(docs)
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    fn from_action(action: i32) -> Outcome {
        match pb::ApplyAction::try_from(action) {
            Ok(pb::ApplyAction::Created) => Outcome::Created,
            Ok(pb::ApplyAction::Unchanged) => Outcome::Unchanged,
            _ => Outcome::Configured,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// Totals for the summary line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    created: usize,
    configured: usize,
    unchanged: usize,
    failed: usize,
}

impl Tally {
    fn summary(&self, total: usize, dry_run: bool) -> String {
        let mut s = format!(
            "applied {total} objects: {} created, {} configured, {} unchanged",
            self.created, self.configured, self.unchanged
        );
        if self.failed > 0 {
            s.push_str(&format!(", {} failed", self.failed));
        }
        if dry_run {
            s.push_str(" (dry run)");
        }
        s
    }
}

/// Sends every document, group by group, and prints the outcome.
pub async fn run(clients: &Clients, args: ApplyArgs, docs: Vec<Document>) -> Result<()> {
    let total = docs.len();
    let verbose = total <= VERBOSE_LIMIT;
    let groups = group(docs);
    let context = super::change_context(&args.change);
    let concurrency = usize::try_from(args.concurrency).unwrap_or(32).max(1);
    let suffix = if args.dry_run { " (dry run)" } else { "" };

    let bar = if verbose {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(
            Some(u64::try_from(total).unwrap_or(u64::MAX)),
            ProgressDrawTarget::stderr(),
        );
        if let Ok(style) =
            ProgressStyle::with_template("{wide_bar} {pos}/{len} objects (eta {eta})")
        {
            bar.set_style(style);
        }
        bar
    };

    let mut tally = Tally::default();
    for group in groups.into_values() {
        let mut results: Vec<(usize, String, Result<Outcome>)> = futures::stream::iter(group)
            .map(|doc| {
                let request = pb::ApplyRequest {
                    resource: Some(doc.resource),
                    context: Some(context.clone()),
                    dry_run: args.dry_run,
                };
                let name = format!("{}/{}", doc.kind, doc.name);
                let index = doc.index;
                let kind = doc.kind;
                let bar = bar.clone();
                async move {
                    let result = clients
                        .unary(clients.inventory.clone().apply(clients.request(request)))
                        .await
                        .map(|r| Outcome::from_action(r.action))
                        .map_err(|e| manifest_terms(kind, e));
                    bar.inc(1);
                    (index, name, result)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        results.sort_by_key(|(index, _, _)| *index);
        let mut lines = String::new();
        for (_, name, result) in results {
            match result {
                Ok(outcome) => {
                    match outcome {
                        Outcome::Created => tally.created += 1,
                        Outcome::Configured => tally.configured += 1,
                        Outcome::Unchanged => tally.unchanged += 1,
                    }
                    if verbose {
                        lines.push_str(&format!("{name} {}{suffix}\n", outcome.word()));
                    }
                }
                Err(e) => {
                    tally.failed += 1;
                    let line = format!("error: {name}: {e:#}").replace('\n', " ");
                    bar.suspend(|| eprintln!("{line}"));
                }
            }
        }
        output::print(&lines)?;
    }
    bar.finish_and_clear();
    output::println(&tally.summary(total, args.dry_run))?;
    if tally.failed > 0 {
        return Err(Reported.into());
    }
    Ok(())
}

/// Server messages name a device's or credential's own kind `kind`; the manifest calls it
/// `type` (see [`manifest`]), so say `type` to the person who wrote the manifest.
fn manifest_terms(kind: Kind, err: anyhow::Error) -> anyhow::Error {
    match err.downcast::<RpcError>() {
        Ok(RpcError(status))
            if matches!(kind, Kind::Device | Kind::Credential)
                && status.code() == tonic::Code::InvalidArgument
                && status.message().starts_with("kind:") =>
        {
            let message = format!("type:{}", &status.message()["kind:".len()..]);
            RpcError(tonic::Status::invalid_argument(message)).into()
        }
        Ok(other) => other.into(),
        Err(err) => err,
    }
}

/// Splits documents into groups applied one after another, keyed by order.
fn group(docs: Vec<Document>) -> BTreeMap<usize, Vec<Document>> {
    let stages: Vec<usize> = {
        let depths = parent_depths(&docs);
        docs.iter()
            .map(|doc| match doc.kind {
                Kind::Site => 0,
                Kind::Rack => 1,
                Kind::Credential => 2,
                Kind::Profile | Kind::Window => 3,
                Kind::Device => 4 + depths.get(doc.name.as_str()).copied().unwrap_or(0),
                // After every device, however deep the parent chains go.
                Kind::Campaign => usize::MAX,
            })
            .collect()
    };
    let mut groups: BTreeMap<usize, Vec<Document>> = BTreeMap::new();
    for (doc, stage) in docs.into_iter().zip(stages) {
        groups.entry(stage).or_default().push(doc);
    }
    groups
}

/// For each device in the file: 0 without a parent in the file, else its parent's depth + 1.
/// Linear overall (each device is resolved once); a parent cycle is cut where it closes.
fn parent_depths(docs: &[Document]) -> HashMap<&str, usize> {
    let parents: HashMap<&str, &str> = docs
        .iter()
        .filter_map(|d| match d.resource.resource.as_ref() {
            Some(R::Device(dev)) => Some((d.name.as_str(), dev.parent.as_str())),
            _ => None,
        })
        .collect();
    let mut depths: HashMap<&str, usize> = HashMap::with_capacity(parents.len());
    for &start in parents.keys() {
        if depths.contains_key(start) {
            continue;
        }
        // Walk up until a device of known depth, a root, or a cycle.
        let mut chain = vec![start];
        let mut on_chain: HashSet<&str> = HashSet::from([start]);
        let mut base = 0;
        let mut current = start;
        loop {
            let parent = parents.get(current).copied().unwrap_or("");
            if parent.is_empty() || !parents.contains_key(parent) || on_chain.contains(parent) {
                break;
            }
            if let Some(&d) = depths.get(parent) {
                base = d + 1;
                break;
            }
            chain.push(parent);
            on_chain.insert(parent);
            current = parent;
        }
        for (offset, name) in chain.iter().rev().enumerate() {
            depths.insert(name, base + offset);
        }
    }
    depths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_dependencies() {
        let docs = manifest::parse(
            "kind: Device\nmeta: {name: vm-1}\nparent: hv-1\n---\n\
             kind: Device\nmeta: {name: hv-1}\nparent: chassis-1\n---\n\
             kind: Device\nmeta: {name: chassis-1}\n---\n\
             kind: Device\nmeta: {name: solo}\nparent: elsewhere\n---\n\
             kind: Profile\nmeta: {name: p}\n---\n\
             kind: Rack\nmeta: {name: r}\n---\n\
             kind: Credential\nmeta: {name: c}\n---\n\
             kind: Site\nmeta: {name: s}\n---\n\
             kind: Window\nmeta: {name: w}\n",
        )
        .unwrap();
        let order: Vec<Vec<String>> = group(docs)
            .into_values()
            .map(|g| g.iter().map(Document::qualified_name).collect())
            .collect();
        assert_eq!(
            order,
            vec![
                vec!["site/s"],
                vec!["rack/r"],
                vec!["credential/c"],
                vec!["profile/p", "window/w"],
                vec!["device/chassis-1", "device/solo"],
                vec!["device/hv-1"],
                vec!["device/vm-1"],
            ]
        );
    }

    #[test]
    fn parent_cycles_terminate() {
        let docs = manifest::parse(
            "kind: Device\nmeta: {name: a}\nparent: b\n---\nkind: Device\nmeta: {name: b}\nparent: a\n",
        )
        .unwrap();
        let depths = parent_depths(&docs);
        assert_eq!(depths.len(), 2);
        let mut values: Vec<_> = depths.values().copied().collect();
        values.sort();
        assert_eq!(values, [0, 1]);
    }

    #[test]
    fn server_messages_use_manifest_terms() {
        let err = anyhow::Error::new(RpcError(tonic::Status::invalid_argument(
            "kind: is required",
        )));
        assert_eq!(
            manifest_terms(Kind::Device, err).to_string(),
            "INVALID_ARGUMENT: type: is required"
        );
        let err = anyhow::Error::new(RpcError(tonic::Status::not_found("kind: x")));
        assert_eq!(
            manifest_terms(Kind::Device, err).to_string(),
            "NOT_FOUND: kind: x"
        );
    }

    #[test]
    fn summary_line() {
        let t = Tally {
            created: 10000,
            ..Default::default()
        };
        assert_eq!(
            t.summary(10000, false),
            "applied 10000 objects: 10000 created, 0 configured, 0 unchanged"
        );
        let t = Tally {
            created: 1,
            configured: 2,
            unchanged: 3,
            failed: 1,
        };
        assert_eq!(
            t.summary(7, true),
            "applied 7 objects: 1 created, 2 configured, 3 unchanged, 1 failed (dry run)"
        );
    }
}
