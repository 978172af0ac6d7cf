//! pb::CampaignSpec → [`CampaignSpec`]: every refusal names its field. Field rules are the
//! `TryFrom`; [`CampaignSpec::parse`] adds what needs the windows (names known, each opening
//! within the next 30 days).

use std::collections::HashSet;

use muster::names::validate_name;
use muster::pb;
use muster::selector::Selector;

use super::calendar::{Calendar, HORIZON_SECONDS, WindowLookup};
use super::error::CampaignError;
use super::spec::*;
use crate::model::limits::MAX_SELECTOR_BYTES;
use crate::model::resource::validate_spec;

type R<T> = Result<T, CampaignError>;

const EXPECT_OPS: [&str; 8] = ["==", "!=", "<", "<=", ">", ">=", "in", "exists"];

fn bad<T>(field: impl Into<String>, problem: impl Into<String>) -> R<T> {
    Err(CampaignError::invalid(field, problem))
}

/// Whole seconds of a duration, rounding a fraction up (a 0.5 s timeout is 1 s, not 0).
fn secs(d: Option<&pbjson_types::Duration>) -> R<Option<i64>> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Ok(Some(-1)),
        Some(d) => Ok(Some(d.seconds.saturating_add(i64::from(d.nanos > 0)))),
    }
}

/// An optional duration in `0..=max` (unset or 0: `default`).
fn bounded(field: &str, d: Option<&pbjson_types::Duration>, max: i64, default: i64) -> R<i64> {
    match secs(d)? {
        None | Some(0) => Ok(default),
        Some(s) if s < 0 => bad(field, "must not be negative"),
        Some(s) if s > max => bad(field, format!("{s} s is more than the limit of {max} s")),
        Some(s) => Ok(s),
    }
}

fn count(field: &str, n: u32) -> R<u32> {
    if n > MAX_COUNT {
        return bad(field, format!("{n} is more than the limit of {MAX_COUNT}"));
    }
    Ok(n)
}

fn cap(field: &str, n: u32) -> R<Option<u32>> {
    Ok(Some(count(field, n)?).filter(|&n| n > 0))
}

fn amount(field: &str, c: Option<&pb::Count>) -> R<Option<Amount>> {
    let Some(v) = c.and_then(|c| c.value) else {
        return Ok(None);
    };
    match v {
        pb::count::Value::Hosts(n) => Ok(Some(Amount::Hosts(count(&format!("{field}.hosts"), n)?))),
        pb::count::Value::Percent(p) if p == 0 || p > 100 => bad(
            format!("{field}.percent"),
            format!("{p} % is not a percentage of 1-100 (for none, write hosts: 0)"),
        ),
        pb::count::Value::Percent(p) => Ok(Some(Amount::Percent(p))),
    }
}

fn text(field: &str, s: &str, max: usize) -> R<()> {
    if s.len() > max {
        return bad(field, format!("is longer than {max} bytes"));
    }
    if s.contains('\0') {
        return bad(field, "must not contain NUL bytes");
    }
    Ok(())
}

fn expect_rule(field: &str, e: &pb::ExpectRule) -> R<()> {
    if e.path.is_empty() {
        return bad(format!("{field}.path"), "is required");
    }
    text(&format!("{field}.path"), &e.path, 1024)?;
    if !EXPECT_OPS.contains(&e.op.as_str()) {
        return bad(
            format!("{field}.op"),
            format!("{:?} is not one of {}", e.op, EXPECT_OPS.join(" ")),
        );
    }
    text(&format!("{field}.value"), &e.value, 4096)
}

fn steps(field: &str, list: &[pb::CampaignStep], required: bool) -> R<Vec<Step>> {
    if required && list.is_empty() {
        return bad(
            field,
            "needs at least one step (ssh, reboot or wait_report)",
        );
    }
    if list.len() > MAX_STEPS {
        return bad(
            field,
            format!("holds {} steps; the limit is {MAX_STEPS}", list.len()),
        );
    }
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        use pb::campaign_step::Action;
        let action = match &s.action {
            None => {
                return bad(
                    &f,
                    "has no step type: set one of ssh_command, reboot, wait_report",
                );
            }
            Some(Action::SshCommand(c)) => {
                if c.trim().is_empty() {
                    return bad(format!("{f}.ssh_command"), "is empty");
                }
                text(&format!("{f}.ssh_command"), c, MAX_COMMAND_BYTES)?;
                StepAction::Ssh(c.clone())
            }
            Some(Action::AnsiblePlaybook(_)) => {
                return bad(
                    format!("{f}.ansible_playbook"),
                    "ansible_playbook steps are not supported; use ssh_command",
                );
            }
            Some(Action::Reboot(true)) => StepAction::Reboot,
            Some(Action::Reboot(false)) => {
                return bad(
                    format!("{f}.reboot"),
                    "must be true (or leave the step out)",
                );
            }
            Some(Action::WaitReport(e)) => {
                expect_rule(&format!("{f}.wait_report"), e)?;
                StepAction::WaitReport(e.clone())
            }
        };
        let timeout = match secs(s.timeout.as_ref())? {
            None | Some(0) => return bad(format!("{f}.timeout"), "is required and must be > 0"),
            Some(t) if t < 0 => return bad(format!("{f}.timeout"), "must not be negative"),
            Some(t) if t > MAX_STEP_TIMEOUT_SECONDS => {
                return bad(
                    format!("{f}.timeout"),
                    format!("{t} s is more than the limit of {MAX_STEP_TIMEOUT_SECONDS} s (24 h)"),
                );
            }
            Some(t) => t,
        };
        let name = if s.name.is_empty() {
            format!("{}-{}", action.kind(), i + 1)
        } else {
            if s.name.len() > MAX_STEP_NAME || s.name.chars().any(char::is_control) {
                return bad(
                    format!("{f}.name"),
                    format!("must be 1-{MAX_STEP_NAME} bytes without control characters"),
                );
            }
            s.name.clone()
        };
        if !names.insert(name.clone()) {
            return bad(
                format!("{f}.name"),
                format!("{name:?} is used by an earlier step"),
            );
        }
        out.push(Step {
            name,
            action,
            timeout,
            idempotent: s.idempotent,
        });
    }
    Ok(out)
}

fn names(field: &str, list: &[String]) -> R<()> {
    if list.len() > MAX_NAMED {
        return bad(
            field,
            format!("holds {} entries; the limit is {MAX_NAMED}", list.len()),
        );
    }
    let mut seen = HashSet::new();
    for (i, n) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        validate_name(&f, n.strip_prefix("role:").unwrap_or(n))?;
        if !seen.insert(n) {
            return bad(f, format!("{n:?} is listed twice"));
        }
    }
    Ok(())
}

fn strategy(s: Option<&pb::CampaignStrategy>) -> R<Strategy> {
    let d = pb::CampaignStrategy::default();
    let s = s.unwrap_or(&d);
    let f = |x: &str| format!("strategy.{x}");
    names(&f("canary_hosts"), &s.canary_hosts)?;
    let canaries = match (s.canary_hosts.is_empty(), s.canary_count) {
        (true, 0) => Canaries::None,
        (false, 0) => Canaries::Named(s.canary_hosts.clone()),
        (true, n) => Canaries::Count(count(&f("canary_count"), n)?),
        (false, _) => {
            return bad(
                f("canary_count"),
                "set canary_hosts or canary_count, not both",
            );
        }
    };
    let tolerance = match pb::FailureTolerance::try_from(s.tolerance) {
        Ok(pb::FailureTolerance::ToleranceSoft) => Tolerance::Soft,
        Ok(_) => Tolerance::Strict,
        Err(_) => {
            return bad(
                f("tolerance"),
                format!("{} is not TOLERANCE_STRICT or TOLERANCE_SOFT", s.tolerance),
            );
        }
    };
    let soak_reports = match s.soak_reports {
        0 => MIN_SOAK_REPORTS,
        n if !(MIN_SOAK_REPORTS..=100).contains(&n) => {
            return bad(
                f("soak_reports"),
                format!("{n} is not in {MIN_SOAK_REPORTS}-100"),
            );
        }
        n => n,
    };
    let budget = match amount(&f("failure_threshold"), s.failure_threshold.as_ref())? {
        None => Amount::Hosts(0),
        Some(a) => a,
    };
    let batch = match amount(&f("batch_size"), s.batch_size.as_ref())? {
        Some(Amount::Hosts(0)) => {
            return bad(
                f("batch_size.hosts"),
                "must be at least 1 (or leave batch_size unset)",
            );
        }
        b => b,
    };
    Ok(Strategy {
        canaries,
        canary_soak: bounded(
            &f("canary_soak"),
            s.canary_soak.as_ref(),
            MAX_PAUSE_SECONDS,
            0,
        )?,
        canary_concurrency: count(&f("canary_concurrency"), s.canary_concurrency)?.max(1),
        soak_reports,
        batch,
        max_concurrency: count(&f("max_concurrency"), s.max_concurrency)?,
        budget,
        caps: Caps {
            rack: cap(&f("max_per_rack"), s.max_per_rack)?,
            switch: cap(&f("max_per_switch"), s.max_per_switch)?,
            role: cap(&f("max_per_role"), s.max_per_role)?,
            hypervisor: cap(&f("max_per_hypervisor"), s.max_per_hypervisor)?,
        },
        batch_pause: bounded(
            &f("batch_pause"),
            s.batch_pause.as_ref(),
            MAX_PAUSE_SECONDS,
            0,
        )?,
        tolerance,
    })
}

fn approval(a: Option<&pb::ApprovalPolicy>) -> R<ApprovalPolicy> {
    let d = pb::ApprovalPolicy::default();
    let a = a.unwrap_or(&d);
    names("approval.approvers", &a.approvers)?;
    let required = a.required.max(1);
    if required > MAX_REQUIRED_APPROVALS {
        return bad(
            "approval.required",
            format!("{required} is more than the limit of {MAX_REQUIRED_APPROVALS}"),
        );
    }
    let people = a
        .approvers
        .iter()
        .filter(|n| !n.starts_with("role:"))
        .count();
    if !a.approvers.is_empty() && people == a.approvers.len() && people < required as usize {
        return bad(
            "approval.required",
            format!("{required} approvals required but only {people} approvers are listed"),
        );
    }
    Ok(ApprovalPolicy {
        approvers: a.approvers.clone(),
        required,
        auto_promote: a.auto_after_clean_canary,
    })
}

impl TryFrom<&pb::CampaignSpec> for CampaignSpec {
    type Error = CampaignError;

    /// The field rules (everything but the window names, see [`CampaignSpec::parse`]).
    fn try_from(s: &pb::CampaignSpec) -> R<Self> {
        if s.selector.trim().is_empty() {
            return bad(
                "selector",
                "is required: a label selector choosing the target hosts",
            );
        }
        if s.selector.len() > MAX_SELECTOR_BYTES {
            return bad(
                "selector",
                format!("is longer than {MAX_SELECTOR_BYTES} bytes"),
            );
        }
        let selector = Selector::parse(&s.selector)
            .map_err(|e| CampaignError::invalid("selector", e.to_string()))?;
        text("description", &s.description, MAX_DESCRIPTION_BYTES)?;
        let desired = match &s.desired {
            Some(d) if *d != pb::DesiredState::default() => {
                validate_spec("desired", d)?;
                Some(d.clone())
            }
            _ => None,
        };
        if s.verify.len() > 256 {
            return bad(
                "verify",
                format!("holds {} rules; the limit is 256", s.verify.len()),
            );
        }
        for (i, e) in s.verify.iter().enumerate() {
            expect_rule(&format!("verify[{i}]"), e)?;
        }
        names("windows", &s.windows)?;
        if s.any_time && !s.windows.is_empty() {
            return bad("any_time", "cannot be set together with windows");
        }
        let deadline = match &s.deadline {
            Some(t) if t.seconds > 0 => Some(t.seconds),
            Some(t) if t.seconds < 0 => return bad("deadline", "must be after 1970"),
            _ => None,
        };
        Ok(Self {
            selector_text: s.selector.clone(),
            selector,
            desired,
            steps: steps("steps", &s.steps, true)?,
            verify: s.verify.clone(),
            rollback: steps("rollback", &s.rollback, false)?,
            strategy: strategy(s.strategy.as_ref())?,
            windows: s.windows.clone(),
            any_time: s.any_time,
            approval: approval(s.approval.as_ref())?,
            verify_timeout: bounded(
                "verify_timeout",
                s.verify_timeout.as_ref(),
                MAX_STEP_TIMEOUT_SECONDS,
                DEFAULT_VERIFY_TIMEOUT_SECONDS,
            )?,
            window_margin: bounded(
                "window_margin",
                s.window_margin.as_ref(),
                MAX_MARGIN_SECONDS,
                DEFAULT_MARGIN_SECONDS,
            )?,
            deadline,
        })
    }
}

impl CampaignSpec {
    /// Validates `s` fully: the field rules, then every named window must exist, be a
    /// maintenance window (not a freeze) and open within 30 days of `now`; a deadline must be
    /// in the future. `calendar` must cover at least `[now, now + 30 days)`.
    pub fn parse(s: &pb::CampaignSpec, calendar: &Calendar, now: i64) -> R<Self> {
        let spec = Self::try_from(s)?;
        for (i, name) in spec.windows.iter().enumerate() {
            let f = format!("windows[{i}]");
            match calendar.lookup(name, now, now + HORIZON_SECONDS) {
                WindowLookup::Unknown => return bad(f, format!("no window named {name:?}")),
                WindowLookup::Freeze => {
                    return bad(
                        f,
                        format!("{name:?} is a freeze; list maintenance windows here"),
                    );
                }
                WindowLookup::Never => {
                    return bad(f, format!("{name:?} does not open in the next 30 days"));
                }
                WindowLookup::Opens(_) => {}
            }
        }
        if let Some(d) = spec.deadline
            && d <= now
        {
            return bad("deadline", "is in the past");
        }
        Ok(spec)
    }
}
