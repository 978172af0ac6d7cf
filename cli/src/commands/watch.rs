//! `muster watch KIND|all`: print events as they arrive, and resume after the last seen
//! revision (bookmarks included) when the server goes away.

use std::time::Duration;

use anyhow::Result;
use muster::pb;
use serde_yaml_ng::{Mapping, Value as YamlValue};
use tonic::Code;

use crate::args::{WatchArgs, WatchTarget};
use crate::client::Clients;
use crate::errors::RpcError;
use crate::kinds::qualified_name;
use crate::manifest;
use crate::output::{self, StreamFormat};

/// First reconnect delay; doubled after each failed attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Streams until interrupted, `--once N` events, or a non-retryable error.
pub async fn run(clients: &Clients, args: WatchArgs) -> Result<()> {
    let selector = super::check_selector(args.selector.as_deref())?;
    let kind = match args.target {
        WatchTarget::All => pb::ResourceKind::Unspecified,
        WatchTarget::Kind(k) => k.to_pb(),
    };
    let mut last_revision = args.since.unwrap_or(0);
    let mut printed = 0u64;
    if args.once == Some(0) {
        return Ok(());
    }
    let mut backoff = MIN_BACKOFF;
    loop {
        let request = pb::WatchRequest {
            kind: kind as i32,
            selector: selector.clone(),
            since_revision: last_revision,
        };
        // No deadline: the stream is meant to stay open.
        let reason = match clients.inventory.clone().watch(request).await {
            Err(status) if retryable(&status) => RpcError(status).to_string(),
            Err(status) => return Err(RpcError(status).into()),
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            backoff = MIN_BACKOFF;
                            last_revision = last_revision.max(event.revision);
                            if event.r#type == pb::EventType::Bookmark as i32 {
                                continue;
                            }
                            output::print(&format_event(&event, args.output)?)?;
                            printed += 1;
                            if args.once.is_some_and(|n| printed >= n) {
                                return Ok(());
                            }
                        }
                        Ok(None) => break "end of stream".to_string(),
                        Err(status) if retryable(&status) => break RpcError(status).to_string(),
                        Err(status) => return Err(RpcError(status).into()),
                    }
                }
            }
        };
        eprintln!("watch: reconnecting after {}", reason.replace('\n', " "));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// UNAVAILABLE (server restarting, connection refused), or a status the client made up from a
/// broken connection (e.g. UNKNOWN "h2 protocol error" when the server dies mid-stream): those
/// carry the transport error as their source, while statuses sent by the server never do.
fn retryable(status: &tonic::Status) -> bool {
    status.code() == Code::Unavailable || std::error::Error::source(status).is_some()
}

/// One event in the chosen format, ending in a newline.
fn format_event(event: &pb::WatchEvent, format: StreamFormat) -> Result<String> {
    let type_name = pb::EventType::try_from(event.r#type)
        .map(|t| t.as_str_name())
        .unwrap_or("UNKNOWN");
    match format {
        StreamFormat::Table => {
            let name = event
                .object
                .as_ref()
                .map(qualified_name)
                .unwrap_or_else(|| "-".to_string());
            Ok(format!("{} {type_name} {name}\n", event.revision))
        }
        StreamFormat::Json | StreamFormat::Yaml => {
            let mut map = Mapping::with_capacity(3);
            map.insert("revision".into(), event.revision.to_string().into());
            map.insert("type".into(), type_name.into());
            if let Some(object) = &event.object {
                map.insert("object".into(), manifest::render(object)?);
            }
            let value = YamlValue::Mapping(map);
            if format == StreamFormat::Json {
                let mut line = serde_json::to_string(&value)?;
                line.push('\n');
                Ok(line)
            } else {
                Ok(format!("---\n{}", manifest::to_yaml(&value)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> pb::WatchEvent {
        pb::WatchEvent {
            revision: 42,
            r#type: pb::EventType::Added as i32,
            object: Some(pb::Resource {
                resource: Some(pb::resource::Resource::Device(pb::Device {
                    meta: Some(pb::ObjectMeta {
                        name: "web-01".into(),
                        ..Default::default()
                    }),
                    kind: pb::DeviceKind::Server as i32,
                    ..Default::default()
                })),
            }),
        }
    }

    #[test]
    fn retries_only_transport_failures() {
        assert!(retryable(&tonic::Status::unavailable("restarting")));
        assert!(!retryable(&tonic::Status::permission_denied("no")));
        assert!(!retryable(&tonic::Status::unknown("server said so")));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(retryable(&tonic::Status::from_error(Box::new(io))));
    }

    #[test]
    fn event_lines() {
        assert_eq!(
            format_event(&event(), StreamFormat::Table).unwrap(),
            "42 ADDED device/web-01\n"
        );
        assert_eq!(
            format_event(&event(), StreamFormat::Json).unwrap(),
            "{\"revision\":\"42\",\"type\":\"ADDED\",\"object\":{\"kind\":\"Device\",\
             \"meta\":{\"name\":\"web-01\"},\"type\":\"SERVER\"}}\n"
        );
    }
}
