//! The command line: global connection options and every subcommand (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

use crate::kinds::Kind;
use crate::output::{Format, StreamFormat};

mod campaign;
pub use campaign::{
    CampaignAction, CampaignCommand, HostAction, HostCommand, ReportFormat, WindowCommand,
};

/// muster: inspect and change the fleet inventory.
#[derive(Debug, Parser)]
#[command(name = "muster", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the server is and how to authenticate; accepted before or after the subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Server URL; `https://` uses TLS [default: http://127.0.0.1:7070].
    #[arg(long, env = "MUSTER_SERVER", global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token.
    #[arg(long, env = "MUSTER_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "MUSTER_TOKEN_FILE", global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for an https server.
    #[arg(long, env = "MUSTER_CA_CERT", global = true, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// TOML config file with `server`, `token`, `token_file`, `ca_cert`
    /// [default: $XDG_CONFIG_HOME/muster/config.toml or ~/.config/muster/config.toml].
    #[arg(long, env = "MUSTER_CONFIG", global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Timeout of each request (e.g. 30s, 2m).
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Allow plaintext http:// to a non-loopback server: the token then travels unencrypted.
    #[arg(long, env = "MUSTER_INSECURE", global = true)]
    pub insecure: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List resources, or show one.
    Get(GetArgs),
    /// Show one resource in detail, with its recent changes.
    Describe(DescribeArgs),
    /// Create or update resources from a manifest file, atomically (all or nothing).
    ///
    /// The whole file is written as one change set: every resource or none. A file too large
    /// for one request (over 3.5 MiB encoded) is refused; split it, or pass --bulk (resource by
    /// resource, not atomic).
    Apply(ApplyArgs),
    /// Show what applying a manifest would change per device, and the drift after it.
    Plan(PlanArgs),
    /// Where devices differ from their desired state; `drift accept` adopts an observed value.
    Drift(DriftArgs),
    /// Delete a resource.
    Delete(DeleteArgs),
    /// Stream changes as they happen.
    Watch(WatchArgs),
    /// Search the audit trail; `audit verify` checks its hash chain.
    Audit(AuditArgs),
    /// Patch campaigns: create, plan, approve, run, watch and report staged rollouts.
    Campaign {
        #[command(subcommand)]
        command: CampaignCommand,
    },
    /// Maintenance windows and freezes: which are open, and when a device may next be changed.
    Window {
        #[command(subcommand)]
        command: WindowCommand,
    },
    /// Agent enrollment: tokens, approvals, identities.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// API tokens: create (printed once), list, revoke (admin token).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Server administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Show who the server thinks you are.
    Whoami,
    /// Print a shell completion script.
    Completion {
        /// Target shell.
        shell: Shell,
    },
    /// Print the version.
    Version,
}

/// `muster get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// site, rack, device (dev), profile, window, credential (cred); plurals work too.
    pub kind: Kind,
    /// Show only this resource.
    pub name: Option<String>,
    /// Label selector, e.g. `role=db,site in (fra1,ams1),!retired`.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Field selector on indexed fields, e.g. `site=fra1,lifecycle!=DECOMMISSIONED`.
    #[arg(long, value_name = "SELECTOR")]
    pub field_selector: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Stop after this many resources.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Devices only: those with this health (ok, warning, critical, unknown).
    #[arg(long, value_name = "HEALTH")]
    pub health: Option<String>,
}

/// `muster agent ...`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// One-time enrollment tokens.
    Token {
        #[command(subcommand)]
        command: AgentTokenCommand,
    },
    /// Let a held re-enrollment take over a device's identity (the old one is revoked).
    Approve {
        /// Device name.
        device: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Enrolled identities and enrollments waiting for approval.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// `muster agent token ...`.
#[derive(Debug, Subcommand)]
pub enum AgentTokenCommand {
    /// Create a one-time token that lets DEVICE's agent enroll; printed once.
    Create {
        /// Device name.
        device: String,
        /// How long the token is valid (e.g. 1h, 30m; at most 7 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

/// `muster token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; it is printed once on stdout and only its hash is kept.
    Create {
        /// Token name (unique; recorded as the author of changes made with it).
        name: String,
        /// viewer, operator, approver or admin.
        #[arg(long)]
        role: String,
        /// Lifetime, e.g. 90d, 12h, 30s (at most 730d); without it the token does not expire.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Operator tokens only: write only devices/credentials matching this label selector
        /// and profiles whose selector includes it, e.g. `team=pay`.
        #[arg(long, value_name = "SELECTOR")]
        selector: Option<String>,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Every token the server accepts: name, role, scope, created, expires, last used.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Revoke a token (effective on its next request); config-file tokens are removed from
    /// the config instead.
    Revoke {
        /// Token name.
        name: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

/// `muster describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Resource kind.
    pub kind: Kind,
    /// Resource name.
    pub name: String,
}

/// Why a change is made; recorded in the audit trail.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// Why this change is made (recorded in the audit trail).
    #[arg(long)]
    pub reason: Option<String>,
    /// Ticket reference (recorded in the audit trail).
    #[arg(long, value_name = "ID")]
    pub ticket: Option<String>,
}

/// `muster apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// YAML or JSON manifest file, `-` for standard input.
    #[arg(
        short = 'f',
        long = "filename",
        visible_alias = "file",
        value_name = "FILE"
    )]
    pub file: PathBuf,
    #[command(flatten)]
    pub change: ChangeArgs,
    /// Validate and report what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Send one request per resource, in dependency order, with a progress bar: for files too
    /// large for one atomic apply. NOT atomic: a failure leaves the resources before it applied.
    #[arg(long)]
    pub bulk: bool,
    /// With --bulk: requests in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
}

/// `muster plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// YAML or JSON manifest file, `-` for standard input.
    #[arg(
        short = 'f',
        long = "filename",
        visible_alias = "file",
        value_name = "FILE"
    )]
    pub file: PathBuf,
    /// Also list devices whose desired state does not change (with their drift).
    #[arg(long)]
    pub include_unchanged: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = StreamFormat::Table)]
    pub output: StreamFormat,
}

/// `muster drift`: lists drift, or (`drift accept`) adopts an observed value.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DriftArgs {
    #[command(subcommand)]
    pub command: Option<DriftCommand>,
    #[command(flatten)]
    pub list: DriftListArgs,
}

/// `muster drift` without a subcommand.
#[derive(Debug, Args)]
pub struct DriftListArgs {
    /// Label selector choosing the devices, e.g. `role=db`.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Only fields starting with this, e.g. `packages.` or `sysctl.`.
    #[arg(long = "field", value_name = "PREFIX")]
    pub field: Option<String>,
    /// Only the summary by field, without the per-device items.
    #[arg(long)]
    pub summary: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = StreamFormat::Table)]
    pub output: StreamFormat,
}

/// `muster drift ...`.
#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// Adopt a device's observed value of FIELD as its desired value (recorded as a change).
    Accept {
        /// Device name.
        device: String,
        /// Drifting field, as `muster drift` shows it, e.g. `packages.openssl`.
        field: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

/// `muster audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the audit trail's hash chain and report the first broken link. Checks only
    /// what was appended since the server last found it intact, unless --full.
    Verify {
        /// Re-verify the whole chain (admin only; reads the whole log).
        #[arg(long)]
        full: bool,
    },
}

/// `muster delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Resource kind.
    pub kind: Kind,
    /// Resource name.
    pub name: String,
    #[command(flatten)]
    pub change: ChangeArgs,
    /// Delete only if the resource is still at this revision.
    #[arg(long, value_name = "N")]
    pub expected_revision: Option<u64>,
}

/// What `watch` follows: one kind or everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchTarget {
    /// Every kind.
    All,
    /// One kind.
    Kind(Kind),
}

impl std::str::FromStr for WatchTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("all") {
            Ok(WatchTarget::All)
        } else {
            s.parse().map(WatchTarget::Kind)
        }
    }
}

/// `muster watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Resource kind, or `all`.
    pub target: WatchTarget,
    /// Label selector.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Start after this revision (default: from now).
    #[arg(long, value_name = "REV")]
    pub since: Option<u64>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = StreamFormat::Table)]
    pub output: StreamFormat,
    /// Exit after printing this many events.
    #[arg(long, value_name = "N")]
    pub once: Option<u64>,
}

/// `muster audit`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only changes to this resource, e.g. `device/web-01`.
    #[arg(short = 'r', long = "resource", value_name = "KIND/NAME")]
    pub resource: Option<String>,
    /// Only changes by this principal.
    #[arg(long)]
    pub principal: Option<String>,
    /// Only changes at or after this time: a duration ago (`24h`) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only changes before this time: a duration ago or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Include refused (rejected and denied) attempts.
    #[arg(long)]
    pub refused: bool,
    /// Stop after this many entries.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Under each entry, what it changed: a field-level diff of the resource before and after.
    #[arg(long)]
    pub diff: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = StreamFormat::Table)]
    pub output: StreamFormat,
}

/// `muster admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Stream a consistent snapshot of the server's store to a file.
    Backup {
        /// File to create (must not exist).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// File holding a passphrase (12 to 1024 bytes): the backup then also carries the
        /// server's secrets key and agent CA, encrypted with it (`musterd restore
        /// --passphrase-file` restores them). Without it, keep copies of those files.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = Cli::try_parse_from([
            "muster",
            "get",
            "devices",
            "-l",
            "role=web",
            "--server",
            "http://x:1",
            "-o",
            "wide",
        ])
        .unwrap();
        assert_eq!(cli.global.server.as_deref(), Some("http://x:1"));
        match cli.command {
            Command::Get(g) => {
                assert_eq!(g.kind, Kind::Device);
                assert_eq!(g.output, Format::Wide);
                assert_eq!(g.selector.as_deref(), Some("role=web"));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["muster", "--timeout", "2s", "watch", "all", "--once", "3"])
            .unwrap();
        assert_eq!(cli.global.timeout, Duration::from_secs(2));
        assert!(matches!(
            cli.command,
            Command::Watch(WatchArgs {
                target: WatchTarget::All,
                once: Some(3),
                ..
            })
        ));
        assert!(Cli::try_parse_from(["muster", "get", "gadgets"]).is_err());
    }

    #[test]
    fn drift_lists_or_accepts() {
        let cli = Cli::try_parse_from([
            "muster",
            "drift",
            "-l",
            "role=db",
            "--field",
            "packages.",
            "--summary",
        ])
        .unwrap();
        match cli.command {
            Command::Drift(DriftArgs {
                command: None,
                list,
            }) => {
                assert_eq!(list.selector.as_deref(), Some("role=db"));
                assert_eq!(list.field.as_deref(), Some("packages."));
                assert!(list.summary);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "muster",
            "drift",
            "accept",
            "web-01",
            "packages.openssl",
            "--reason",
            "hotfix",
        ])
        .unwrap();
        match cli.command {
            Command::Drift(DriftArgs {
                command:
                    Some(DriftCommand::Accept {
                        device,
                        field,
                        change,
                    }),
                ..
            }) => {
                assert_eq!(
                    (device.as_str(), field.as_str()),
                    ("web-01", "packages.openssl")
                );
                assert_eq!(change.reason.as_deref(), Some("hotfix"));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["muster", "drift", "accept", "web-01"]).is_err());
    }

    #[test]
    fn audit_lists_or_verifies() {
        let cli = Cli::try_parse_from(["muster", "audit", "verify"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Audit(AuditArgs {
                command: Some(AuditCommand::Verify { full: false }),
                ..
            })
        ));
        let cli = Cli::try_parse_from(["muster", "audit", "-r", "device/web-01", "--since", "24h"])
            .unwrap();
        match cli.command {
            Command::Audit(a) => {
                assert!(a.command.is_none());
                assert_eq!(a.resource.as_deref(), Some("device/web-01"));
                assert_eq!(a.since.as_deref(), Some("24h"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plan_and_bulk_apply() {
        let cli = Cli::try_parse_from(["muster", "plan", "-f", "-", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Plan(PlanArgs {
                output: StreamFormat::Json,
                ..
            })
        ));
        let cli = Cli::try_parse_from(["muster", "apply", "-f", "x.yaml", "--bulk"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Apply(ApplyArgs { bulk: true, .. })
        ));
    }
}
