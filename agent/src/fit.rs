//! Keeping a report within the server's message limit: the bulky sections (external facts,
//! packages, VMs) are left out, largest first, until the report fits, and the collector that
//! produced each one is reported as failed with the sizes. SEL events and the small sections
//! are never left out, so a host with huge external facts still reports its hardware events.

use muster::facts::{self, Section};
use muster::pb;
use prost::Message;

/// Room kept below the limit for the gRPC frame and anything the estimate misses.
const MARGIN: usize = 1024;
/// Sections that may be left out, with the collector that produces each and its name.
const DROPPABLE: [(Section, &str, &str); 3] = [
    (Section::External, "external", "external facts"),
    (Section::Packages, "packages", "packages"),
    (Section::Vms, "libvirt", "VMs"),
];

/// A section left out of a report, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub section: Section,
    pub bytes: usize,
}

/// Whether a refusal may be about the report's size or content, so that a smaller report
/// could be accepted (the spooled one must then be replaced, never dropped).
/// RESOURCE_EXHAUSTED counts only when it is about this report: the message names a limit,
/// or the report (`bytes`) is over the one the server advertised. The server also sheds load
/// with it (connections over its cap), and stripping every host's bulky facts because the
/// server was busy would make drift and health flap fleet-wide.
pub fn size_refusal(code: tonic::Code, message: &str, bytes: usize, limit: usize) -> bool {
    match code {
        tonic::Code::OutOfRange | tonic::Code::InvalidArgument => true,
        tonic::Code::ResourceExhausted => limit_in_message(message).is_some() || bytes > limit,
        _ => false,
    }
}

/// The limit named in a refusal's message ("... the limit is N bytes ..."), if any: what an
/// older server without `max_report_bytes` says.
pub fn limit_in_message(message: &str) -> Option<usize> {
    let rest = message.split("the limit is ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Which droppable sections to leave out of `report` so it fits in `limit` bytes: largest
/// first, only as many as needed. With `all`, every droppable section present is left out
/// (the server refused a report that should have fitted).
pub fn plan(report: &pb::ReportRequest, limit: usize, all: bool) -> Vec<Dropped> {
    let budget = limit.saturating_sub(MARGIN).max(MARGIN);
    let Some(f) = report.facts.as_ref() else {
        return Vec::new();
    };
    let mut present: Vec<Dropped> = facts::split(f)
        .into_iter()
        .filter(|(n, _)| DROPPABLE.iter().any(|d| d.0 == *n))
        .map(|(section, bytes)| Dropped {
            section,
            bytes: bytes.len(),
        })
        .collect();
    present.sort_by_key(|d| std::cmp::Reverse(d.bytes));
    if all {
        return present;
    }
    let mut trial = report.clone();
    let mut out = Vec::new();
    for d in present {
        if trial.encoded_len() <= budget {
            break;
        }
        if let Some(f) = trial.facts.as_mut() {
            d.section.clear(f);
        }
        out.push(d);
    }
    out
}

/// Sizes as people read them: "5.1 MiB", "700 KiB", "512 bytes".
pub fn human(bytes: usize) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Marks the collectors whose sections were left out as failed, saying why, so the server
/// shows a collector error on the device.
pub fn mark(collectors: &mut Vec<pb::CollectorStatus>, dropped: &[Dropped], limit: usize) {
    for d in dropped {
        let Some((_, collector, what)) = DROPPABLE.iter().find(|x| x.0 == d.section) else {
            continue;
        };
        let error = format!(
            "{what} {} exceed the server's limit of {} for a whole report; not sent",
            human(d.bytes),
            human(limit)
        );
        match collectors.iter_mut().find(|c| c.name == *collector) {
            Some(c) if c.error.is_empty() => c.error = error,
            Some(c) => c.error = format!("{error}; {}", c.error),
            None => collectors.push(pb::CollectorStatus {
                name: (*collector).into(),
                error,
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shed_load_is_not_a_size_refusal() {
        use tonic::Code;
        let busy = "musterd has its max_connections (4096) connections open; retry later";
        assert!(!size_refusal(Code::ResourceExhausted, busy, 1_000, 4_096));
        assert!(size_refusal(Code::ResourceExhausted, busy, 5_000, 4_096));
        let big = "request message is 5000 bytes; the limit is 4096 bytes (max_message_bytes)";
        assert!(size_refusal(Code::ResourceExhausted, big, 1_000, 1 << 20));
        assert!(size_refusal(Code::InvalidArgument, "", 10, 4_096));
        assert!(!size_refusal(Code::Unavailable, big, 5_000, 4_096));
    }

    fn report(external: usize, packages: usize) -> pb::ReportRequest {
        pb::ReportRequest {
            seq: 1,
            facts: Some(pb::Facts {
                memory_bytes: Some(1),
                external_json: Some("x".repeat(external)),
                packages: Some(pb::PackageList {
                    items: vec![pb::InstalledPackage {
                        name: "p".repeat(packages),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            sel: vec![pb::SelEntry {
                record_id: 7,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn leaves_out_the_largest_sections_until_it_fits() {
        let r = report(100_000, 10_000);
        assert!(plan(&r, 200_000, false).is_empty());
        let d = plan(&r, 50_000, false);
        assert_eq!(
            d.iter().map(|d| d.section).collect::<Vec<_>>(),
            [Section::External]
        );
        let d = plan(&r, 5_000, false);
        assert_eq!(
            d.iter().map(|d| d.section).collect::<Vec<_>>(),
            [Section::External, Section::Packages]
        );
        assert_eq!(plan(&r, 200_000, true).len(), 2);
        let mut c = vec![pb::CollectorStatus {
            name: "external".into(),
            ..Default::default()
        }];
        mark(&mut c, &plan(&r, 50_000, false), 50_000);
        assert_eq!(
            c[0].error,
            "external facts 97.7 KiB exceed the server's limit of 48.8 KiB for a whole report; not sent"
        );
    }

    #[test]
    fn reads_the_limit_from_a_refusal() {
        assert_eq!(
            limit_in_message(
                "request message is 5000 bytes; the limit is 4096 bytes (max_message_bytes)"
            ),
            Some(4096)
        );
        assert_eq!(limit_in_message("something else"), None);
    }
}
