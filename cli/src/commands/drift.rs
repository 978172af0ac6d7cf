//! `muster drift`: where devices differ from their desired state (a summary by field, then the
//! items per device); `muster drift accept DEVICE FIELD` adopts the observed value.

use std::time::SystemTime;

use anyhow::{Context, Result};
use muster::pb;
use muster::pb::resource::Resource as R;

use crate::args::{DriftArgs, DriftCommand, DriftListArgs};
use crate::client::Clients;
use crate::output::{self, StreamFormat};

/// Lists drift, or accepts one field's observed value.
pub async fn run(clients: &Clients, args: DriftArgs) -> Result<()> {
    match args.command {
        Some(DriftCommand::Accept {
            device,
            field,
            change,
        }) => {
            let request = pb::AcceptDriftRequest {
                device: device.clone(),
                field: field.clone(),
                context: Some(super::change_context(&change)),
            };
            let response = clients
                .unary(
                    clients
                        .config
                        .clone()
                        .accept_drift(clients.request(request)),
                )
                .await?;
            output::print(&accepted(&device, &field, &response))
        }
        None => list(clients, args.list).await,
    }
}

async fn list(clients: &Clients, args: DriftListArgs) -> Result<()> {
    let request = pb::DriftRequest {
        selector: super::check_selector(args.selector.as_deref())?,
        field_prefix: args.field.clone().unwrap_or_default(),
        summary_only: args.summary,
    };
    let drift = clients
        .unary(clients.config.clone().drift(clients.request(request)))
        .await?;
    match args.output {
        StreamFormat::Table => output::print(&render(&drift, clients.now())),
        StreamFormat::Json => {
            output::println(&serde_json::to_string_pretty(&drift).context("cannot encode JSON")?)
        }
        StreamFormat::Yaml => {
            output::print(&serde_yaml_ng::to_string(&drift).context("cannot encode YAML")?)
        }
    }
}

/// `3 of 40 devices drift (revision 812)`, the summary table by field, then the items table.
pub fn render(drift: &pb::DriftResponse, now: SystemTime) -> String {
    let mut out = format!(
        "{} of {} drift (revision {})\n",
        drift.drifting,
        output::count(drift.devices, "device", "devices"),
        drift.revision
    );
    if drift.fields.is_empty() && drift.items.is_empty() {
        return out;
    }
    if !drift.fields.is_empty() {
        out.push('\n');
        let mut table = output::new_table(["FIELD", "DEVICES", "PENDING", "UNEXPECTED"]);
        for f in &drift.fields {
            table.add_row(vec![
                output::cell(&f.field),
                f.devices.to_string(),
                f.pending.to_string(),
                f.unexpected.to_string(),
            ]);
        }
        out.push_str(&output::table_to_string(&table));
    }
    let rows: Vec<(&str, &pb::DriftItem)> = drift
        .items
        .iter()
        .flat_map(|d| d.items.iter().map(move |i| (d.device.as_str(), i)))
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        let mut table = output::new_table([
            "DEVICE", "FIELD", "DESIRED", "OBSERVED", "CAUSE", "SINCE", "SOURCE",
        ]);
        for (device, item) in rows {
            // Tables stay uncoloured: escape codes would count in comfy-table's column widths.
            table.add_row(vec![
                output::cell(device),
                output::cell(&item.field),
                output::cell(&one_line(&item.desired)),
                output::cell(&one_line(&item.observed)),
                output::cell(&item.cause),
                output::ago(item.since.as_ref(), now),
                output::cell(&item.source),
            ]);
        }
        out.push_str(&output::table_to_string(&table));
    }
    out
}

/// Values with spaces or newlines (a list, a sysctl with several fields) stay one cell.
fn one_line(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(",")
}

/// What `drift accept` adopted: the device's desired value of the field now.
pub fn accepted(device: &str, field: &str, response: &pb::AcceptDriftResponse) -> String {
    let value = response
        .device
        .as_ref()
        .and_then(|r| match r.resource.as_ref() {
            Some(R::Device(d)) => d.spec.as_ref().and_then(|s| desired_value(s, field)),
            _ => None,
        });
    match value {
        Some(v) => format!(
            "device/{device} {field} accepted: desired is now {v} (revision {})\n",
            response.revision
        ),
        None => format!(
            "device/{device} {field} accepted (revision {})\n",
            response.revision
        ),
    }
}

/// The desired value of a drift field name in a device's own spec, as text, where the name maps
/// onto the spec (`kernel`, `os.release`, `packages.NAME`, `sysctl.KEY`, `ntp_servers`...).
fn desired_value(spec: &pb::DesiredState, field: &str) -> Option<String> {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match field {
        "kernel" => non_empty(&spec.kernel),
        "os.release" | "os_release" => non_empty(&spec.os_release),
        "timezone" | "os.timezone" => non_empty(&spec.timezone),
        "ntp_servers" | "os.ntp_servers" => {
            (!spec.ntp_servers.is_empty()).then(|| spec.ntp_servers.join(","))
        }
        "dns_servers" | "os.dns_servers" => {
            (!spec.dns_servers.is_empty()).then(|| spec.dns_servers.join(","))
        }
        _ => {
            if let Some(name) = field.strip_prefix("packages.") {
                let p = spec.packages.iter().find(|p| p.name == name)?;
                let m = pb::VersionMatch::try_from(p.r#match).unwrap_or_default();
                Some(match m {
                    pb::VersionMatch::Absent => "absent".to_string(),
                    pb::VersionMatch::Minimum => format!(">= {}", p.version),
                    _ if p.version.is_empty() => "installed".to_string(),
                    _ => p.version.clone(),
                })
            } else if let Some(key) = field.strip_prefix("sysctl.") {
                spec.sysctl.get(key).cloned()
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn sample() -> pb::DriftResponse {
        pb::DriftResponse {
            devices: 40,
            drifting: 2,
            fields: vec![
                pb::FieldDriftSummary {
                    field: "packages.openssl".into(),
                    devices: 2,
                    pending: 1,
                    unexpected: 1,
                },
                pb::FieldDriftSummary {
                    field: "kernel".into(),
                    devices: 1,
                    pending: 1,
                    unexpected: 0,
                },
            ],
            items: vec![
                pb::DeviceDrift {
                    device: "web-01".into(),
                    items: vec![pb::DriftItem {
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
                },
                pb::DeviceDrift {
                    device: "web-02".into(),
                    items: vec![
                        pb::DriftItem {
                            field: "packages.openssl".into(),
                            desired: "3.0.13-1".into(),
                            observed: String::new(),
                            since: None,
                            cause: "unexpected".into(),
                            source: "profile/base".into(),
                        },
                        pb::DriftItem {
                            field: "ntp_servers".into(),
                            desired: "a.example b.example".into(),
                            observed: "c.example".into(),
                            since: Some(pbjson_types::Timestamp {
                                seconds: 1_000_000 - 2 * 86_400,
                                nanos: 0,
                            }),
                            cause: "pending".into(),
                            source: "device".into(),
                        },
                    ],
                },
            ],
            revision: 812,
        }
    }

    fn words(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    #[test]
    fn drift_tables() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let text = render(&sample(), now);
        insta::assert_snapshot!("drift_table", text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2 of 40 devices drift (revision 812)");
        assert_eq!(
            words(lines[2]),
            ["FIELD", "DEVICES", "PENDING", "UNEXPECTED"]
        );
        assert_eq!(words(lines[3]), ["packages.openssl", "2", "1", "1"]);
        assert_eq!(words(lines[4]), ["kernel", "1", "1", "0"]);
        assert_eq!(
            words(lines[6]),
            [
                "DEVICE", "FIELD", "DESIRED", "OBSERVED", "CAUSE", "SINCE", "SOURCE"
            ]
        );
        assert_eq!(
            words(lines[7]),
            [
                "web-01",
                "packages.openssl",
                "3.0.13-1",
                "3.0.11-1",
                "pending",
                "3m",
                "ago",
                "profile/base"
            ]
        );
        assert_eq!(
            words(lines[8]),
            [
                "web-02",
                "packages.openssl",
                "3.0.13-1",
                "-",
                "unexpected",
                "-",
                "profile/base"
            ]
        );
        assert_eq!(
            words(lines[9]),
            [
                "web-02",
                "ntp_servers",
                "a.example,b.example",
                "c.example",
                "pending",
                "2d",
                "ago",
                "device"
            ]
        );
        assert_eq!(lines.len(), 10, "{text}");
    }

    #[test]
    fn no_drift() {
        let d = pb::DriftResponse {
            devices: 1,
            revision: 3,
            ..Default::default()
        };
        assert_eq!(render(&d, UNIX_EPOCH), "0 of 1 device drift (revision 3)\n");
    }

    #[test]
    fn accepted_value() {
        let mut spec = pb::DesiredState {
            kernel: "6.1.0-18".into(),
            ..Default::default()
        };
        spec.packages.push(pb::PackageRequirement {
            name: "openssl".into(),
            version: "3.0.11-1".into(),
            r#match: pb::VersionMatch::Exact as i32,
        });
        spec.sysctl.insert("vm.swappiness".into(), "60".into());
        let response = pb::AcceptDriftResponse {
            device: Some(pb::Resource {
                resource: Some(R::Device(pb::Device {
                    spec: Some(spec),
                    ..Default::default()
                })),
            }),
            revision: 77,
        };
        assert_eq!(
            accepted("web-01", "packages.openssl", &response),
            "device/web-01 packages.openssl accepted: desired is now 3.0.11-1 (revision 77)\n"
        );
        assert_eq!(
            accepted("web-01", "sysctl.vm.swappiness", &response),
            "device/web-01 sysctl.vm.swappiness accepted: desired is now 60 (revision 77)\n"
        );
        assert_eq!(
            accepted("web-01", "expect.facts.cpu.cores", &response),
            "device/web-01 expect.facts.cpu.cores accepted (revision 77)\n"
        );
    }
}
