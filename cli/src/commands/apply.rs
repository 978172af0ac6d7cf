//! `muster apply -f FILE`: parse every document first, then write them all atomically, as one
//! change set (`ConfigService.Apply`); `--dry-run` asks for the plan instead (nothing written).
//!
//! `--bulk` keeps the per-resource path for files too large for one request: upserts in
//! dependency order (sites, racks, credentials, profiles and windows, devices by parent depth,
//! campaigns) with bounded concurrency inside each group and a progress bar. Not atomic.

mod bulk;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use muster::pb;

use crate::args::ApplyArgs;
use crate::client::Clients;
use crate::errors::RpcError;
use crate::kinds::Kind;
use crate::manifest::{self, Document};
use crate::output;
use bulk::{group, run_bulk};

/// Above this many documents, per-object lines give way to a progress bar (bulk) or to the
/// summary alone (atomic).
const VERBOSE_LIMIT: usize = 20;

/// Largest encoded atomic apply sent: the server refuses requests over 4 MiB by default, and
/// the gRPC frame and headers need some room.
const MAX_ATOMIC_BYTES: usize = 3584 * 1024;

/// Reads and parses the whole input; any bad document fails it before anything is sent.
pub fn load(args: &ApplyArgs) -> Result<Vec<Document>> {
    load_file(&args.file)
}

/// [`load`] for any command that reads a manifest (`apply`, `plan`); `-` is standard input.
pub fn load_file(file: &Path) -> Result<Vec<Document>> {
    let (label, text) = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        ("standard input".to_string(), text)
    } else {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        (file.display().to_string(), text)
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

/// The resources of a file in dependency order (what the server would need if it applied them
/// one by one; harmless for an atomic set).
pub fn ordered_resources(docs: Vec<Document>) -> Vec<pb::Resource> {
    group(docs)
        .into_values()
        .flatten()
        .map(|d| d.resource)
        .collect()
}

/// Applies the file: atomically, or with `--bulk` one resource at a time.
pub async fn run(clients: &Clients, args: ApplyArgs, docs: Vec<Document>) -> Result<()> {
    if args.bulk {
        run_bulk(clients, args, docs).await
    } else if args.dry_run {
        run_dry(clients, docs).await
    } else {
        run_atomic(clients, args, docs).await
    }
}

/// Refuses an atomic apply too large for one request, saying what to do instead.
fn check_size(request: &pb::ApplySetRequest) -> Result<()> {
    let size = prost::Message::encoded_len(request);
    if size > MAX_ATOMIC_BYTES {
        bail!(
            "the manifest is {:.1} MiB encoded, more than the {:.1} MiB one atomic apply can carry: split the file, or pass --bulk to apply it resource by resource (not atomic)",
            mib(size),
            mib(MAX_ATOMIC_BYTES)
        );
    }
    Ok(())
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `device/web-01` for a resource plan entry.
fn plan_name(r: &pb::ResourcePlan) -> String {
    match Kind::from_pb(r.kind) {
        Some(kind) => format!("{kind}/{}", r.name),
        None => r.name.clone(),
    }
}

/// The per-resource lines (for small files) and the totals of an atomic apply or its plan.
fn report(resources: &[pb::ResourcePlan], total: usize, dry_run: bool) -> (String, Tally) {
    let verbose = total <= VERBOSE_LIMIT;
    let suffix = if dry_run { " (dry run)" } else { "" };
    let mut tally = Tally::default();
    let mut lines = String::new();
    for r in resources {
        let outcome = Outcome::from_action(r.action);
        match outcome {
            Outcome::Created => tally.created += 1,
            Outcome::Configured => tally.configured += 1,
            Outcome::Unchanged => tally.unchanged += 1,
        }
        if verbose {
            lines.push_str(&format!("{} {}{suffix}\n", plan_name(r), outcome.word()));
        }
    }
    (lines, tally)
}

/// `change set 1234 (revision 1240)`, or that nothing changed.
fn change_set_line(response: &pb::ApplySetResponse) -> String {
    if response.change_set == 0 {
        format!("nothing changed (revision {})", response.revision)
    } else {
        format!(
            "change set {} (revision {})",
            response.change_set, response.revision
        )
    }
}

/// One `ConfigService.Apply` with every resource: all are written, or none.
async fn run_atomic(clients: &Clients, args: ApplyArgs, docs: Vec<Document>) -> Result<()> {
    let total = docs.len();
    let kinds: Vec<(String, Kind)> = docs.iter().map(|d| (d.qualified_name(), d.kind)).collect();
    let request = pb::ApplySetRequest {
        resources: ordered_resources(docs),
        context: Some(super::change_context(&args.change)),
    };
    check_size(&request)?;
    let response = clients
        .unary(clients.config.clone().apply(clients.request(request)))
        .await
        .map_err(|e| set_manifest_terms(&kinds, e))?;
    let (lines, tally) = report(&response.resources, total, false);
    output::print(&lines)?;
    output::println(&tally.summary(total, false))?;
    output::println(&change_set_line(&response))
}

/// `--dry-run`: the plan's per-resource actions, in the words of a real apply.
async fn run_dry(clients: &Clients, docs: Vec<Document>) -> Result<()> {
    let total = docs.len();
    let kinds: Vec<(String, Kind)> = docs.iter().map(|d| (d.qualified_name(), d.kind)).collect();
    let request = pb::PlanRequest {
        resources: ordered_resources(docs),
        include_unchanged: false,
    };
    let plan = clients
        .unary(clients.config.clone().plan(clients.request(request)))
        .await
        .map_err(|e| set_manifest_terms(&kinds, e))?;
    let (lines, tally) = report(&plan.resources, total, true);
    output::print(&lines)?;
    output::println(&tally.summary(total, true))?;
    output::println(&super::plan::summary_line(&plan))?;
    if !plan.conflicts.is_empty() {
        bail!(
            "{}; see `muster plan -f FILE`",
            output::count(
                u64::try_from(plan.conflicts.len()).unwrap_or(u64::MAX),
                "profile conflict",
                "profile conflicts"
            )
        );
    }
    Ok(())
}

/// Server messages name a device's or credential's own kind `kind`; the manifest calls it
/// `type` (see [`manifest`]), so say `type` to the person who wrote the manifest.
fn manifest_terms(kind: Kind, err: anyhow::Error) -> anyhow::Error {
    match err.downcast::<RpcError>() {
        Ok(RpcError(status))
            if renames_type(kind)
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

/// [`manifest_terms`] for an atomic apply, where the server names the failing resource:
/// `device/x: kind: ...` becomes `device/x: type: ...` for devices and credentials of the file.
fn set_manifest_terms(names: &[(String, Kind)], err: anyhow::Error) -> anyhow::Error {
    match err.downcast::<RpcError>() {
        Ok(RpcError(status)) if status.code() == tonic::Code::InvalidArgument => {
            let mut message = status.message().to_string();
            for (name, kind) in names {
                if renames_type(*kind) {
                    message = message.replace(&format!("{name}: kind:"), &format!("{name}: type:"));
                }
            }
            RpcError(tonic::Status::invalid_argument(message)).into()
        }
        Ok(other) => other.into(),
        Err(err) => err,
    }
}

fn renames_type(kind: Kind) -> bool {
    matches!(kind, Kind::Device | Kind::Credential)
}

#[cfg(test)]
mod tests {
    use super::bulk::parent_depths;
    use super::*;
    use muster::pb::resource::Resource as R;

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
    fn atomic_size_limit() {
        let small = pb::ApplySetRequest {
            resources: vec![pb::Resource::default(); 10],
            context: None,
        };
        assert!(check_size(&small).is_ok());
        // 10,000 devices with a 400-byte serial: about 3.9 MiB encoded.
        let device = pb::Resource {
            resource: Some(R::Device(pb::Device {
                serial: "x".repeat(400),
                ..Default::default()
            })),
        };
        let big = pb::ApplySetRequest {
            resources: vec![device; 10_000],
            context: None,
        };
        let err = check_size(&big).unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.contains("split the file") && err.contains("--bulk"),
            "{err}"
        );
        assert!(err.contains("3.5 MiB"), "{err}");
    }

    #[test]
    fn atomic_report_lines() {
        let plans = [
            pb::ResourcePlan {
                kind: pb::ResourceKind::Site as i32,
                name: "fra1".into(),
                action: pb::ApplyAction::Created as i32,
            },
            pb::ResourcePlan {
                kind: pb::ResourceKind::Device as i32,
                name: "web-01".into(),
                action: pb::ApplyAction::Updated as i32,
            },
            pb::ResourcePlan {
                kind: pb::ResourceKind::Profile as i32,
                name: "base".into(),
                action: pb::ApplyAction::Unchanged as i32,
            },
        ];
        let (lines, tally) = report(&plans, 3, false);
        assert_eq!(
            lines,
            "site/fra1 created\ndevice/web-01 configured\nprofile/base unchanged\n"
        );
        assert_eq!(
            tally.summary(3, false),
            "applied 3 objects: 1 created, 1 configured, 1 unchanged"
        );
        let (lines, _) = report(&plans, 3, true);
        assert!(
            lines.starts_with("site/fra1 created (dry run)\n"),
            "{lines}"
        );
        let (lines, tally) = report(&plans, 21, false);
        assert_eq!(lines, "", "large files print the summary only");
        assert_eq!(tally.created, 1);
        assert_eq!(
            change_set_line(&pb::ApplySetResponse {
                resources: vec![],
                change_set: 1234,
                revision: 1240,
            }),
            "change set 1234 (revision 1240)"
        );
        assert_eq!(
            change_set_line(&pb::ApplySetResponse {
                resources: vec![],
                change_set: 0,
                revision: 7,
            }),
            "nothing changed (revision 7)"
        );
    }

    #[test]
    fn atomic_errors_use_manifest_terms() {
        let names = [
            ("device/web-01".to_string(), Kind::Device),
            ("site/fra1".to_string(), Kind::Site),
        ];
        let err = anyhow::Error::new(RpcError(tonic::Status::invalid_argument(
            "device/web-01: kind: is required; site/fra1: kind: odd",
        )));
        assert_eq!(
            set_manifest_terms(&names, err).to_string(),
            "INVALID_ARGUMENT: device/web-01: type: is required; site/fra1: kind: odd"
        );
    }

    #[test]
    fn dependency_order_for_the_set() {
        let docs = manifest::parse(
            "kind: Device\nmeta: {name: vm-1}\nparent: hv-1\n---\nkind: Device\nmeta: {name: hv-1}\n---\nkind: Site\nmeta: {name: s}\n",
        )
        .unwrap();
        let names: Vec<String> = ordered_resources(docs)
            .iter()
            .map(crate::kinds::qualified_name)
            .collect();
        assert_eq!(names, ["site/s", "device/hv-1", "device/vm-1"]);
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
