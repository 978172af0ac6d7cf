//! `muster-inventory`: Ansible dynamic inventory from musterd (`--list`, `--host NAME`) and
//! agentless facts (`ingest-facts`). Parses flags, runs, and turns any failure into one line on
//! stderr and a non-zero exit, which Ansible reports (with `ANSIBLE_INVENTORY_UNPARSED_FAILED`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use muster::pb;
use muster::window::Schedule;
use muster_ansible::cache::Cache;
use muster_ansible::config::{Overrides, Settings};
use muster_ansible::{client, facts, render};

/// mimalloc, as in musterd: the export is many small strings, glibc's malloc fragments them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "muster-inventory",
    version,
    about = "Ansible dynamic inventory from musterd, and agentless facts from Ansible."
)]
struct Cli {
    /// Print the whole inventory (groups and `_meta.hostvars`).
    #[arg(long, conflicts_with = "host")]
    list: bool,
    /// Print one host's variables.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Config file (YAML or INI); default: muster-inventory.{yml,yaml,ini} beside the binary.
    #[arg(
        long,
        env = "MUSTER_INVENTORY_CONFIG",
        value_name = "PATH",
        global = true
    )]
    config: Option<PathBuf>,
    #[arg(long, env = "MUSTER_SERVER", value_name = "URL", global = true)]
    server: Option<String>,
    #[arg(long, env = "MUSTER_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[arg(long, env = "MUSTER_TOKEN_FILE", value_name = "PATH", global = true)]
    token_file: Option<PathBuf>,
    /// CA certificate for an https:// server.
    #[arg(long, env = "MUSTER_CA_CERT", value_name = "PATH", global = true)]
    ca_cert: Option<PathBuf>,
    /// Label selector narrowing the hosts, e.g. `role=web,env in (prod)`.
    #[arg(long, env = "MUSTER_SELECTOR")]
    selector: Option<String>,
    /// List only hosts whose maintenance window is open now (and no freeze is).
    #[arg(long, env = "MUSTER_IN_WINDOW")]
    in_window: bool,
    /// Evaluate windows at this instant (RFC 3339) instead of the clock.
    #[arg(long, env = "MUSTER_NOW", value_name = "RFC3339")]
    now: Option<String>,
    /// Keep the last export here; unchanged data is then not transferred again.
    #[arg(long, env = "MUSTER_INVENTORY_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Seconds to wait for the server (default 30).
    #[arg(long, global = true)]
    timeout: Option<u64>,
    /// Allow plaintext http:// to a non-loopback server: the token then travels unencrypted.
    #[arg(long, env = "MUSTER_INSECURE", global = true)]
    insecure: bool,
    /// Indent the JSON.
    #[arg(long)]
    pretty: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Record `ansible -m setup` output as observed facts of devices that run no agent.
    IngestFacts {
        /// `ansible --tree` directories, JSON files, saved `ansible` output; `-` for stdin.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The host of a file holding a single result.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Origin recorded with the facts.
        #[arg(long, default_value = "ansible")]
        origin: String,
        /// How often these facts are refreshed (e.g. 24h); older than 3× counts as silent.
        #[arg(long)]
        interval: Option<humantime::Duration>,
    },
}

fn settings(cli: &Cli) -> Result<Settings> {
    Settings::resolve(Overrides {
        config: cli.config.clone(),
        server: cli.server.clone(),
        token: cli.token.clone(),
        token_file: cli.token_file.clone(),
        ca_cert: cli.ca_cert.clone(),
        selector: cli.selector.clone(),
        in_window: cli.in_window,
        cache_dir: cli.cache_dir.clone(),
        timeout: cli.timeout,
        insecure: cli.insecure,
    })
}

fn now(cli: &Cli) -> Result<DateTime<Utc>> {
    match &cli.now {
        Some(t) => Ok(DateTime::parse_from_rfc3339(t.trim())
            .with_context(|| format!("--now {t:?} is not an RFC 3339 time"))?
            .with_timezone(&Utc)),
        None => Ok(DateTime::from_timestamp_nanos(
            muster::clock::system().now_unix_nanos(),
        )),
    }
}

fn print(v: &serde_json::Value, pretty: bool) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let r = if pretty {
        serde_json::to_writer_pretty(&mut out, v)
    } else {
        serde_json::to_writer(&mut out, v)
    };
    r.context("writing the inventory")?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// `--list` straight to stdout (no JSON tree in memory); `--pretty` re-indents a tree.
fn print_list(
    e: &client::Export,
    opts: render::Options,
    w: &[Schedule],
    pretty: bool,
) -> Result<()> {
    if pretty {
        return print(&render::list(e, opts, w), true);
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    render::write_list(&mut out, e, opts, w).context("writing the inventory")?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

async fn inventory(cli: &Cli) -> Result<()> {
    if !cli.list && cli.host.is_none() {
        bail!("use --list or --host NAME (or the ingest-facts command)");
    }
    let now = now(cli)?;
    let s = settings(cli)?;
    let cache = s
        .cache_dir
        .as_deref()
        .map(|d| Cache::new(d, &s.server, &s.selector));
    let export = client::fetch(&s, cache.as_ref()).await?;
    let (windows, problems) = render::schedules(&export);
    for p in problems {
        eprintln!("muster-inventory: warning: {p}");
    }
    let opts = render::Options {
        only_in_window: s.in_window,
        now,
    };
    match &cli.host {
        Some(h) => print(&render::host(&export, h, opts, &windows), cli.pretty),
        None => print_list(&export, opts, &windows, cli.pretty),
    }
}

async fn ingest(
    cli: &Cli,
    paths: &[PathBuf],
    host: Option<&str>,
    origin: &str,
    interval: Option<humantime::Duration>,
) -> Result<()> {
    let s = settings(cli)?;
    let mut hosts = Vec::new();
    for p in paths {
        for (name, result) in facts::read_results(p, host)? {
            let Some(f) = facts::facts_of(&result) else {
                continue;
            };
            let mapped = facts::to_facts(f).with_context(|| format!("host {name}"))?;
            hosts.push(pb::HostFacts {
                device: name,
                facts: Some(mapped),
                collected_at: facts::collected_at(f)
                    .map(|seconds| pbjson_types::Timestamp { seconds, nanos: 0 }),
            });
        }
    }
    if hosts.is_empty() {
        bail!("no host facts found in the input");
    }
    let done = client::ingest(&s, hosts, origin, interval.map(Into::into)).await?;
    for h in done {
        println!(
            "{}: facts stored ({} sections, hash {})",
            h.device,
            h.sections.len(),
            &h.facts_hash[..h.facts_hash.len().min(12)]
        );
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Some(Command::IngestFacts {
            paths,
            host,
            origin,
            interval,
        }) => ingest(&cli, paths, host.as_deref(), origin, *interval).await,
        None => inventory(&cli).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("muster-inventory: error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: Ansible shows the script's stderr as the reason the inventory failed.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("muster-inventory: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
