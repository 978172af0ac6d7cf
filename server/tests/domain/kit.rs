//! The in-process test kit: `musterd`'s `Server` in this test process, on 127.0.0.1:0, with a
//! manual clock, shut down through a channel. For tests of the domain (token expiry, silence,
//! drift causes) that advance the clock instead of sleeping; the e2e suite (tests/) keeps
//! testing the real binaries.

use std::sync::Arc;
use std::time::Duration;

use muster::client::Bearer;
use muster::clock::ManualClock;
use muster::pb::admin_service_client::AdminServiceClient;
use muster::pb::audit_service_client::AuditServiceClient;
use muster::pb::campaign_service_client::CampaignServiceClient;
use muster::pb::config_service_client::ConfigServiceClient;
use muster::pb::inventory_service_client::InventoryServiceClient;
use muster_server::config::{Config, TokenConfig};
use muster_server::{Listeners, Server};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The admin token every kit server accepts (configured, not bootstrapped).
pub const ADMIN_TOKEN: &str = "kit-admin-0123456789abcdef0123456789abcdef";

/// Campaign engine parts for a kit server (None: the server's defaults), and the clock.
#[derive(Default)]
pub struct Campaign {
    pub executor: Option<Arc<dyn muster_server::campaigns::executor::Executor>>,
    pub observer: Option<Arc<dyn muster_server::campaigns::observe::Observer>>,
    pub clock: Option<Arc<ManualClock>>,
}

/// An authenticated channel.
pub type Authed = InterceptedService<Channel, Bearer>;

/// A running in-process server.
pub struct TestServer {
    pub clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), muster_server::ServeError>>>,
    channel: Channel,
    /// `http://` or, with `tls_auto`, `https://` and the address.
    pub url: String,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl TestServer {
    /// Starts a server whose clock reads the real time now and then moves only when told.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusted its config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        Self::start_full(tweak, Campaign::default(), None).await
    }

    /// Starts a server with campaign parts, on `dir` (a previous server's, to restart it) or
    /// a new directory.
    pub async fn start_full(
        tweak: impl FnOnce(&mut Config),
        parts: Campaign,
        dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(d) => d,
            None => tempfile::tempdir()?,
        };
        let mut config = Config {
            data_dir: dir.path().join("data"),
            // Durability is the e2e suite's business; the domain tests want speed.
            fdatasync: false,
            tokens: vec![TokenConfig {
                name: "alice".into(),
                role: "admin".into(),
                sha256: sha256_hex(ADMIN_TOKEN),
            }],
            ..Config::default()
        };
        tweak(&mut config);
        let tls_auto = config.tls_auto;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let clock = parts.clock.unwrap_or_else(ManualClock::starting_now);
        let mut server = Server::open_with_clock(config, clock.clone()).await?;
        if let Some(e) = parts.executor {
            server = server.with_campaign_executor(e);
        }
        if let Some(o) = parts.observer {
            server = server.with_campaign_observer(o);
        }
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(
            Listeners {
                grpc: listener,
                metrics: None,
            },
            async move {
                let _ = rx.await;
            },
        ));
        // With `tls_auto` the server speaks TLS with a certificate of its own CA (and agents
        // can present the client certificates they enroll for).
        let tls = if tls_auto {
            Some(std::fs::read(dir.path().join("data").join("agent-ca.pem"))?)
        } else {
            None
        };
        let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())?
            .connect_timeout(Duration::from_secs(5));
        if let Some(ca) = tls {
            endpoint = endpoint.tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )?;
        }
        let channel = endpoint.connect().await?;
        Ok(Self {
            clock,
            _dir: dir,
            shutdown: Some(tx),
            task: Some(task),
            channel,
            url,
        })
    }

    /// The agent CA's certificate (what an agent trusts the server by).
    pub fn agent_ca(&self) -> std::path::PathBuf {
        self._dir.path().join("data").join("agent-ca.pem")
    }

    pub fn config(&self, token: &str) -> ConfigServiceClient<Authed> {
        ConfigServiceClient::new(self.authed(token))
    }

    /// A channel presenting `token`.
    pub fn authed(&self, token: &str) -> Authed {
        let bearer = Bearer::new(Some(token)).expect("a printable token");
        InterceptedService::new(self.channel.clone(), bearer)
    }

    pub fn inventory(&self, token: &str) -> InventoryServiceClient<Authed> {
        InventoryServiceClient::new(self.authed(token))
    }

    pub fn admin(&self, token: &str) -> AdminServiceClient<Authed> {
        AdminServiceClient::new(self.authed(token))
    }

    pub fn audit(&self, token: &str) -> AuditServiceClient<Authed> {
        AuditServiceClient::new(self.authed(token))
    }

    /// The audit trail of `principal`, refusals included (the first 1,000 entries).
    pub async fn trail(&self, principal: &str) -> Vec<muster::pb::Change> {
        self.audit(ADMIN_TOKEN)
            .list(muster::pb::ListChangesRequest {
                include_refused: true,
                principal: principal.into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("the admin reads the audit trail")
            .into_inner()
            .changes
    }

    /// Moves the server's clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub fn campaigns(&self, token: &str) -> CampaignServiceClient<Authed> {
        CampaignServiceClient::new(self.authed(token))
    }

    /// A copy of the data directory as it is on disk now, as a crash would leave it (the
    /// server keeps running; a second one can be started on the copy). In-process servers
    /// cannot be restarted on their own directory: background tasks keep the store open
    /// until the process ends.
    pub fn crash_copy(&self) -> anyhow::Result<tempfile::TempDir> {
        fn copy(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
            std::fs::create_dir_all(to)?;
            for e in std::fs::read_dir(from)? {
                let e = e?;
                let target = to.join(e.file_name());
                if e.file_type()?.is_dir() {
                    copy(&e.path(), &target)?;
                } else {
                    std::fs::copy(e.path(), target)?;
                }
            }
            Ok(())
        }
        let dir = tempfile::tempdir()?;
        copy(self._dir.path(), dir.path())?;
        Ok(dir)
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
