//! The connection to musterd and the bridge's two calls: the one streaming export per run
//! (answered from the cache when the server says nothing changed) and the agentless ingest.
//! Connecting (URL, TLS, bearer token, the plaintext refusal) is `muster::client`'s.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use muster::client::{Bearer, ClientConfig, root_cause};
use muster::pb::{self, export_service_client::ExportServiceClient};
use tokio_stream::StreamExt;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cache::Cache;
use crate::config::Settings;

/// Largest message accepted or sent (chunks of 500 devices, batches of facts).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

type Client = ExportServiceClient<InterceptedService<Channel, Bearer>>;

/// A status as one line: `UNAUTHENTICATED: ...`, with the transport cause when there is one.
pub fn status_line(s: &Status) -> String {
    let name = muster::status::code_name(s.code());
    let mut line = name.to_string();
    let msg = s.message().trim();
    if !msg.is_empty() {
        line.push_str(": ");
        line.push_str(msg);
    }
    if std::error::Error::source(s).is_some() {
        let cause = root_cause(s);
        if !cause.is_empty() && !msg.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line.replace('\n', " ")
}

/// Connects now, so an unreachable server is one clear error. The request timeout bounds the
/// whole export stream too.
async fn connect(s: &Settings) -> Result<Client> {
    let auth = Bearer::new(s.token.as_deref())?;
    let cfg = ClientConfig {
        server: s.server.clone(),
        ca_cert: s.ca_cert.clone(),
        connect_timeout: s.timeout,
        insecure: s.insecure,
    };
    let endpoint = muster::client::endpoint(&cfg)?.timeout(s.timeout);
    let channel = muster::client::connect(&cfg, endpoint).await?;
    Ok(ExportServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Everything one export carried, merged into one message (header, all devices, windows):
/// the unit the cache stores.
pub type Export = pb::ExportChunk;

/// Runs the one streaming export, or answers from the cache when its version is current.
pub async fn fetch(s: &Settings, cache: Option<&Cache>) -> Result<Export> {
    let mut client = connect(s).await?;
    let cached = cache.and_then(Cache::read);
    let version = cached
        .as_ref()
        .and_then(|c| c.header.as_ref())
        .map(|h| h.version.clone())
        .unwrap_or_default();
    let mut stream = client
        .inventory(pb::ExportRequest {
            selector: s.selector.clone(),
            if_none_match: version,
        })
        .await
        .map_err(|st| anyhow!("{}", status_line(&st)))?
        .into_inner();
    let mut out = Export::default();
    let mut first = true;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|st| anyhow!("{}", status_line(&st)))?;
        if first {
            first = false;
            let header = chunk
                .header
                .clone()
                .ok_or_else(|| anyhow!("the server's export has no header"))?;
            if header.not_modified {
                return cached.ok_or_else(|| anyhow!("the server says not modified, but no cache"));
            }
            out.header = Some(header);
        }
        out.devices.extend(chunk.devices);
        out.windows.extend(chunk.windows);
    }
    if first {
        bail!("the server's export ended before its header");
    }
    if let Some(c) = cache {
        c.write(&out);
    }
    Ok(out)
}

/// Sends agentless facts, in batches that stay well below the server's message limit.
pub async fn ingest(
    s: &Settings,
    hosts: Vec<pb::HostFacts>,
    origin: &str,
    interval: Option<Duration>,
) -> Result<Vec<pb::IngestedHost>> {
    /// Bytes per call: below musterd's default 4 MiB request limit.
    const BATCH_BYTES: usize = 3 * 1024 * 1024;
    let mut client = connect(s).await?;
    let mut out = Vec::new();
    let mut batch: Vec<pb::HostFacts> = Vec::new();
    let mut size = 0;
    let mut batches = Vec::new();
    for h in hosts {
        let n = prost::Message::encoded_len(&h);
        if !batch.is_empty() && size + n > BATCH_BYTES {
            batches.push(std::mem::take(&mut batch));
            size = 0;
        }
        size += n;
        batch.push(h);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    for hosts in batches {
        let r = client
            .ingest_facts(pb::IngestFactsRequest {
                hosts,
                origin: origin.to_string(),
                expected_interval: interval.map(|d| pbjson_types::Duration {
                    seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
                reason: "muster-inventory ingest-facts".into(),
                ticket: String::new(),
            })
            .await
            .map_err(|st| anyhow!("{}", status_line(&st)))?;
        out.extend(r.into_inner().hosts);
    }
    Ok(out)
}
