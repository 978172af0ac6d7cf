//! `muster campaign ...` and `muster window ...`: patch campaigns and maintenance windows.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::ChangeArgs;
use crate::output::{Format, StreamFormat};

/// `muster campaign ...`.
#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Create campaigns (state DRAFT) from a manifest of `kind: Campaign` documents.
    Create {
        /// YAML or JSON manifest file, `-` for standard input.
        #[arg(
            short = 'f',
            long = "filename",
            visible_alias = "file",
            value_name = "FILE"
        )]
        file: PathBuf,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Show the plan: hosts, canaries, waves, trip point, skipped hosts and window fit. For a
    /// submitted campaign the frozen plan (and the digest approvers approve); with -f, what a
    /// manifest would plan now (nothing is written).
    Plan {
        /// A stored campaign.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        name: Option<String>,
        /// A manifest holding one campaign, planned as a dry run.
        #[arg(
            short = 'f',
            long = "filename",
            visible_alias = "file",
            value_name = "FILE"
        )]
        file: Option<PathBuf>,
        /// Output format (`table` is the server's text).
        #[arg(short, long, value_enum, default_value_t = StreamFormat::Table)]
        output: StreamFormat,
    },
    /// DRAFT → AWAITING_APPROVAL: freeze the plan and its digest for approvers.
    Submit(CampaignAction),
    /// Replace a campaign's spec from a manifest (before it runs): approvals are dropped and
    /// the campaign is a DRAFT again.
    Edit {
        /// YAML or JSON manifest holding the campaign (named by its `meta.name`).
        #[arg(
            short = 'f',
            long = "filename",
            visible_alias = "file",
            value_name = "FILE"
        )]
        file: PathBuf,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Approve the frozen plan you reviewed (approver role; never an author).
    Approve {
        /// Campaign name.
        name: String,
        /// The digest `muster campaign plan NAME` showed: the approval is bound to it, and
        /// refused if the campaign changed since.
        #[arg(long, value_name = "SHA256")]
        digest: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Leave the canary phase: start the waves (approver role; never an author).
    Promote(CampaignAction),
    /// Start an approved campaign.
    Start(CampaignAction),
    /// Pause: no new host starts; hosts in flight finish their step list.
    Pause(CampaignAction),
    /// Resume a paused or halted campaign.
    Resume(CampaignAction),
    /// Abort: the campaign ends and no new host starts (terminal: it cannot be resumed).
    Abort(CampaignAction),
    /// Show one campaign: state, hosts done, failures against the budget, wave, waiting.
    Get {
        /// Campaign name.
        name: String,
        /// Output format (json and yaml print the campaign as a manifest).
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// List every campaign.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Follow a campaign until it completes or is aborted: live progress on a terminal, one
    /// line per transition otherwise.
    Watch {
        /// Campaign name.
        name: String,
        /// Output format: `table` is the live view (plain lines when not a terminal); `json`
        /// and `yaml` print every progress message.
        #[arg(short, long, value_enum, default_value_t = StreamFormat::Table)]
        output: StreamFormat,
    },
    /// Per-host outcome, durations, step output excerpts and every transition.
    Report {
        /// Campaign name.
        name: String,
        /// Output format: `markdown` is ready to paste into a postmortem.
        #[arg(short, long, value_enum, default_value_t = ReportFormat::Table)]
        output: ReportFormat,
    },
    /// Move one host on (retry, mark-failed, rollback).
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// The captured output of a host's steps (head and tail; the bytes between are counted).
    Output {
        /// Campaign name.
        campaign: String,
        /// Device name.
        host: String,
        /// Only this step (by name; rollback steps and `verify` too).
        #[arg(long, value_name = "NAME")]
        step: Option<String>,
        /// Only this attempt of the step (default: every attempt).
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
        /// Write the captured bytes unchanged (stdout to stdout, stderr to stderr), for a
        /// file or a pipe; refused on a terminal and for more than one step attempt.
        #[arg(long)]
        raw: bool,
    },
}

/// A campaign action that takes only the name and the audit context.
#[derive(Debug, Args)]
pub struct CampaignAction {
    /// Campaign name.
    pub name: String,
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// `muster campaign host ...`: only a person moves a host out of NEEDS_ATTENTION.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Run the host again from where it stopped (NEEDS_ATTENTION).
    Retry(HostAction),
    /// Count the host as failed, without rollback (NEEDS_ATTENTION).
    MarkFailed(HostAction),
    /// Run the host's rollback steps (NEEDS_ATTENTION or FAILED).
    Rollback(HostAction),
}

/// The campaign, the host and why.
#[derive(Debug, Args)]
pub struct HostAction {
    /// Campaign name.
    pub campaign: String,
    /// Device name.
    pub host: String,
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// How `campaign report` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns and indented step output.
    Table,
    /// JSON (the API's report).
    Json,
    /// YAML (the API's report).
    Yaml,
    /// Markdown: headings, tables and fenced output, for a postmortem.
    #[value(alias = "md")]
    Markdown,
}

/// `muster window ...`.
#[derive(Debug, Subcommand)]
pub enum WindowCommand {
    /// Every maintenance window and freeze: open now, and when each next opens.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = StreamFormat::Table)]
        output: StreamFormat,
    },
    /// When DEVICE may next be changed: the windows and freezes selecting it (by its labels)
    /// and the next slots where a window is open and no freeze is.
    Next {
        /// Device name.
        device: String,
        /// Only slots at least this long (e.g. 2h: a campaign host's worst case).
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        need: Option<Duration>,
        /// How many slots to show.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        slots: u32,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = StreamFormat::Table)]
        output: StreamFormat,
    },
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn parse(args: &[&str]) -> CampaignCommand {
        let mut argv = vec!["muster", "campaign"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Campaign { command },
                ..
            }) => command,
            Ok(other) => panic!("{:?}", other.command),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn fails(args: &[&str]) -> String {
        let mut argv = vec!["muster", "campaign"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap_err().to_string()
    }

    #[test]
    fn writes_take_reason_and_ticket() {
        match parse(&[
            "create",
            "-f",
            "c.yaml",
            "--reason",
            "CVE-2024-1",
            "--ticket",
            "OPS-7",
        ]) {
            CampaignCommand::Create { file, change } => {
                assert_eq!(file, PathBuf::from("c.yaml"));
                assert_eq!(change.reason.as_deref(), Some("CVE-2024-1"));
                assert_eq!(change.ticket.as_deref(), Some("OPS-7"));
            }
            other => panic!("{other:?}"),
        }
        for verb in ["submit", "promote", "start", "pause", "resume", "abort"] {
            let c = parse(&[verb, "kernel", "--reason", "r", "--ticket", "T-1"]);
            let a = match c {
                CampaignCommand::Submit(a)
                | CampaignCommand::Promote(a)
                | CampaignCommand::Start(a)
                | CampaignCommand::Pause(a)
                | CampaignCommand::Resume(a)
                | CampaignCommand::Abort(a) => a,
                other => panic!("{verb}: {other:?}"),
            };
            assert_eq!(a.name, "kernel", "{verb}");
            assert_eq!(a.change.ticket.as_deref(), Some("T-1"), "{verb}");
        }
        match parse(&["edit", "--file", "c.json", "--reason", "fix window"]) {
            CampaignCommand::Edit { file, change } => {
                assert_eq!(file, PathBuf::from("c.json"));
                assert_eq!(change.reason.as_deref(), Some("fix window"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn approve_needs_the_digest() {
        match parse(&["approve", "kernel", "--digest", "abc", "--ticket", "CHG-1"]) {
            CampaignCommand::Approve {
                name,
                digest,
                change,
            } => {
                assert_eq!((name.as_str(), digest.as_str()), ("kernel", "abc"));
                assert_eq!(change.ticket.as_deref(), Some("CHG-1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(fails(&["approve", "kernel"]).contains("--digest"));
    }

    #[test]
    fn plan_by_name_or_file() {
        assert!(matches!(
            parse(&["plan", "kernel"]),
            CampaignCommand::Plan {
                name: Some(_),
                file: None,
                output: StreamFormat::Table
            }
        ));
        assert!(matches!(
            parse(&["plan", "-f", "-", "-o", "json"]),
            CampaignCommand::Plan {
                name: None,
                file: Some(_),
                output: StreamFormat::Json
            }
        ));
        fails(&["plan"]);
        fails(&["plan", "kernel", "-f", "x.yaml"]);
    }

    #[test]
    fn reads_and_formats() {
        assert!(matches!(
            parse(&["get", "kernel", "-o", "wide"]),
            CampaignCommand::Get {
                output: Format::Wide,
                ..
            }
        ));
        assert!(matches!(
            parse(&["list", "-o", "yaml"]),
            CampaignCommand::List {
                output: Format::Yaml
            }
        ));
        assert!(matches!(
            parse(&["watch", "kernel"]),
            CampaignCommand::Watch {
                output: StreamFormat::Table,
                ..
            }
        ));
        for (flag, want) in [
            ("table", ReportFormat::Table),
            ("json", ReportFormat::Json),
            ("yaml", ReportFormat::Yaml),
            ("markdown", ReportFormat::Markdown),
            ("md", ReportFormat::Markdown),
        ] {
            match parse(&["report", "kernel", "-o", flag]) {
                CampaignCommand::Report { output, .. } => assert_eq!(output, want, "{flag}"),
                other => panic!("{other:?}"),
            }
        }
        fails(&["report", "kernel", "-o", "html"]);
    }

    #[test]
    fn host_actions_and_output() {
        for (verb, want) in [("retry", 0), ("mark-failed", 1), ("rollback", 2)] {
            let c = parse(&[
                "host",
                verb,
                "kernel",
                "web-07",
                "--reason",
                "checked by hand",
            ]);
            let (got, a) = match c {
                CampaignCommand::Host {
                    command: HostCommand::Retry(a),
                } => (0, a),
                CampaignCommand::Host {
                    command: HostCommand::MarkFailed(a),
                } => (1, a),
                CampaignCommand::Host {
                    command: HostCommand::Rollback(a),
                } => (2, a),
                other => panic!("{other:?}"),
            };
            assert_eq!(got, want, "{verb}");
            assert_eq!((a.campaign.as_str(), a.host.as_str()), ("kernel", "web-07"));
            assert_eq!(a.change.reason.as_deref(), Some("checked by hand"));
        }
        fails(&["host", "retry", "kernel"]);
        match parse(&[
            "output",
            "kernel",
            "web-07",
            "--step",
            "install",
            "--attempt",
            "2",
            "--raw",
        ]) {
            CampaignCommand::Output {
                campaign,
                host,
                step,
                attempt,
                raw,
            } => {
                assert_eq!((campaign.as_str(), host.as_str()), ("kernel", "web-07"));
                assert_eq!(step.as_deref(), Some("install"));
                assert_eq!(attempt, Some(2));
                assert!(raw);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn window_commands() {
        let cli = Cli::try_parse_from([
            "muster", "window", "next", "web-01", "--for", "2h", "--slots", "5",
        ])
        .unwrap();
        match cli.command {
            Command::Window {
                command:
                    WindowCommand::Next {
                        device,
                        need,
                        slots,
                        output,
                    },
            } => {
                assert_eq!(device, "web-01");
                assert_eq!(need, Some(Duration::from_secs(7200)));
                assert_eq!(slots, 5);
                assert_eq!(output, StreamFormat::Table);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["muster", "window", "list", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Window {
                command: WindowCommand::List {
                    output: StreamFormat::Json
                }
            }
        ));
        assert!(
            Cli::try_parse_from(["muster", "window", "next", "web-01", "--slots", "0"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["muster", "window", "next", "web-01", "--for", "soon"]).is_err()
        );
    }
}
