//! `muster audit`: search the audit trail (following pages) and print it, optionally with a
//! field-level diff of each change; `muster audit verify` checks the trail's hash chain.

use std::time::SystemTime;

use anyhow::{Context, Result, anyhow};
use muster::pb;

use crate::args::{AuditArgs, AuditCommand};
use crate::client::Clients;
use crate::kinds::Kind;
use crate::manifest;
use crate::output::{self, StreamFormat};

/// Page size used when listing.
const PAGE_SIZE: u32 = 1000;

/// Lists and prints matching entries, oldest first; or verifies the chain.
pub async fn run(clients: &Clients, args: AuditArgs) -> Result<()> {
    if let Some(AuditCommand::Verify { full }) = args.command {
        let response = clients
            .unary(
                clients
                    .audit
                    .clone()
                    .verify(clients.request(pb::VerifyAuditRequest { full })),
            )
            .await?;
        return match verdict(&response) {
            Ok(line) => output::println(&line),
            Err(line) => Err(anyhow!(line)),
        };
    }
    let now = clients.now();
    let (resource_kind, resource_name) = match &args.resource {
        Some(r) => {
            let (kind, name) = parse_resource(r)?;
            (kind.to_pb() as i32, name)
        }
        None => (0, String::new()),
    };
    let request = pb::ListChangesRequest {
        resource_kind,
        resource_name,
        principal: args.principal.clone().unwrap_or_default(),
        since: args
            .since
            .as_deref()
            .map(|s| parse_when(s, now).context("invalid --since"))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|s| parse_when(s, now).context("invalid --until"))
            .transpose()?,
        include_refused: args.refused,
        page_size: PAGE_SIZE,
        page_token: String::new(),
    };
    let changes = list(clients, request, args.limit).await?;
    match args.output {
        StreamFormat::Table => {
            if changes.is_empty() {
                eprintln!("No audit entries found.");
                return Ok(());
            }
            if args.diff {
                output::print(&blocks(&changes))
            } else {
                output::print(&table(&changes, args.refused))
            }
        }
        StreamFormat::Json => {
            output::println(&serde_json::to_string_pretty(&changes).context("cannot encode JSON")?)
        }
        StreamFormat::Yaml => {
            output::print(&serde_yaml_ng::to_string(&changes).context("cannot encode YAML")?)
        }
    }
}

/// Follows pages until done or `limit` entries are collected.
pub async fn list(
    clients: &Clients,
    mut request: pb::ListChangesRequest,
    limit: Option<usize>,
) -> Result<Vec<pb::Change>> {
    let mut out = Vec::new();
    loop {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let page = clients
            .unary(clients.audit.clone().list(clients.request(request.clone())))
            .await?;
        out.extend(page.changes);
        if page.next_page_token.is_empty() || page.next_page_token == request.page_token {
            break;
        }
        request.page_token = page.next_page_token;
    }
    if let Some(limit) = limit {
        out.truncate(limit);
    }
    Ok(out)
}

/// `device/web-01` → (Device, "web-01").
fn parse_resource(s: &str) -> Result<(Kind, String)> {
    let (kind, name) = s
        .split_once('/')
        .filter(|(_, n)| !n.is_empty())
        .ok_or_else(|| {
            anyhow!("invalid --resource {s:?}: expected KIND/NAME, e.g. device/web-01")
        })?;
    let kind = kind
        .parse::<Kind>()
        .map_err(|e| anyhow!("invalid --resource {s:?}: {e}"))?;
    Ok((kind, name.to_string()))
}

/// A duration ago (`24h`) or an RFC 3339 time.
fn parse_when(s: &str, now: SystemTime) -> Result<pbjson_types::Timestamp> {
    let time = match humantime::parse_duration(s) {
        Ok(ago) => now
            .checked_sub(ago)
            .ok_or_else(|| anyhow!("{s:?} reaches before the epoch"))?,
        Err(_) => humantime::parse_rfc3339_weak(s)
            .map_err(|_| anyhow!("{s:?} is neither a duration (e.g. 24h) nor an RFC 3339 time"))?,
    };
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| anyhow!("{s:?} is before 1970"))?;
    Ok(pbjson_types::Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
    })
}

/// `device/web-01` for an entry.
pub fn resource_label(change: &pb::Change) -> String {
    match Kind::from_pb(change.resource_kind) {
        Some(kind) => format!("{kind}/{}", change.resource_name),
        // Calls that touch no resource (whoami, backup) and refusals before one was known.
        None if change.resource_name.is_empty() => "-".to_string(),
        None => change.resource_name.clone(),
    }
}

/// `audit chain intact: N entries, head HASH` (with `after verified revision R` when only
/// the new part was checked), or (as the error) where it breaks.
pub fn verdict(r: &pb::VerifyAuditResponse) -> Result<String, String> {
    if r.ok {
        let from = if r.from_revision > 0 {
            format!(" after verified revision {}", r.from_revision)
        } else {
            String::new()
        };
        Ok(format!(
            "audit chain intact: {}{from}, head {}",
            output::count(r.checked, "entry", "entries"),
            output::cell(&r.head_hash)
        ))
    } else {
        Err(format!(
            "audit chain BROKEN at revision {}: {}",
            r.first_broken_revision,
            r.message.split_whitespace().collect::<Vec<_>>().join(" ")
        ))
    }
}

/// `set 1234 (5 changes)` for a change written with others in one atomic apply.
pub fn change_set_label(c: &pb::Change) -> Option<String> {
    (c.change_set != 0).then(|| {
        format!(
            "set {} ({})",
            c.change_set,
            output::count(c.change_set_size, "change", "changes")
        )
    })
}

/// One block per entry: a heading line, why (reason, ticket, refusal), then what changed.
fn blocks(changes: &[pb::Change]) -> String {
    let mut out = String::new();
    for c in changes {
        let mut heading = vec![
            revision(c.revision),
            output::format_time(c.time.as_ref()),
            output::cell(&c.principal),
            output::cell(&c.verb),
            resource_label(c),
            output::enum_cell(
                pb::ChangeOutcome::try_from(c.outcome)
                    .ok()
                    .map(|o| o.as_str_name()),
            ),
        ];
        if let Some(set) = change_set_label(c) {
            heading.push(set);
        }
        out.push_str(&heading.join("  "));
        out.push('\n');
        let mut why = Vec::new();
        if !c.reason.is_empty() {
            why.push(format!("reason: {}", c.reason));
        }
        if !c.ticket.is_empty() {
            why.push(format!("ticket: {}", c.ticket));
        }
        if !c.message.is_empty() {
            why.push(format!("message: {}", c.message.replace('\n', " ")));
        }
        if !why.is_empty() {
            out.push_str(&format!("  {}\n", why.join(", ")));
        }
        for line in change_diff(c) {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// Server-owned bookkeeping that changes on every write: left out of diffs.
const NOISE: [&str; 5] = [
    "meta.revision",
    "meta.updated_at",
    "meta.updated_by",
    "meta.created_at",
    "meta.created_by",
];

/// The longest value a diff line shows of each side.
const MAX_VALUE_CHARS: usize = 200;

/// What one entry changed: `(created)`, `(deleted)`, or `field: before → after` lines.
pub fn change_diff(c: &pb::Change) -> Vec<String> {
    let as_json = |r: Option<&pb::Resource>| {
        r.and_then(|r| manifest::render(r).ok())
            .and_then(|v| serde_json::to_value(v).ok())
    };
    match (as_json(c.before.as_ref()), as_json(c.after.as_ref())) {
        (None, None) => Vec::new(),
        (None, Some(_)) => vec!["(created)".to_string()],
        (Some(_), None) => vec!["(deleted)".to_string()],
        (Some(before), Some(after)) => {
            let mut lines = Vec::new();
            diff_values("", &before, &after, &mut lines);
            if lines.is_empty() {
                lines.push("(no field changed)".to_string());
            }
            lines
        }
    }
}

/// Field-level differences of two JSON forms, depth first in key order: objects are walked,
/// anything else (scalars, lists) is compared whole and shown compactly.
pub fn diff_values(
    path: &str,
    before: &serde_json::Value,
    after: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if before == after || NOISE.contains(&path) {
        return;
    }
    if let (Value::Object(b), Value::Object(a)) = (before, after) {
        let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
        for key in keys {
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            diff_values(
                &child,
                b.get(key).unwrap_or(&Value::Null),
                a.get(key).unwrap_or(&Value::Null),
                out,
            );
        }
        return;
    }
    out.push(format!("{path}: {} → {}", compact(before), compact(after)));
}

/// A JSON value on one line: strings bare, nothing as `(none)`, long values cut.
fn compact(v: &serde_json::Value) -> String {
    let text = match v {
        serde_json::Value::Null => return "(none)".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > MAX_VALUE_CHARS {
        let cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn table(changes: &[pb::Change], with_message: bool) -> String {
    let mut header = vec![
        "TIME",
        "REVISION",
        "SET",
        "PRINCIPAL",
        "VERB",
        "RESOURCE",
        "OUTCOME",
        "REASON",
        "TICKET",
    ];
    if with_message {
        header.push("MESSAGE");
    }
    let mut table = output::new_table(header);
    for c in changes {
        let mut row = vec![
            output::format_time(c.time.as_ref()),
            revision(c.revision),
            revision(c.change_set),
            output::cell(&c.principal),
            output::cell(&c.verb),
            resource_label(c),
            output::enum_cell(
                pb::ChangeOutcome::try_from(c.outcome)
                    .ok()
                    .map(|o| o.as_str_name()),
            ),
            output::cell(&c.reason),
            output::cell(&c.ticket),
        ];
        if with_message {
            row.push(output::cell(&c.message.replace('\n', " ")));
        }
        table.add_row(row);
    }
    output::table_to_string(&table)
}

/// Refused attempts write no revision: shown as `-`.
pub fn revision(rev: u64) -> String {
    if rev == 0 {
        "-".to_string()
    } else {
        rev.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn when_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        assert_eq!(parse_when("24h", now).unwrap().seconds, 100_000 - 86_400);
        assert_eq!(
            parse_when("2024-01-01T00:00:00Z", now).unwrap().seconds,
            1_704_067_200
        );
        assert!(parse_when("yesterday", now).is_err());
    }

    #[test]
    fn resource_filter() {
        assert_eq!(
            parse_resource("device/web-01").unwrap(),
            (Kind::Device, "web-01".to_string())
        );
        assert!(parse_resource("web-01").is_err());
        assert!(parse_resource("gadget/x").is_err());
    }

    #[test]
    fn verify_verdicts() {
        let ok = pb::VerifyAuditResponse {
            ok: true,
            checked: 1234,
            head_hash: "ab12".into(),
            revision: 1300,
            ..Default::default()
        };
        assert_eq!(
            verdict(&ok).unwrap(),
            "audit chain intact: 1234 entries, head ab12"
        );
        let incremental = pb::VerifyAuditResponse {
            from_revision: 1290,
            checked: 10,
            ..ok.clone()
        };
        assert_eq!(
            verdict(&incremental).unwrap(),
            "audit chain intact: 10 entries after verified revision 1290, head ab12"
        );
        let broken = pb::VerifyAuditResponse {
            ok: false,
            checked: 50,
            first_broken_revision: 42,
            message: "hash does not match\nits content".into(),
            ..Default::default()
        };
        assert_eq!(
            verdict(&broken).unwrap_err(),
            "audit chain BROKEN at revision 42: hash does not match its content"
        );
    }

    fn device(name: &str, role: &str, packages: &[(&str, &str)], revision: u64) -> pb::Resource {
        let mut meta = pb::ObjectMeta {
            name: name.into(),
            revision,
            ..Default::default()
        };
        meta.labels.insert("role".into(), role.into());
        pb::Resource {
            resource: Some(pb::resource::Resource::Device(pb::Device {
                meta: Some(meta),
                serial: "SN1".into(),
                spec: Some(pb::DesiredState {
                    packages: packages
                        .iter()
                        .map(|(n, v)| pb::PackageRequirement {
                            name: (*n).into(),
                            version: (*v).into(),
                            r#match: pb::VersionMatch::Exact as i32,
                        })
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn field_level_diffs() {
        let before = device("web-01", "web", &[("openssl", "3.0.11-1")], 10);
        let after = device("web-01", "db", &[("openssl", "3.0.13-1")], 12);
        let change = pb::Change {
            before: Some(before.clone()),
            after: Some(after),
            ..Default::default()
        };
        assert_eq!(
            change_diff(&change),
            [
                "meta.labels.role: web → db",
                r#"spec.packages: [{"match":"EXACT","name":"openssl","version":"3.0.11-1"}] → [{"match":"EXACT","name":"openssl","version":"3.0.13-1"}]"#,
            ]
        );
        let created = pb::Change {
            after: Some(before.clone()),
            ..Default::default()
        };
        assert_eq!(change_diff(&created), ["(created)"]);
        let deleted = pb::Change {
            before: Some(before.clone()),
            ..Default::default()
        };
        assert_eq!(change_diff(&deleted), ["(deleted)"]);
        let same = pb::Change {
            before: Some(before.clone()),
            after: Some(device("web-01", "web", &[("openssl", "3.0.11-1")], 99)),
            ..Default::default()
        };
        assert_eq!(change_diff(&same), ["(no field changed)"]);
    }

    #[test]
    fn added_and_removed_fields_and_long_values() {
        let before = serde_json::json!({"a": {"b": 1}, "gone": "x"});
        let after = serde_json::json!({"a": {"b": 1, "c": [1, 2]}, "long": "y".repeat(300)});
        let mut lines = Vec::new();
        diff_values("", &before, &after, &mut lines);
        assert_eq!(lines[0], "a.c: (none) → [1,2]");
        assert_eq!(lines[1], "gone: x → (none)");
        assert!(lines[2].starts_with("long: (none) → yyy"), "{}", lines[2]);
        assert!(lines[2].ends_with("y…"), "{}", lines[2]);
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn change_set_blocks() {
        let change = pb::Change {
            revision: 1236,
            time: Some(pbjson_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            principal: "alice".into(),
            verb: "apply".into(),
            resource_kind: pb::ResourceKind::Device as i32,
            resource_name: "web-01".into(),
            outcome: pb::ChangeOutcome::Accepted as i32,
            reason: "rollout".into(),
            ticket: "CHG-9".into(),
            change_set: 1234,
            change_set_size: 5,
            before: Some(device("web-01", "web", &[], 1)),
            after: Some(device("web-01", "db", &[], 1236)),
            ..Default::default()
        };
        assert_eq!(change_set_label(&change).unwrap(), "set 1234 (5 changes)");
        assert_eq!(
            blocks(std::slice::from_ref(&change)),
            "1236  1970-01-01T00:00:00Z  alice  apply  device/web-01  ACCEPTED  set 1234 (5 changes)\n  reason: rollout, ticket: CHG-9\n  meta.labels.role: web → db\n"
        );
        let alone = pb::Change {
            change_set: 0,
            ..change
        };
        assert_eq!(change_set_label(&alone), None);
        let rows = table(&[alone], false);
        let row: Vec<&str> = rows.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[2], "-", "{rows}");
    }

    #[test]
    fn audit_table() {
        let change = pb::Change {
            revision: 9,
            time: Some(pbjson_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            principal: "alice".into(),
            verb: "apply".into(),
            resource_kind: pb::ResourceKind::Device as i32,
            resource_name: "web-01".into(),
            outcome: pb::ChangeOutcome::Accepted as i32,
            reason: "rollout".into(),
            ..Default::default()
        };
        let out = table(&[change], false);
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[1],
            [
                "1970-01-01T00:00:00Z",
                "9",
                "-",
                "alice",
                "apply",
                "device/web-01",
                "ACCEPTED",
                "rollout",
                "-"
            ]
        );
    }
}
