//! `muster audit`: search the audit trail (following pages) and print it.

use std::time::SystemTime;

use anyhow::{Context, Result, anyhow};
use muster::pb;

use crate::args::AuditArgs;
use crate::client::Clients;
use crate::kinds::Kind;
use crate::output::{self, StreamFormat};

/// Page size used when listing.
const PAGE_SIZE: u32 = 1000;

/// Lists and prints matching entries, oldest first.
pub async fn run(clients: &Clients, args: AuditArgs) -> Result<()> {
    let now = SystemTime::now();
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
            output::print(&table(&changes, args.refused))
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

fn table(changes: &[pb::Change], with_message: bool) -> String {
    let mut header = vec![
        "TIME",
        "REVISION",
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
