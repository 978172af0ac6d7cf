//! `muster token`: create (printed once), list and revoke API tokens.

use anyhow::{Context, Result};
use muster::pb;

use crate::args::TokenCommand;
use crate::client::Clients;
use crate::output::{self, Format};

/// Runs one `muster token` subcommand.
pub async fn run(clients: &Clients, command: TokenCommand) -> Result<()> {
    let admin = || clients.admin.clone();
    match command {
        TokenCommand::Create {
            name,
            role,
            ttl,
            selector,
            change,
        } => {
            let selector = super::check_selector(selector.as_deref())?;
            let ctx = super::change_context(&change);
            let r = clients
                .unary(
                    admin().create_token(clients.request(pb::CreateTokenRequest {
                        name: name.clone(),
                        role,
                        ttl: ttl.map(|d| pbjson_types::Duration {
                            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                            nanos: 0,
                        }),
                        selector,
                        reason: ctx.reason,
                        ticket: ctx.ticket,
                    })),
                )
                .await?;
            let info = r.info.unwrap_or_default();
            let scope = if info.selector.is_empty() {
                "unscoped".to_string()
            } else {
                format!("scope {}", info.selector)
            };
            // The token alone on stdout, so `TOKEN=$(muster token create ...)` works; it is
            // shown this once and cannot be read back.
            eprintln!(
                "token {name} (role {}, {scope}, expires {}); shown once, store it now:",
                info.role,
                expiry(&info)
            );
            output::println(&r.token)
        }
        TokenCommand::List { output: format } => {
            let r = clients
                .unary(admin().list_tokens(clients.request(pb::ListTokensRequest {})))
                .await?;
            match format {
                Format::Json => output::println(
                    &serde_json::to_string_pretty(&r.tokens).context("cannot encode JSON")?,
                ),
                Format::Yaml => output::print(
                    &serde_yaml_ng::to_string(&r.tokens).context("cannot encode YAML")?,
                ),
                _ => {
                    let mut t = output::new_table([
                        "NAME",
                        "ROLE",
                        "SCOPE",
                        "SOURCE",
                        "CREATED",
                        "EXPIRES",
                        "LAST USED",
                    ]);
                    for i in &r.tokens {
                        t.add_row([
                            output::cell(&i.name),
                            output::cell(&i.role),
                            output::cell(if i.selector.is_empty() {
                                "-"
                            } else {
                                &i.selector
                            }),
                            output::cell(&i.source),
                            output::format_time(i.created_at.as_ref()),
                            expiry(i),
                            output::format_time(i.last_used_at.as_ref()),
                        ]);
                    }
                    output::print(&output::table_to_string(&t))
                }
            }
        }
        TokenCommand::Revoke { name, change } => {
            let ctx = super::change_context(&change);
            clients
                .unary(
                    admin().revoke_token(clients.request(pb::RevokeTokenRequest {
                        name: name.clone(),
                        reason: ctx.reason,
                        ticket: ctx.ticket,
                    })),
                )
                .await?;
            output::println(&format!("revoked token {name}"))
        }
    }
}

/// When a token expires: `never`, the time, or the time and `(expired)`.
fn expiry(i: &pb::TokenInfo) -> String {
    match (&i.expires_at, i.expired) {
        (None, _) => "never".into(),
        (Some(t), false) => output::format_time(Some(t)),
        (Some(t), true) => format!("{} (expired)", output::format_time(Some(t))),
    }
}
