//! The connection to the server: TLS, the bearer-token interceptor, and call helpers that turn
//! statuses into one-line errors and bound unary calls by `--timeout`.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use muster::pb::admin_service_client::AdminServiceClient;
use muster::pb::agent_service_client::AgentServiceClient;
use muster::pb::audit_service_client::AuditServiceClient;
use muster::pb::config_service_client::ConfigServiceClient;
use muster::pb::inventory_service_client::InventoryServiceClient;
use tonic::codegen::http::Uri;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use crate::config::Settings;
use crate::errors::{RpcError, root_cause};

/// Largest response accepted (a page of 500 devices with full status can be large).
const MAX_DECODING_BYTES: usize = 256 * 1024 * 1024;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Auth>;

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
    timeout: Duration,
}

impl Clients {
    /// Connects now, so that an unreachable server is reported once and clearly.
    pub async fn connect(settings: &Settings) -> Result<Clients> {
        let auth = Auth {
            header: match &settings.token {
                Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                    anyhow!("invalid token: it contains characters not allowed in a header")
                })?),
                None => None,
            },
        };
        let endpoint = endpoint(settings)?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow!("cannot connect to {}: {}", settings.server, root_cause(&e)))?;
        Ok(Clients {
            inventory: InventoryServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_DECODING_BYTES),
            config: ConfigServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_DECODING_BYTES),
            audit: AuditServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_DECODING_BYTES),
            admin: AdminServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_DECODING_BYTES),
            agent: AgentServiceClient::with_interceptor(channel, auth)
                .max_decoding_message_size(MAX_DECODING_BYTES),
            timeout: settings.timeout,
        })
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

/// The endpoint for `--server`, with TLS for `https://`.
fn endpoint(settings: &Settings) -> Result<Endpoint> {
    let url = settings.server.trim();
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid server URL {url:?}"))?;
    let host = match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => host.to_string(),
        _ => bail!("invalid server URL {url:?}: expected http://HOST:PORT or https://HOST:PORT"),
    };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("invalid server URL {url:?}"))?
        .connect_timeout(settings.timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if uri.scheme_str() == Some("https") {
        let domain = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut tls = ClientTlsConfig::new().domain_name(domain);
        match &settings.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read CA certificate {}", path.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            None => tls = tls.with_native_roots(),
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| anyhow!("invalid TLS configuration: {}", root_cause(&e)))?;
    }
    Ok(endpoint)
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
        }
    }

    #[test]
    fn server_urls() {
        assert!(endpoint(&settings("http://127.0.0.1:7070")).is_ok());
        assert!(endpoint(&settings("https://muster.example:7070")).is_ok());
        let err = endpoint(&settings("127.0.0.1:7070"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid server URL"), "{err}");
        let err = endpoint(&settings("ftp://x")).unwrap_err().to_string();
        assert!(err.contains("invalid server URL"), "{err}");
    }

    #[test]
    fn interceptor_adds_bearer_token() {
        let mut auth = Auth {
            header: Some("Bearer s3cret".parse().unwrap()),
        };
        let req = auth.call(Request::new(())).unwrap();
        assert_eq!(
            req.metadata()
                .get("authorization")
                .unwrap()
                .to_str()
                .unwrap(),
            "Bearer s3cret"
        );
        let mut none = Auth { header: None };
        assert!(
            none.call(Request::new(()))
                .unwrap()
                .metadata()
                .get("authorization")
                .is_none()
        );
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
