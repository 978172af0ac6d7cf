//! Campaign lists and one-line confirmations, pure: values in, text out.

use std::time::SystemTime;

use anyhow::{Context, Result};
use muster::pb;
use serde::Serialize;

use crate::output::{self, cell};
use crate::safe;

/// A campaign state by its proto name (`RUNNING`), `-` when unset or unknown.
pub fn state_name(state: i32) -> &'static str {
    match pb::CampaignState::try_from(state) {
        Ok(pb::CampaignState::Unspecified) | Err(_) => "-",
        Ok(s) => s.as_str_name(),
    }
}

/// A host state without its `HOST_` prefix (`NEEDS_ATTENTION`), `-` when unset or unknown.
pub fn host_state_name(state: i32) -> &'static str {
    match pb::HostState::try_from(state) {
        Ok(pb::HostState::Unspecified) | Err(_) => "-",
        Ok(s) => s.as_str_name().trim_start_matches("HOST_"),
    }
}

/// Host counts in reading order (outcomes first), as (label, count).
pub fn count_parts(c: &pb::HostCounts) -> [(&'static str, u32); 9] {
    [
        ("succeeded", c.succeeded),
        ("failed", c.failed),
        ("needs attention", c.needs_attention),
        ("rolling back", c.rolling_back),
        ("rolled back", c.rolled_back),
        ("running", c.running),
        ("verifying", c.verifying),
        ("pending", c.pending),
        ("skipped", c.skipped),
    ]
}

/// Every host the counts cover.
pub fn total(c: &pb::HostCounts) -> u32 {
    count_parts(c).iter().map(|(_, n)| *n).sum()
}

/// Hosts that reached an outcome (nothing more will run on them unless a person says so).
pub fn finished(c: &pb::HostCounts) -> u32 {
    c.succeeded + c.failed + c.rolled_back + c.skipped + c.needs_attention
}

/// `3 succeeded, 1 failed, 2 running`: the non-zero counts, or `no hosts`.
pub fn counts_line(c: &pb::HostCounts) -> String {
    let parts: Vec<String> = count_parts(c)
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(label, n)| format!("{n} {label}"))
        .collect();
    if parts.is_empty() {
        "no hosts".to_string()
    } else {
        parts.join(", ")
    }
}

/// `1/3`: failures charged against the budget, and the budget.
pub fn failures_cell(s: &pb::CampaignSummary) -> String {
    format!("{}/{}", s.failures, s.failures_allowed)
}

/// `2/5`: the wave in progress by position (1-based) among all waves, the canary wave
/// included (a summary alone does not say which wave is the canary), or `-` before the first.
pub fn wave_cell(s: &pb::CampaignSummary) -> String {
    if s.wave < 0 || s.waves == 0 {
        "-".to_string()
    } else {
        format!("{}/{}", s.wave + 1, s.waves)
    }
}

/// `campaign/kernel-6.1 started (RUNNING)`, with the server's message when it has one.
pub fn action_line(r: &pb::CampaignResponse, verb: &str) -> String {
    let default = pb::CampaignSummary::default();
    let s = r.summary.as_ref().unwrap_or(&default);
    let name = if s.name.is_empty() {
        r.campaign
            .as_ref()
            .and_then(|c| c.meta.as_ref())
            .map(|m| m.name.as_str())
            .unwrap_or("")
    } else {
        s.name.as_str()
    };
    let state = r
        .summary
        .as_ref()
        .map(|s| s.state)
        .or_else(|| {
            r.campaign
                .as_ref()
                .and_then(|c| c.status.as_ref())
                .map(|st| st.state)
        })
        .unwrap_or(0);
    let mut line = format!(
        "campaign/{} {verb} ({})",
        safe::line(name),
        state_name(state)
    );
    if !s.message.is_empty() {
        line.push_str(&format!(": {}", safe::line(&s.message)));
    }
    line
}

/// After `submit`: the confirmation, the digest, and what approvers do next.
pub fn submitted(r: &pb::CampaignResponse) -> String {
    let mut out = action_line(r, "submitted");
    out.push('\n');
    let digest = r
        .campaign
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .map(|s| s.digest.as_str())
        .unwrap_or("");
    let name = r
        .summary
        .as_ref()
        .map(|s| s.name.as_str())
        .unwrap_or("NAME");
    let name = safe::line(name);
    if !digest.is_empty() {
        out.push_str(&format!("digest: {}\n", safe::line(digest)));
    }
    out.push_str(&format!(
        "approvers: review `muster campaign plan {name}`, then `muster campaign approve {name} --digest <digest>`\n"
    ));
    out
}

/// `host web-07 of campaign/kernel-6.1 retried (now RUNNING)`.
pub fn host_action_line(r: &pb::CampaignResponse, host: &str, verb: &str) -> String {
    let name = r.summary.as_ref().map(|s| s.name.as_str()).unwrap_or("");
    let mut line = format!(
        "host {} of campaign/{} {verb}",
        safe::line(host),
        safe::line(name)
    );
    let now = r
        .campaign
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .and_then(|s| s.hosts.iter().find(|h| h.device == host));
    if let Some(h) = now {
        line.push_str(&format!(" (now {})", host_state_name(h.state)));
    }
    line
}

/// The `campaign list` table.
pub fn summaries(list: &[pb::CampaignSummary], wide: bool, now: SystemTime) -> String {
    let rows: Vec<(pb::CampaignSummary, Option<pbjson_types::Timestamp>)> =
        list.iter().map(|s| (s.clone(), None)).collect();
    render_rows(&rows, wide, false, now)
}

/// The `campaign get` table: [`summaries`] with the campaign's age.
pub fn summaries_with_age(
    rows: &[(pb::CampaignSummary, Option<pbjson_types::Timestamp>)],
    wide: bool,
    now: SystemTime,
) -> String {
    render_rows(rows, wide, true, now)
}

fn render_rows(
    rows: &[(pb::CampaignSummary, Option<pbjson_types::Timestamp>)],
    wide: bool,
    ages: bool,
    now: SystemTime,
) -> String {
    let mut header = vec!["NAME", "STATE", "DONE", "FAILURES", "WAVE", "WAITING"];
    if ages {
        header.push("AGE");
    }
    if wide {
        header.extend([
            "HOSTS",
            "WINDOW-CLOSES",
            "CREATED-BY",
            "APPROVED-BY",
            "MESSAGE",
        ]);
    }
    let mut table = output::new_table(header);
    for (s, created) in rows {
        let counts = s.counts.unwrap_or_default();
        let mut row = vec![
            cell(&s.name),
            state_name(s.state).to_string(),
            format!("{}/{}", finished(&counts), total(&counts)),
            failures_cell(s),
            wave_cell(s),
            cell(&s.waiting),
        ];
        if ages {
            row.push(output::age(created.as_ref(), now));
        }
        if wide {
            row.extend([
                cell(&counts_line(&counts)),
                output::format_time(s.window_closes_at.as_ref()),
                cell(&s.created_by),
                cell(&s.approved_by.join(",")),
                cell(&s.message),
            ]);
        }
        table.add_row(row);
    }
    output::table_to_string(&table)
}

/// `campaign/NAME` lines.
pub fn names(list: &[pb::CampaignSummary]) -> String {
    list.iter()
        .map(|s| format!("campaign/{}\n", safe::line(&s.name)))
        .collect()
}

/// Pretty JSON (proto3 JSON mapping) with terminal-active characters escaped.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    Ok(safe::json(
        &serde_json::to_string_pretty(value).context("cannot encode JSON")?,
    ))
}

/// YAML with terminal-active characters escaped.
pub fn yaml<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    Ok(safe::yaml(
        &serde_yaml_ng::to_string(value).context("cannot encode YAML")?,
    ))
}

/// What `campaign plan` prints: the server's text (escaped), or, from a server that sent
/// none, the plan's facts rendered here.
pub fn plan_text(r: &pb::PlanCampaignResponse) -> String {
    let mut out = if r.text.trim().is_empty() {
        plan_facts(r)
    } else {
        safe::text(&r.text).into_owned()
    };
    if !out.ends_with('\n') {
        out.push('\n');
    }
    if !r.frozen {
        out.push_str("(dry run: not frozen; `muster campaign submit` freezes the plan)\n");
    }
    out
}

/// The plan without the server's text: hosts, trip point, waves, canaries, skipped hosts.
fn plan_facts(r: &pb::PlanCampaignResponse) -> String {
    let default = pb::CampaignPlan::default();
    let p = r.plan.as_ref().unwrap_or(&default);
    let mut out = format!(
        "{} planned, {} skipped (planned at {})\n",
        output::count(p.hosts.len() as u64, "host", "hosts"),
        p.skipped.len(),
        output::format_time(p.planned_at.as_ref())
    );
    if !r.digest.is_empty() {
        out.push_str(&format!("Digest: {}\n", safe::line(&r.digest)));
    }
    out.push_str(&format!(
        "Failure budget: {} allowed; the campaign halts at failure {}\n",
        p.failures_allowed,
        u64::from(p.failures_allowed) + 1
    ));
    let mut fleet = 0;
    let waves: Vec<String> = p
        .waves
        .iter()
        .map(|w| {
            if w.canary {
                format!("canary ({})", output::count(w.size, "host", "hosts"))
            } else {
                fleet += 1;
                format!("wave {fleet} ({})", output::count(w.size, "host", "hosts"))
            }
        })
        .collect();
    out.push_str(&format!("Waves: {}\n", cell(&waves.join(", "))));
    let canaries: Vec<&str> = p
        .hosts
        .iter()
        .filter(|h| h.canary)
        .map(|h| h.device.as_str())
        .collect();
    if !canaries.is_empty() {
        out.push_str(&format!("Canaries: {}\n", safe::line(&canaries.join(", "))));
    }
    let unfit: Vec<&str> = p
        .hosts
        .iter()
        .filter(|h| h.first_fit.is_none())
        .map(|h| h.device.as_str())
        .collect();
    if !unfit.is_empty() {
        out.push_str(&format!(
            "No window fit before the horizon: {}\n",
            safe::line(&unfit.join(", "))
        ));
    }
    if !p.skipped.is_empty() {
        out.push_str("Skipped:\n");
        let mut t = output::new_table(["  DEVICE", "CODE", "REASON"]);
        for s in &p.skipped {
            t.add_row([
                format!("  {}", cell(&s.device)),
                cell(&s.code),
                cell(&s.reason),
            ]);
        }
        out.push_str(&output::table_to_string(&t));
    }
    for w in &p.warnings {
        out.push_str(&format!("Warning: {}\n", safe::line(w)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    pub(crate) fn summary(name: &str) -> pb::CampaignSummary {
        pb::CampaignSummary {
            name: name.into(),
            state: pb::CampaignState::Running as i32,
            message: String::new(),
            counts: Some(pb::HostCounts {
                pending: 25,
                running: 2,
                succeeded: 12,
                failed: 1,
                ..Default::default()
            }),
            failures: 1,
            failures_allowed: 3,
            wave: 1,
            waves: 4,
            waiting: String::new(),
            window_closes_at: Some(pbjson_types::Timestamp {
                seconds: 1_000_000 + 4_320,
                nanos: 0,
            }),
            created_by: "alice".into(),
            approved_by: vec!["bob".into(), "carol".into()],
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    #[test]
    fn list_tables() {
        let mut paused = summary("nginx-restart");
        paused.state = pb::CampaignState::Paused as i32;
        paused.waiting = "window closed; next opens 1970-01-13T02:00:00Z".into();
        paused.wave = -1;
        paused.message = "paused by dave".into();
        let list = [summary("kernel-6.1"), paused];
        let narrow = summaries(&list, false, now());
        insta::assert_snapshot!("campaign_list", narrow);
        insta::assert_snapshot!("campaign_list_wide", summaries(&list, true, now()));
        let row: Vec<&str> = narrow.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row, ["kernel-6.1", "RUNNING", "13/40", "1/3", "2/4", "-"]);
    }

    #[test]
    fn counts_read_outcomes_first() {
        assert_eq!(
            counts_line(&summary("x").counts.unwrap()),
            "12 succeeded, 1 failed, 2 running, 25 pending"
        );
        assert_eq!(counts_line(&pb::HostCounts::default()), "no hosts");
    }

    #[test]
    fn confirmations() {
        let mut r = pb::CampaignResponse {
            campaign: Some(pb::Campaign {
                status: Some(pb::CampaignStatus {
                    digest: "ab".repeat(32),
                    hosts: vec![pb::HostProgress {
                        device: "web-07".into(),
                        state: pb::HostState::HostRunning as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            summary: Some(summary("kernel-6.1")),
        };
        assert_eq!(
            action_line(&r, "started"),
            "campaign/kernel-6.1 started (RUNNING)"
        );
        assert_eq!(
            host_action_line(&r, "web-07", "retried"),
            "host web-07 of campaign/kernel-6.1 retried (now RUNNING)"
        );
        if let Some(s) = r.summary.as_mut() {
            s.state = pb::CampaignState::AwaitingApproval as i32;
            s.message = "needs 2 approvals\u{1b}[2J".into();
        }
        insta::assert_snapshot!("campaign_submitted", submitted(&r));
        assert!(!submitted(&r).contains('\u{1b}'));
    }

    #[test]
    fn plan_text_is_the_servers_escaped_or_the_facts() {
        let r = pb::PlanCampaignResponse {
            text: "Campaign x: 3 hosts\n\u{1b}]0;owned\u{7}\n".into(),
            frozen: true,
            ..Default::default()
        };
        assert_eq!(plan_text(&r), "Campaign x: 3 hosts\n\\x1b]0;owned\\x07\n");
        let host = |d: &str, wave: u32, canary: bool, fit: bool| pb::PlannedHost {
            device: d.into(),
            wave,
            canary,
            first_fit: fit.then_some(pbjson_types::Timestamp {
                seconds: 1_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let r = pb::PlanCampaignResponse {
            plan: Some(pb::CampaignPlan {
                planned_at: Some(pbjson_types::Timestamp {
                    seconds: 1_000_000,
                    nanos: 0,
                }),
                hosts: vec![
                    host("web-01", 0, true, true),
                    host("web-02", 1, false, true),
                    host("web-03", 1, false, false),
                ],
                skipped: vec![pb::SkippedHost {
                    device: "web-04".into(),
                    code: "critical".into(),
                    reason: "health CRITICAL: disk sda predicted to fail".into(),
                }],
                waves: vec![
                    pb::PlanWave {
                        canary: true,
                        size: 1,
                    },
                    pb::PlanWave {
                        canary: false,
                        size: 2,
                    },
                ],
                failures_allowed: 0,
                fleet_hosts: 2,
                warnings: vec!["hypervisor hv-1 alone exceeds max_per_rack".into()],
            }),
            text: String::new(),
            digest: "cd".repeat(32),
            frozen: false,
        };
        insta::assert_snapshot!("campaign_plan_facts", plan_text(&r));
    }
}
