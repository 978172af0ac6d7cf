//! Shared harness for the end-to-end tests: start the real `musterd` binary on an ephemeral
//! loopback port with a temporary data directory, learn its ports from the line it prints, and
//! talk to it over gRPC or through the real `muster` CLI.
// The kit waits on real processes (ports, files, peers), so it reads real time.
#![allow(clippy::disallowed_methods)]

pub mod campaign_fleet;
pub mod campaign_kit;
pub mod ipmi;
pub mod ssh;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use muster::pb;
use muster::pb::inventory_service_client::InventoryServiceClient;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// Path of a workspace binary, built next to the test executable (`.ci/run` builds them all).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Fixed tokens for the role tests, one per role.
pub const ADMIN_TOKEN: &str = "mst_test_admin_0123456789";
pub const OPERATOR_TOKEN: &str = "mst_test_operator_0123456789";
pub const VIEWER_TOKEN: &str = "mst_test_viewer_0123456789";
pub const APPROVER_TOKEN: &str = "mst_test_approver_0123456789";

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// How to start a test server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Write a config with one token per role instead of relying on the bootstrap token.
    pub role_tokens: bool,
    /// Extra config-file lines (TOML).
    pub config: String,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Serve TLS with musterd's own CA (`--tls-auto`): what agents' mTLS needs.
    pub tls_auto: bool,
    /// Run musterd under `prlimit --nofile=N:N` (a low descriptor limit).
    pub nofile: Option<u64>,
}

/// A running `musterd` process and its data directory.
#[derive(Debug)]
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub token: String,
    opts: Options,
    child: Option<Child>,
}

impl TestServer {
    /// Starts a server with the bootstrap admin token.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default())
    }

    /// Starts a server with options.
    pub fn start_with(opts: Options) -> anyhow::Result<Self> {
        let mut s = Self::prepare(opts)?;
        s.spawn()?;
        Ok(s)
    }

    /// A server whose data directory exists only as a path, not started yet (to restore a
    /// backup into it first).
    pub fn prepare(opts: Options) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        Ok(Self {
            dir,
            data_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: String::new(),
            opts,
            child: None,
        })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("musterd.toml")
    }

    /// Starts (or restarts) the process on the same data directory.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let mut config = self.opts.config.clone();
        if self.opts.role_tokens {
            for (name, role, token) in [
                ("alice", "admin", ADMIN_TOKEN),
                ("oscar", "operator", OPERATOR_TOKEN),
                ("vera", "viewer", VIEWER_TOKEN),
                ("april", "approver", APPROVER_TOKEN),
            ] {
                config.push_str(&format!(
                    "\n[[tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
                    sha256_hex(token)
                ));
            }
        }
        std::fs::write(self.config_path(), &config)?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("musterd.log"))?;
        let mut cmd = match self.opts.nofile {
            // prlimit sets the limit and execs musterd: the child's pid stays musterd's.
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(bin("musterd"));
                c
            }
            None => Command::new(bin("musterd")),
        };
        let mut child = cmd
            .arg("--config")
            .arg(self.config_path())
            .arg("--data-dir")
            .arg(&self.data_dir)
            // A restart keeps the port, so clients (agents) configured with it find it again.
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.addr.port()))
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(&self.opts.args)
            .args(if self.opts.tls_auto {
                &["--tls-auto"][..]
            } else {
                &[][..]
            })
            .env("MUSTER_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning musterd")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if !line.starts_with("musterd listening") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("musterd did not start: {line:?}; log:\n{}", self.log());
        }
        for part in line.split_whitespace() {
            if let Some(a) = part.strip_prefix("grpc=") {
                self.addr = a.parse()?;
            }
            if let Some(a) = part.strip_prefix("metrics=") {
                self.metrics_addr = a.parse()?;
            }
        }
        self.token = if self.opts.role_tokens {
            ADMIN_TOKEN.to_string()
        } else {
            std::fs::read_to_string(self.data_dir.join("admin.token"))?
                .trim()
                .to_string()
        };
        self.child = Some(child);
        Ok(())
    }

    /// The musterd process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("musterd.log")).unwrap_or_default()
    }

    /// `http://ADDR` for clients (`https://` with auto-TLS).
    pub fn url(&self) -> String {
        if self.opts.tls_auto {
            format!("https://{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The CA certificate clients and agents trust (auto-TLS).
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("agent-ca.pem")
    }

    /// Kills the process with SIGKILL (no flush, no cleanup) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process with SIGTERM and waits (up to 20 s) for a clean exit. Call it from a
    /// multi-thread runtime when clients are still connected: they must answer HTTP/2's
    /// graceful-shutdown ping.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status()?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = c.try_wait()? {
                    if !status.success() {
                        bail!("musterd exited with {status}; log:\n{}", self.log());
                    }
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    bail!("musterd did not stop within 20 s; log:\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Kills and starts again on the same data directory.
    pub fn restart_after_kill9(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }

    /// A gRPC channel to the server.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let mut ep = Channel::from_shared(self.url())?;
        if self.opts.tls_auto {
            let ca = std::fs::read(self.ca_path())?;
            ep = ep.tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )?;
        }
        Ok(ep.connect().await?)
    }

    /// An inventory client sending `token`.
    pub async fn inventory_as(&self, token: &str) -> anyhow::Result<InventoryClient> {
        Ok(
            InventoryServiceClient::with_interceptor(self.channel().await?, bearer(token))
                .max_encoding_message_size(64 * 1024 * 1024),
        )
    }

    /// An inventory client with the admin token.
    pub async fn inventory(&self) -> anyhow::Result<InventoryClient> {
        self.inventory_as(&self.token).await
    }

    /// An audit client with the admin token.
    pub async fn audit(&self) -> anyhow::Result<AuditClient> {
        Ok(
            pb::audit_service_client::AuditServiceClient::with_interceptor(
                self.channel().await?,
                bearer(&self.token),
            ),
        )
    }

    /// Every audit entry, accepted and refused, of `principal` (empty: everyone), oldest first,
    /// following pages (a page reads a bounded part of each log, so it may be short).
    pub async fn audit_trail(&self, principal: &str) -> anyhow::Result<Vec<pb::Change>> {
        let mut audit = self.audit().await?;
        let mut req = pb::ListChangesRequest {
            include_refused: true,
            principal: principal.into(),
            page_size: 1000,
            ..Default::default()
        };
        let mut out = Vec::new();
        for _ in 0..1000 {
            let page = audit.list(req.clone()).await?.into_inner();
            out.extend(page.changes);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            req.page_token = page.next_page_token;
        }
        anyhow::bail!("the audit trail did not end after 1000 pages")
    }

    /// Runs `musterd inspect <args>` on this (stopped) server's data directory: the one way
    /// the e2e suite sees raw records (it never opens the store itself). Fails the test when
    /// the command fails; returns its stdout.
    pub fn inspect(&self, args: &[&str]) -> String {
        let o = Command::new(bin("musterd"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("inspect")
            .args(args)
            .output()
            .expect("running musterd inspect");
        assert!(
            o.status.success(),
            "musterd inspect {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs the real `muster` CLI against this server with the admin token.
    pub fn muster(&self, args: &[&str]) -> Output {
        self.muster_with(args, &self.token, None)
    }

    /// Runs the CLI with a token and optional stdin.
    pub fn muster_with(&self, args: &[&str], token: &str, stdin: Option<&[u8]>) -> Output {
        if self.opts.tls_auto {
            // The CLI trusts the server's CA through MUSTER_CA_CERT, as an operator would.
            let ca = self.ca_path();
            let mut full: Vec<&str> = vec!["--ca-cert", ca.to_str().unwrap_or_default()];
            full.extend_from_slice(args);
            return run_cli(&self.url(), token, &full, stdin);
        }
        run_cli(&self.url(), token, args, stdin)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `muster` with server and token from the environment, as an operator would.
pub fn run_cli(server: &str, token: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(bin("muster"));
    cmd.args(args)
        .env("MUSTER_SERVER", server)
        .env("MUSTER_TOKEN", token)
        .env_remove("MUSTER_TOKEN_FILE")
        .env("HOME", std::env::temp_dir())
        .env_remove("XDG_CONFIG_HOME")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn muster");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    child.wait_with_output().expect("wait muster")
}

/// The clients' shared bearer interceptor (`muster::client`), so the tests authenticate
/// exactly as the CLI and the bridge do.
pub use muster::client::Bearer;

/// The interceptor for `token`; an empty (or unusable) token sends no header at all.
pub fn bearer(token: &str) -> Bearer {
    Bearer::new(Some(token)).unwrap_or_default()
}

/// Inventory client type used by the tests.
pub type InventoryClient =
    InventoryServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;
/// Audit client type used by the tests.
pub type AuditClient = pb::audit_service_client::AuditServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, Bearer>,
>;

/// Builders for test resources.
pub mod fixtures {
    use muster::pb::{self, ObjectMeta, resource::Resource as R};

    fn meta(name: &str, labels: &[(&str, &str)]) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
    }

    /// A site.
    pub fn site(name: &str) -> pb::Resource {
        pb::Resource {
            resource: Some(R::Site(pb::Site {
                meta: meta(name, &[]),
                region: "eu".into(),
                ..Default::default()
            })),
        }
    }

    /// A rack in a site.
    pub fn rack(name: &str, site: &str) -> pb::Resource {
        pb::Resource {
            resource: Some(R::Rack(pb::Rack {
                meta: meta(name, &[]),
                site: site.into(),
                height_u: 42,
                ..Default::default()
            })),
        }
    }

    /// A server with labels and no site.
    pub fn device(name: &str, labels: &[(&str, &str)]) -> pb::Resource {
        pb::Resource {
            resource: Some(R::Device(pb::Device {
                meta: meta(name, labels),
                kind: pb::DeviceKind::Server as i32,
                serial: format!("SN-{name}"),
                ..Default::default()
            })),
        }
    }

    /// The name of a resource (for `.map(name_of)`).
    pub fn name_of(r: &pb::Resource) -> String {
        r.name().to_string()
    }

    /// The revision of a resource.
    pub fn revision_of(r: &pb::Resource) -> u64 {
        r.meta().map_or(0, |m| m.revision)
    }
}

/// Every object of every kind, in a comparable form, for "nothing changed" assertions.
pub async fn snapshot(client: &mut InventoryClient) -> anyhow::Result<Vec<pb::Resource>> {
    let mut all = Vec::new();
    for kind in [
        pb::ResourceKind::Site,
        pb::ResourceKind::Rack,
        pb::ResourceKind::Device,
        pb::ResourceKind::Profile,
        pb::ResourceKind::Window,
        pb::ResourceKind::Credential,
    ] {
        let mut token = String::new();
        loop {
            let r = client
                .list(pb::ListRequest {
                    kind: kind as i32,
                    page_size: 1000,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            all.extend(r.resources);
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
    }
    Ok(all)
}
