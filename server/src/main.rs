//! `musterd`: parse flags and config, set up logging, bind, and hand over to the library.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use muster_server::config::{Config, LogFormat, TlsConfig};
use muster_server::keys::{self, KeyPaths};
use muster_server::pki::AgentCa;
use muster_server::store::{SledStore, Store, StoreOptions};
use muster_server::{Listeners, Server};

/// mimalloc instead of glibc malloc: with many threads, glibc's per-thread arenas kept
/// ~100 MiB more resident after a 100k-object scan (measured with the foundation benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The muster fleet inventory and configuration server.
#[derive(Debug, Parser)]
#[command(name = "musterd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML config file; flags and MUSTER_* variables override it.
    #[arg(long, env = "MUSTER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7070].
    #[arg(long, env = "MUSTER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Prometheus metrics listen address (off unless set).
    #[arg(long, env = "MUSTER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Data directory [default: ./muster-data].
    #[arg(long, env = "MUSTER_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "MUSTER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "MUSTER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve TLS with a certificate from musterd's own CA (`DATA_DIR/agent-ca.pem` is what
    /// clients and agents trust); needed for agents' mTLS when no certificate is configured.
    #[arg(long, env = "MUSTER_TLS_AUTO")]
    tls_auto: bool,
    /// Names (DNS or IP) the auto-TLS certificate is valid for, comma-separated
    /// [default: localhost,127.0.0.1,::1].
    #[arg(long, env = "MUSTER_TLS_NAMES", value_delimiter = ',')]
    tls_names: Vec<String>,
    /// Interval agents are told to report at, e.g. 60s [default: 60s].
    #[arg(long, env = "MUSTER_AGENT_INTERVAL", value_parser = humantime::parse_duration)]
    agent_interval: Option<std::time::Duration>,
    /// Validity of agent client certificates, e.g. 365d [default: 365d].
    #[arg(long, env = "MUSTER_AGENT_CERT_VALIDITY", value_parser = humantime::parse_duration)]
    agent_cert_validity: Option<std::time::Duration>,
    /// Agent certificates with less than this left are a WARNING health reason [default: 14d].
    #[arg(long, env = "MUSTER_AGENT_CERT_WARN", value_parser = humantime::parse_duration)]
    agent_cert_warn: Option<std::time::Duration>,
    /// Allow plaintext gRPC on a non-loopback address.
    #[arg(long)]
    insecure: bool,
    /// Largest accepted request message, bytes [default: 4194304].
    #[arg(long, env = "MUSTER_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Most VM devices discovery creates under one hypervisor [default: 256].
    #[arg(long, env = "MUSTER_MAX_DISCOVERED_VMS")]
    max_discovered_vms: Option<usize>,
    /// Open gRPC connections at most [default: 4096, lowered to fit RLIMIT_NOFILE].
    #[arg(long, env = "MUSTER_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// sled cache size in MiB [default: 64].
    #[arg(long, env = "MUSTER_CACHE_MB")]
    cache_mb: Option<u64>,
    /// Skip fdatasync after group flushes (benchmarks only: unsafe on power loss).
    #[arg(long, hide = true)]
    no_fdatasync: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Write a consistent backup of a stopped server's data dir (for a running server use
    /// `muster admin backup`).
    Backup {
        /// Backup file to create.
        #[arg(long)]
        to: PathBuf,
        /// File holding a passphrase (12 to 1024 bytes): the backup then carries the secrets
        /// key and the agent CA, encrypted with it. Without it, keep copies of those files.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Restore a backup into an empty data directory.
    Restore {
        /// Backup file to read.
        #[arg(long)]
        from: PathBuf,
        /// The passphrase file the backup was made with: restores the key files it carries.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Read a token on stdin and print the sha256 to put in the config's [[tokens]].
    HashToken,
    /// Raw records of a stopped server's store, for forensics and drills (keys and values
    /// escaped: printable ASCII as is, \\ and \xNN otherwise).
    Inspect {
        #[command(subcommand)]
        what: InspectCommand,
    },
}

#[derive(Debug, Subcommand)]
enum InspectCommand {
    /// List keys, one per line.
    Keys {
        /// Only keys starting with these (escaped) bytes.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only keys whose escaped form contains this.
        #[arg(long, default_value = "")]
        key_contains: String,
        /// Only records whose value contains these bytes.
        #[arg(long, default_value = "")]
        value_contains: String,
    },
    /// Print one record's value.
    Get { key: String },
    /// Tamper drill: replace the first occurrence of --find in a record with --replace.
    /// `muster audit verify` must then report the entry.
    Patch {
        key: String,
        #[arg(long)]
        find: String,
        #[arg(long)]
        replace: String,
    },
    /// Capacity drill: write --count inert records of --bytes under a prefix `atest-...`.
    Fill {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 300)]
        bytes: usize,
    },
}

fn inspect(config: &Config, what: InspectCommand) -> anyhow::Result<()> {
    use muster_server::store::inspect::{Inspector, escape_key, unescape_key};
    let store = Inspector::open(&config.data_dir)?;
    match what {
        InspectCommand::Keys {
            prefix,
            key_contains,
            value_contains,
        } => {
            let keys = store.keys(
                &unescape_key(&prefix)?,
                &key_contains,
                value_contains.as_bytes(),
            )?;
            let mut out = String::new();
            for k in keys {
                out.push_str(&escape_key(&k));
                out.push('\n');
            }
            print!("{out}");
        }
        InspectCommand::Get { key } => {
            let k = unescape_key(&key)?;
            let v = store
                .get(&k)?
                .ok_or_else(|| anyhow::anyhow!("no record under key {key}"))?;
            println!("{}", escape_key(&v));
        }
        InspectCommand::Patch { key, find, replace } => {
            store.patch(&unescape_key(&key)?, find.as_bytes(), replace.as_bytes())?;
        }
        InspectCommand::Fill {
            prefix,
            count,
            bytes,
        } => store.fill(&prefix, count, bytes)?,
    }
    Ok(())
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut c = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Config::from_toml(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        c.listen = v;
    }
    if let Some(v) = args.metrics_listen {
        c.metrics_listen = Some(v);
    }
    if let Some(v) = &args.data_dir {
        c.data_dir = v.clone();
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        c.tls = Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    c.insecure |= args.insecure;
    c.tls_auto |= args.tls_auto;
    if !args.tls_names.is_empty() {
        c.tls_names = args.tls_names.clone();
    }
    if let Some(v) = args.agent_interval {
        c.agent_report_interval_ms = u64::try_from(v.as_millis()).unwrap_or(u64::MAX).max(1);
    }
    if let Some(v) = args.agent_cert_validity {
        c.agent_cert_validity_secs = v.as_secs();
    }
    if let Some(v) = args.agent_cert_warn {
        c.agent_cert_warn_secs = v.as_secs();
    }
    if let Some(v) = args.max_message_bytes {
        c.max_message_bytes = v;
    }
    if let Some(v) = args.max_discovered_vms {
        c.max_discovered_vms_per_hypervisor = v;
    }
    if let Some(v) = args.max_connections {
        c.max_connections = v;
    }
    if let Some(v) = args.cache_mb {
        c.cache_capacity_mb = v;
    }
    if args.no_fdatasync {
        c.fdatasync = false;
    }
    if args.log_json {
        c.log_format = LogFormat::Json;
    }
    c.validate().map_err(anyhow::Error::msg)?;
    Ok(c)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that arrives right after start-up is not lost.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down");
    })
}

async fn run_server(config: Config) -> anyhow::Result<()> {
    // Checked before binding, so a refused address is never opened even briefly.
    if !config.listen.ip().is_loopback() && !config.has_tls() && !config.insecure {
        bail!(
            "refusing to listen on {} without TLS: configure tls.cert and tls.key, or pass --insecure",
            config.listen
        );
    }
    let shutdown = shutdown_signal()?;
    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let metrics = match config.metrics_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {a}"))?,
        ),
        None => None,
    };
    let grpc_addr = grpc.local_addr()?;
    let metrics_addr = metrics.as_ref().map(|m| m.local_addr()).transpose()?;
    let data_dir = config.data_dir.clone();
    let server = Server::open(config).await.context("starting musterd")?;
    if let Some(p) = &server.created_admin_token {
        tracing::warn!(path = %p.display(), "no tokens configured: created an admin token; keep the file safe");
    }
    tracing::info!(grpc = %grpc_addr, metrics = ?metrics_addr, data_dir = %data_dir.display(), "musterd serving");
    // One machine-readable line on stdout, so scripts and tests learn the bound ports.
    let mut line = format!("musterd listening grpc={grpc_addr}");
    if let Some(m) = metrics_addr {
        line.push_str(&format!(" metrics={m}"));
    }
    println!("{line}");
    std::io::stdout().flush()?;
    server
        .run(Listeners { grpc, metrics }, shutdown)
        .await
        .context("serving")?;
    Ok(())
}

/// What a backup without keys means for its restore; printed whenever one is made.
const NO_KEYS_WARNING: &str = "warning: this backup carries no keys (no --passphrase-file). \
    A server restored from it refuses to start until secrets.key, agent-ca.key and agent-ca.pem \
    are copied from this data directory: keep copies of them with the backup";

/// `musterd backup`: a stopped server's store, and its key files sealed with a passphrase.
fn offline_backup(
    config: &Config,
    to: &Path,
    passphrase_file: Option<&Path>,
) -> anyhow::Result<()> {
    let opts = StoreOptions {
        cache_capacity_bytes: config.cache_capacity_mb * 1024 * 1024,
        fdatasync: true,
    };
    let store = SledStore::open(&config.data_dir, &opts).with_context(|| {
        format!(
            "opening {} (is musterd running? then use `muster admin backup`)",
            config.data_dir.display()
        )
    })?;
    let bundle = match passphrase_file {
        Some(p) => {
            let passphrase = keys::files::read_passphrase(p)?;
            let paths = KeyPaths::new(&config.data_dir, config.secrets_key_file.as_deref());
            let files = keys::files::read_all(&paths)?;
            keys::bundle::seal(&files, &passphrase)?
        }
        None => Vec::new(),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let n = store.backup(&bundle, &mut w).context("writing backup")?;
    let file = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing backup: {e}"))?;
    file.sync_all()?;
    eprintln!(
        "backed up {n} records at revision {} to {}{}",
        store.revision(),
        to.display(),
        if bundle.is_empty() {
            ""
        } else {
            ", with the keys (encrypted)"
        }
    );
    if bundle.is_empty() {
        eprintln!("{NO_KEYS_WARNING}");
    }
    Ok(())
}

/// `musterd restore`: the keys are decrypted first, so a wrong passphrase writes nothing; the
/// records next; the key files last, never over existing ones.
fn restore(config: &Config, from: &Path, passphrase_file: Option<&Path>) -> anyhow::Result<()> {
    let file = std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let dir = &config.data_dir;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty; restore only into an empty or new data directory",
            dir.display()
        );
    }
    let mut r = std::io::BufReader::new(file);
    let reader = muster_server::store::open_backup(&mut r)
        .with_context(|| format!("reading {}", from.display()))?;
    let paths = KeyPaths::new(&config.data_dir, config.secrets_key_file.as_deref());
    let keys = match (reader.attachment().is_empty(), passphrase_file) {
        (true, _) => None,
        (false, None) => bail!(
            "{} carries the server's keys, encrypted: pass --passphrase-file with the passphrase it was made with",
            from.display()
        ),
        (false, Some(p)) => {
            let passphrase = keys::files::read_passphrase(p)?;
            let files = keys::bundle::open(reader.attachment(), &passphrase)?;
            AgentCa::from_pem(&files.ca_cert_pem, &files.ca_key_pem)
                .map_err(|e| anyhow::anyhow!("the CA in the backup is unusable: {e}"))?;
            keys::files::refuse_existing(&paths)?;
            Some(files)
        }
    };
    let n = reader
        .restore_into(&config.data_dir)
        .with_context(|| format!("restoring into {}", config.data_dir.display()))?;
    match keys {
        Some(files) => {
            if let Err(e) = keys::files::install(&paths, &files) {
                let _ = std::fs::remove_dir_all(&config.data_dir);
                return Err(e).context("restoring the key files (the restore was undone)");
            }
            eprintln!(
                "restored {n} records and the key files into {}",
                config.data_dir.display()
            );
        }
        None => {
            eprintln!("restored {n} records into {}", config.data_dir.display());
            eprintln!(
                "this backup carries no keys: copy secrets.key, agent-ca.key and agent-ca.pem from the old data directory into {} before starting musterd",
                config.data_dir.display()
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = load_config(&cli.serve)?;
    match cli.command {
        None | Some(Command::Serve) => {
            init_logging(config.log_format);
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(run_server(config))
        }
        Some(Command::Backup {
            to,
            passphrase_file,
        }) => offline_backup(&config, &to, passphrase_file.as_deref()),
        Some(Command::Restore {
            from,
            passphrase_file,
        }) => restore(&config, &from, passphrase_file.as_deref()),
        Some(Command::Inspect { what }) => inspect(&config, what),
        Some(Command::HashToken) => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token)?;
            let token = token.trim();
            if token.is_empty() {
                bail!("no token on stdin");
            }
            println!("{}", muster_server::auth::hash_token(token));
            Ok(())
        }
    }
}
