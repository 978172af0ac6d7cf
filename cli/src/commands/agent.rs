//! `muster agent`: enrollment tokens, approvals of re-keyed hosts, and the list of identities.

use anyhow::{Context, Result};
use muster::pb;

use crate::args::{AgentCommand, AgentTokenCommand};
use crate::client::Clients;
use crate::output::{self, Format};

/// Runs one `muster agent` subcommand.
pub async fn run(clients: &Clients, command: AgentCommand) -> Result<()> {
    let agent = || clients.agent.clone();
    match command {
        AgentCommand::Token {
            command:
                AgentTokenCommand::Create {
                    device,
                    ttl,
                    change,
                },
        } => {
            let ctx = super::change_context(&change);
            let r = clients
                .unary(agent().create_enrollment_token(clients.request(
                    pb::CreateEnrollmentTokenRequest {
                        device: device.clone(),
                        ttl: Some(pbjson_types::Duration {
                            seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                            nanos: 0,
                        }),
                        reason: ctx.reason,
                        ticket: ctx.ticket,
                    },
                )))
                .await?;
            let expires = output::format_time(r.expires_at.as_ref());
            // The token on stdout alone, so `TOKEN=$(muster agent token create web-01)` works.
            eprintln!("enrollment token for device {device} (one use, expires {expires}):");
            output::println(&r.token)
        }
        AgentCommand::Approve { device, change } => {
            let ctx = super::change_context(&change);
            let r = clients
                .unary(
                    agent().approve_enrollment(clients.request(pb::ApproveEnrollmentRequest {
                        device: device.clone(),
                        reason: ctx.reason,
                        ticket: ctx.ticket,
                    })),
                )
                .await?;
            output::println(&format!(
                "approved the held enrollment of device {device} (key sha256 {}); the agent collects its identity at its next try",
                r.key_fingerprint
            ))
        }
        AgentCommand::List { output: format } => {
            let r = clients
                .unary(agent().list_enrollments(clients.request(pb::ListEnrollmentsRequest {})))
                .await?;
            match format {
                Format::Json => output::println(
                    &serde_json::to_string_pretty(&r.enrollments).context("cannot encode JSON")?,
                ),
                Format::Yaml => output::print(
                    &serde_yaml_ng::to_string(&r.enrollments).context("cannot encode YAML")?,
                ),
                _ => {
                    let mut t =
                        output::new_table(["DEVICE", "STATE", "HOST", "SINCE", "FINGERPRINT"]);
                    for e in &r.enrollments {
                        t.add_row([
                            output::cell(&e.device),
                            output::cell(&e.state),
                            output::cell(&e.hostname),
                            output::format_time(e.since.as_ref()),
                            output::cell(&e.fingerprint.chars().take(16).collect::<String>()),
                        ]);
                    }
                    output::print(&output::table_to_string(&t))
                }
            }
        }
    }
}
