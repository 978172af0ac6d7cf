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
pub mod config;
pub mod desired;
pub mod drift;
pub mod drift_engine;
pub mod export;
pub mod grpc;
pub mod health;
pub mod ingest;
pub mod inventory;
pub mod metrics;
pub mod model;
pub mod observed;
pub mod pki;
pub mod plan_pool;
pub mod planning;
pub mod set_order;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use muster::pb::admin_service_server::AdminServiceServer;
use muster::pb::agent_service_server::AgentServiceServer;
use muster::pb::audit_service_server::AuditServiceServer;
use muster::pb::config_service_server::ConfigServiceServer;
use muster::pb::export_service_server::ExportServiceServer;
use muster::pb::inventory_service_server::InventoryServiceServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::agents::{AgentSettings, Agents};
use crate::pki::{AgentCa, PkiError};

use crate::auth::TokenRegistry;
use crate::config::Config;
use crate::grpc::Shared;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::model::secrets::SecretBox;
use crate::store::{SledStore, Store, StoreError, StoreOptions};

/// How long in-flight requests may take to finish after shutdown is requested. HTTP/2's
/// graceful close waits for each client to acknowledge; a stuck client must not keep the
/// process alive (acknowledged writes are durable anyway).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    #[error("cannot load the secrets key {path}: {source}")]
    SecretsKey {
        path: PathBuf,
        source: std::io::Error,
    },
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
    drift: Arc<drift_engine::DriftEngine>,
    ca: Arc<AgentCa>,
    metrics: Arc<Metrics>,
    /// Set when a bootstrap admin token was written at this start.
    pub created_admin_token: Option<PathBuf>,
}

impl Server {
    /// Opens the store, the secrets key and the token registry.
    pub async fn open(config: Config) -> Result<Self, ServeError> {
        let opts = StoreOptions {
            cache_capacity_bytes: config.cache_capacity_mb.saturating_mul(1024 * 1024),
            fdatasync: config.fdatasync,
        };
        let dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || SledStore::open(&dir, &opts))
            .await
            .map_err(|e| ServeError::Join(e.to_string()))??;
        let store: Arc<dyn Store> = Arc::new(store);
        let moved = observed::upgrade_layout(&*store).await?;
        if moved > 0 {
            tracing::info!(moved, "moved bulky facts sections to their own key range");
        }
        let key_path = config
            .secrets_key_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("secrets.key"));
        let secrets =
            SecretBox::load_or_create(&key_path).map_err(|source| ServeError::SecretsKey {
                path: key_path,
                source,
            })?;
        let (tokens, created_admin_token) =
            TokenRegistry::load(&config.tokens, &*store, &config.data_dir)?;
        let inventory = Arc::new(Inventory::new(Arc::clone(&store), secrets));
        let ca = Arc::new(AgentCa::load_or_create(&config.data_dir)?);
        let settings = AgentSettings {
            report_interval: Duration::from_millis(config.agent_report_interval_ms.max(1)),
            jitter: config.agent_jitter,
            ..AgentSettings::default()
        };
        let agents = Arc::new(
            Agents::open(Arc::clone(&inventory), Arc::clone(&ca), settings)
                .map_err(ServeError::Agents)?,
        );
        let metrics = Arc::new(Metrics::new(store));
        let drift = drift_engine::DriftEngine::start(Arc::clone(&inventory));
        Ok(Self {
            config,
            shared: Shared {
                inventory,
                tokens: Arc::new(tokens),
            },
            agents,
            drift,
            ca,
            metrics,
            created_admin_token,
        })
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
            planner: planning::Planner::new(
                Arc::clone(&self.shared.inventory),
                Arc::clone(&self.drift),
            ),
        })
        .max_decoding_message_size(backstop);
        let export = ExportServiceServer::new(grpc::export::ExportApi(self.shared.clone()))
            .max_decoding_message_size(backstop);

        let mut builder = tonic::transport::Server::builder()
            // One span per request, so everything logged while serving it names the RPC.
            .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .concurrency_limit_per_connection(1024);
        if let Some(tls) = &self.config.tls {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|source| ServeError::TlsFile {
                    path: p.clone(),
                    source,
                })
            };
            let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
            builder = builder.tls_config(self.tls_config(identity))?;
        } else if self.config.tls_auto {
            let (cert, key) = self.ca.issue_server(&self.config.tls_names)?;
            builder = builder.tls_config(self.tls_config(Identity::from_pem(cert, key)))?;
        }
        let sweeper = tokio::spawn(sweep_silent_agents(
            Arc::clone(&self.agents),
            Duration::from_millis(self.config.agent_report_interval_ms.clamp(100, 30_000) / 2),
        ));
        let metrics_task = listeners
            .metrics
            .map(|l| tokio::spawn(metrics::serve_metrics(l, Arc::clone(&self.metrics))));
        let incoming = TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
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
        result.map_err(ServeError::from)
    }
}

impl Server {
    /// TLS with optional client certificates: agents present the one issued at enrollment,
    /// people and automation use bearer tokens without one.
    fn tls_config(&self, identity: Identity) -> ServerTlsConfig {
        ServerTlsConfig::new()
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
            tracing::info!(devices = n, "agents went silent; health set to UNKNOWN");
        }
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
