//! Reports: built on the delta chain within the server's size limit, spooled durably, sent in
//! order; a refusal, resync or "send full" answer rebuilds the spooled tail as one full report
//! carrying all its SEL events (never dropped).

use std::time::Duration;

use muster::pb;

use super::state::save_state;
use super::{AGENT_VERSION, Agent, AgentError, Collected, MAX_ENCODED_REPORT};
use crate::fit;
use crate::spool::SpoolError;

impl Agent {
    pub(super) fn learn_limit(&mut self, max_report_bytes: u64) {
        if let Ok(n) = usize::try_from(max_report_bytes)
            && n > 0
        {
            // Never above what this agent's own client encodes.
            self.limit = n.min(MAX_ENCODED_REPORT);
        }
    }

    /// Builds the report for `facts` on `template` (sequence, SEL, collectors), advancing the
    /// chain. Sections that would take it past the server's limit are left out (see `fit`)
    /// and their collectors marked failed; after a refusal (`refusals > 1`) all bulky ones are.
    fn build(
        &mut self,
        facts: &pb::Facts,
        full: bool,
        template: pb::ReportRequest,
    ) -> pb::ReportRequest {
        let mut trial_chain = self.state.chain.clone();
        let (base, delta, hash) = trial_chain.advance(facts, full);
        let mut report = pb::ReportRequest {
            base_hash: base,
            facts_hash: hash,
            facts: Some(delta),
            ..template
        };
        let dropped = fit::plan(&report, self.limit, self.refusals > 1);
        if dropped.is_empty() {
            self.state.chain = trial_chain;
            return report;
        }
        let skip: Vec<muster::facts::Section> = dropped.iter().map(|d| d.section).collect();
        let (base, delta, hash) = self.state.chain.advance_except(facts, full, &skip);
        report.base_hash = base;
        report.facts_hash = hash;
        report.facts = Some(delta);
        fit::mark(&mut report.collectors, &dropped, self.limit);
        tracing::warn!(
            seq = report.seq,
            sections = ?skip.iter().map(|s| s.number()).collect::<Vec<_>>(),
            limit = self.limit,
            "report would exceed the server's limit; left out its largest sections"
        );
        report
    }

    /// Collects once and spools the report (durably, before anything is sent).
    pub async fn collect_and_spool(&mut self) -> Result<Collected, AgentError> {
        let c = self.collectors.collect().await;
        let full = self.need_full;
        self.state.seq = self.state.seq.saturating_add(1);
        let template = pb::ReportRequest {
            device: self.device.clone(),
            boot_id: c.boot_id.clone(),
            seq: self.state.seq,
            agent_version: AGENT_VERSION.into(),
            collected_at: Some(super::timestamp(&self.clock)),
            sel: c.sel.clone(),
            sel_reset: c.sel_reset,
            collectors: c.collectors.clone(),
            ..Default::default()
        };
        self.last_collectors = c.collectors.clone();
        let report = self.build(&c.facts, full, template);
        self.spool.push(&report)?;
        self.need_full = false;
        self.state.sel_cursor = self.collectors.sel_spooled();
        save_state(&self.cfg, &self.state)?;
        Ok(c)
    }

    /// Sends spooled reports in order until the spool is empty or the server is unreachable.
    /// Returns whether everything was sent.
    pub async fn drain(&mut self) -> Result<bool, AgentError> {
        for seq in self.spool.sequences()? {
            let report = match self.spool.read(seq) {
                Ok(r) => r,
                Err(e @ SpoolError::Corrupt(_)) => {
                    tracing::error!(error = %e, "skipping a corrupt spooled report");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let sections: Vec<u8> = report
                .facts
                .as_ref()
                .map(|f| {
                    muster::facts::split(f)
                        .into_iter()
                        .map(|p| p.0.number())
                        .collect()
                })
                .unwrap_or_default();
            let bytes = prost::Message::encoded_len(&report);
            match self.client.report(report.clone()).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    tracing::info!(
                        seq,
                        bytes,
                        full = report.base_hash.is_empty(),
                        sections = ?sections,
                        sel = report.sel.len(),
                        applied = resp.applied,
                        "reported"
                    );
                    self.renewal.hint |= resp.renew_certificate;
                    self.learn_limit(resp.max_report_bytes);
                    if let Some(d) = resp.next_interval.filter(|d| d.seconds > 0 || d.nanos > 0) {
                        self.interval = Duration::new(
                            u64::try_from(d.seconds).unwrap_or(60),
                            u32::try_from(d.nanos).unwrap_or(0),
                        );
                    }
                    if resp.resync {
                        // The server holds a newer sequence than ours (state restored from an
                        // older copy): continue after it, with everything spooled as one full
                        // report.
                        tracing::warn!(
                            seq,
                            server_seq = resp.acked_seq,
                            "the server already holds a newer report sequence; continuing after it with a full report"
                        );
                        self.state.seq = self.state.seq.max(resp.acked_seq);
                        self.resend_full(report)?;
                        return Ok(false);
                    }
                    self.refusals = 0;
                    if resp.resend_full {
                        tracing::info!(seq, "the server holds other facts; sending a full report");
                        self.resend_full(report)?;
                        return Ok(false);
                    }
                    self.spool.remove(seq)?;
                }
                Err(status)
                    if fit::size_refusal(status.code(), status.message(), bytes, self.limit) =>
                {
                    // Never dropped: its SEL events go out again in a report rebuilt (full)
                    // to fit the limit, without the offending sections.
                    self.refusals = self.refusals.saturating_add(1);
                    tracing::warn!(seq, bytes, code = ?status.code(), error = %status.message(), "report refused; rebuilding it without its largest sections");
                    match fit::limit_in_message(status.message()) {
                        Some(n) => self.limit = n,
                        None => self.ask_limit().await,
                    }
                    self.resend_full(report)?;
                    return Ok(false);
                }
                Err(status) => {
                    tracing::warn!(seq, code = ?status.code(), error = %status.message(), "report not delivered; kept in the spool");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Replaces everything spooled from `first` on with one full report carrying all their
    /// SEL events: the delta chain they build on is not what the server holds.
    fn resend_full(&mut self, first: pb::ReportRequest) -> Result<(), AgentError> {
        let mut sel = Vec::new();
        let mut sel_reset = false;
        let mut last = first;
        let replaced = self.spool.sequences()?;
        for seq in &replaced {
            let r = match self.spool.read(*seq) {
                Ok(r) => r,
                Err(SpoolError::Corrupt(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if r.sel_reset {
                sel.clear();
                sel_reset = true;
            }
            sel.extend(r.sel.iter().cloned());
            last = r;
        }
        self.state.seq = self.state.seq.saturating_add(1);
        if !self.last_collectors.is_empty() {
            last.collectors = self.last_collectors.clone();
        }
        let template = pb::ReportRequest {
            seq: self.state.seq,
            sel,
            sel_reset,
            collected_at: Some(super::timestamp(&self.clock)),
            ..last
        };
        let current = self.collectors.current.clone();
        let full = self.build(&current, true, template);
        // The replacement is durable before what it replaces goes: a crash in between sends
        // some SEL events twice (the server skips the ones it has), never loses one.
        self.spool.push(&full)?;
        save_state(&self.cfg, &self.state)?;
        for seq in replaced {
            self.spool.remove(seq)?;
        }
        Ok(())
    }

    /// Asks the server for its report limit (a refusal did not name it).
    async fn ask_limit(&mut self) {
        let req = pb::HeartbeatRequest {
            device: self.device.clone(),
            boot_id: String::new(),
        };
        match self.client.heartbeat(req).await {
            Ok(r) => self.learn_limit(r.get_ref().max_report_bytes),
            Err(status) => {
                tracing::warn!(code = ?status.code(), error = %status.message(), "heartbeat failed; keeping the report limit assumed so far");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use muster::clock::{ManualClock, SharedClock};

    use super::*;
    use crate::config::AgentConfig;

    /// An agent enrolled as `dev-1` whose server is a closed loopback port: everything up to
    /// the send is real (collectors, chain, spool, state file), the send fails.
    fn offline_agent(dir: &std::path::Path, clock: SharedClock) -> Agent {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        std::fs::write(dir.join("device"), "dev-1\n").unwrap();
        // Plain http:// presents no certificate; the file only marks the host as enrolled.
        std::fs::write(dir.join("agent.pem"), "").unwrap();
        let cfg = AgentConfig {
            server: format!("http://127.0.0.1:{port}"),
            state_dir: dir.to_path_buf(),
            packages: false,
            smart: false,
            ..AgentConfig::default()
        };
        Agent::open(cfg, clock).unwrap()
    }

    #[tokio::test]
    async fn reports_are_spooled_stamped_and_kept_while_the_server_is_away() {
        let dir = tempfile::tempdir().unwrap();
        let manual = ManualClock::at_unix_nanos(1_800_000_000_000_000_000);
        let mut agent = offline_agent(dir.path(), manual.clone());
        agent.collect_and_spool().await.unwrap();
        manual.advance(Duration::from_secs(60));
        agent.collect_and_spool().await.unwrap();

        assert_eq!(agent.spool.sequences().unwrap(), [1, 2]);
        let first = agent.spool.read(1).unwrap();
        let second = agent.spool.read(2).unwrap();
        assert_eq!(first.device, "dev-1");
        // The first report after start is full; the next builds on it.
        assert!(first.base_hash.is_empty());
        assert_eq!(second.base_hash, first.facts_hash);
        assert_eq!(first.collected_at.map(|t| t.seconds), Some(1_800_000_000));
        assert_eq!(second.collected_at.map(|t| t.seconds), Some(1_800_000_060));

        // Nothing listens: not delivered, nothing lost.
        assert!(!agent.drain().await.unwrap());
        assert_eq!(agent.spool.sequences().unwrap(), [1, 2]);
        // The sequence survives a restart (state file plus spool).
        drop(agent);
        let again = offline_agent(dir.path(), manual.clone());
        assert_eq!(again.state.seq, 2);
    }

    #[test]
    fn the_servers_limit_is_learned_but_never_above_the_clients() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The lazy channel needs a runtime to exist in.
        let _guard = rt.enter();
        let mut agent = offline_agent(dir.path(), muster::clock::system());
        assert_eq!(agent.limit, super::super::DEFAULT_LIMIT);
        agent.learn_limit(1_000_000);
        assert_eq!(agent.limit, 1_000_000);
        agent.learn_limit(0); // "not said": keep what we have
        assert_eq!(agent.limit, 1_000_000);
        agent.learn_limit(u64::MAX);
        assert_eq!(agent.limit, MAX_ENCODED_REPORT);
    }
}
