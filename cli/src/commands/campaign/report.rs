//! `muster campaign report`: per-host outcome, durations, step output excerpts and the
//! transitions, as a table, JSON/YAML (the API's report) or Markdown for a postmortem. Pure.
//! Excerpts are cut to their last [`EXCERPT_LINES`] lines (`campaign output` has the whole
//! capture) and every server string is escaped; in Markdown, table cells also escape the
//! characters Markdown would act on, and output goes in fences longer than any run of
//! backticks it holds.

use std::fmt::Write;

use anyhow::Result;
use muster::pb;

use super::table::{counts_line, host_state_name, state_name};
use crate::args::ReportFormat;
use crate::output::{self, cell, format_time};
use crate::safe;

/// Lines of each excerpt shown.
pub const EXCERPT_LINES: usize = 10;
/// Characters of one excerpt line shown.
const LINE_CHARS: usize = 300;

/// The report in the chosen format.
pub fn render(r: &pb::CampaignReport, format: ReportFormat) -> Result<String> {
    Ok(match format {
        ReportFormat::Table => table(r),
        ReportFormat::Markdown => markdown(r),
        ReportFormat::Json => {
            let mut s = super::table::json(r)?;
            s.push('\n');
            s
        }
        ReportFormat::Yaml => super::table::yaml(r)?,
    })
}

fn duration(d: Option<&pbjson_types::Duration>) -> String {
    match d {
        Some(d) if d.seconds >= 0 => {
            super::progress::short_duration(u64::try_from(d.seconds).unwrap_or(0))
        }
        _ => "-".to_string(),
    }
}

/// `step install`, `rollback downgrade`, `verify` (a phase named like its step once).
fn step_title(s: &pb::StepReport) -> String {
    if s.phase == s.step || s.step.is_empty() {
        cell(&s.phase)
    } else {
        format!("{} {}", cell(&s.phase), cell(&s.step))
    }
}

fn wave_label(h: &pb::HostReport) -> String {
    if h.canary {
        "canary".to_string()
    } else {
        h.wave.to_string()
    }
}

/// `exited 0`, `signalled (SIGKILL)`, `timed_out`, `-` while in flight.
fn outcome(s: &pb::StepReport) -> String {
    let mut o = if s.outcome.is_empty() {
        "in flight".to_string()
    } else {
        safe::line(&s.outcome).into_owned()
    };
    if s.outcome == "exited" {
        let _ = write!(o, " {}", s.exit_code);
    }
    if !s.detail.is_empty() {
        let _ = write!(o, " ({})", safe::line(&s.detail));
    }
    o
}

/// The last lines of an excerpt, escaped, each cut to a readable length.
fn excerpt(text: &str) -> Vec<String> {
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Vec::new();
    }
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(EXCERPT_LINES);
    let mut out = Vec::with_capacity(EXCERPT_LINES + 1);
    if skip > 0 {
        out.push(format!("[… {skip} earlier lines]"));
    }
    for l in &lines[skip..] {
        let l = l.strip_suffix('\r').unwrap_or(l);
        let mut l = safe::line(l).into_owned();
        if l.chars().count() > LINE_CHARS {
            l = l.chars().take(LINE_CHARS).collect::<String>() + "…";
        }
        out.push(l);
    }
    out
}

fn header_lines(r: &pb::CampaignReport) -> Vec<(String, String)> {
    let default = pb::CampaignSummary::default();
    let s = r.summary.as_ref().unwrap_or(&default);
    let mut state = state_name(s.state).to_string();
    if !s.message.is_empty() {
        let _ = write!(state, " ({})", safe::line(&s.message));
    }
    let mut out = vec![
        ("State".to_string(), state),
        (
            "Hosts".to_string(),
            counts_line(&s.counts.unwrap_or_default()),
        ),
        (
            "Failures".to_string(),
            format!(
                "{} of {} allowed (halts at failure {})",
                s.failures,
                s.failures_allowed,
                u64::from(s.failures_allowed) + 1
            ),
        ),
        ("Created by".to_string(), cell(&s.created_by)),
        ("Approved by".to_string(), cell(&s.approved_by.join(", "))),
    ];
    if !r.skipped.is_empty() {
        out.push((
            "Skipped at plan time".to_string(),
            r.skipped.len().to_string(),
        ));
    }
    out
}

fn name(r: &pb::CampaignReport) -> String {
    let n = r.summary.as_ref().map(|s| s.name.as_str()).unwrap_or("");
    safe::line(n).into_owned()
}

/// The terminal form: a header, the host table, step details with excerpts, skipped hosts,
/// and the transitions.
pub fn table(r: &pb::CampaignReport) -> String {
    let mut o = format!("Campaign {}\n", name(r));
    for (k, v) in header_lines(r) {
        let _ = writeln!(o, "  {k}: {v}");
    }
    o.push('\n');
    let mut t = output::new_table([
        "HOST", "WAVE", "STATE", "STARTED", "FINISHED", "DURATION", "MESSAGE",
    ]);
    for h in &r.hosts {
        t.add_row([
            cell(&h.device),
            wave_label(h),
            host_state_name(h.state).to_string(),
            format_time(h.started_at.as_ref()),
            format_time(h.finished_at.as_ref()),
            duration(h.duration.as_ref()),
            cell(&h.message),
        ]);
    }
    o.push_str(&output::table_to_string(&t));
    let with_steps: Vec<&pb::HostReport> = r.hosts.iter().filter(|h| !h.steps.is_empty()).collect();
    if !with_steps.is_empty() {
        o.push_str("\nSteps\n");
        for h in with_steps {
            let _ = writeln!(o, "  {} ({})", cell(&h.device), host_state_name(h.state));
            for s in &h.steps {
                let _ = writeln!(
                    o,
                    "    {} #{}: {} in {}, started {}",
                    step_title(s),
                    s.attempt,
                    outcome(s),
                    duration(s.duration.as_ref()),
                    format_time(s.started_at.as_ref())
                );
                for (label, text) in [("stdout", &s.stdout_excerpt), ("stderr", &s.stderr_excerpt)]
                {
                    let lines = excerpt(text);
                    if lines.is_empty() {
                        continue;
                    }
                    let _ = writeln!(o, "      {label}:");
                    for l in lines {
                        let _ = writeln!(o, "        | {l}");
                    }
                }
            }
        }
    }
    if !r.skipped.is_empty() {
        o.push_str("\nSkipped at plan time\n");
        let mut t = output::new_table(["HOST", "CODE", "REASON"]);
        for s in &r.skipped {
            t.add_row([cell(&s.device), cell(&s.code), cell(&s.reason)]);
        }
        o.push_str(&output::table_to_string(&t));
    }
    o.push_str("\nTransitions\n");
    if r.transitions_omitted > 0 {
        let _ = writeln!(o, "  ({} older transitions omitted)", r.transitions_omitted);
    }
    let mut t = output::new_table(["TIME", "HOST", "FROM", "TO", "WHY", "BY"]);
    for tr in &r.transitions {
        t.add_row([
            format_time(tr.at.as_ref()),
            if tr.host.is_empty() {
                "(campaign)".to_string()
            } else {
                cell(&tr.host)
            },
            cell(&tr.from),
            cell(&tr.to),
            cell(&tr.why),
            cell(&tr.principal),
        ]);
    }
    o.push_str(&output::table_to_string(&t));
    o
}

/// A Markdown table cell: one line, escaped, with `|` and Markdown's active characters
/// backslash-escaped so a host name cannot become a link, an image or raw HTML.
fn md(s: &str) -> String {
    if s.is_empty() {
        return "-".to_string();
    }
    let mut out = String::with_capacity(s.len());
    for c in safe::line(s).chars() {
        if matches!(
            c,
            '\\' | '|' | '`' | '*' | '_' | '<' | '>' | '[' | ']' | '#' | '!' | '~' | '&'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn md_row(o: &mut String, cells: &[String]) {
    o.push('|');
    for c in cells {
        let _ = write!(o, " {c} |");
    }
    o.push('\n');
}

fn md_table(o: &mut String, header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    md_row(
        o,
        &header.iter().map(|h| (*h).to_string()).collect::<Vec<_>>(),
    );
    md_row(
        o,
        &header.iter().map(|_| "---".to_string()).collect::<Vec<_>>(),
    );
    for row in rows {
        md_row(o, &row);
    }
}

/// A fenced block that the content cannot close: the fence is longer than any run of
/// backticks inside.
fn fence(o: &mut String, lines: &[String]) {
    let longest = lines
        .iter()
        .flat_map(|l| l.split(|c| c != '`'))
        .map(str::len)
        .max()
        .unwrap_or(0);
    let f = "`".repeat(longest.max(2) + 1);
    let _ = writeln!(o, "{f}text");
    for l in lines {
        let _ = writeln!(o, "{l}");
    }
    let _ = writeln!(o, "{f}");
}

/// Markdown for a postmortem: summary, hosts, step output, skipped hosts, timeline.
pub fn markdown(r: &pb::CampaignReport) -> String {
    let mut o = format!("# Campaign {}\n\n", md(&name(r)));
    for (k, v) in header_lines(r) {
        let _ = writeln!(o, "- **{k}:** {}", md(&v));
    }
    o.push_str("\n## Hosts\n\n");
    md_table(
        &mut o,
        &[
            "Host",
            "Wave",
            "State",
            "Started (UTC)",
            "Finished (UTC)",
            "Duration",
            "Message",
        ],
        r.hosts.iter().map(|h| {
            vec![
                md(&h.device),
                wave_label(h),
                host_state_name(h.state).to_string(),
                format_time(h.started_at.as_ref()),
                format_time(h.finished_at.as_ref()),
                duration(h.duration.as_ref()),
                md(&h.message),
            ]
        }),
    );
    let with_steps: Vec<&pb::HostReport> = r.hosts.iter().filter(|h| !h.steps.is_empty()).collect();
    if !with_steps.is_empty() {
        o.push_str("\n## Steps\n");
        for h in with_steps {
            let _ = writeln!(
                o,
                "\n### {} ({})\n",
                md(&h.device),
                host_state_name(h.state)
            );
            md_table(
                &mut o,
                &[
                    "Phase",
                    "Step",
                    "Attempt",
                    "Outcome",
                    "Started (UTC)",
                    "Duration",
                ],
                h.steps.iter().map(|s| {
                    vec![
                        md(&s.phase),
                        md(&s.step),
                        s.attempt.to_string(),
                        md(&outcome(s)),
                        format_time(s.started_at.as_ref()),
                        duration(s.duration.as_ref()),
                    ]
                }),
            );
            for s in &h.steps {
                for (label, text) in [("stdout", &s.stdout_excerpt), ("stderr", &s.stderr_excerpt)]
                {
                    let lines = excerpt(text);
                    if lines.is_empty() {
                        continue;
                    }
                    let _ = writeln!(
                        o,
                        "\n{} #{} {label} (last lines):\n",
                        md(&step_title(s)),
                        s.attempt
                    );
                    fence(&mut o, &lines);
                }
            }
        }
    }
    if !r.skipped.is_empty() {
        o.push_str("\n## Skipped at plan time\n\n");
        md_table(
            &mut o,
            &["Host", "Code", "Reason"],
            r.skipped
                .iter()
                .map(|s| vec![md(&s.device), md(&s.code), md(&s.reason)]),
        );
    }
    o.push_str("\n## Timeline\n\n");
    if r.transitions_omitted > 0 {
        let _ = writeln!(
            o,
            "_{} older transitions omitted._\n",
            r.transitions_omitted
        );
    }
    md_table(
        &mut o,
        &["Time (UTC)", "Host", "From", "To", "Why", "By"],
        r.transitions.iter().map(|t| {
            vec![
                format_time(t.at.as_ref()),
                if t.host.is_empty() {
                    "(campaign)".to_string()
                } else {
                    md(&t.host)
                },
                md(&t.from),
                md(&t.to),
                md(&t.why),
                md(&t.principal),
            ]
        }),
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64) -> Option<pbjson_types::Timestamp> {
        Some(pbjson_types::Timestamp { seconds, nanos: 0 })
    }

    fn dur(seconds: i64) -> Option<pbjson_types::Duration> {
        Some(pbjson_types::Duration { seconds, nanos: 0 })
    }

    fn transition(at: i64, host: &str, from: &str, to: &str, why: &str) -> pb::CampaignTransition {
        pb::CampaignTransition {
            at: ts(at),
            host: host.into(),
            from: from.into(),
            to: to.into(),
            why: why.into(),
            principal: "system:campaign".into(),
        }
    }

    /// Two hosts: a canary that succeeded and a host whose step failed and was rolled back,
    /// with hostile output (escape sequences, a fence breaker, Markdown in its name).
    pub(crate) fn sample() -> pb::CampaignReport {
        let step = |name: &str, phase: &str, outcome: &str, code: i32, out: &str, err: &str| {
            pb::StepReport {
                step: name.into(),
                phase: phase.into(),
                attempt: 1,
                outcome: outcome.into(),
                exit_code: code,
                detail: String::new(),
                started_at: ts(1_000_100),
                duration: dur(62),
                stdout_excerpt: out.into(),
                stderr_excerpt: err.into(),
                intent: format!("01HX-{name}"),
            }
        };
        let long: String = (1..=14).map(|i| format!("line {i}\n")).collect();
        pb::CampaignReport {
            summary: Some(pb::CampaignSummary {
                name: "kernel-6.1".into(),
                state: pb::CampaignState::Completed as i32,
                message: "completed with 1 failure".into(),
                counts: Some(pb::HostCounts {
                    succeeded: 1,
                    rolled_back: 1,
                    ..Default::default()
                }),
                failures: 1,
                failures_allowed: 1,
                wave: -1,
                waves: 2,
                created_by: "alice".into(),
                approved_by: vec!["bob".into()],
                ..Default::default()
            }),
            hosts: vec![
                pb::HostReport {
                    device: "web-01".into(),
                    state: pb::HostState::HostSucceeded as i32,
                    message: String::new(),
                    canary: true,
                    wave: 0,
                    started_at: ts(1_000_000),
                    finished_at: ts(1_000_250),
                    duration: dur(250),
                    steps: vec![
                        step("install", "step", "exited", 0, &long, ""),
                        step("verify", "verify", "observed", 0, "", ""),
                    ],
                },
                pb::HostReport {
                    device: "web_02[x](http://evil)".into(),
                    state: pb::HostState::HostRolledBack as i32,
                    message: "step install: exited 100\u{1b}[1A".into(),
                    canary: false,
                    wave: 1,
                    started_at: ts(1_000_400),
                    finished_at: ts(1_000_700),
                    duration: dur(300),
                    steps: vec![
                        step(
                            "install",
                            "step",
                            "exited",
                            100,
                            "Reading package lists...\n```\n# not a heading\n",
                            "E: \u{1b}[31mUnable to locate package\u{1b}[0m\r\n\u{1b}]0;owned\u{7}",
                        ),
                        step("downgrade", "rollback", "exited", 0, "ok\n", ""),
                    ],
                },
            ],
            skipped: vec![pb::SkippedHost {
                device: "web-03".into(),
                code: "critical".into(),
                reason: "health CRITICAL: disk sda | predicted to fail".into(),
            }],
            transitions: vec![
                transition(999_990, "", "SCHEDULED", "RUNNING", "started by alice"),
                transition(1_000_000, "web-01", "PENDING", "RUNNING", ""),
                transition(
                    1_000_250,
                    "web-01",
                    "VERIFYING",
                    "SUCCEEDED",
                    "drift closed",
                ),
                transition(
                    1_000_600,
                    "web_02[x](http://evil)",
                    "RUNNING",
                    "FAILED",
                    "step install: exited 100",
                ),
                transition(
                    1_000_700,
                    "web_02[x](http://evil)",
                    "ROLLING_BACK",
                    "ROLLED_BACK",
                    "",
                ),
                transition(
                    1_000_800,
                    "",
                    "RUNNING",
                    "COMPLETED",
                    "completed with 1 failure",
                ),
            ],
            transitions_omitted: 3,
        }
    }

    fn assert_inert(s: &str) {
        assert!(
            !s.chars().any(|c| c.is_control() && c != '\n'),
            "raw control character in {s:?}"
        );
    }

    #[test]
    fn report_table() {
        let s = table(&sample());
        assert_inert(&s);
        insta::assert_snapshot!("report_table", s);
    }

    #[test]
    fn report_markdown() {
        let s = markdown(&sample());
        assert_inert(&s);
        insta::assert_snapshot!("report_markdown", s);
        // The output's own ``` cannot close the fence.
        assert!(
            s.contains("````text\nReading package lists...\n```\n# not a heading\n````"),
            "{s}"
        );
        // Markdown in a host name stays text.
        assert!(s.contains("web\\_02\\[x\\](http://evil)"), "{s}");
        assert!(!s.contains("](http://evil)|"), "{s}");
        assert!(s.contains("disk sda \\| predicted"), "{s}");
    }

    #[test]
    fn report_json_and_yaml() {
        let json = render(&sample(), ReportFormat::Json).unwrap();
        assert_inert(&json);
        insta::assert_snapshot!("report_json", json);
        let back: pb::CampaignReport = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back,
            sample(),
            "JSON keeps the exact report, escapes decoded"
        );
        let yaml = render(&sample(), ReportFormat::Yaml).unwrap();
        assert_inert(&yaml);
        let back: pb::CampaignReport = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn excerpts_keep_the_last_lines() {
        let long: String = (1..=14).map(|i| format!("line {i}\n")).collect();
        let e = excerpt(&long);
        assert_eq!(e.len(), EXCERPT_LINES + 1);
        assert_eq!(e[0], "[… 4 earlier lines]");
        assert_eq!(e[EXCERPT_LINES], "line 14");
        assert!(excerpt("\n").is_empty());
        let wide = "x".repeat(1000);
        assert_eq!(excerpt(&wide)[0].chars().count(), LINE_CHARS + 1);
    }
}
