//! Enrollment: a CSR and the one-time token for a certificate, polling while an operator has
//! yet to approve the host.

use std::time::Duration;

use muster::clock::SharedClock;
use muster::pb::{self, agent_service_client::AgentServiceClient};

use super::AgentError;
use crate::config::AgentConfig;
use crate::identity::{self, Paths, write_atomic};

/// [`enroll_with_clock`] on the system clock (the load generator's entry point).
pub async fn enroll(cfg: &AgentConfig, token: &str, wait: Duration) -> Result<String, AgentError> {
    enroll_with_clock(cfg, token, wait, &muster::clock::system()).await
}

/// Enrolls: sends a CSR with the token, saves the certificate and CA. When the server holds
/// the enrollment for approval, waits (polling) until an operator approves or `wait` (by
/// `clock`) runs out.
pub async fn enroll_with_clock(
    cfg: &AgentConfig,
    token: &str,
    wait: Duration,
    clock: &SharedClock,
) -> Result<String, AgentError> {
    let paths = Paths::new(&cfg.state_dir);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    // The channel first: a refused server (plaintext to a remote host) leaves no key behind.
    let channel = identity::channel(&cfg.server, cfg.ca.as_deref(), &paths, false, cfg.insecure)?;
    let (_, csr) = identity::key_and_csr(&paths, &hostname)?;
    let mut client = AgentServiceClient::new(channel);
    let mut pending = std::fs::read_to_string(&paths.pending)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let started = clock.now_instant();
    let elapsed = || clock.now_instant().saturating_duration_since(started);
    loop {
        let req = pb::EnrollRequest {
            token: if pending.is_empty() {
                token.to_string()
            } else {
                String::new()
            },
            csr_pem: csr.clone(),
            pending_id: pending.clone(),
            hostname: hostname.clone(),
        };
        let resp = match client.enroll(req).await {
            Ok(r) => r.into_inner(),
            // The held enrollment is gone (superseded or unknown): start over with the token.
            Err(s)
                if !pending.is_empty()
                    && !token.is_empty()
                    && s.code() == tonic::Code::Unauthenticated =>
            {
                let _ = std::fs::remove_file(&paths.pending);
                pending.clear();
                continue;
            }
            Err(s) => {
                return Err(AgentError::Enroll(format!(
                    "{:?}: {}",
                    s.code(),
                    s.message()
                )));
            }
        };
        match resp.result {
            Some(pb::enroll_response::Result::Identity(id)) => {
                write_atomic(&paths.cert, id.certificate_pem.as_bytes(), 0o644)?;
                write_atomic(&paths.ca, id.ca_pem.as_bytes(), 0o644)?;
                write_atomic(&paths.device, id.device.as_bytes(), 0o644)?;
                let _ = std::fs::remove_file(&paths.pending);
                let _ = std::fs::remove_file(&paths.csr);
                // A renewal left over from the previous identity must not replace this one.
                let _ = std::fs::remove_file(&paths.cert_next);
                let _ = std::fs::remove_file(&paths.key_next);
                return Ok(id.device);
            }
            Some(pb::enroll_response::Result::Pending(p)) => {
                if pending.is_empty() {
                    write_atomic(&paths.pending, p.pending_id.as_bytes(), 0o600)?;
                    pending = p.pending_id.clone();
                    eprintln!("muster-agent: {}", p.message);
                }
                if elapsed() >= wait {
                    return Err(AgentError::Enroll(format!(
                        "still waiting for approval ({}); run enroll again later to collect the identity",
                        p.message
                    )));
                }
                let retry = p.retry_after.map_or(Duration::from_secs(10), |d| {
                    Duration::from_secs(u64::try_from(d.seconds).unwrap_or(10).max(1))
                });
                tokio::time::sleep(
                    retry
                        .min(wait.saturating_sub(elapsed()))
                        .max(Duration::from_millis(200)),
                )
                .await;
            }
            None => return Err(AgentError::Enroll("empty answer from the server".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plaintext to a host that is not loopback is refused before any key is made or any
    /// socket opened: the token would travel in clear text.
    #[tokio::test]
    async fn plaintext_to_a_remote_server_is_refused_and_leaves_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AgentConfig {
            server: "http://muster.example:7070".into(),
            state_dir: dir.path().to_path_buf(),
            ..AgentConfig::default()
        };
        let err = enroll_with_clock(&cfg, "token", Duration::ZERO, &muster::clock::system())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("muster.example"), "{err}");
        assert!(!Paths::new(dir.path()).key.exists());
    }

    /// A server that is not there: the refusal names the transport error, and the wait for
    /// approval does not start.
    #[tokio::test]
    async fn an_unreachable_server_is_an_enrollment_error() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let cfg = AgentConfig {
            server: format!("http://127.0.0.1:{port}"),
            state_dir: dir.path().to_path_buf(),
            ..AgentConfig::default()
        };
        let err = enroll_with_clock(&cfg, "token", Duration::ZERO, &muster::clock::system())
            .await
            .err();
        assert!(matches!(err, Some(AgentError::Enroll(_))), "{err:?}");
        // No identity was written.
        assert!(!Paths::new(dir.path()).device.exists());
    }
}
