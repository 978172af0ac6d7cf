//! The campaign-level gates of a round: which hosts may start now (`schedule::decide` over
//! the frozen plan) and the canary soak.

use super::*;

impl Engine {
    /// Soak, the scheduling decision, and what follows from it (starts, halt, completion,
    /// window pause and resume).
    pub(super) fn schedule(&mut self, name: &str) {
        let now = self.now();
        let state = self.runs[name].state.clone();
        let window_paused = matches!(
            state,
            CampaignState::Paused(PauseReason::WindowClosed { .. })
        );
        if !matches!(state, CampaignState::Running) && !window_paused {
            self.runs.get_mut(name).expect("exists").waiting = match &state {
                CampaignState::Halted(_) => "halted: no new host starts".into(),
                CampaignState::Paused(r) => pause_text(r),
                _ => String::new(),
            };
            return;
        }
        if self.parts.lease.token().is_none() {
            self.runs.get_mut(name).expect("exists").waiting =
                "the campaign lease is not held".into();
            return;
        }
        self.soak(name, now);
        if !matches!(
            self.runs[name].state,
            CampaignState::Running | CampaignState::Paused(PauseReason::WindowClosed { .. })
        ) {
            return;
        }
        let Ok(calendar) = self.calendar() else {
            return;
        };
        let labels = Arc::clone(&self.labels);
        let run = &self.runs[name];
        let (Some(spec), Some(plan)) = (run.spec.as_ref(), run.plan.as_ref()) else {
            return;
        };
        let records: Vec<HostRecord> = run
            .hosts
            .iter()
            .map(|h| HostRecord {
                state: h.state.clone(),
                finished_at: (h.data.finished_nanos > 0)
                    .then(|| h.data.finished_nanos.div_euclid(1_000_000_000)),
            })
            .collect();
        let lookup = |n: &str| labels.get(n);
        let d = schedule::decide(&Tick {
            spec,
            plan,
            hosts: &records,
            calendar: &calendar,
            labels: &lookup,
            promoted: run.data.promoted || !plan.waves.first().is_some_and(|w| w.canary),
            now,
        });
        let ctx = ChangeContext::default();
        let run = self.runs.get_mut(name).expect("exists");
        run.wave = d.wave;
        run.waiting = d.waiting.as_ref().map(waiting_text).unwrap_or_default();
        if let Some(halt) = d.halt {
            let _ = self.campaign_event(
                name,
                CampaignEvent::Halt(halt),
                SYSTEM,
                "campaign halt",
                &ctx,
            );
            return;
        }
        if d.complete {
            if window_paused {
                let _ = self.campaign_event(
                    name,
                    CampaignEvent::Resume(Resumer::Window),
                    SYSTEM,
                    "campaign resume",
                    &ctx,
                );
            }
            let _ = self.campaign_event(
                name,
                CampaignEvent::Complete,
                SYSTEM,
                "campaign complete",
                &ctx,
            );
            return;
        }
        for i in d.vanished {
            let _ = self.host_event(
                name,
                i,
                HostEvent::Skip {
                    reason: "the device no longer exists".into(),
                },
                SYSTEM,
                "device gone",
            );
        }
        if window_paused {
            if d.start.is_empty() {
                return;
            }
            let _ = self.campaign_event(
                name,
                CampaignEvent::Resume(Resumer::Window),
                SYSTEM,
                "campaign resume",
                &ctx,
            );
        }
        let any_active = self.runs[name].hosts.iter().any(|h| h.state.is_active());
        if let Some(Waiting::Window { until }) = d.waiting
            && d.start.is_empty()
            && !any_active
        {
            let _ = self.campaign_event(
                name,
                CampaignEvent::Pause(PauseReason::WindowClosed { until }),
                SYSTEM,
                "campaign pause",
                &ctx,
            );
            return;
        }
        for i in d.start {
            let host = self.runs[name]
                .plan
                .as_ref()
                .map(|p| p.hosts[i].name.clone())
                .unwrap_or_default();
            let health = self
                .parts
                .observer
                .observe(&host, &Expectations::default())
                .ok()
                .flatten()
                .map(|o| o.health)
                .unwrap_or_default();
            self.runs.get_mut(name).expect("exists").hosts[i]
                .data
                .health_before = health;
            let _ = self.host_event(name, i, HostEvent::Start, SYSTEM, "started");
        }
    }

    /// After clean canaries: collect soak reports and judge; promote, pause or halt.
    pub(super) fn soak(&mut self, name: &str, now: i64) {
        let run = &self.runs[name];
        let (Some(spec), Some(plan)) = (run.spec.as_ref(), run.plan.as_ref()) else {
            return;
        };
        let Some(w0) = plan.waves.first().filter(|w| w.canary) else {
            return;
        };
        if run.data.promoted {
            return;
        }
        let all_ok = w0
            .hosts
            .clone()
            .all(|i| run.hosts[i].state == HostState::Succeeded);
        if !all_ok {
            return;
        }
        let (soak_s, min_reports, auto) = (
            spec.strategy.canary_soak,
            spec.strategy.soak_reports,
            spec.approval.auto_promote,
        );
        let expect = run.expect.clone();
        let observer = Arc::clone(&self.parts.observer);
        let run = self.runs.get_mut(name).expect("exists");
        let mut changed = false;
        for s in run.data.soak.iter_mut() {
            if let Ok(Some(o)) = observer.observe(&s.host, &expect) {
                let at = o.report_nanos.div_euclid(1_000_000_000);
                let last = s.reports.last().map(|r| r.0).unwrap_or(s.verified_at);
                if o.report_nanos > 0 && at > last {
                    s.reports.push((
                        at,
                        o.boot_id,
                        o.health_reasons.into_iter().collect(),
                        o.drift.into_iter().collect(),
                        o.unmet.is_empty(),
                    ));
                    changed = true;
                }
            }
        }
        let canaries: Vec<CanarySoak> = run
            .data
            .soak
            .iter()
            .map(|s| CanarySoak {
                host: s.host.clone(),
                verified_at: s.verified_at,
                baseline: Baseline {
                    boot_id: s.boot_id.clone(),
                    health_reasons: s.health_reasons.iter().cloned().collect(),
                    drift: s.drift.iter().cloned().collect(),
                },
                reports: s
                    .reports
                    .iter()
                    .map(|r| SoakReport {
                        at: r.0,
                        boot_id: r.1.clone(),
                        health_reasons: r.2.iter().cloned().collect::<BTreeSet<_>>(),
                        drift: r.3.iter().cloned().collect(),
                        verify_ok: r.4,
                    })
                    .collect(),
            })
            .collect();
        let grace = soak_s.max(600);
        let ctx = ChangeContext::default();
        match soak::verdict(&canaries, soak_s, min_reports, grace, now) {
            SoakVerdict::Passed if auto => {
                run.data.promoted = true;
                run.data.promoted_by = SYSTEM.into();
                self.queue_resource(name, SYSTEM, "campaign promote", &ctx);
            }
            SoakVerdict::Passed => {
                let _ = self.campaign_event(
                    name,
                    CampaignEvent::Pause(PauseReason::AwaitingPromotion),
                    SYSTEM,
                    "campaign pause",
                    &ctx,
                );
            }
            SoakVerdict::Dirty { host, why } => {
                let _ = self.campaign_event(
                    name,
                    CampaignEvent::Halt(state::HaltReason::DirtySoak { host, why }),
                    SYSTEM,
                    "campaign halt",
                    &ctx,
                );
            }
            SoakVerdict::Waiting { why, .. } => {
                run.waiting = why;
                if changed {
                    // Soak evidence is durable with the campaign record at the next write;
                    // a restart re-collects reports newer than the last one kept.
                    run.changed = true;
                }
            }
        }
    }
}
