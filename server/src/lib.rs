//! musterd: the fleet inventory and configuration server.
//!
//! `Server::open` opens the store and everything that needs it; `Server::run` serves gRPC (and
//! metrics) on listeners the caller bound, until `shutdown` resolves. `serve` does both. The
//! binary in `main.rs` only parses flags and config, sets up logging and binds.
//!
//! Layers: `model` (domain rules, no I/O), `store` (sled persistence), `inventory` (domain
//! operations over both), `grpc` (thin handlers and the one error mapping), `auth`, `metrics`.

pub mod agents;
pub mod auth;
pub mod aux_keys;
pub mod campaign;
pub mod campaigns;
pub mod config;
pub mod drift;
pub mod export;
pub mod grpc;
pub mod health;
pub mod idle;
pub mod ingest;
pub mod inventory;
pub mod keys;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod observed;
pub mod pki;
pub mod plan_pool;
pub mod refusal_limit;
pub mod scope;
pub mod set_order;
pub mod ssh;
pub mod store;
pub mod store_map;
pub mod tokens;
pub mod vm_discovery;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use muster::clock::SharedClock;
use muster::pb::admin_service_server::AdminServiceServer;
use muster::pb::agent_service_server::AgentServiceServer;
use muster::pb::audit_service_server::AuditServiceServer;
use muster::pb::campaign_service_server::CampaignServiceServer;
use muster::pb::config_service_server::ConfigServiceServer;
use muster::pb::export_service_server::ExportServiceServer;
use muster::pb::inventory_service_server::InventoryServiceServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::agents::{AgentSettings, Agents};
use crate::pki::{AgentCa, PkiError};

use crate::auth::TokenRegistry;
use crate::config::Config;
use crate::grpc::Shared;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::store::{SledStore, Store, StoreError, StoreOptions};

/// How long in-flight requests may take to finish after shutdown is requested. HTTP/2's
/// graceful close waits for each client to acknowledge; a stuck client must not keep the
/// process alive (acknowledged writes are durable anyway).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// TCP keepalive on accepted connections: finds peers that vanished without a FIN even
/// before HTTP/2 is up (its keepalive needs a completed handshake).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why the server could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {0} without TLS: configure tls.cert and tls.key (or --tls-auto), or pass --insecure"
    )]
    PlaintextOffLoopback(SocketAddr),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot set up tokens: {0}")]
    Auth(#[from] auth::AuthSetupError),
    #[error("key material: {0}")]
    Keys(#[from] keys::KeyError),
    #[error("cannot read TLS material {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent CA: {0}")]
    Pki(#[from] PkiError),
    #[error("cannot set up agent handling: {0}")]
    Agents(crate::model::ApiError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("background task failed: {0}")]
    Join(String),
    #[error("campaign executor: {0}")]
    Campaigns(String),
}

/// Listeners bound by the caller (so tests can bind port 0 and know the port first).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
}

/// An opened server, ready to run.
#[derive(Debug)]
pub struct Server {
    config: Config,
    shared: Shared,
    agents: Arc<Agents>,
    drift: drift::DriftEngine,
    ca: Arc<AgentCa>,
    metrics: Arc<Metrics>,
    /// Set when a bootstrap admin token was written at this start.
    pub created_admin_token: Option<PathBuf>,
    /// The campaign engine's executor and observer (None: the defaults).
    campaign_executor: Option<Arc<dyn campaigns::executor::Executor>>,
    campaign_observer: Option<Arc<dyn campaigns::observe::Observer>>,
}

impl Server {
    /// Opens the store, the key material (checked against the store) and the token registry.
    pub async fn open(config: Config) -> Result<Self, ServeError> {
        Self::open_with_clock(config, muster::clock::system()).await
    }

    /// Like [`Server::open`], reading time from `clock` (tests pass a manual one).
    pub async fn open_with_clock(config: Config, clock: SharedClock) -> Result<Self, ServeError> {
        let opts = StoreOptions {
            cache_capacity_bytes: config.cache_capacity_mb.saturating_mul(1024 * 1024),
            fdatasync: config.fdatasync,
        };
        // Where a restart's time goes, logged once the server is open.
        let phase = muster::clock::Stopwatch::start();
        let dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || SledStore::open(&dir, &opts))
            .await
            .map_err(|e| ServeError::Join(e.to_string()))??;
        let store: Arc<dyn Store> = Arc::new(store);
        let store_ms = phase.elapsed().as_millis();
        let moved = observed::upgrade_layout(&*store).await?;
        if moved > 0 {
            tracing::info!(moved, "moved bulky facts sections to their own key range");
        }
        let paths = keys::KeyPaths::new(&config.data_dir, config.secrets_key_file.as_deref());
        let keys = keys::open(&*store, &paths).await?;
        let keys_ms = phase.elapsed().as_millis();
        let (tokens, created_admin_token) = TokenRegistry::load(
            &config.tokens,
            &*store,
            &config.data_dir,
            Arc::clone(&clock),
        )
        .await?;
        let limits = limits::Limits {
            watches_per_principal: config.max_watches_per_principal.max(1),
            refusals: refusal_limit::RefusalPolicy {
                per_window: config.refusals_per_window,
                window: Duration::from_millis(config.refusal_window_ms.max(1)),
                global_per_window: config.refusals_global_per_window,
            },
        };
        let (notifier, mailbox) = drift::mailbox();
        let inventory = Arc::new(Inventory::with_limits(
            Arc::clone(&store),
            keys.secrets,
            limits,
            clock,
            notifier,
        ));
        let ca = Arc::new(keys.ca);
        let settings = AgentSettings {
            report_interval: Duration::from_millis(config.agent_report_interval_ms.max(1)),
            jitter: config.agent_jitter,
            cert_validity: Duration::from_secs(config.agent_cert_validity_secs),
            renew_fraction: config.agent_cert_renew_fraction,
            cert_warn: Duration::from_secs(config.agent_cert_warn_secs),
            max_report_bytes: config.max_message_bytes,
            max_discovered_vms: config.max_discovered_vms_per_hypervisor,
            ..AgentSettings::default()
        };
        let agents = Arc::new(
            Agents::open(Arc::clone(&inventory), Arc::clone(&ca), settings)
                .map_err(ServeError::Agents)?,
        );
        let agents_ms = phase.elapsed().as_millis();
        let metrics = Arc::new(Metrics::new(store));
        let drift = drift::DriftEngine::start(Arc::clone(&inventory), mailbox);
        tracing::info!(
            store_ms,
            keys_ms,
            agents_ms,
            open_ms = phase.elapsed().as_millis(),
            "store opened (milliseconds since start, cumulative; the drift engine loads on)"
        );
        Ok(Self {
            config,
            shared: Shared {
                inventory,
                tokens: Arc::new(tokens),
                keys: Arc::new(keys.files),
            },
            agents,
            drift,
            ca,
            metrics,
            created_admin_token,
            campaign_executor: None,
            campaign_observer: None,
        })
    }

    /// Runs campaign steps through `executor` instead of over SSH (tests and benchmarks: the
    /// in-process one).
    pub fn with_campaign_executor(mut self, e: Arc<dyn campaigns::executor::Executor>) -> Self {
        self.campaign_executor = Some(e);
        self
    }

    /// Observes hosts for campaigns through `o` (benchmarks: simulated agents).
    pub fn with_campaign_observer(mut self, o: Arc<dyn campaigns::observe::Observer>) -> Self {
        self.campaign_observer = Some(o);
        self
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = listeners.grpc.local_addr().map_err(ServeError::Listener)?;
        if !addr.ip().is_loopback() && !self.config.has_tls() && !self.config.insecure {
            return Err(ServeError::PlaintextOffLoopback(addr));
        }
        let limit = self.config.max_message_bytes;
        let (health, health_svc) = tonic_health::server::health_reporter();
        health
            .set_serving::<InventoryServiceServer<grpc::inventory::InventoryApi>>()
            .await;
        health
            .set_serving::<AuditServiceServer<grpc::audit::AuditApi>>()
            .await;
        health
            .set_serving::<AdminServiceServer<grpc::admin::AdminApi>>()
            .await;
        health
            .set_serving::<AgentServiceServer<grpc::agent::AgentApi>>()
            .await;
        health
            .set_serving::<ConfigServiceServer<grpc::config::ConfigApi>>()
            .await;
        health
            .set_serving::<ExportServiceServer<grpc::export::ExportApi>>()
            .await;
        health
            .set_serving::<CampaignServiceServer<grpc::campaign::CampaignApi>>()
            .await;
        let (campaign_engine, campaign_task) = campaigns::Campaigns::start(
            Arc::clone(&self.shared.inventory),
            campaigns::Parts {
                executor: match self.campaign_executor.clone() {
                    Some(e) => e,
                    None => Arc::new(
                        campaigns::remote::SshStepExecutor::from_config(
                            &self.config.campaigns,
                            Arc::clone(&self.shared.inventory),
                        )
                        .map_err(|e| ServeError::Campaigns(e.to_string()))?,
                    ),
                },
                observer: self.campaign_observer.clone().unwrap_or_else(|| {
                    Arc::new(campaigns::observe::StoreObserver {
                        inventory: Arc::clone(&self.shared.inventory),
                    })
                }),
                lease: Arc::new(campaigns::lease::SingleNodeLease),
            },
        );
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(muster::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        // tonic's own decode limit stays above ours so that ours (RESOURCE_EXHAUSTED) answers.
        let backstop = limit.saturating_mul(2);
        let inventory =
            InventoryServiceServer::new(grpc::inventory::InventoryApi(self.shared.clone()))
                .max_decoding_message_size(backstop);
        let audit = AuditServiceServer::new(grpc::audit::AuditApi(self.shared.clone()))
            .max_decoding_message_size(backstop);
        let admin = AdminServiceServer::new(grpc::admin::AdminApi(self.shared.clone()))
            .max_decoding_message_size(backstop);
        let agent = AgentServiceServer::new(grpc::agent::AgentApi {
            shared: self.shared.clone(),
            agents: Arc::clone(&self.agents),
        })
        .max_decoding_message_size(backstop);
        let config_svc = ConfigServiceServer::new(grpc::config::ConfigApi {
            shared: self.shared.clone(),
            planner: drift::Planner::new(Arc::clone(&self.shared.inventory), self.drift.clone()),
        })
        .max_decoding_message_size(backstop);
        let export = ExportServiceServer::new(grpc::export::ExportApi(self.shared.clone()))
            .max_decoding_message_size(backstop);
        let campaign_svc = CampaignServiceServer::new(grpc::campaign::CampaignApi {
            shared: self.shared.clone(),
            campaigns: campaign_engine.clone(),
        })
        .max_decoding_message_size(backstop);

        let c = &self.config;
        let handshake_timeout = Duration::from_millis(c.handshake_timeout_ms.max(1));
        let streams = c.max_concurrent_streams.max(1);
        let mut builder = tonic::transport::Server::builder()
            // One span per request, so everything logged while serving it names the RPC.
            .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
            // Dead or unresponsive peers are closed; the stream cap is advertised in SETTINGS,
            // so a client opening more gets REFUSED_STREAM (UNAVAILABLE, retryable).
            .http2_keepalive_interval(Some(Duration::from_millis(c.keepalive_interval_ms.max(1))))
            .http2_keepalive_timeout(Some(Duration::from_millis(c.keepalive_timeout_ms.max(1))))
            .max_concurrent_streams(streams)
            .concurrency_limit_per_connection(streams as usize);
        if let Some(tls) = &self.config.tls {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|source| ServeError::TlsFile {
                    path: p.clone(),
                    source,
                })
            };
            let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
            builder = builder.tls_config(self.tls_config(identity, handshake_timeout))?;
        } else if self.config.tls_auto {
            let (cert, key) = self.ca.issue_server(&self.config.tls_names)?;
            builder = builder
                .tls_config(self.tls_config(Identity::from_pem(cert, key), handshake_timeout))?;
        }
        let token_persister = tokio::spawn(tokens::persist_loop(
            Arc::clone(&self.shared.tokens),
            Arc::clone(self.shared.inventory.store()),
        ));
        let sweeper = tokio::spawn(sweep_silent_agents(
            Arc::clone(&self.agents),
            Duration::from_millis(self.config.agent_report_interval_ms.clamp(100, 30_000) / 2),
        ));
        let refusals = tokio::spawn(sweep_refusals(Arc::clone(&self.shared.inventory)));
        // ConfigService is NOT_SERVING while the drift engine cannot answer.
        let drift_health = tokio::spawn(grpc::health::follow_drift_engine(
            self.drift.clone(),
            health.clone(),
            Arc::clone(&self.metrics),
        ));
        let metrics_task = listeners
            .metrics
            .map(|l| tokio::spawn(metrics::serve_metrics(l, Arc::clone(&self.metrics))));
        let shedding = Arc::new(listen::Shedding::default());
        let activity = Arc::new(idle::Activity::default());
        let max_connections = listen::effective_max_connections(self.config.max_connections);
        if max_connections < self.config.max_connections {
            tracing::info!(
                max_connections,
                configured = self.config.max_connections,
                reserve = listen::FD_RESERVE,
                "max_connections lowered to fit the descriptor limit (RLIMIT_NOFILE)"
            );
        }
        let incoming = listen::incoming(
            listeners.grpc,
            listen::ListenLimits {
                max_connections,
                handshake_timeout,
                // Plaintext: the HTTP/2 preface. TLS: any ClientHello is longer, and rustls
                // runs the whole handshake under the same timeout.
                first_bytes: listen::HTTP2_PREFACE_LEN,
                tcp_keepalive: Some(TCP_KEEPALIVE),
                idle_timeout: (self.config.idle_timeout_ms > 0)
                    .then(|| Duration::from_millis(self.config.idle_timeout_ms)),
            },
            self.metrics.connections(),
            Arc::clone(&shedding),
            Arc::clone(&activity),
        );
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let watches = Arc::clone(&self.shared.inventory);
        let shutdown = async move {
            shutdown.await;
            watches.stop_watches();
            let _ = stopping_tx.send(());
        };
        let grace_over = async move {
            match stopping_rx.await {
                Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
                Err(_) => std::future::pending().await,
            }
        };
        let serve = builder
            .layer(grpc::edge::EdgeLayer {
                limit,
                metrics: Arc::clone(&self.metrics),
                methods: Arc::new(grpc::methods::KnownMethods::served()),
                shedding: Arc::clone(&shedding),
                activity,
                inventory: Arc::clone(&self.shared.inventory),
            })
            .add_service(health_svc)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(inventory)
            .add_service(audit)
            .add_service(admin)
            .add_service(agent)
            .add_service(config_svc)
            .add_service(export)
            .add_service(campaign_svc)
            .serve_with_incoming_shutdown(incoming, shutdown);
        let result = tokio::select! {
            r = serve => r,
            () = grace_over => {
                tracing::warn!("shutdown grace period over; closing the remaining connections");
                Ok(())
            }
        };
        if let Some(t) = metrics_task {
            t.abort();
        }
        sweeper.abort();
        // The engine finishes its round (writes made durable) and stops.
        campaign_engine.shutdown();
        let _ = campaign_task.await;
        token_persister.abort();
        // The last "last used" times, which the minutely task has not written yet.
        if let Err(e) = self
            .shared
            .tokens
            .persist_last_used(self.shared.inventory.store())
            .await
        {
            tracing::warn!(error = %e, "could not persist token last-used times at shutdown");
        }
        refusals.abort();
        drift_health.abort();
        self.drift.shutdown();
        // Floods of windows still open are summarised now rather than lost.
        self.shared.inventory.flush_refusal_summaries();
        result.map_err(ServeError::from)
    }
}

impl Server {
    /// TLS with optional client certificates: agents present the one issued at enrollment,
    /// people and automation use bearer tokens without one.
    fn tls_config(&self, identity: Identity, handshake_timeout: Duration) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .timeout(handshake_timeout)
            .identity(identity)
            .client_ca_root(Certificate::from_pem(self.ca.ca_pem()))
            .client_auth_optional(true)
    }
}

/// Marks agents that stopped reporting, every `every`.
async fn sweep_silent_agents(agents: Arc<Agents>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = agents.sweep_silent().await;
        if n > 0 {
            tracing::info!(
                devices = n,
                "agents went silent (UNKNOWN) or their certificates expired (CRITICAL)"
            );
        }
    }
}

/// Writes the summaries of refusal floods whose window ended, a few times per window.
async fn sweep_refusals(inventory: Arc<Inventory>) {
    let window = inventory.refusal_policy().window;
    let every = (window / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        inventory.sweep_refusals();
    }
}

/// Opens and runs a server: the library entry point.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Server::open(config).await?.run(listeners, shutdown).await
}
