//! `muster-agent`: reports a host's hardware and OS state to musterd.
//!
//! `enroll` exchanges a one-time token for a client certificate; `run` collects and reports
//! every interval (the default command); `collect` prints one collection as JSON (to see what
//! would be reported, and how long each collector takes).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use muster_agent::config::AgentConfig;
use muster_agent::run::{self, Agent, Collectors};

#[derive(Debug, Parser)]
#[command(name = "muster-agent", version, about)]
struct Cli {
    /// TOML config file; flags override it.
    #[arg(long, short = 'c', env = "MUSTER_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// musterd address, e.g. https://muster.example:7070.
    #[arg(long, env = "MUSTER_SERVER", global = true)]
    server: Option<String>,
    /// CA certificate (PEM) to verify musterd with.
    #[arg(long, env = "MUSTER_CA", global = true)]
    ca: Option<PathBuf>,
    /// Allow plaintext http:// to a non-loopback server (the enrollment token travels
    /// unencrypted, and no client certificate can be presented).
    #[arg(long, env = "MUSTER_INSECURE", global = true)]
    insecure: bool,
    /// State directory (identity, sequence, spool).
    #[arg(long, env = "MUSTER_AGENT_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// BMC: local, local:/dev/ipmiN, or rmcp://user@host:port.
    #[arg(long, global = true)]
    bmc: Option<String>,
    /// File holding the BMC password.
    #[arg(long, global = true)]
    bmc_password_file: Option<PathBuf>,
    /// smartctl binary.
    #[arg(long, global = true)]
    smartctl: Option<PathBuf>,
    /// Disks for SMART (repeatable); default: smartctl --scan-open.
    #[arg(long = "disk", global = true)]
    disks: Vec<String>,
    /// libvirt URI for VM discovery (e.g. qemu:///system).
    #[arg(long, global = true)]
    libvirt_uri: Option<String>,
    /// Directory of external-fact executables.
    #[arg(long, global = true)]
    external_facts_dir: Option<PathBuf>,
    /// Extra kernel parameter to report (repeatable), e.g. kernel.pid_max; replaces the config's
    /// `sysctl_keys`. A default list is always read.
    #[arg(long = "sysctl", value_name = "KEY", global = true)]
    sysctl_keys: Vec<String>,
    /// File to read the boot id from (default: the kernel's /proc/sys/kernel/random/boot_id).
    #[arg(long, global = true)]
    boot_id_file: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Collect and report every interval (the default).
    Run,
    /// Exchange a one-time enrollment token for this host's identity.
    Enroll {
        /// The token from `muster agent token create DEVICE`.
        #[arg(long, env = "MUSTER_ENROLL_TOKEN")]
        token: String,
        /// How long to wait for an operator when the enrollment is held for approval.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Collect once and print the facts as JSON (nothing is sent).
    Collect,
}

fn load_config(cli: &Cli) -> anyhow::Result<AgentConfig> {
    let mut c = match &cli.config {
        Some(p) => AgentConfig::from_toml(&std::fs::read_to_string(p)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => AgentConfig::default(),
    };
    if let Some(v) = &cli.server {
        c.server = v.clone();
    }
    if let Some(v) = &cli.ca {
        c.ca = Some(v.clone());
    }
    c.insecure |= cli.insecure;
    if let Some(v) = &cli.state_dir {
        c.state_dir = v.clone();
    }
    if let Some(v) = &cli.bmc {
        c.bmc = Some(v.clone());
    }
    if let Some(v) = &cli.bmc_password_file {
        c.bmc_password_file = Some(v.clone());
    }
    if let Some(v) = &cli.smartctl {
        c.smartctl = v.clone();
    }
    if !cli.disks.is_empty() {
        c.disks = cli.disks.clone();
    }
    if let Some(v) = &cli.libvirt_uri {
        c.libvirt_uri = Some(v.clone());
    }
    if let Some(v) = &cli.external_facts_dir {
        c.external_facts_dir = Some(v.clone());
    }
    if !cli.sysctl_keys.is_empty() {
        c.sysctl_keys = cli.sysctl_keys.clone();
    }
    if let Some(v) = &cli.boot_id_file {
        c.boot_id_file = v.clone();
    }
    Ok(c)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn main_inner(cli: Cli) -> anyhow::Result<()> {
    let cfg = load_config(&cli)?;
    // The one clock the agent reads time from (tests of the library hand in a manual one).
    let clock = muster::clock::system();
    match cli.command.unwrap_or(Command::Run) {
        Command::Enroll { token, wait } => {
            let device = run::enroll_with_clock(&cfg, &token, wait, &clock).await?;
            println!("enrolled as device {device}");
        }
        Command::Collect => {
            let mut c = Collectors::new(&cfg, None, clock)?;
            let got = c.collect().await;
            let out = serde_json::json!({
                "facts": serde_json::to_value(&got.facts)?,
                "sel": serde_json::to_value(&got.sel)?,
                "collectors": serde_json::to_value(&got.collectors)?,
                "cpu_time_ms": got.cpu_time.as_millis() as u64,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Command::Run => {
            let agent = Agent::open(cfg, clock)?;
            tracing::info!(device = agent.device(), "muster-agent reporting");
            // Printed for whoever started us (tests, systemd logs): the agent is up.
            println!("muster-agent running device={}", agent.device());
            agent.run(shutdown_signal()).await?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if cli.log_json {
        b.json().init();
    } else {
        b.init();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("muster-agent: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_inner(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muster-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("muster-agent").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "server = \"https://file.example:7070\"\nstate_dir = \"/var/lib/from-file\"\ndisks = [\"/dev/sda\"]\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let c = load_config(&cli(&["-c", path, "--server", "https://flag.example:7070"])).unwrap();
        assert_eq!(c.server, "https://flag.example:7070");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/from-file"));
        assert_eq!(c.disks, ["/dev/sda"]);
        let c = load_config(&cli(&[
            "-c",
            path,
            "--disk",
            "/dev/nvme0",
            "--disk",
            "/dev/sdb:sat",
        ]))
        .unwrap();
        assert_eq!(c.disks, ["/dev/nvme0", "/dev/sdb:sat"]);
        assert!(!c.insecure);
        assert!(load_config(&cli(&["--insecure"])).unwrap().insecure);
    }

    #[test]
    fn a_bad_config_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "no_such_key = 1\n").unwrap();
        let err = load_config(&cli(&["-c", file.to_str().unwrap()]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("agent.toml") && err.contains("no_such_key"),
            "{err}"
        );
    }
}
