//! Which SSH target a campaign host is: the device's `ssh` endpoint and its credential's
//! private key, read through the inventory (secrets are sealed at rest and opened only here,
//! on the server). A host that cannot be reached this way fails with a message naming what
//! an operator must set; nothing is run.

use std::fmt::Debug;
use std::sync::Arc;

use muster::pb;
use thiserror::Error;

use crate::inventory::Inventory;
use crate::ssh::{SshError, SshTarget};

/// Turns a campaign host (a device name) into where and how to connect.
pub trait TargetResolver: Send + Sync + Debug + 'static {
    fn resolve(&self, host: &str) -> Result<SshTarget, ResolveError>;
}

/// Why a host has no usable SSH target.
#[derive(Debug, Error)]
pub enum ResolveError {
    #[error("device {0:?} does not exist (was it deleted after the campaign was planned?)")]
    NoDevice(String),
    #[error(
        "device {0:?} has no ssh endpoint: set its ssh.host, ssh.user, ssh.credential_ref and ssh.host_key_fingerprint"
    )]
    NoEndpoint(String),
    #[error(
        "device {0:?} has no pinned host key (ssh.host_key_fingerprint, as ssh-keygen -lf prints it); muster never trusts a host key on first use"
    )]
    NoPin(String),
    #[error("device {0:?}'s ssh endpoint names no credential (ssh.credential_ref)")]
    NoCredentialRef(String),
    #[error(
        "credential {credential:?} (device {device:?}'s ssh.credential_ref) not found or not an SSH private key{detail}"
    )]
    BadCredential {
        device: String,
        credential: String,
        detail: String,
    },
    #[error("device {device:?}'s ssh endpoint cannot be used: {source}")]
    Invalid { device: String, source: SshError },
    #[error("reading device {device:?} for its ssh endpoint failed: {reason}")]
    Store { device: String, reason: String },
}

/// The resolver musterd uses: devices and credentials from the inventory.
#[derive(Debug, Clone)]
pub struct InventoryResolver {
    pub inventory: Arc<Inventory>,
}

impl TargetResolver for InventoryResolver {
    fn resolve(&self, host: &str) -> Result<SshTarget, ResolveError> {
        let store = |e: crate::model::ApiError| ResolveError::Store {
            device: host.to_string(),
            reason: e.to_string(),
        };
        let device = self
            .inventory
            .device_for_executor(host)
            .map_err(store)?
            .ok_or_else(|| ResolveError::NoDevice(host.to_string()))?;
        let ep = device
            .ssh
            .filter(|e| !e.host.is_empty())
            .ok_or_else(|| ResolveError::NoEndpoint(host.to_string()))?;
        if ep.host_key_fingerprint.trim().is_empty() {
            return Err(ResolveError::NoPin(host.to_string()));
        }
        if ep.credential_ref.is_empty() {
            return Err(ResolveError::NoCredentialRef(host.to_string()));
        }
        let bad = |detail: String| ResolveError::BadCredential {
            device: host.to_string(),
            credential: ep.credential_ref.clone(),
            detail,
        };
        let (kind, secret) = self
            .inventory
            .credential_secret(&ep.credential_ref)
            .map_err(store)?
            .ok_or_else(|| bad(String::new()))?;
        if kind != pb::CredentialKind::SshPrivateKey {
            return Err(bad(format!(" (its kind is {})", kind.as_str_name())));
        }
        SshTarget::from_endpoint(&ep, &secret).map_err(|e| match e {
            SshError::InvalidCredential(why) => bad(format!(": {why}")),
            source => ResolveError::Invalid {
                device: host.to_string(),
                source,
            },
        })
    }
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
