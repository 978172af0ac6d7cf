//! `muster apply --bulk`: one `InventoryService.Apply` a resource, in dependency order (sites,
//! racks, credentials, profiles and windows, devices by parent depth, campaigns), with bounded
//! concurrency inside each group and a progress bar. Not atomic.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Result;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use muster::pb;
use muster::pb::resource::Resource as R;

use super::{Outcome, Tally, VERBOSE_LIMIT, manifest_terms};
use crate::args::ApplyArgs;
use crate::client::Clients;
use crate::errors::Reported;
use crate::kinds::Kind;
use crate::manifest::Document;
use crate::output;

/// Sends every document, group by group, and prints the outcome.
pub(super) async fn run_bulk(
    clients: &Clients,
    args: ApplyArgs,
    docs: Vec<Document>,
) -> Result<()> {
    let total = docs.len();
    let verbose = total <= VERBOSE_LIMIT;
    let groups = group(docs);
    let context = super::super::change_context(&args.change);
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

/// Splits documents into groups applied one after another, keyed by order.
pub(super) fn group(docs: Vec<Document>) -> BTreeMap<usize, Vec<Document>> {
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
pub(super) fn parent_depths(docs: &[Document]) -> HashMap<&str, usize> {
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
