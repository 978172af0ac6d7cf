//! `muster campaign watch NAME`: follows `CampaignService.Watch` until the campaign completes
//! or is aborted. On a terminal the frame (`progress::frame`) is redrawn in place on every
//! message and once a second (the window countdown); otherwise one line per message. A broken
//! stream is reopened after a fresh Get, so nothing is shown from a stale view.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Result, bail};
use muster::pb;
use tonic::Code;

use super::progress::{self, Progress};
use super::table;
use crate::client::Clients;
use crate::errors::RpcError;
use crate::output::{self, StreamFormat};
use crate::safe;

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How messages reach the screen.
enum Sink {
    /// Redrawn in place; `lines` is the height of the frame on screen.
    Live { term: console::Term, lines: usize },
    /// One line per message.
    Plain,
    /// Every message as JSON or YAML.
    Encoded(StreamFormat),
}

impl Sink {
    fn show(
        &mut self,
        p: &Progress,
        m: Option<&pb::CampaignProgress>,
        clients: &Clients,
    ) -> Result<()> {
        match self {
            Sink::Live { term, lines } => {
                let width = usize::from(term.size().1);
                let frame = progress::frame(p, clients.now(), width);
                let mut text = String::new();
                if *lines > 0 {
                    // Back to the frame's first line, and clear from there down.
                    text.push_str(&format!("\r\u{1b}[{}A\u{1b}[J", *lines));
                }
                text.push_str(&frame);
                *lines = frame.lines().count();
                output::print(&text)
            }
            Sink::Plain => match m {
                Some(m) => output::print(&progress::plain_line(p, m)),
                None => Ok(()),
            },
            Sink::Encoded(format) => match m {
                Some(m) if *format == StreamFormat::Json => {
                    let line = serde_json::to_string(m)?;
                    output::println(&safe::json(&line))
                }
                Some(m) => output::print(&format!("---\n{}", table::yaml(m)?)),
                None => Ok(()),
            },
        }
    }
}

/// Follows the campaign; exits 0 when it completes, 1 when it is aborted.
pub async fn run(clients: &Clients, name: &str, format: StreamFormat) -> Result<()> {
    let mut sink = match format {
        StreamFormat::Table if std::io::stdout().is_terminal() => Sink::Live {
            term: console::Term::stdout(),
            lines: 0,
        },
        StreamFormat::Table => Sink::Plain,
        other => Sink::Encoded(other),
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        let request = pb::GetCampaignRequest {
            name: name.to_string(),
            summary_only: false,
        };
        let mut view = match clients
            .unary(clients.campaign.clone().get(clients.request(request)))
            .await
        {
            Ok(r) => Progress::from_response(&r),
            Err(e) if retryable_error(&e) => {
                eprintln!("watch: {}; retrying", safe::line(&e.to_string()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => return Err(e),
        };
        let reason = follow(clients, name, &mut view, &mut sink, &mut backoff).await?;
        match reason {
            Ended::Terminal => return finish(&view),
            Ended::Broken(why) => {
                view.note = format!("reconnecting after {why}");
                if matches!(sink, Sink::Live { .. }) {
                    sink.show(&view, None, clients)?;
                } else {
                    eprintln!("watch: reconnecting after {}", safe::line(&why));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

enum Ended {
    Terminal,
    Broken(String),
}

/// Reads one stream until the campaign is over or the stream breaks.
async fn follow(
    clients: &Clients,
    name: &str,
    view: &mut Progress,
    sink: &mut Sink,
    backoff: &mut Duration,
) -> Result<Ended> {
    let request = pb::WatchCampaignRequest {
        name: name.to_string(),
    };
    let mut stream = match clients.campaign.clone().watch(request).await {
        Ok(r) => r.into_inner(),
        Err(status) if retryable(&status) => {
            return Ok(Ended::Broken(RpcError(status).to_string()));
        }
        Err(status) => return Err(RpcError(status).into()),
    };
    view.note.clear();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut first = true;
    loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(m)) => {
                    *backoff = MIN_BACKOFF;
                    // A later summary-only message is a resynchronisation after the server
                    // dropped transitions: per-host state is refetched.
                    if !first && m.transition.is_none() {
                        let request = pb::GetCampaignRequest { name: name.to_string(), summary_only: false };
                        if let Ok(r) = clients.unary(clients.campaign.clone().get(clients.request(request))).await {
                            *view = Progress::from_response(&r);
                        }
                    }
                    first = false;
                    view.apply(&m);
                    sink.show(view, Some(&m), clients)?;
                    if progress::is_terminal(view.summary.state) {
                        return Ok(Ended::Terminal);
                    }
                }
                Ok(None) if progress::is_terminal(view.summary.state) => return Ok(Ended::Terminal),
                Ok(None) => return Ok(Ended::Broken("end of stream".to_string())),
                Err(status) if retryable(&status) => return Ok(Ended::Broken(RpcError(status).to_string())),
                Err(status) => return Err(RpcError(status).into()),
            },
            _ = tick.tick(), if matches!(sink, Sink::Live { .. }) => sink.show(view, None, clients)?,
        }
    }
}

/// Exit status: 0 for a completed campaign, an error line for an aborted one.
fn finish(view: &Progress) -> Result<()> {
    let s = &view.summary;
    if s.state == pb::CampaignState::Aborted as i32 {
        let mut why = String::new();
        if !s.message.is_empty() {
            why = format!(": {}", safe::line(&s.message));
        }
        bail!("campaign {} was aborted{why}", safe::line(&s.name));
    }
    Ok(())
}

/// As `muster watch`: UNAVAILABLE, or a status the client made from a broken connection.
fn retryable(status: &tonic::Status) -> bool {
    status.code() == Code::Unavailable || std::error::Error::source(status).is_some()
}

fn retryable_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<RpcError>()
        .is_some_and(|r| retryable(&r.0) || r.code() == Code::DeadlineExceeded)
}
