//! `muster describe KIND NAME`: a readable, sectioned view of one resource (only the sections
//! that have data), followed by its last audit entries.

mod device;
mod doc;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::SystemTime;

use anyhow::Result;
use muster::pb;
use muster::pb::resource::Resource as R;
use tonic::Code;

use crate::args::DescribeArgs;
use crate::client::Clients;
use crate::errors::RpcError;
use crate::kinds::Kind;
use crate::output::{self, cell, format_time};
use device::{device, spec_section};
use doc::{Doc, enum_name, time_with_age};

/// How many audit entries to show.
const CHANGES_SHOWN: usize = 10;

/// Fetches the resource and its recent changes, then prints them.
pub async fn run(clients: &Clients, args: DescribeArgs) -> Result<()> {
    let resource = super::fetch(clients, args.kind, &args.name).await?;
    let changes = recent_changes(clients, args.kind, &args.name).await;
    let mut text = describe(&resource, clients.now());
    match changes {
        Ok(changes) => text.push_str(&changes_section(&changes)),
        // Viewers may read inventory without reading the trail: still show the resource.
        Err(e)
            if e.downcast_ref::<RpcError>().is_some_and(|s| {
                matches!(s.code(), Code::PermissionDenied | Code::Unimplemented)
            }) =>
        {
            let _ = writeln!(text, "\nChanges: <unavailable: {e}>");
        }
        Err(e) => return Err(e),
    }
    output::print(&text)
}

/// The last [`CHANGES_SHOWN`] accepted changes of the resource, oldest first.
async fn recent_changes(clients: &Clients, kind: Kind, name: &str) -> Result<Vec<pb::Change>> {
    let mut request = pb::ListChangesRequest {
        resource_kind: kind.to_pb() as i32,
        resource_name: name.to_string(),
        page_size: 1000,
        ..Default::default()
    };
    let mut last = VecDeque::with_capacity(CHANGES_SHOWN + 1);
    loop {
        let page = clients
            .unary(clients.audit.clone().list(clients.request(request.clone())))
            .await?;
        for change in page.changes {
            if last.len() == CHANGES_SHOWN {
                last.pop_front();
            }
            last.push_back(change);
        }
        if page.next_page_token.is_empty() || page.next_page_token == request.page_token {
            break;
        }
        request.page_token = page.next_page_token;
    }
    Ok(last.into())
}

/// The whole description of one resource, without the audit section.
pub fn describe(resource: &pb::Resource, now: SystemTime) -> String {
    let mut d = Doc {
        text: String::new(),
    };
    let kind = Kind::of(resource);
    let meta = resource.meta().cloned().unwrap_or_default();
    d.kv(0, "Name", &meta.name);
    d.kv(0, "Kind", kind.map(Kind::manifest_name).unwrap_or(""));
    d.kv(0, "ID", &meta.id);
    d.num(0, "Revision", meta.revision);
    let by = |who: &str| {
        if who.is_empty() {
            String::new()
        } else {
            format!(" by {who}")
        }
    };
    if meta.created_at.is_some() {
        d.kv(
            0,
            "Created",
            format!(
                "{}{}",
                time_with_age(meta.created_at.as_ref(), now),
                by(&meta.created_by)
            ),
        );
    }
    if meta.updated_at.is_some() {
        d.kv(
            0,
            "Updated",
            format!(
                "{}{}",
                time_with_age(meta.updated_at.as_ref(), now),
                by(&meta.updated_by)
            ),
        );
    }
    d.map("Labels", &meta.labels);
    d.map("Annotations", &meta.annotations);
    match resource.resource.as_ref() {
        Some(R::Site(s)) => {
            d.kv(0, "Region", &s.region);
            d.kv(0, "Description", &s.description);
            d.kv(0, "Address", &s.address);
            d.kv(0, "Timezone", &s.timezone);
        }
        Some(R::Rack(r)) => {
            d.kv(0, "Site", &r.site);
            d.num(0, "Height (U)", r.height_u);
            d.kv(0, "Row", &r.row);
            d.kv(0, "Description", &r.description);
        }
        Some(R::Device(dev)) => device(&mut d, dev, now),
        Some(R::Profile(p)) => {
            d.kv(0, "Selector", &p.selector);
            d.kv(0, "Priority", p.priority.to_string());
            d.kv(0, "Description", &p.description);
            if let Some(spec) = &p.spec {
                spec_section(&mut d, spec);
            }
        }
        Some(R::Window(w)) => {
            d.kv(0, "Selector", &w.selector);
            d.kv(0, "Cron", &w.cron);
            d.kv(
                0,
                "Duration",
                output::duration(w.duration.as_ref()).unwrap_or_default(),
            );
            d.kv(0, "Timezone", &w.timezone);
            d.kv(0, "Freeze", w.freeze.to_string());
            d.kv(0, "Description", &w.description);
            if !w.ranges.is_empty() {
                d.heading("Ranges");
                d.table(
                    &["START", "END"],
                    w.ranges
                        .iter()
                        .map(|r| vec![format_time(r.start.as_ref()), format_time(r.end.as_ref())]),
                );
            }
        }
        Some(R::Credential(c)) => {
            d.kv(
                0,
                "Type",
                enum_name(c.kind, pb::CredentialKind::as_str_name),
            );
            d.kv(0, "Fingerprint", &c.fingerprint);
        }
        Some(R::Campaign(c)) => {
            if let Some(spec) = &c.spec {
                d.kv(0, "Selector", &spec.selector);
                d.kv(0, "Description", &spec.description);
                d.num(0, "Steps", spec.steps.len() as u64);
                d.kv(0, "Windows", spec.windows.join(", "));
            }
            if let Some(status) = &c.status {
                d.kv(
                    0,
                    "State",
                    enum_name(status.state, pb::CampaignState::as_str_name),
                );
                d.kv(0, "Message", &status.message);
                d.kv(0, "Approved By", status.approved_by.join(", "));
                if !status.hosts.is_empty() {
                    d.heading("Hosts");
                    d.table(
                        &["DEVICE", "STATE", "STEP", "MESSAGE"],
                        status.hosts.iter().map(|h| {
                            vec![
                                cell(&h.device),
                                cell(&enum_name(h.state, pb::HostState::as_str_name)),
                                cell(&h.step),
                                cell(&h.message),
                            ]
                        }),
                    );
                }
            }
        }
        None => {}
    }
    d.text
}

fn changes_section(changes: &[pb::Change]) -> String {
    if changes.is_empty() {
        return "\nChanges: <none>\n".to_string();
    }
    let mut d = Doc {
        text: String::from("\n"),
    };
    d.heading("Changes");
    d.table(
        &["TIME", "PRINCIPAL", "VERB", "REVISION", "REASON", "TICKET"],
        changes.iter().map(|c| {
            vec![
                format_time(c.time.as_ref()),
                cell(&c.principal),
                cell(&c.verb),
                super::audit::revision(c.revision),
                cell(&c.reason),
                cell(&c.ticket),
            ]
        }),
    );
    d.text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn device_sections() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        let ts = |s| {
            Some(pbjson_types::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        let dev = pb::Device {
            meta: Some(pb::ObjectMeta {
                name: "web-01".into(),
                revision: 3,
                created_at: ts(10_000 - 120),
                ..Default::default()
            }),
            kind: pb::DeviceKind::Server as i32,
            serial: "SN1".into(),
            status: Some(pb::ObservedState {
                health: pb::Health::Critical as i32,
                health_reasons: vec![pb::HealthReason {
                    severity: pb::Health::Critical as i32,
                    code: "smart.predicted_failure".into(),
                    message: "sda failing".into(),
                    source: "smart".into(),
                }],
                sel: vec![
                    pb::SelEntry {
                        record_id: 1,
                        time: ts(100),
                        event: "old event".into(),
                        asserted: true,
                        ..Default::default()
                    },
                    pb::SelEntry {
                        record_id: 2,
                        time: ts(200),
                        event: "new event".into(),
                        asserted: true,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = describe(
            &pb::Resource {
                resource: Some(R::Device(dev)),
            },
            now,
        );
        assert!(text.starts_with("Name:                 web-01\n"), "{text}");
        assert!(text.contains("Type:                 SERVER\n"), "{text}");
        assert!(text.contains("Labels:               <none>\n"), "{text}");
        assert!(text.contains("(2m ago)"), "{text}");
        assert!(text.contains("  Health:             CRITICAL\n"), "{text}");
        assert!(
            text.contains("CRITICAL smart.predicted_failure: sda failing (smart)"),
            "{text}"
        );
        let new = text.find("new event").unwrap();
        let old = text.find("old event").unwrap();
        assert!(new < old, "SEL must be latest first: {text}");
        assert!(!text.contains("FRU"), "empty sections are omitted: {text}");
        assert!(!text.contains("Spec:"), "{text}");
        insta::assert_snapshot!("describe_device", text);
    }

    #[test]
    fn changes_list() {
        assert_eq!(changes_section(&[]), "\nChanges: <none>\n");
        let c = pb::Change {
            revision: 5,
            principal: "alice".into(),
            verb: "apply".into(),
            ticket: "OPS-1".into(),
            ..Default::default()
        };
        let text = changes_section(&[c]);
        assert!(text.contains("alice"), "{text}");
        assert!(text.contains("OPS-1"), "{text}");
    }
}
