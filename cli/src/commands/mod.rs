//! One module per subcommand; `run` connects (when the command needs the server) and dispatches.

use anyhow::Result;
use clap::CommandFactory;

use crate::args::{AdminCommand, Cli, Command};
use crate::client::Clients;
use crate::config::{self, Sources};
use crate::output;

mod admin;
mod agent;
mod apply;
mod audit;
mod campaign;
mod delete;
mod describe;
mod drift;
mod get;
mod plan;
mod token;
mod watch;
mod whoami;
mod window;

/// Fetches one resource by kind and name (get and describe).
async fn fetch(
    clients: &Clients,
    kind: crate::kinds::Kind,
    name: &str,
) -> Result<muster::pb::Resource> {
    let request = clients.request(muster::pb::GetRequest {
        kind: kind.to_pb() as i32,
        name: name.to_string(),
    });
    clients.unary(clients.inventory.clone().get(request)).await
}

/// Runs the parsed command line.
pub async fn run(cli: Cli, sources: Sources) -> Result<()> {
    match &cli.command {
        Command::Completion { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "muster", &mut buf);
            return output::print(&String::from_utf8_lossy(&buf));
        }
        Command::Version => {
            return output::println(&format!("muster {}", env!("CARGO_PKG_VERSION")));
        }
        _ => {}
    }
    // Parse manifests before connecting: a bad file fails fast, even with no server.
    let manifest = match &cli.command {
        Command::Apply(args) => Some(apply::load(args)?),
        Command::Plan(args) => Some(apply::load_file(&args.file)?),
        _ => None,
    };
    let campaigns = match &cli.command {
        Command::Campaign { command } => campaign::preload(command)?,
        _ => campaign::Loaded::default(),
    };
    let settings = config::resolve(&cli.global, sources)?;
    let clients = Clients::connect(&settings).await?;
    match cli.command {
        Command::Get(args) => get::run(&clients, args).await,
        Command::Describe(args) => describe::run(&clients, args).await,
        Command::Apply(args) => apply::run(&clients, args, manifest.unwrap_or_default()).await,
        Command::Plan(args) => plan::run(&clients, args, manifest.unwrap_or_default()).await,
        Command::Drift(args) => drift::run(&clients, args).await,
        Command::Delete(args) => delete::run(&clients, args).await,
        Command::Watch(args) => watch::run(&clients, args).await,
        Command::Audit(args) => audit::run(&clients, args).await,
        Command::Admin {
            command:
                AdminCommand::Backup {
                    to,
                    passphrase_file,
                },
        } => admin::backup(&clients, &to, passphrase_file.as_deref()).await,
        Command::Whoami => whoami::run(&clients).await,
        Command::Campaign { command } => campaign::run(&clients, command, campaigns).await,
        Command::Window { command } => window::run(&clients, command).await,
        Command::Agent { command } => agent::run(&clients, command).await,
        Command::Token { command } => token::run(&clients, command).await,
        Command::Completion { .. } | Command::Version => Ok(()),
    }
}

/// Checks a label selector locally so typos fail before a round trip.
pub(crate) fn check_selector(selector: Option<&str>) -> Result<String> {
    match selector {
        Some(s) if !s.trim().is_empty() => {
            muster::selector::Selector::parse(s)?;
            Ok(s.to_string())
        }
        _ => Ok(String::new()),
    }
}

/// Checks a field selector locally.
pub(crate) fn check_field_selector(selector: Option<&str>) -> Result<String> {
    match selector {
        Some(s) if !s.trim().is_empty() => {
            muster::selector::Selector::parse_fields(s)?;
            Ok(s.to_string())
        }
        _ => Ok(String::new()),
    }
}

/// The audit-trail context every write carries.
pub(crate) fn change_context(args: &crate::args::ChangeArgs) -> muster::pb::ChangeContext {
    muster::pb::ChangeContext {
        reason: args.reason.clone().unwrap_or_default(),
        ticket: args.ticket.clone().unwrap_or_default(),
        origin: "cli".to_string(),
    }
}
