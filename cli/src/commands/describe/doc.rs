//! The text builder of `describe`: aligned `Key:   value` lines, headings, indented tables,
//! and the small value formatters the sections share.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use crate::output::{self, format_time};

/// Width of the key column.
pub(super) const KEY_WIDTH: usize = 22;

/// Accumulates `Key:   value` lines.
pub(super) struct Doc {
    pub(super) text: String,
}

impl Doc {
    pub(super) fn kv(&mut self, indent: usize, key: &str, value: impl AsRef<str>) {
        let value = value.as_ref();
        if value.is_empty() {
            return;
        }
        let pad = KEY_WIDTH.saturating_sub(indent);
        let key = format!("{key}:");
        let _ = writeln!(self.text, "{:indent$}{key:<pad$}{value}", "");
    }

    pub(super) fn num(&mut self, indent: usize, key: &str, value: impl Into<u64>) {
        let value = value.into();
        if value != 0 {
            self.kv(indent, key, value.to_string());
        }
    }

    pub(super) fn heading(&mut self, title: &str) {
        let _ = writeln!(self.text, "{title}:");
    }

    pub(super) fn map(&mut self, key: &str, map: &HashMap<String, String>) {
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
    pub(super) fn table<S: ToString>(
        &mut self,
        header: &[&str],
        rows: impl IntoIterator<Item = Vec<S>>,
    ) {
        let mut table = output::new_table(header.iter().copied());
        for row in rows {
            table.add_row(row.into_iter().map(|c| c.to_string()).collect::<Vec<_>>());
        }
        for line in output::table_to_string(&table).lines() {
            let _ = writeln!(self.text, "  {line}");
        }
    }
}

pub(super) fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(&E) -> &'static str) -> String {
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

pub(super) fn time_with_age(ts: Option<&pbjson_types::Timestamp>, now: SystemTime) -> String {
    if ts.is_none() {
        return String::new();
    }
    format!("{} ({} ago)", format_time(ts), output::age(ts, now))
}

pub(super) fn bytes(n: u64) -> String {
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
