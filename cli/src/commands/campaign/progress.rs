//! What `campaign watch` shows, as pure functions: a [`Progress`] model fed by the Get answer
//! and then by every `CampaignProgress` message, rendered either as a frame redrawn in place
//! on a terminal (a bar per wave, counts per host state, failures against the budget, window
//! time left) or as one plain line per event for pipes and logs.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use muster::pb;

use super::table::{counts_line, failures_cell, finished, host_state_name, state_name, total};
use crate::output::{self, to_system_time};
use crate::safe;

/// Recent transitions kept for the frame.
const RECENT: usize = 5;
/// Failing hosts listed in the frame (the count says how many more).
const FAILING_SHOWN: usize = 5;
/// Width of a wave's bar.
const BAR: usize = 30;

/// Where one host is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Host {
    wave: u32,
    state: pb::HostState,
    /// Why it is failing (the last transition's `why`, or the Get answer's message).
    why: String,
}

/// The watched campaign as the CLI knows it.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The latest summary (counts, failures, wave, waiting, window).
    pub summary: pb::CampaignSummary,
    waves: Vec<pb::PlanWave>,
    hosts: BTreeMap<String, Host>,
    recent: VecDeque<pb::CampaignTransition>,
    /// Shown under the frame, e.g. "reconnecting after UNAVAILABLE".
    pub note: String,
}

/// A transition's state name (`RUNNING`, `HOST_RUNNING`, `running`) as a host state.
fn parse_host_state(name: &str) -> Option<pb::HostState> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("HOST_") {
        upper
    } else {
        format!("HOST_{upper}")
    };
    pb::HostState::from_str_name(&full).filter(|s| *s != pb::HostState::Unspecified)
}

fn is_failing(s: pb::HostState) -> bool {
    matches!(
        s,
        pb::HostState::HostFailed
            | pb::HostState::HostNeedsAttention
            | pb::HostState::HostRollingBack
            | pb::HostState::HostRolledBack
    )
}

/// Whether the campaign is over (Watch ends there).
pub fn is_terminal(state: i32) -> bool {
    matches!(
        pb::CampaignState::try_from(state),
        Ok(pb::CampaignState::Completed | pb::CampaignState::Aborted)
    )
}

impl Progress {
    /// From a Get answer (with per-host progress) and its frozen plan.
    pub fn from_response(r: &pb::CampaignResponse) -> Progress {
        let mut p = Progress {
            summary: r.summary.clone().unwrap_or_default(),
            ..Default::default()
        };
        let Some(status) = r.campaign.as_ref().and_then(|c| c.status.as_ref()) else {
            return p;
        };
        let mut wave_of: BTreeMap<&str, u32> = BTreeMap::new();
        if let Some(plan) = &status.plan {
            p.waves = plan.waves.clone();
            for h in &plan.hosts {
                wave_of.insert(h.device.as_str(), h.wave);
            }
        }
        for h in &status.hosts {
            let state = pb::HostState::try_from(h.state).unwrap_or(pb::HostState::Unspecified);
            p.hosts.insert(
                h.device.clone(),
                Host {
                    wave: wave_of.get(h.device.as_str()).copied().unwrap_or(0),
                    state,
                    why: h.message.clone(),
                },
            );
        }
        p
    }

    /// Takes one message of the stream: its summary replaces ours, its transition moves a host.
    pub fn apply(&mut self, m: &pb::CampaignProgress) {
        if let Some(s) = &m.summary {
            self.summary = s.clone();
        }
        let Some(t) = &m.transition else {
            return;
        };
        if !t.host.is_empty()
            && let Some(state) = parse_host_state(&t.to)
        {
            let host = self.hosts.entry(t.host.clone()).or_insert(Host {
                wave: 0,
                state,
                why: String::new(),
            });
            host.state = state;
            host.why = t.why.clone();
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(t.clone());
    }

    /// The wave in progress as the plan text names it: `canary`, `wave 2/5` (fleet waves
    /// counted without the canary wave); by position when the plan is unknown.
    pub fn wave_label(&self) -> Option<String> {
        let s = &self.summary;
        let i = usize::try_from(s.wave).ok()?;
        if self.waves.is_empty() {
            return (s.waves > 0).then(|| format!("wave {}/{}", i + 1, s.waves));
        }
        let w = self.waves.get(i)?;
        if w.canary {
            return Some("canary".to_string());
        }
        let fleet = self.waves.iter().filter(|w| !w.canary).count();
        let k = self.waves[..=i].iter().filter(|w| !w.canary).count();
        Some(format!("wave {k}/{fleet}"))
    }

    /// Host counts of one wave: (succeeded or skipped, failing, in flight, pending, size).
    fn wave_counts(&self, wave: u32, size: u32) -> (u32, u32, u32, u32, u32) {
        let (mut ok, mut bad, mut busy, mut known) = (0, 0, 0, 0);
        for h in self.hosts.values().filter(|h| h.wave == wave) {
            known += 1;
            match h.state {
                pb::HostState::HostSucceeded | pb::HostState::HostSkipped => ok += 1,
                s if is_failing(s) => bad += 1,
                pb::HostState::HostRunning | pb::HostState::HostVerifying => busy += 1,
                _ => {}
            }
        }
        let size = size.max(known);
        (ok, bad, busy, size - ok - bad - busy, size)
    }
}

pub use crate::output::short_duration;

/// `[####x>>.......]`: done, failing, in flight, pending, in proportion (every non-zero part
/// gets at least its share rounded, the parts always fill the bar exactly).
pub fn bar(ok: u32, bad: u32, busy: u32, size: u32, width: usize) -> String {
    let mut out = String::with_capacity(width + 2);
    out.push('[');
    if size == 0 {
        out.push_str(&" ".repeat(width));
    } else {
        let cum = |n: u32| (u64::from(n) * width as u64 / u64::from(size)) as usize;
        let a = cum(ok);
        let b = cum(ok + bad).max(a + usize::from(bad > 0)).min(width);
        let c = cum(ok + bad + busy)
            .max(b + usize::from(busy > 0))
            .min(width);
        out.push_str(&"#".repeat(a));
        out.push_str(&"x".repeat(b - a));
        out.push_str(&">".repeat(c - b));
        out.push_str(&".".repeat(width - c));
    }
    out.push(']');
    out
}

/// "window closes in 1h 12m", "window closed", or nothing without a window limit.
fn window_left(s: &pb::CampaignSummary, now: SystemTime) -> Option<String> {
    let closes = to_system_time(s.window_closes_at.as_ref())?;
    Some(match closes.duration_since(now) {
        Ok(left) if left.as_secs() > 0 => format!(
            "window closes in {} (at {})",
            short_duration(left.as_secs()),
            output::format_time(s.window_closes_at.as_ref())
        ),
        _ => "window closed".to_string(),
    })
}

/// "failures 1 of 3 allowed (halts at the 4th)".
fn budget_line(s: &pb::CampaignSummary) -> String {
    let halt = u64::from(s.failures_allowed) + 1;
    let mut line = format!(
        "failures {} of {} allowed (halts at failure {halt})",
        s.failures, s.failures_allowed
    );
    if u64::from(s.failures) >= halt {
        line.push_str(": budget exceeded");
    }
    line
}

/// Cuts a line to the terminal's width, so the frame's line count is what the screen shows
/// and the redraw moves back exactly over it.
fn fit(line: &str, width: usize) -> String {
    console::truncate_str(line, width, "…").into_owned()
}

/// The live frame: every line at most `width` columns.
pub fn frame(p: &Progress, now: SystemTime, width: usize) -> String {
    let s = &p.summary;
    let mut lines = Vec::new();
    let mut title = format!("campaign {}  {}", safe::line(&s.name), state_name(s.state));
    if let Some(w) = p.wave_label() {
        title.push_str(&format!("  {w}"));
    }
    if !s.message.is_empty() {
        title.push_str(&format!("  {}", safe::line(&s.message)));
    }
    lines.push(title);
    let mut budget = budget_line(s);
    if let Some(w) = window_left(s, now) {
        budget.push_str(&format!("   {w}"));
    }
    lines.push(budget);
    let counts = s.counts.unwrap_or_default();
    lines.push(format!(
        "hosts {}/{} done: {}",
        finished(&counts),
        total(&counts),
        counts_line(&counts)
    ));
    if !s.waiting.is_empty() {
        lines.push(format!("waiting: {}", safe::line(&s.waiting)));
    }
    lines.push(String::new());
    let mut fleet_wave = 0;
    for (i, w) in p.waves.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let (ok, bad, busy, pending, size) = p.wave_counts(index, w.size);
        let label = if w.canary {
            "canary".to_string()
        } else {
            fleet_wave += 1;
            format!("wave {fleet_wave}")
        };
        let marker = if i64::from(s.wave) == i as i64 {
            '▶'
        } else {
            ' '
        };
        let mut detail = Vec::new();
        for (n, word) in [
            (ok, "ok"),
            (bad, "failed"),
            (busy, "running"),
            (pending, "pending"),
        ] {
            if n > 0 {
                detail.push(format!("{n} {word}"));
            }
        }
        lines.push(format!(
            "{marker} {label:<8} {} {:>5}  {}",
            bar(ok, bad, busy, size, BAR),
            format!("{}/{size}", ok + bad),
            detail.join(", ")
        ));
    }
    let failing: Vec<(&String, &Host)> = p
        .hosts
        .iter()
        .filter(|(_, h)| is_failing(h.state))
        .collect();
    if !failing.is_empty() {
        lines.push(String::new());
        lines.push(format!("failing ({}):", failing.len()));
        for (name, h) in failing.iter().take(FAILING_SHOWN) {
            let mut line = format!("  {} {}", safe::line(name), host_state_name(h.state as i32));
            if !h.why.is_empty() {
                line.push_str(&format!(": {}", safe::line(&h.why)));
            }
            lines.push(line);
        }
        if failing.len() > FAILING_SHOWN {
            lines.push(format!("  … and {} more", failing.len() - FAILING_SHOWN));
        }
    }
    if !p.recent.is_empty() {
        lines.push(String::new());
        lines.push("recent:".to_string());
        for t in &p.recent {
            lines.push(format!("  {}", event_text(t)));
        }
    }
    if !p.note.is_empty() {
        lines.push(String::new());
        lines.push(safe::line(&p.note).into_owned());
    }
    let mut out = String::new();
    for l in lines {
        out.push_str(&fit(&l, width.max(20)));
        out.push('\n');
    }
    out
}

/// `web-07 RUNNING → FAILED: step install exited 1 (system:campaign)`.
fn event_text(t: &pb::CampaignTransition) -> String {
    let who = if t.host.is_empty() {
        "campaign".to_string()
    } else {
        safe::line(&t.host).into_owned()
    };
    let mut line = format!(
        "{} {who} {} → {}",
        output::format_time(t.at.as_ref()),
        safe::line(if t.from.is_empty() { "-" } else { &t.from }),
        safe::line(&t.to)
    );
    if !t.why.is_empty() {
        line.push_str(&format!(": {}", safe::line(&t.why)));
    }
    if !t.principal.is_empty() {
        line.push_str(&format!(" ({})", safe::line(&t.principal)));
    }
    line
}

/// One plain line for a message of the stream (pipes, logs), after `p` took it: the
/// transition, with the budget when a host fails; a message without a transition prints the
/// summary.
pub fn plain_line(p: &Progress, m: &pb::CampaignProgress) -> String {
    let s = &p.summary;
    let mut line = match &m.transition {
        Some(t) => {
            let mut line = event_text(t);
            if parse_host_state(&t.to).is_some_and(is_failing) || t.host.is_empty() {
                line.push_str(&format!(" [failures {}]", failures_cell(s)));
            }
            line
        }
        None => summary_line(p),
    };
    line.push('\n');
    line
}

/// `campaign kernel-6.1 RUNNING wave 2/4: 12 succeeded, 1 failed; failures 1/3`.
pub fn summary_line(p: &Progress) -> String {
    let s = &p.summary;
    let counts = s.counts.unwrap_or_default();
    let mut line = format!("campaign {} {}", safe::line(&s.name), state_name(s.state));
    if let Some(w) = p.wave_label() {
        line.push_str(&format!(" {w}"));
    }
    line.push_str(&format!(
        ": {}; failures {}",
        counts_line(&counts),
        failures_cell(s)
    ));
    if !s.waiting.is_empty() {
        line.push_str(&format!("; waiting: {}", safe::line(&s.waiting)));
    }
    line
}

#[cfg(test)]
mod tests;
