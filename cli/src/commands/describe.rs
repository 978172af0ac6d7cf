//! `muster describe KIND NAME`: a readable, sectioned view of one resource (only the sections
//! that have data), followed by its last audit entries.

use std::collections::{HashMap, VecDeque};
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

/// How many audit entries to show.
const CHANGES_SHOWN: usize = 10;
/// How many SEL entries to show (newest first).
const SEL_SHOWN: usize = 20;
/// Width of the key column.
const KEY_WIDTH: usize = 22;

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

/// Accumulates `Key:   value` lines.
struct Doc {
    text: String,
}

impl Doc {
    fn kv(&mut self, indent: usize, key: &str, value: impl AsRef<str>) {
        let value = value.as_ref();
        if value.is_empty() {
            return;
        }
        let pad = KEY_WIDTH.saturating_sub(indent);
        let key = format!("{key}:");
        let _ = writeln!(self.text, "{:indent$}{key:<pad$}{value}", "");
    }

    fn num(&mut self, indent: usize, key: &str, value: impl Into<u64>) {
        let value = value.into();
        if value != 0 {
            self.kv(indent, key, value.to_string());
        }
    }

    fn heading(&mut self, title: &str) {
        let _ = writeln!(self.text, "{title}:");
    }

    fn map(&mut self, key: &str, map: &HashMap<String, String>) {
        let mut pairs: Vec<_> = map.iter().collect();
        pairs.sort();
        if pairs.is_empty() {
            self.kv(0, key, "<none>");
            return;
        }
        for (i, (k, v)) in pairs.into_iter().enumerate() {
            let entry = format!("{k}={v}");
            if i == 0 {
                self.kv(0, key, entry);
            } else {
                let _ = writeln!(self.text, "{:KEY_WIDTH$}{entry}", "");
            }
        }
    }

    /// An indented table, for list-shaped sections.
    fn table<S: ToString>(&mut self, header: &[&str], rows: impl IntoIterator<Item = Vec<S>>) {
        let mut table = output::new_table(header.iter().copied());
        for row in rows {
            table.add_row(row.into_iter().map(|c| c.to_string()).collect::<Vec<_>>());
        }
        for line in output::table_to_string(&table).lines() {
            let _ = writeln!(self.text, "  {line}");
        }
    }
}

fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(&E) -> &'static str) -> String {
    match E::try_from(value) {
        Ok(e) => {
            let n = name(&e);
            if n.ends_with("_UNSPECIFIED") {
                String::new()
            } else {
                n.to_string()
            }
        }
        Err(_) => value.to_string(),
    }
}

fn time_with_age(ts: Option<&pbjson_types::Timestamp>, now: SystemTime) -> String {
    if ts.is_none() {
        return String::new();
    }
    format!("{} ({} ago)", format_time(ts), output::age(ts, now))
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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

fn device(d: &mut Doc, dev: &pb::Device, now: SystemTime) {
    d.kv(0, "Type", enum_name(dev.kind, pb::DeviceKind::as_str_name));
    d.kv(
        0,
        "Lifecycle",
        enum_name(dev.lifecycle, pb::Lifecycle::as_str_name),
    );
    d.kv(0, "Role", &dev.role);
    d.kv(0, "Serial", &dev.serial);
    d.kv(0, "Asset Tag", &dev.asset_tag);
    d.kv(0, "Vendor", &dev.vendor);
    d.kv(0, "Model", &dev.model);
    d.kv(0, "Site", &dev.site);
    d.kv(0, "Rack", &dev.rack);
    if dev.position_u != 0 {
        let height = dev.height_u.max(1);
        d.kv(0, "Position", format!("U{} ({height}U)", dev.position_u));
    } else {
        d.num(0, "Height (U)", dev.height_u);
    }
    d.kv(0, "Management Address", &dev.management_address);
    d.kv(0, "Parent", &dev.parent);
    d.kv(0, "Warranty End", &dev.warranty_end);
    d.kv(0, "End Of Life", &dev.end_of_life);
    if let Some(bmc) = &dev.bmc {
        let port = if bmc.port == 0 { 623 } else { bmc.port };
        let mut s = format!("{}:{port}", bmc.address);
        if !bmc.username.is_empty() {
            s = format!("{}@{s}", bmc.username);
        }
        if !bmc.credential_ref.is_empty() {
            s.push_str(&format!(" (credential {})", bmc.credential_ref));
        }
        d.kv(0, "BMC", s);
    }
    if let Some(ssh) = &dev.ssh {
        let port = if ssh.port == 0 { 22 } else { ssh.port };
        let host = if ssh.host.is_empty() {
            dev.management_address.as_str()
        } else {
            ssh.host.as_str()
        };
        let mut s = format!("{host}:{port}");
        if !ssh.user.is_empty() {
            s = format!("{}@{s}", ssh.user);
        }
        if !ssh.credential_ref.is_empty() {
            s.push_str(&format!(" (credential {})", ssh.credential_ref));
        }
        d.kv(0, "SSH", s);
        d.kv(0, "SSH Host Key", &ssh.host_key_fingerprint);
    }
    if !dev.interfaces.is_empty() {
        d.heading("Interfaces");
        d.table(
            &["NAME", "MAC", "SPEED", "ADDRESSES", "PEER"],
            dev.interfaces.iter().map(|i| {
                let peer = if i.peer_device.is_empty() {
                    String::new()
                } else {
                    format!("{}:{}", i.peer_device, i.peer_port)
                };
                vec![
                    cell(&i.name),
                    cell(&i.mac),
                    if i.speed_mbps == 0 {
                        "-".to_string()
                    } else {
                        format!("{} Mb/s", i.speed_mbps)
                    },
                    cell(&i.addresses.join(",")),
                    cell(&peer),
                ]
            }),
        );
    }
    if let Some(spec) = &dev.spec {
        spec_section(d, spec);
    }
    if let Some(status) = &dev.status {
        status_section(d, status, now);
    }
}

fn spec_section(d: &mut Doc, spec: &pb::DesiredState) {
    if *spec == pb::DesiredState::default() {
        return;
    }
    d.heading("Spec");
    d.kv(2, "OS Release", &spec.os_release);
    d.kv(2, "Kernel", &spec.kernel);
    if let Some(fw) = &spec.firmware {
        d.kv(2, "BIOS", &fw.bios);
        d.kv(2, "BMC Firmware", &fw.bmc);
    }
    d.kv(
        2,
        "Power",
        enum_name(spec.power, pb::PowerState::as_str_name),
    );
    d.kv(2, "NTP Servers", spec.ntp_servers.join(", "));
    d.kv(2, "DNS Servers", spec.dns_servers.join(", "));
    d.kv(2, "Timezone", &spec.timezone);
    if !spec.packages.is_empty() {
        let list: Vec<String> = spec
            .packages
            .iter()
            .map(|p| {
                let m = pb::VersionMatch::try_from(p.r#match).unwrap_or_default();
                match m {
                    pb::VersionMatch::Absent => format!("!{}", p.name),
                    pb::VersionMatch::Minimum => format!("{}>={}", p.name, p.version),
                    _ if p.version.is_empty() => p.name.clone(),
                    _ => format!("{}={}", p.name, p.version),
                }
            })
            .collect();
        d.kv(2, "Packages", list.join(", "));
    }
    if !spec.sysctl.is_empty() {
        let mut pairs: Vec<_> = spec.sysctl.iter().collect();
        pairs.sort();
        let list: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        d.kv(2, "Sysctl", list.join(", "));
    }
    if !spec.expect.is_empty() {
        let list: Vec<String> = spec
            .expect
            .iter()
            .map(|e| {
                format!("{} {} {}", e.path, e.op, e.value)
                    .trim_end()
                    .to_string()
            })
            .collect();
        d.kv(2, "Expect", list.join("; "));
    }
}

fn status_section(d: &mut Doc, st: &pb::ObservedState, now: SystemTime) {
    if *st == pb::ObservedState::default() {
        return;
    }
    d.heading("Status");
    d.kv(2, "Health", enum_name(st.health, pb::Health::as_str_name));
    for r in &st.health_reasons {
        let sev = enum_name(r.severity, pb::Health::as_str_name);
        let mut line = format!("{sev} {}: {}", r.code, r.message);
        if !r.source.is_empty() {
            line.push_str(&format!(" ({})", r.source));
        }
        let _ = writeln!(d.text, "{:KEY_WIDTH$}{line}", "");
    }
    d.kv(
        2,
        "Last Report",
        time_with_age(st.last_report_at.as_ref(), now),
    );
    d.kv(2, "Agent Version", &st.agent_version);
    if st.report_seq != 0 {
        d.kv(
            2,
            "Report Seq",
            format!("{} (boot {})", st.report_seq, st.boot_id),
        );
    }
    d.kv(2, "Origin", &st.origin);
    if let Some(os) = &st.os {
        d.kv(2, "Hostname", &os.hostname);
        d.kv(2, "OS Release", &os.release);
        d.kv(2, "Kernel", &os.kernel);
        d.kv(2, "Booted", time_with_age(os.booted_at.as_ref(), now));
        d.kv(2, "OS Timezone", &os.timezone);
    }
    if let Some(cpu) = &st.cpu {
        let mut s = cpu.model.clone();
        if cpu.cores != 0 || cpu.threads != 0 {
            s.push_str(&format!(
                " ({} sockets, {} cores, {} threads)",
                cpu.sockets, cpu.cores, cpu.threads
            ));
        }
        d.kv(2, "CPU", s.trim());
    }
    if st.memory_bytes != 0 {
        d.kv(2, "Memory", bytes(st.memory_bytes));
    }
    if let Some(fw) = &st.firmware {
        d.kv(2, "BIOS", &fw.bios);
        d.kv(2, "BMC Firmware", &fw.bmc);
    }
    d.kv(2, "Power", enum_name(st.power, pb::PowerState::as_str_name));
    if !st.packages.is_empty() {
        d.kv(2, "Packages", format!("{} installed", st.packages.len()));
    }
    if !st.disks.is_empty() {
        d.heading("Disks");
        d.table(
            &["NAME", "SIZE", "MODEL", "SERIAL", "ROTATIONAL"],
            st.disks.iter().map(|b| {
                vec![
                    cell(&b.name),
                    bytes(b.size_bytes),
                    cell(&b.model),
                    cell(&b.serial),
                    b.rotational.to_string(),
                ]
            }),
        );
    }
    if !st.drift.is_empty() {
        d.heading("Drift");
        d.table(
            &["FIELD", "DESIRED", "OBSERVED", "CAUSE", "SINCE"],
            st.drift.iter().map(|x| {
                vec![
                    cell(&x.field),
                    cell(&x.desired),
                    cell(&x.observed),
                    cell(&x.cause),
                    format_time(x.since.as_ref()),
                ]
            }),
        );
    }
    if !st.sensors.is_empty() {
        d.heading("Sensors");
        d.table(
            &[
                "NAME",
                "TYPE",
                "VALUE",
                "STATE",
                "THRESHOLDS (LC/LNC/UNC/UC)",
            ],
            st.sensors.iter().map(|s| {
                let value = if s.asserted.is_empty() {
                    format!("{} {}", s.value, s.unit).trim().to_string()
                } else {
                    s.asserted.join(", ")
                };
                let t = |v: Option<f64>| v.map_or("-".to_string(), |v| v.to_string());
                let thresholds = if s.lower_critical.is_none()
                    && s.lower_non_critical.is_none()
                    && s.upper_non_critical.is_none()
                    && s.upper_critical.is_none()
                {
                    "-".to_string()
                } else {
                    format!(
                        "{}/{}/{}/{}",
                        t(s.lower_critical),
                        t(s.lower_non_critical),
                        t(s.upper_non_critical),
                        t(s.upper_critical)
                    )
                };
                vec![
                    cell(&s.name),
                    cell(&s.r#type),
                    value,
                    cell(&s.state),
                    thresholds,
                ]
            }),
        );
    }
    if !st.sel.is_empty() {
        let mut sel: Vec<&pb::SelEntry> = st.sel.iter().collect();
        sel.sort_by(|a, b| {
            let key = |e: &pb::SelEntry| {
                e.time
                    .as_ref()
                    .map(|t| (t.seconds, t.nanos))
                    .unwrap_or_default()
            };
            key(b).cmp(&key(a)).then(b.record_id.cmp(&a.record_id))
        });
        let total = sel.len();
        d.heading("SEL (latest first)");
        d.table(
            &["TIME", "SEVERITY", "SENSOR", "EVENT"],
            sel.into_iter().take(SEL_SHOWN).map(|e| {
                let sensor = match (e.sensor_type.is_empty(), e.sensor.is_empty()) {
                    (false, false) => format!("{} {}", e.sensor_type, e.sensor),
                    (false, true) => e.sensor_type.clone(),
                    _ => e.sensor.clone(),
                };
                let event = if e.asserted {
                    e.event.clone()
                } else {
                    format!("{} (deasserted)", e.event)
                };
                vec![
                    format_time(e.time.as_ref()),
                    cell(&e.severity),
                    cell(&sensor),
                    cell(&event),
                ]
            }),
        );
        if total > SEL_SHOWN {
            let _ = writeln!(d.text, "  ... {} older entries", total - SEL_SHOWN);
        }
    }
    if !st.collectors.is_empty() {
        d.heading("Collectors");
        d.table(
            &["NAME", "LAST SUCCESS", "TOOK", "ERROR"],
            st.collectors.iter().map(|c| {
                vec![
                    cell(&c.name),
                    time_with_age(c.last_success.as_ref(), now),
                    crate::output::duration(c.took.as_ref()).unwrap_or_else(|| "-".into()),
                    cell(&c.error),
                ]
            }),
        );
    }
    if !st.vms.is_empty() {
        d.heading("Virtual Machines");
        d.table(
            &["NAME", "UUID", "STATE", "VCPUS", "MEMORY"],
            st.vms.iter().map(|v| {
                vec![
                    cell(&v.name),
                    cell(&v.uuid),
                    cell(&v.state),
                    v.vcpus.to_string(),
                    bytes(v.memory_bytes),
                ]
            }),
        );
    }
    if let Some(fru) = st.fru.as_ref().filter(|f| **f != pb::Fru::default()) {
        d.heading("FRU");
        d.kv(2, "Manufacturer", &fru.manufacturer);
        d.kv(2, "Product", &fru.product);
        d.kv(2, "Serial", &fru.serial);
        d.kv(2, "Part Number", &fru.part_number);
        d.kv(2, "Board Serial", &fru.board_serial);
    }
    if !st.smart.is_empty() {
        d.heading("SMART");
        d.table(
            &["DEVICE", "MODEL", "SERIAL", "HEALTH", "DETAILS"],
            st.smart.iter().map(|s| {
                let mut details = Vec::new();
                if let Some(n) = &s.nvme {
                    details.push(format!("{}% used", n.percentage_used));
                    if n.media_errors != 0 {
                        details.push(format!("{} media errors", n.media_errors));
                    }
                    if n.critical_warning != 0 {
                        details.push(format!("critical warning {:#x}", n.critical_warning));
                    }
                }
                if s.scsi_grown_defects != 0 {
                    details.push(format!("{} grown defects", s.scsi_grown_defects));
                }
                for a in &s.attributes {
                    if a.thresh != 0 && a.value <= a.thresh {
                        details.push(format!("{} at threshold", a.name));
                    }
                    // Backblaze's failure predictors, shown whenever they are not zero.
                    if [5, 187, 188, 197, 198].contains(&a.id) && a.raw != 0 {
                        details.push(format!("{} {}={}", a.id, a.name, a.raw));
                    }
                }
                vec![
                    cell(&s.device),
                    cell(&s.model),
                    cell(&s.serial),
                    if s.passed { "PASSED" } else { "FAILED" }.to_string(),
                    cell(&details.join(", ")),
                ]
            }),
        );
    }
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
