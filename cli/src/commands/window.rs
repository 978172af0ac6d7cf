//! `muster window list` and `muster window next DEVICE`: which maintenance windows and freezes
//! are open, when each next opens, and when a device may next be changed (a window selecting
//! it open, no freeze selecting it open), from `muster::window` (the rules the server's
//! campaign scheduler uses) and the device's labels. Time is the client's injected clock.
//! The computation and the rendering are pure; `run` only fetches.

use muster::window::{subtract_intervals, union_intervals};
use std::collections::HashMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use muster::pb;
use muster::pb::resource::Resource as R;
use muster::window::Schedule;
use serde::Serialize;

use crate::args::WindowCommand;
use crate::client::Clients;
use crate::kinds::Kind;
use crate::output::{self, StreamFormat, cell, short_duration};
use crate::safe;

/// How far ahead windows are laid out (the campaign scheduler's horizon).
pub const HORIZON_SECONDS: i64 = 30 * 24 * 3600;
/// Cron starts read per window: bounds a `* * * * *` window.
const MAX_STARTS: usize = 100_000;

/// One window now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowRow {
    pub name: String,
    pub freeze: bool,
    pub selector: String,
    pub schedule: String,
    /// For `next`: whether it selects the device (unknown when its selector is invalid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selects: Option<bool>,
    #[serde(flatten)]
    pub state: WindowState,
}

/// Open, opening later, or not within the horizon; times in Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WindowState {
    /// Open now, until `until`.
    Open {
        #[serde(serialize_with = "rfc3339")]
        until: i64,
    },
    /// Next opens at `at`, until `until`.
    Opens {
        #[serde(serialize_with = "rfc3339")]
        at: i64,
        #[serde(serialize_with = "rfc3339")]
        until: i64,
    },
    /// Does not open within the horizon.
    Never,
    /// Cannot be evaluated.
    Invalid { error: String },
}

/// When a device may be changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextView {
    pub device: String,
    pub windows: Vec<WindowRow>,
    /// `[start, end)` slots, Unix seconds, the first ones at least `need` long.
    #[serde(serialize_with = "slot_list")]
    pub slots: Vec<(i64, i64)>,
    /// A freeze selecting the device that is open now: name and end.
    #[serde(skip)]
    pub frozen_now: Option<(String, i64)>,
    /// The longest slot within the horizon, in seconds (for "none fits: the longest is 4h").
    pub longest_slot_seconds: i64,
    /// Intervals are cut here (now + 30 days).
    #[serde(serialize_with = "rfc3339")]
    pub horizon_end: i64,
    pub need_seconds: u64,
}

fn rfc3339<S: serde::Serializer>(secs: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&instant(*secs))
}

fn slot_list<S: serde::Serializer>(slots: &[(i64, i64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(slots.len()))?;
    for &(from, until) in slots {
        let mut m = std::collections::BTreeMap::new();
        m.insert("from", instant(from));
        m.insert("until", instant(until));
        seq.serialize_element(&m)?;
    }
    seq.end()
}

fn schedule_text(w: &pb::Window) -> String {
    let mut parts = Vec::new();
    if !w.cron.is_empty() {
        let d = output::duration(w.duration.as_ref()).unwrap_or_else(|| "?".into());
        let tz = if w.timezone.is_empty() {
            "UTC"
        } else {
            &w.timezone
        };
        parts.push(format!("{} {tz} ({d})", w.cron));
    }
    match w.ranges.len() {
        0 => {}
        1 => parts.push("1 range".to_string()),
        n => parts.push(format!("{n} ranges")),
    }
    if parts.is_empty() {
        "never".to_string()
    } else {
        parts.join(" + ")
    }
}

fn intervals(s: &Schedule, now: i64) -> Vec<(i64, i64)> {
    let until = now.saturating_add(HORIZON_SECONDS);
    s.open_intervals(now, until, MAX_STARTS)
        .into_iter()
        .map(|(a, b)| (a.max(now), b.min(until)))
        .filter(|(a, b)| a < b)
        .collect()
}

fn state_of(open: &[(i64, i64)], now: i64) -> WindowState {
    match open.first() {
        Some(&(s, e)) if s <= now => WindowState::Open { until: e },
        Some(&(s, e)) => WindowState::Opens { at: s, until: e },
        None => WindowState::Never,
    }
}

fn name_of(w: &pb::Window) -> String {
    w.meta.as_ref().map(|m| m.name.clone()).unwrap_or_default()
}

/// Every window's state at `now`, sorted by name; with `labels`, whether each selects them.
pub fn rows(
    windows: &[pb::Window],
    now: i64,
    labels: Option<&HashMap<String, String>>,
) -> Vec<WindowRow> {
    let mut out: Vec<WindowRow> = windows
        .iter()
        .map(|w| {
            let (state, selects) = match Schedule::parse(w) {
                Ok(s) => (
                    state_of(&intervals(&s, now), now),
                    labels.map(|l| s.selects(|k| l.get(k).map(String::as_str))),
                ),
                Err(e) => (
                    WindowState::Invalid {
                        error: e.to_string(),
                    },
                    None,
                ),
            };
            WindowRow {
                name: name_of(w),
                freeze: w.freeze,
                selector: w.selector.clone(),
                schedule: schedule_text(w),
                selects,
                state,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// When a device with `labels` may next be changed: at most `count` slots at least `need`
/// long. A window that cannot be evaluated is taken on the safe side (the Ansible bridge's
/// rule): a broken maintenance window opens nothing, a broken freeze is closed all the time.
pub fn next(
    device: &str,
    windows: &[pb::Window],
    labels: &HashMap<String, String>,
    now: i64,
    need: Duration,
    count: usize,
) -> NextView {
    let horizon_end = now.saturating_add(HORIZON_SECONDS);
    let get = |k: &str| labels.get(k).map(String::as_str);
    let mut open = Vec::new();
    let mut frozen = Vec::new();
    let mut frozen_now = None;
    for w in windows {
        match Schedule::parse(w) {
            Ok(s) if s.selects(get) => {
                let iv = intervals(&s, now);
                if w.freeze {
                    if let Some(&(_, b)) = iv.first().filter(|(a, _)| *a <= now)
                        && frozen_now.as_ref().is_none_or(|(_, e)| b > *e)
                    {
                        frozen_now = Some((name_of(w), b));
                    }
                    frozen.extend(iv);
                } else {
                    open.extend(iv);
                }
            }
            Ok(_) => {}
            Err(_) if w.freeze => {
                frozen.push((now, horizon_end));
                frozen_now = Some((name_of(w), horizon_end));
            }
            Err(_) => {}
        }
    }
    let need_seconds = need.as_secs();
    let need_i = i64::try_from(need_seconds).unwrap_or(i64::MAX);
    let all = subtract_intervals(&union_intervals(open), &union_intervals(frozen));
    let longest_slot_seconds = all.iter().map(|&(s, e)| e - s).max().unwrap_or(0);
    let slots = all
        .into_iter()
        .filter(|&(s, e)| e - s >= need_i)
        .take(count)
        .collect();
    NextView {
        device: device.to_string(),
        windows: rows(windows, now, Some(labels)),
        slots,
        frozen_now,
        longest_slot_seconds,
        horizon_end,
        need_seconds,
    }
}

fn instant(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn span(from: i64, to: i64) -> String {
    short_duration(u64::try_from(to - from).unwrap_or(0))
}

fn state_text(s: &WindowState, now: i64, horizon_end: i64) -> String {
    let until = |e: i64| {
        if e >= horizon_end {
            "beyond the 30-day horizon".to_string()
        } else {
            format!("until {} ({} left)", instant(e), span(now, e))
        }
    };
    match s {
        WindowState::Open { until: e } => format!("OPEN {}", until(*e)),
        WindowState::Opens { at, until: e } if *e >= horizon_end => format!(
            "opens {} (in {}), open past the 30-day horizon",
            instant(*at),
            span(now, *at)
        ),
        WindowState::Opens { at, until: e } => format!(
            "opens {} (in {}) for {}",
            instant(*at),
            span(now, *at),
            span(*at, *e)
        ),
        WindowState::Never => "does not open in the next 30 days".to_string(),
        WindowState::Invalid { error } => format!("invalid: {}", safe::line(error)),
    }
}

/// The `window list` table.
pub fn render_list(rows: &[WindowRow], now: i64) -> String {
    let horizon_end = now.saturating_add(HORIZON_SECONDS);
    let mut t = output::new_table(["NAME", "TYPE", "SELECTOR", "SCHEDULE", "NOW / NEXT"]);
    for r in rows {
        t.add_row([
            cell(&r.name),
            if r.freeze { "freeze" } else { "window" }.to_string(),
            cell(&r.selector),
            cell(&r.schedule),
            state_text(&r.state, now, horizon_end),
        ]);
    }
    output::table_to_string(&t)
}

/// The `window next DEVICE` text: the verdict now, the next slots, and the windows that
/// select the device (and those that cannot be evaluated).
pub fn render_next(v: &NextView, now: i64) -> String {
    let device = safe::line(&v.device);
    let mut o = String::new();
    let need = if v.need_seconds > 0 {
        format!(" for {}", short_duration(v.need_seconds))
    } else {
        String::new()
    };
    let open_now = v.slots.first().is_some_and(|&(s, _)| s <= now);
    if let Some((name, end)) = &v.frozen_now {
        let _ = writeln!(
            o,
            "device/{device} is FROZEN by {} until {}",
            safe::line(name),
            if *end >= v.horizon_end {
                "further notice (beyond the 30-day horizon)".to_string()
            } else {
                instant(*end)
            }
        );
    } else if open_now {
        let _ = writeln!(o, "device/{device} may be changed now{need}");
    } else {
        let _ = writeln!(o, "device/{device} may not be changed now{need}");
    }
    if v.slots.is_empty() {
        if v.longest_slot_seconds > 0 {
            let _ = writeln!(
                o,
                "no slot{need} in the next 30 days: the longest is {}",
                span(0, v.longest_slot_seconds)
            );
        } else {
            let _ = writeln!(
                o,
                "no slot in the next 30 days: no maintenance window selecting it opens outside a freeze"
            );
        }
    } else {
        o.push_str("\nNext slots (window open, no freeze):\n");
        let mut t = output::new_table(["  FROM", "UNTIL", "LENGTH", "STARTS"]);
        for &(s, e) in &v.slots {
            t.add_row([
                format!("  {}", instant(s)),
                if e >= v.horizon_end {
                    "(horizon)".to_string()
                } else {
                    instant(e)
                },
                span(s, e),
                if s <= now {
                    "now".to_string()
                } else {
                    format!("in {}", span(now, s))
                },
            ]);
        }
        o.push_str(&output::table_to_string(&t));
    }
    let relevant: Vec<&WindowRow> = v
        .windows
        .iter()
        .filter(|w| w.selects != Some(false))
        .collect();
    if !relevant.is_empty() {
        o.push_str("\nWindows selecting it:\n");
        let mut t = output::new_table(["  NAME", "TYPE", "SCHEDULE", "NOW / NEXT"]);
        for w in relevant {
            t.add_row([
                format!("  {}", cell(&w.name)),
                if w.freeze { "freeze" } else { "window" }.to_string(),
                cell(&w.schedule),
                state_text(&w.state, now, v.horizon_end),
            ]);
        }
        o.push_str(&output::table_to_string(&t));
    }
    o
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn windows(clients: &Clients) -> Result<Vec<pb::Window>> {
    let list = super::get::list(clients, Kind::Window, "", "", None).await?;
    Ok(list
        .into_iter()
        .filter_map(|r| match r.resource {
            Some(R::Window(w)) => Some(w),
            _ => None,
        })
        .collect())
}

fn encoded<T: Serialize>(value: &T, format: StreamFormat) -> Result<String> {
    Ok(match format {
        StreamFormat::Json => {
            let mut s =
                safe::json(&serde_json::to_string_pretty(value).context("cannot encode JSON")?);
            s.push('\n');
            s
        }
        _ => {
            let mut v = serde_yaml_ng::to_value(value).context("cannot encode YAML")?;
            safe::yaml_value(&mut v);
            safe::yaml(&serde_yaml_ng::to_string(&v).context("cannot encode YAML")?)
        }
    })
}

/// Fetches windows (and the device) and prints.
pub async fn run(clients: &Clients, command: WindowCommand) -> Result<()> {
    let now = unix(clients.now());
    match command {
        WindowCommand::List { output: format } => {
            let rows = rows(&windows(clients).await?, now, None);
            match format {
                StreamFormat::Table => output::print(&render_list(&rows, now)),
                other => output::print(&encoded(&rows, other)?),
            }
        }
        WindowCommand::Next {
            device,
            need,
            slots,
            output: format,
        } => {
            let resource = super::fetch(clients, Kind::Device, &device).await?;
            let Some(R::Device(d)) = resource.resource else {
                bail!(
                    "the server answered with something other than device {}",
                    safe::line(&device)
                );
            };
            let labels = d.meta.map(|m| m.labels).unwrap_or_default();
            let view = next(
                &device,
                &windows(clients).await?,
                &labels,
                now,
                need.unwrap_or_default(),
                usize::try_from(slots).unwrap_or(3),
            );
            match format {
                StreamFormat::Table => output::print(&render_next(&view, now)),
                other => output::print(&encoded(&view, other)?),
            }
        }
    }
}

#[cfg(test)]
mod tests;
