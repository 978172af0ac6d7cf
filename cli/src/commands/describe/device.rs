//! A device's sections of `describe`: its type and lifecycle, the desired spec (shared with
//! profiles) and the observed status (health, hardware, SEL, SMART, ...).

use std::fmt::Write as _;
use std::time::SystemTime;

use muster::pb;

use super::doc::{Doc, KEY_WIDTH, bytes, enum_name, time_with_age};
use crate::output::{cell, format_time};

/// How many SEL entries to show (newest first).
const SEL_SHOWN: usize = 20;

pub(super) fn device(d: &mut Doc, dev: &pb::Device, now: SystemTime) {
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

pub(super) fn spec_section(d: &mut Doc, spec: &pb::DesiredState) {
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
