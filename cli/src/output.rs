//! Human output: kubectl-style borderless tables, ages and timestamps, and the `-o` formats.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets};
use muster::pb;
use muster::pb::resource::Resource as R;

use crate::kinds::Kind;

/// How `get` prints resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Aligned columns with labels, revision and more.
    Wide,
    /// Manifests as JSON.
    Json,
    /// Manifests as YAML.
    Yaml,
    /// `kind/name` lines.
    Name,
}

/// How `watch` and `audit` print entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamFormat {
    /// Aligned columns (one line per event for `watch`).
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Writes to stdout and flushes, so output streams as it happens; a closed pipe becomes
/// [`PipeClosed`](crate::errors::PipeClosed) instead of a panic.
pub fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                anyhow::Error::new(crate::errors::PipeClosed)
            } else {
                anyhow::Error::new(e).context("cannot write to standard output")
            }
        })
}

/// [`print`] with a newline.
pub fn println(line: &str) -> anyhow::Result<()> {
    let mut s = String::with_capacity(line.len() + 1);
    s.push_str(line);
    s.push('\n');
    print(&s)
}

/// Colours for human output on standard output: on only when it is a terminal that supports
/// them (and `NO_COLOR`, `CLICOLOR=0`, `TERM=dumb` are honoured, `CLICOLOR_FORCE` forces them;
/// the `console` crate decides). Render functions take a `Paint` so tests can turn it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paint {
    on: bool,
}

impl Paint {
    /// Colours as standard output allows.
    pub fn stdout() -> Paint {
        Paint {
            on: console::colors_enabled(),
        }
    }

    /// No colours (tests of the plain form).
    #[cfg(test)]
    pub fn plain() -> Paint {
        Paint { on: false }
    }

    /// Colours always (tests of the coloured form).
    #[cfg(test)]
    pub fn always() -> Paint {
        Paint { on: true }
    }

    fn apply(self, style: console::Style, text: &str) -> String {
        if self.on {
            style.force_styling(true).apply_to(text).to_string()
        } else {
            text.to_string()
        }
    }

    /// Something added or created.
    pub fn green(self, text: &str) -> String {
        self.apply(console::Style::new().green(), text)
    }

    /// Something removed, broken or in conflict.
    pub fn red(self, text: &str) -> String {
        self.apply(console::Style::new().red(), text)
    }

    /// Something changed or drifting.
    pub fn yellow(self, text: &str) -> String {
        self.apply(console::Style::new().yellow(), text)
    }

    /// A heading.
    pub fn bold(self, text: &str) -> String {
        self.apply(console::Style::new().bold(), text)
    }

    /// Secondary detail.
    pub fn dim(self, text: &str) -> String {
        self.apply(console::Style::new().dim(), text)
    }
}

/// `n thing`/`n things`.
pub fn count(n: impl Into<u64>, singular: &str, plural: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {singular}")
    } else {
        format!("{n} {plural}")
    }
}

/// A borderless table with the given header, laid out like kubectl's.
pub fn new_table<S: ToString>(header: impl IntoIterator<Item = S>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.into_iter().map(|h| h.to_string()));
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    table
}

/// The table as text, without trailing spaces, ending in a newline.
pub fn table_to_string(table: &Table) -> String {
    let mut s = table.trim_fmt();
    s.push('\n');
    s
}

/// `-` for empty cells, so columns stay splittable by whitespace; control characters (the
/// server's strings may come from hosts) are escaped, see [`crate::safe`].
pub fn cell(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        crate::safe::line(s).into_owned()
    }
}

/// An enum value by its proto name, `-` when unspecified.
pub fn enum_cell(name: Option<&str>) -> String {
    match name {
        Some(n) if !n.ends_with("_UNSPECIFIED") => n.to_string(),
        _ => "-".to_string(),
    }
}

/// A protobuf timestamp as a `SystemTime` (`None` before the epoch or when unset).
pub fn to_system_time(ts: Option<&pbjson_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).unwrap_or(0);
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// `2024-05-01T12:00:00Z`, or `-`.
pub fn format_time(ts: Option<&pbjson_types::Timestamp>) -> String {
    match to_system_time(ts) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "-".to_string(),
    }
}

/// An age for a sentence: `3m ago`, or `-` when unknown.
pub fn ago(ts: Option<&pbjson_types::Timestamp>, now: SystemTime) -> String {
    match age(ts, now) {
        a if a == "-" => a,
        a => format!("{a} ago"),
    }
}

/// A short, kubectl-like age: `45s`, `5m`, `3h`, `2d`.
pub fn age(ts: Option<&pbjson_types::Timestamp>, now: SystemTime) -> String {
    let Some(t) = to_system_time(ts) else {
        return "-".to_string();
    };
    let secs = now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A duration in seconds, short: `45s`, `12m`, `1h 12m`, `3d 4h`.
pub fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60).replace(" 0s", ""),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60).replace(" 0m", ""),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600).replace(" 0h", ""),
    }
}

/// `a=1,b=2` sorted by key, or `-`.
pub fn labels(map: &HashMap<String, String>) -> String {
    if map.is_empty() {
        return "-".to_string();
    }
    let mut pairs: Vec<_> = map.iter().collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A protobuf duration in humantime form (`4h`, `30m`).
pub fn duration(d: Option<&pbjson_types::Duration>) -> Option<String> {
    let d = d?;
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Some(humantime::format_duration(Duration::new(secs, nanos)).to_string())
}

/// The table `get` prints for resources of one kind.
pub fn resource_table(
    kind: Kind,
    resources: &[pb::Resource],
    wide: bool,
    now: SystemTime,
) -> String {
    let mut header: Vec<&str> = match kind {
        Kind::Site => vec!["NAME", "REGION", "DESCRIPTION", "AGE"],
        Kind::Rack => vec!["NAME", "SITE", "HEIGHT", "ROW", "AGE"],
        Kind::Device => vec![
            "NAME",
            "KIND",
            "SITE",
            "RACK",
            "ROLE",
            "LIFECYCLE",
            "HEALTH",
            "AGE",
        ],
        Kind::Profile => vec!["NAME", "PRIORITY", "SELECTOR", "AGE"],
        Kind::Window => vec!["NAME", "SELECTOR", "SCHEDULE", "FREEZE"],
        Kind::Credential => vec!["NAME", "KIND", "FINGERPRINT", "AGE"],
        Kind::Campaign => vec!["NAME", "STATE", "SELECTOR", "AGE"],
    };
    if wide {
        if kind == Kind::Device {
            header.extend(["SERIAL", "MODEL", "MGMT-ADDRESS"]);
        }
        header.extend(["LABELS", "REVISION"]);
    }
    let mut table = new_table(header);
    for resource in resources {
        let Some(body) = resource.resource.as_ref() else {
            continue;
        };
        let meta = resource.meta();
        let default_meta = pb::ObjectMeta::default();
        let meta = meta.unwrap_or(&default_meta);
        let created = age(meta.created_at.as_ref(), now);
        let mut row: Vec<String> = match body {
            R::Site(s) => vec![
                cell(&meta.name),
                cell(&s.region),
                cell(&s.description),
                created,
            ],
            R::Rack(r) => vec![
                cell(&meta.name),
                cell(&r.site),
                if r.height_u == 0 {
                    "-".to_string()
                } else {
                    r.height_u.to_string()
                },
                cell(&r.row),
                created,
            ],
            R::Device(d) => vec![
                cell(&meta.name),
                enum_cell(
                    pb::DeviceKind::try_from(d.kind)
                        .ok()
                        .map(|k| k.as_str_name()),
                ),
                cell(&d.site),
                cell(&d.rack),
                cell(&d.role),
                enum_cell(
                    pb::Lifecycle::try_from(d.lifecycle)
                        .ok()
                        .map(|k| k.as_str_name()),
                ),
                enum_cell(
                    d.status
                        .as_ref()
                        .and_then(|s| pb::Health::try_from(s.health).ok())
                        .map(|h| h.as_str_name()),
                ),
                created,
            ],
            R::Profile(p) => vec![
                cell(&meta.name),
                p.priority.to_string(),
                cell(&p.selector),
                created,
            ],
            R::Window(w) => vec![
                cell(&meta.name),
                cell(&w.selector),
                schedule(w),
                w.freeze.to_string(),
            ],
            R::Credential(c) => vec![
                cell(&meta.name),
                enum_cell(
                    pb::CredentialKind::try_from(c.kind)
                        .ok()
                        .map(|k| k.as_str_name()),
                ),
                cell(&c.fingerprint),
                created,
            ],
            R::Campaign(c) => vec![
                cell(&meta.name),
                enum_cell(
                    c.status
                        .as_ref()
                        .and_then(|s| pb::CampaignState::try_from(s.state).ok())
                        .map(|s| s.as_str_name()),
                ),
                cell(c.spec.as_ref().map(|s| s.selector.as_str()).unwrap_or("")),
                created,
            ],
        };
        if wide {
            if let R::Device(d) = body {
                row.extend([cell(&d.serial), cell(&d.model), cell(&d.management_address)]);
            }
            row.extend([labels(&meta.labels), meta.revision.to_string()]);
        }
        table.add_row(row);
    }
    table_to_string(&table)
}

/// A window's schedule: `0 2 * * 6 (4h)`, plus fixed ranges.
fn schedule(w: &pb::Window) -> String {
    let mut parts = Vec::new();
    if !w.cron.is_empty() {
        match duration(w.duration.as_ref()) {
            Some(d) => parts.push(format!("{} ({d})", w.cron)),
            None => parts.push(w.cron.clone()),
        }
    }
    match w.ranges.len() {
        0 => {}
        1 => parts.push("1 range".to_string()),
        n => parts.push(format!("{n} ranges")),
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" + ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64) -> pbjson_types::Timestamp {
        pbjson_types::Timestamp { seconds, nanos: 0 }
    }

    fn device(name: &str, health: pb::Health, created: i64) -> pb::Resource {
        let mut meta = pb::ObjectMeta {
            name: name.into(),
            revision: 12,
            created_at: Some(ts(created)),
            ..Default::default()
        };
        meta.labels.insert("role".into(), "web".into());
        meta.labels.insert("env".into(), "prod".into());
        let mut d = pb::Device {
            meta: Some(meta),
            site: "fra1".into(),
            rack: "r01".into(),
            role: "web".into(),
            serial: "SN1".into(),
            model: "R650".into(),
            management_address: "10.0.0.5".into(),
            ..Default::default()
        };
        d.set_kind(pb::DeviceKind::Server);
        d.set_lifecycle(pb::Lifecycle::Active);
        if health != pb::Health::Unspecified {
            d.status = Some(pb::ObservedState {
                health: health as i32,
                ..Default::default()
            });
        }
        pb::Resource {
            resource: Some(R::Device(d)),
        }
    }

    #[test]
    fn device_table() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let list = [
            device("web-01", pb::Health::Ok, 1_000_000 - 300),
            device(
                "web-02",
                pb::Health::Unspecified,
                1_000_000 - 2 * 86_400 - 5,
            ),
        ];
        let out = resource_table(Kind::Device, &list, false, now);
        insta::assert_snapshot!("device_table", out);
        insta::assert_snapshot!(
            "device_table_wide",
            resource_table(Kind::Device, &list, true, now)
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "KIND",
                "SITE",
                "RACK",
                "ROLE",
                "LIFECYCLE",
                "HEALTH",
                "AGE"
            ]
        );
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "web-01", "SERVER", "fra1", "r01", "web", "ACTIVE", "OK", "5m"
            ]
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "web-02", "SERVER", "fra1", "r01", "web", "ACTIVE", "-", "2d"
            ]
        );
        assert!(lines[0].starts_with("NAME   "), "{out}");
        assert!(!out.lines().any(|l| l.ends_with(' ')), "{out:?}");
        // Columns line up: HEALTH starts at the same offset on every line.
        let col = lines[0].find("HEALTH").unwrap();
        assert_eq!(&lines[1][col..col + 2], "OK");

        let wide = resource_table(Kind::Device, &list[..1], true, now);
        let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            &header[8..],
            ["SERIAL", "MODEL", "MGMT-ADDRESS", "LABELS", "REVISION"]
        );
        assert!(wide.contains("env=prod,role=web"), "{wide}");
        assert!(wide.contains("10.0.0.5"), "{wide}");
    }

    #[test]
    fn ages() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(age(Some(&ts(1_000_000 - 59)), now), "59s");
        assert_eq!(age(Some(&ts(1_000_000 - 3 * 3600 - 10)), now), "3h");
        assert_eq!(age(Some(&ts(1_000_000 + 10)), now), "0s");
        assert_eq!(age(None, now), "-");
        assert_eq!(format_time(Some(&ts(0))), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn window_schedule() {
        let w = pb::Window {
            cron: "0 2 * * 6".into(),
            duration: Some(pbjson_types::Duration {
                seconds: 4 * 3600,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(schedule(&w), "0 2 * * 6 (4h)");
        assert_eq!(schedule(&pb::Window::default()), "-");
    }
}
