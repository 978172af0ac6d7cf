//! The connection to the server (through `muster::client`: URL, TLS, bearer token, the
//! plaintext refusal) and call helpers that turn statuses into one-line errors and bound unary
//! calls by `--timeout`.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use muster::client::{Bearer, ClientConfig};
use muster::clock::SharedClock;
use muster::pb::admin_service_client::AdminServiceClient;
use muster::pb::agent_service_client::AgentServiceClient;
use muster::pb::audit_service_client::AuditServiceClient;
use muster::pb::campaign_service_client::CampaignServiceClient;
use muster::pb::config_service_client::ConfigServiceClient;
use muster::pb::inventory_service_client::InventoryServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::config::Settings;
use crate::errors::RpcError;

/// Largest response accepted (a page of 500 devices with full status can be large).
const MAX_DECODING_BYTES: usize = 256 * 1024 * 1024;

type Svc = InterceptedService<Channel, Bearer>;

/// The service clients over one connection.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Resources: get, list, apply, delete, watch.
    pub inventory: InventoryServiceClient<Svc>,
    /// Desired state: plan, atomic apply, drift.
    pub config: ConfigServiceClient<Svc>,
    /// The audit trail.
    pub audit: AuditServiceClient<Svc>,
    /// Backup and whoami.
    pub admin: AdminServiceClient<Svc>,
    /// Agent enrollment.
    pub agent: AgentServiceClient<Svc>,
    /// Patch campaigns.
    pub campaign: CampaignServiceClient<Svc>,
    timeout: Duration,
    /// Ages and "in 3h" in tables are relative to it.
    clock: SharedClock,
}

impl Clients {
    /// Connects now, so that an unreachable server is reported once and clearly.
    pub async fn connect(settings: &Settings) -> Result<Clients> {
        let auth = Bearer::new(settings.token.as_deref())?;
        let cfg = client_config(settings);
        let channel = muster::client::connect(&cfg, endpoint(&cfg)?).await?;
        Ok(Clients {
            inventory: InventoryServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_DECODING_BYTES),
            config: ConfigServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_DECODING_BYTES),
            audit: AuditServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_DECODING_BYTES),
            admin: AdminServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_DECODING_BYTES),
            agent: AgentServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_DECODING_BYTES),
            campaign: CampaignServiceClient::with_interceptor(channel, auth)
                .max_decoding_message_size(MAX_DECODING_BYTES),
            timeout: settings.timeout,
            clock: muster::clock::system(),
        })
    }

    /// Now, for rendering ages (tables print "5m ago").
    pub fn now(&self) -> std::time::SystemTime {
        let nanos = u64::try_from(self.clock.now_unix_nanos()).unwrap_or(0);
        std::time::UNIX_EPOCH + Duration::from_nanos(nanos)
    }

    /// A request carrying the call deadline, so the server can give up too.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Awaits a unary call within `--timeout`; statuses become [`RpcError`]s.
    pub async fn unary<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(RpcError(status).into()),
            Err(_) => Err(RpcError(Status::deadline_exceeded(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )))
            .into()),
        }
    }
}

fn client_config(settings: &Settings) -> ClientConfig {
    ClientConfig {
        server: settings.server.clone(),
        ca_cert: settings.ca_cert.clone(),
        connect_timeout: settings.timeout,
        insecure: settings.insecure,
    }
}

/// The shared endpoint (plaintext rule, TLS) with keep-alive for long watches.
fn endpoint(cfg: &ClientConfig) -> Result<Endpoint> {
    Ok(muster::client::endpoint(cfg)?
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(server: &str) -> Settings {
        Settings {
            server: server.into(),
            token: None,
            ca_cert: None,
            timeout: Duration::from_secs(1),
            insecure: false,
        }
    }

    #[test]
    fn server_urls() {
        let ep = |s: &str| endpoint(&client_config(&settings(s)));
        assert!(ep("http://127.0.0.1:7070").is_ok());
        assert!(ep("https://muster.example:7070").is_ok());
        let err = ep("127.0.0.1:7070").unwrap_err().to_string();
        assert!(err.contains("invalid server URL"), "{err}");
        let err = ep("ftp://x").unwrap_err().to_string();
        assert!(err.contains("invalid server URL"), "{err}");
        let err = ep("http://192.0.2.10:7070").unwrap_err().to_string();
        assert!(err.contains("--insecure"), "{err}");
    }

    #[tokio::test]
    async fn refused_connection_is_one_line() {
        // Bind then drop a listener to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let err = Clients::connect(&settings(&url))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot connect to {url}: ")),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}
