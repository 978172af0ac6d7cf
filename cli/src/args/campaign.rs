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
        #[arg(short = 'f', long = "filename", visible_alias = "file", value_name = "FILE")]
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
        #[arg(short = 'f', long = "filename", visible_alias = "file", value_name = "FILE")]
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
        #[arg(short = 'f', long = "filename", visible_alias = "file", value_name = "FILE")]
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
    /// Abort: no new host starts; hosts in flight finish and roll back as configured.
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
