//! One authenticated SSH connection to one target: connect under a timeout, pinned host key,
//! key authentication, then commands on channels of it.
// Step deadlines and poll backoff run on tokio's timer clock (the one `sleep_until` uses, and
// paused in tests), not on the injected wall clock.
#![allow(clippy::disallowed_methods)]

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::time::Instant;

use super::error::SshError;
use super::readloop::{self, ExecResult, LoopLimits};
use super::target::{HostKeyPin, SshTarget};

/// Knobs of the layer; the defaults follow campaigns.md §4.10.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// TCP connect + SSH handshake + authentication (russh has no timeout of its own).
    pub connect_timeout: Duration,
    /// Keepalive when the server has been silent this long.
    pub keepalive_interval: Duration,
    /// Unanswered keepalives before the connection is dropped.
    pub keepalive_max: usize,
    /// Bytes kept per stream per command (head + tail).
    pub capture_bytes: usize,
    /// Between TERM and close on a deadline; also the remote `timeout --kill-after`.
    pub term_grace: Duration,
}

impl Default for SshSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(20),
            keepalive_interval: Duration::from_secs(15),
            keepalive_max: 4,
            capture_bytes: 1024 * 1024,
            term_grace: Duration::from_secs(10),
        }
    }
}

/// Checks the server's key against the pin and remembers what it saw, for the error.
struct PinCheck {
    pin: HostKeyPin,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for PinCheck {
    type Error = russh::Error;

    async fn check_server_key(&mut self, k: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let (ok, seen) = match k {
            PublicKeyOrCertificate::PublicKey { key, .. } => (
                self.pin.matches(key),
                key.fingerprint(HashAlg::Sha256).to_string(),
            ),
            // No CA pinning: a certificate is refused even when its key is the pinned one.
            PublicKeyOrCertificate::Certificate(c) => (
                false,
                format!(
                    "a host certificate for {} (certificates are not accepted)",
                    c.public_key().fingerprint(HashAlg::Sha256)
                ),
            ),
        };
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(seen);
        }
        Ok(ok)
    }
}

/// An open, authenticated session.
pub struct SshSession {
    handle: Handle<PinCheck>,
    addr: String,
    settings: Arc<SshSettings>,
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSession")
            .field("addr", &self.addr)
            .finish()
    }
}

impl SshSession {
    /// Connects and authenticates within `settings.connect_timeout`. A host key that is not
    /// exactly the pinned one ends it before authentication: nothing runs.
    pub async fn connect(target: &SshTarget, settings: Arc<SshSettings>) -> Result<Self, SshError> {
        let addr = target.addr();
        let after = settings.connect_timeout;
        match tokio::time::timeout(after, Self::connect_inner(target, Arc::clone(&settings))).await
        {
            Ok(r) => r,
            Err(_) => Err(SshError::ConnectTimeout { addr, after }),
        }
    }

    async fn connect_inner(
        target: &SshTarget,
        settings: Arc<SshSettings>,
    ) -> Result<Self, SshError> {
        let addr = target.addr();
        let tcp =
            tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| SshError::Unreachable {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        let _ = tcp.set_nodelay(true);
        let config = client::Config {
            keepalive_interval: Some(settings.keepalive_interval),
            keepalive_max: settings.keepalive_max,
            // None: a long silent command is not a dead connection (keepalives find those).
            inactivity_timeout: None,
            preferred: russh::Preferred {
                key: Cow::Owned(target.pin().algorithms()),
                ..russh::Preferred::DEFAULT
            },
            ..Default::default()
        };
        let seen = Arc::new(Mutex::new(None));
        let handler = PinCheck {
            pin: target.pin().clone(),
            seen: Arc::clone(&seen),
        };
        let mut handle = match client::connect_stream(Arc::new(config), tcp, handler).await {
            Ok(h) => h,
            Err(e) => {
                let seen = seen.lock().ok().and_then(|s| s.clone());
                return Err(match (e, seen) {
                    (russh::Error::UnknownKey, Some(seen)) => SshError::HostKeyMismatch {
                        addr,
                        expected: target.pin().fingerprint().to_string(),
                        seen,
                    },
                    (e, _) => SshError::Handshake {
                        addr,
                        reason: e.to_string(),
                    },
                });
            }
        };
        let key = target.key();
        let hash = if key.algorithm().is_rsa() {
            // rsa-sha2-512/256 as the server announces; SHA-1 only if it offers nothing else.
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| SshError::Handshake {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?
                .flatten()
        } else {
            None
        };
        let auth = handle
            .authenticate_publickey(target.user(), PrivateKeyWithHashAlg::new(key, hash))
            .await
            .map_err(|e| SshError::Handshake {
                addr: addr.clone(),
                reason: format!("during authentication: {e}"),
            })?;
        if !auth.success() {
            return Err(SshError::AuthRefused {
                addr,
                user: target.user().to_string(),
            });
        }
        Ok(Self {
            handle,
            addr,
            settings,
        })
    }

    /// `host:port` of the session.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The layer's settings this session was opened with.
    pub fn settings(&self) -> &SshSettings {
        &self.settings
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Runs `command` (a POSIX shell command line) with a deadline: on expiry TERM, the grace,
    /// close, `TimedOut`. The host enforces the deadline too (`timeout --kill-after`), since a
    /// remote kill is not guaranteed once the connection is gone.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecResult, SshError> {
        let line = super::shell::with_remote_timeout(command, timeout, self.settings.term_grace)
            .map_err(SshError::InvalidTarget)?;
        self.run_line(line.as_bytes(), None, Some(timeout)).await
    }

    /// Sends one exec line (with optional stdin, then EOF) and drains it to its end.
    pub(crate) async fn run_line(
        &self,
        line: &[u8],
        stdin: Option<&[u8]>,
        timeout: Option<Duration>,
    ) -> Result<ExecResult, SshError> {
        let refused = |e: russh::Error| SshError::ChannelRefused {
            addr: self.addr.clone(),
            reason: e.to_string(),
        };
        let mut ch = self.handle.channel_open_session().await.map_err(refused)?;
        let started = Instant::now();
        ch.exec(true, line).await.map_err(refused)?;
        // From here on the command may be running: failures are "session lost", not refusals.
        let lost = |e: russh::Error| SshError::SessionLost {
            addr: self.addr.clone(),
            reason: e.to_string(),
        };
        if let Some(input) = stdin {
            ch.data_bytes(input.to_vec()).await.map_err(lost)?;
        }
        ch.eof().await.map_err(lost)?;
        let end = readloop::drive(
            &mut ch,
            LoopLimits {
                capture_bytes: self.settings.capture_bytes,
                deadline: timeout.map(|t| started + t),
                grace: self.settings.term_grace,
            },
        )
        .await;
        if end.refused {
            return Err(SshError::ChannelRefused {
                addr: self.addr.clone(),
                reason: "the server refused the exec request".into(),
            });
        }
        Ok(ExecResult {
            outcome: end.outcome,
            stdout: end.stdout,
            stderr: end.stderr,
            duration: started.elapsed(),
            connection_lost: self.handle.is_closed(),
        })
    }

    /// Says goodbye (best effort); dropping the session also closes it.
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}
