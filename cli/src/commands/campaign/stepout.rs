//! `muster campaign output CAMPAIGN HOST [--step NAME] [--attempt N] [--raw]`: the captured
//! output of a host's step attempts. The report names each attempt's intent id, `StepOutput`
//! serves the capture (head and tail, the bytes between counted). Printed escaped (a host's
//! output must never drive the terminal); `--raw` writes the bytes unchanged, only to a file or
//! a pipe.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use anyhow::{Context, Result, bail};
use muster::pb;

use crate::client::Clients;
use crate::output;
use crate::safe;

/// The attempts of `host` that match `step` and `attempt`, in the report's order.
pub fn select<'a>(
    report: &'a pb::CampaignReport,
    host: &str,
    step: Option<&str>,
    attempt: Option<u32>,
) -> Result<Vec<&'a pb::StepReport>> {
    let Some(h) = report.hosts.iter().find(|h| h.device == host) else {
        bail!(
            "host {} is not in campaign {}",
            safe::line(host),
            safe::line(
                report
                    .summary
                    .as_ref()
                    .map(|s| s.name.as_str())
                    .unwrap_or("")
            )
        );
    };
    let steps: Vec<&pb::StepReport> = h
        .steps
        .iter()
        .filter(|s| step.is_none_or(|n| s.step == n))
        .filter(|s| attempt.is_none_or(|a| s.attempt == a))
        .collect();
    if steps.is_empty() {
        let mut names: Vec<String> = h
            .steps
            .iter()
            .map(|s| safe::line(&s.step).into_owned())
            .collect();
        names.dedup();
        if names.is_empty() {
            bail!("host {} has run no step yet", safe::line(host));
        }
        bail!(
            "host {} has no such step attempt (steps run: {})",
            safe::line(host),
            names.join(", ")
        );
    }
    Ok(steps)
}

fn capture(o: &mut String, label: &str, c: Option<&pb::CapturedOutput>) {
    let default = pb::CapturedOutput::default();
    let c = c.unwrap_or(&default);
    if c.head.is_empty() && c.tail.is_empty() {
        let _ = writeln!(o, "--- {label}: (empty)");
        return;
    }
    let _ = writeln!(o, "--- {label}");
    let mut head = safe::bytes(&c.head);
    if c.truncated > 0 || !c.tail.is_empty() {
        if !head.ends_with('\n') {
            head.push('\n');
        }
        o.push_str(&head);
        if c.truncated > 0 {
            let _ = writeln!(o, "[… {} bytes not kept …]", c.truncated);
        }
        o.push_str(&safe::bytes(&c.tail));
    } else {
        o.push_str(&head);
    }
    if !o.ends_with('\n') {
        o.push('\n');
    }
}

/// One attempt's capture as text: a heading, stdout, stderr.
pub fn render(host: &str, s: &pb::StepReport, out: &pb::StepOutputResponse) -> String {
    let mut o = format!(
        "=== {} {} {} #{}",
        safe::line(host),
        safe::line(&s.phase),
        safe::line(&s.step),
        s.attempt
    );
    if !s.outcome.is_empty() {
        let _ = write!(o, ": {}", safe::line(&s.outcome));
        if s.outcome == "exited" {
            let _ = write!(o, " {}", s.exit_code);
        }
    }
    o.push('\n');
    capture(&mut o, "stdout", out.stdout.as_ref());
    capture(&mut o, "stderr", out.stderr.as_ref());
    o
}

/// Fetches the report, then each selected attempt's output.
pub async fn run(
    clients: &Clients,
    campaign: &str,
    host: &str,
    step: Option<&str>,
    attempt: Option<u32>,
    raw: bool,
) -> Result<()> {
    if raw && std::io::stdout().is_terminal() {
        bail!(
            "--raw writes the host's bytes unchanged: redirect standard output to a file or a pipe"
        );
    }
    let request = pb::CampaignReportRequest {
        name: campaign.to_string(),
    };
    let report = clients
        .unary(clients.campaign.clone().report(clients.request(request)))
        .await?;
    let steps = select(&report, host, step, attempt)?;
    if raw && steps.len() != 1 {
        bail!(
            "--raw needs exactly one step attempt, {} match: add --step and --attempt",
            steps.len()
        );
    }
    for (i, s) in steps.iter().enumerate() {
        let request = pb::StepOutputRequest {
            name: campaign.to_string(),
            host: host.to_string(),
            intent: s.intent.clone(),
        };
        let out = clients
            .unary(
                clients
                    .campaign
                    .clone()
                    .step_output(clients.request(request)),
            )
            .await?;
        if raw {
            return write_raw(&out);
        }
        if i > 0 {
            output::print("\n")?;
        }
        output::print(&render(host, s, &out))?;
    }
    Ok(())
}

fn write_raw(out: &pb::StepOutputResponse) -> Result<()> {
    let parts = |c: Option<&pb::CapturedOutput>| {
        c.map(|c| (c.head.clone(), c.tail.clone()))
            .unwrap_or_default()
    };
    let (head, tail) = parts(out.stdout.as_ref());
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&head)
        .and_then(|()| stdout.write_all(&tail))
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")?;
    let (head, tail) = parts(out.stderr.as_ref());
    let mut stderr = std::io::stderr().lock();
    // Standard error may be the terminal: the host's bytes go there only escaped.
    if std::io::stderr().is_terminal() {
        stderr
            .write_all(safe::bytes(&[head, tail].concat()).as_bytes())
            .context("cannot write to standard error")?;
    } else {
        stderr
            .write_all(&head)
            .and_then(|()| stderr.write_all(&tail))
            .context("cannot write to standard error")?;
    }
    let truncated = out.stdout.as_ref().map_or(0, |c| c.truncated)
        + out.stderr.as_ref().map_or(0, |c| c.truncated);
    if truncated > 0 {
        eprintln!("muster: {truncated} bytes between head and tail were not kept");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> pb::CampaignReport {
        let step = |name: &str, attempt: u32| pb::StepReport {
            step: name.into(),
            phase: "step".into(),
            attempt,
            outcome: "exited".into(),
            exit_code: 1,
            intent: format!("i-{name}-{attempt}"),
            ..Default::default()
        };
        pb::CampaignReport {
            hosts: vec![pb::HostReport {
                device: "web-01".into(),
                steps: vec![step("install", 1), step("install", 2), step("restart", 1)],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn selection() {
        let r = report();
        assert_eq!(select(&r, "web-01", None, None).unwrap().len(), 3);
        let s = select(&r, "web-01", Some("install"), Some(2)).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].intent, "i-install-2");
        let err = select(&r, "web-01", Some("reboot"), None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "host web-01 has no such step attempt (steps run: install, restart)"
        );
        let err = select(&r, "web-9\u{1b}[2J", None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("host web-9\\x1b[2J is not in campaign"),
            "{err}"
        );
    }

    #[test]
    fn captured_output_is_inert() {
        let r = report();
        let out = pb::StepOutputResponse {
            stdout: Some(pb::CapturedOutput {
                head: b"Reading package lists...\n\x1b[2J\x1b]0;pwned\x07progress\r50%\rdone\n"
                    .to_vec(),
                tail: b"Setting up openssl (3.0.13-1)\n\xff\n".to_vec(),
                truncated: 81_920,
            }),
            stderr: Some(pb::CapturedOutput {
                head: b"E: \x1b[31mfailed\x1b[0m\r\n".to_vec(),
                tail: Vec::new(),
                truncated: 0,
            }),
        };
        let text = render("web-01", &r.hosts[0].steps[1], &out);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        insta::assert_snapshot!("step_output", text);
        let empty = render(
            "web-01",
            &r.hosts[0].steps[0],
            &pb::StepOutputResponse::default(),
        );
        assert_eq!(
            empty,
            "=== web-01 step install #1: exited 1\n--- stdout: (empty)\n--- stderr: (empty)\n"
        );
    }
}
