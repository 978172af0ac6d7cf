//! `muster plan -f FILE`: what applying a manifest would change, device by device, the drift the
//! devices would be in afterwards, and the profile conflicts that block it (exit status 1).

use std::time::SystemTime;

use anyhow::{Context, Result};
use muster::pb;

use crate::args::PlanArgs;
use crate::client::Clients;
use crate::errors::Reported;
use crate::kinds::Kind;
use crate::manifest::Document;
use crate::output::{self, Paint, StreamFormat};

/// Asks the server for the plan of every resource in the file and prints it.
pub async fn run(clients: &Clients, args: PlanArgs, docs: Vec<Document>) -> Result<()> {
    let request = pb::PlanRequest {
        resources: super::apply::ordered_resources(docs),
        include_unchanged: args.include_unchanged,
    };
    let plan = clients
        .unary(clients.config.clone().plan(clients.request(request)))
        .await?;
    match args.output {
        StreamFormat::Table => {
            output::print(&render(&plan, Paint::stdout(), clients.now()))?;
        }
        StreamFormat::Json => {
            output::println(&serde_json::to_string_pretty(&plan).context("cannot encode JSON")?)?
        }
        StreamFormat::Yaml => {
            output::print(&serde_yaml_ng::to_string(&plan).context("cannot encode YAML")?)?
        }
    }
    if !plan.conflicts.is_empty() {
        eprintln!(
            "error: {} between profiles of equal priority; nothing can be applied until they are resolved",
            output::count(conflict_count(&plan), "conflict", "conflicts")
        );
        return Err(Reported.into());
    }
    Ok(())
}

fn conflict_count(plan: &pb::PlanResponse) -> u64 {
    u64::try_from(plan.conflicts.len()).unwrap_or(u64::MAX)
}

/// `12 devices change, 3 will drift, 0 conflicts`.
pub fn summary_line(plan: &pb::PlanResponse) -> String {
    let changed = if plan.devices_changed == 1 {
        "1 device changes".to_string()
    } else {
        format!("{} devices change", plan.devices_changed)
    };
    format!(
        "{changed}, {} will drift, {}",
        plan.devices_drifting,
        output::count(conflict_count(plan), "conflict", "conflicts")
    )
}

/// A desired value for a sentence: `(none)` when unset.
fn value(v: &str) -> &str {
    if v.is_empty() { "(none)" } else { v }
}

/// `kernel: 6.1.0-13 → 6.1.0-18 (profile/base)`.
pub fn change_line(c: &pb::FieldChange, paint: Paint) -> String {
    let after = if c.after.is_empty() {
        paint.red(value(&c.after))
    } else if c.before.is_empty() {
        paint.green(&c.after)
    } else {
        paint.yellow(&c.after)
    };
    let mut line = format!("{}: {} → {after}", c.field, value(&c.before));
    if !c.source.is_empty() {
        line.push_str(&paint.dim(&format!(" ({})", c.source)));
    }
    line
}

/// `kernel desired=6.1.0-18 observed=6.1.0-13 pending`, with the age and the source of the
/// desired value when known.
pub fn drift_line(d: &pb::DriftItem, paint: Paint, now: SystemTime) -> String {
    let mut line = format!(
        "{} desired={} observed={} {}",
        d.field,
        value(&d.desired),
        value(&d.observed),
        paint.yellow(if d.cause.is_empty() { "-" } else { &d.cause })
    );
    let mut detail = Vec::new();
    if d.since.is_some() {
        detail.push(format!("since {}", output::ago(d.since.as_ref(), now)));
    }
    if !d.source.is_empty() {
        detail.push(d.source.clone());
    }
    if !detail.is_empty() {
        line.push_str(&paint.dim(&format!(" ({})", detail.join(", "))));
    }
    line
}

/// The human form of a plan: the resources that change (created or configured), then per device its field changes and
/// the drift after, then the conflicts, then the summary line.
pub fn render(plan: &pb::PlanResponse, paint: Paint, now: SystemTime) -> String {
    let mut out = String::new();
    for r in &plan.resources {
        let name = match Kind::from_pb(r.kind) {
            Some(kind) => format!("{kind}/{}", r.name),
            None => r.name.clone(),
        };
        let action = match pb::ApplyAction::try_from(r.action) {
            Ok(pb::ApplyAction::Created) => paint.green("will be created"),
            Ok(pb::ApplyAction::Updated) => paint.yellow("will be configured"),
            // Unchanged resources are left out: a large file would drown the changes.
            Ok(pb::ApplyAction::Unchanged) => continue,
            _ => "-".to_string(),
        };
        out.push_str(&format!("{name} {action}\n"));
    }
    for device in &plan.devices {
        if !out.is_empty() {
            out.push('\n');
        }
        let mut heading = paint.bold(&format!("device/{}", device.device));
        if device.created {
            heading.push_str(&paint.green(" (new)"));
        }
        out.push_str(&heading);
        out.push('\n');
        if device.changes.is_empty() {
            out.push_str("  no changes\n");
        }
        for c in &device.changes {
            out.push_str(&format!("  {}\n", change_line(c, paint)));
        }
        if !device.drift_after.is_empty() {
            out.push_str("  drift after:\n");
            for d in &device.drift_after {
                out.push_str(&format!("    {}\n", drift_line(d, paint, now)));
            }
        }
    }
    if !plan.conflicts.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&paint.red("CONFLICTS"));
        out.push('\n');
        for c in &plan.conflicts {
            out.push_str(&format!(
                "  device/{} {}: {} (all priority {})\n",
                c.device,
                c.field,
                c.profiles
                    .iter()
                    .map(|p| format!("profile/{p}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.priority
            ));
        }
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&summary_line(plan));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn sample() -> pb::PlanResponse {
        pb::PlanResponse {
            devices: vec![
                pb::DevicePlan {
                    device: "web-01".into(),
                    changes: vec![
                        pb::FieldChange {
                            field: "packages.openssl".into(),
                            before: "3.0.11-1".into(),
                            after: "3.0.13-1".into(),
                            source: "profile/base".into(),
                        },
                        pb::FieldChange {
                            field: "sysctl.vm.swappiness".into(),
                            before: String::new(),
                            after: "10".into(),
                            source: "device".into(),
                        },
                    ],
                    drift_after: vec![pb::DriftItem {
                        field: "packages.openssl".into(),
                        desired: "3.0.13-1".into(),
                        observed: "3.0.11-1".into(),
                        since: Some(pbjson_types::Timestamp {
                            seconds: 1_000_000 - 180,
                            nanos: 0,
                        }),
                        cause: "pending".into(),
                        source: "profile/base".into(),
                    }],
                    created: false,
                },
                pb::DevicePlan {
                    device: "web-02".into(),
                    created: true,
                    ..Default::default()
                },
            ],
            conflicts: vec![pb::ProfileConflict {
                device: "web-02".into(),
                field: "ntp_servers".into(),
                profiles: vec!["ntp-a".into(), "ntp-b".into()],
                priority: 10,
            }],
            resources: vec![pb::ResourcePlan {
                kind: pb::ResourceKind::Profile as i32,
                name: "base".into(),
                action: pb::ApplyAction::Updated as i32,
            }],
            devices_changed: 12,
            devices_drifting: 3,
            revision: 99,
        }
    }

    #[test]
    fn summary_counts() {
        let mut plan = sample();
        plan.conflicts.clear();
        assert_eq!(
            summary_line(&plan),
            "12 devices change, 3 will drift, 0 conflicts"
        );
        plan.devices_changed = 1;
        plan.devices_drifting = 1;
        plan.conflicts = sample().conflicts;
        assert_eq!(
            summary_line(&plan),
            "1 device changes, 1 will drift, 1 conflict"
        );
    }

    #[test]
    fn plan_text() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let text = render(&sample(), Paint::plain(), now);
        insta::assert_snapshot!("plan_text", &text);
        let want = "\
profile/base will be configured

device/web-01
  packages.openssl: 3.0.11-1 → 3.0.13-1 (profile/base)
  sysctl.vm.swappiness: (none) → 10 (device)
  drift after:
    packages.openssl desired=3.0.13-1 observed=3.0.11-1 pending (since 3m ago, profile/base)

device/web-02 (new)
  no changes

CONFLICTS
  device/web-02 ntp_servers: profile/ntp-a, profile/ntp-b (all priority 10)

12 devices change, 3 will drift, 1 conflict
";
        assert_eq!(text, want);
    }

    #[test]
    fn colours_only_when_asked() {
        let now = UNIX_EPOCH;
        let plain = render(&sample(), Paint::plain(), now);
        assert!(!plain.contains('\u{1b}'));
        let coloured = render(&sample(), Paint::always(), now);
        assert!(coloured.contains("\u{1b}["), "{coloured:?}");
        assert_eq!(console::strip_ansi_codes(&coloured), plain);
    }

    #[test]
    fn empty_plan_is_just_the_summary() {
        let plan = pb::PlanResponse::default();
        assert_eq!(
            render(&plan, Paint::plain(), UNIX_EPOCH),
            "0 devices change, 0 will drift, 0 conflicts\n"
        );
    }
}
