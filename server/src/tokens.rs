//! API token management: create, list and revoke store tokens, and persist "last used" lazily.
//!
//! The registry in memory is what authenticates; the store is written first and the map
//! updated after, under one management lock, so a revocation answers only once it is durable
//! and takes effect on the very next request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster::selector::Selector;

use crate::auth::{TokenEntry, TokenRegistry, TokenSource, generate_token, hash_token, rfc3339};
use crate::inventory::ChangeContext;
use crate::model::{ApiError, Principal, Role};
use crate::store::{Refusal, Store, StoredToken, TokenWrite};

/// Most tokens the store may hold: each one is kept in memory and checked on every request.
pub const MAX_TOKENS: usize = 1000;
/// Longest lifetime of a token with a ttl (omit the ttl for a token that does not expire).
pub const MAX_TTL: Duration = Duration::from_secs(730 * 24 * 3600);
/// Longest scope selector, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 512;
/// How often "last used" times are written to the store (and once more at shutdown): a
/// request never costs a disk write.
pub const LAST_USED_PERSIST_EVERY: Duration = Duration::from_secs(60);

/// What an admin asks for.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    pub name: String,
    pub role: String,
    /// None: the token does not expire.
    pub ttl: Option<Duration>,
    /// Label selector; empty: unscoped.
    pub selector: String,
}

/// A token to create, with why (converted at the edge; the registry checks the rest).
#[derive(Debug, Clone, Default)]
pub struct CreateToken {
    pub token: NewToken,
    pub context: ChangeContext,
}

/// A token to revoke, with why.
#[derive(Debug, Clone, Default)]
pub struct RevokeToken {
    pub name: String,
    pub context: ChangeContext,
}

/// Writes a token change (and its audit entry) durably, in one batch.
async fn write(store: &Arc<dyn Store>, name: &str, w: TokenWrite) -> Result<(), ApiError> {
    crate::store::commit_tokens_durably(&**store, w)
        .await
        .map_err(|e| crate::store_map::api_error("token", name, e))
}

impl TokenRegistry {
    fn by_name(&self, name: &str) -> Option<Arc<TokenEntry>> {
        self.entries()
            .into_iter()
            .find(|e| e.principal.name == name)
    }

    /// Checks a request for a new token; returns its role and parsed scope.
    fn check_new(
        &self,
        who: &Principal,
        req: &NewToken,
    ) -> Result<(Role, Option<Selector>), ApiError> {
        muster::names::validate_name("name", &req.name)?;
        let role: Role = req.role.parse().map_err(|e| ApiError::invalid("role", e))?;
        if !who.role.covers(role) || (who.scope.is_some() && req.selector.is_empty()) {
            return Err(ApiError::PermissionDenied(format!(
                "{} (role {}) may not create a {role} token: a token may not grant more than its creator holds",
                who.name, who.role
            )));
        }
        if let Some(ttl) = req.ttl
            && (ttl.is_zero() || ttl > MAX_TTL)
        {
            return Err(ApiError::invalid(
                "ttl",
                format!(
                    "must be more than 0 and at most {} days (omit it for a token that does not expire)",
                    MAX_TTL.as_secs() / 86_400
                ),
            ));
        }
        if req.selector.len() > MAX_SELECTOR_BYTES {
            return Err(ApiError::invalid(
                "selector",
                format!("is longer than {MAX_SELECTOR_BYTES} bytes"),
            ));
        }
        let scope = if req.selector.trim().is_empty() {
            None
        } else {
            let s = Selector::parse(&req.selector)
                .map_err(|e| ApiError::invalid("selector", e.to_string()))?;
            if role != Role::Operator {
                return Err(ApiError::invalid(
                    "selector",
                    format!(
                        "only operator tokens can be scoped (reads are never limited, and a {role} token is not limited by labels)"
                    ),
                ));
            }
            Some(s)
        };
        let entries = self.entries();
        if entries.iter().any(|e| e.principal.name == req.name) {
            return Err(ApiError::AlreadyExists {
                kind: "token",
                name: req.name.clone(),
            });
        }
        let stored = entries
            .iter()
            .filter(|e| e.source == TokenSource::Store)
            .count();
        if stored >= MAX_TOKENS {
            return Err(ApiError::ResourceExhausted(format!(
                "the server already holds {MAX_TOKENS} tokens (the limit); revoke unused ones first"
            )));
        }
        Ok((role, scope))
    }

    /// Creates a token; returns the token itself (shown once, never stored) and its entry.
    /// `audit` makes the audit entry written in the same batch.
    pub async fn create(
        &self,
        store: &Arc<dyn Store>,
        who: &Principal,
        req: NewToken,
        audit: impl FnOnce(&TokenEntry) -> Refusal + Send,
    ) -> Result<(String, Arc<TokenEntry>), ApiError> {
        let _g = self.admin.lock().await;
        let (role, scope) = self.check_new(who, &req)?;
        let token = generate_token();
        let now = self.clock.now_unix_nanos();
        let expires = req.ttl.map_or(0, |t| {
            now.saturating_add(i64::try_from(t.as_nanos()).unwrap_or(i64::MAX))
        });
        let rec = StoredToken {
            hash: hash_token(&token),
            name: req.name.clone(),
            role: role.to_string(),
            // Stored in canonical form, as it is shown in messages.
            selector: scope.as_ref().map(ToString::to_string).unwrap_or_default(),
            created_nanos: now,
            expires_nanos: expires,
            created_by: who.name.clone(),
            last_used_nanos: 0,
            bootstrap: false,
        };
        let entry = Arc::new(
            TokenEntry::from_stored(rec.clone()).map_err(|e| ApiError::Internal(e.to_string()))?,
        );
        let w = TokenWrite {
            audit: Some(audit(&entry)),
            put: vec![rec],
            delete: Vec::new(),
        };
        write(store, &req.name, w).await?;
        self.write_map()
            .insert(entry.hash.clone(), Arc::clone(&entry));
        Ok((token, entry))
    }

    /// Revokes a store token by name. Config-file tokens are refused (the config is their
    /// source of truth), and so is the last admin token that has not expired, so the server
    /// never ends up without one.
    pub async fn revoke(
        &self,
        store: &Arc<dyn Store>,
        name: &str,
        audit: impl FnOnce(&TokenEntry) -> Refusal + Send,
    ) -> Result<Arc<TokenEntry>, ApiError> {
        let _g = self.admin.lock().await;
        muster::names::validate_name("name", name)?;
        let entry = self.by_name(name).ok_or_else(|| ApiError::NotFound {
            kind: "token",
            name: name.to_string(),
        })?;
        if entry.source == TokenSource::Config {
            return Err(ApiError::FailedPrecondition(format!(
                "token {name} comes from the config file; remove its [[tokens]] entry and restart musterd"
            )));
        }
        let now = self.clock.now_unix_nanos();
        if entry.principal.role == Role::Admin {
            let others = self.entries().into_iter().any(|e| {
                e.hash != entry.hash && e.principal.role == Role::Admin && !e.expired(now)
            });
            if !others {
                let what = if entry.bootstrap {
                    "the bootstrap admin token"
                } else {
                    "an admin token"
                };
                return Err(ApiError::FailedPrecondition(format!(
                    "token {name} is {what} and no other unexpired admin token exists; create one first (muster token create NAME --role admin), or the server would have no admin"
                )));
            }
        }
        let w = TokenWrite {
            audit: Some(audit(&entry)),
            put: Vec::new(),
            delete: vec![entry.hash.clone()],
        };
        write(store, name, w).await?;
        self.write_map().remove(&entry.hash);
        Ok(entry)
    }

    /// Writes the "last used" times that changed since they were last written; returns how
    /// many. Runs under the management lock so that it never re-creates a revoked token.
    pub async fn persist_last_used(&self, store: &Arc<dyn Store>) -> Result<usize, ApiError> {
        let _g = self.admin.lock().await;
        let dirty: Vec<(StoredToken, Arc<TokenEntry>)> = self
            .entries()
            .into_iter()
            .filter(|e| {
                e.source == TokenSource::Store
                    && e.last_used_nanos.load(Ordering::Relaxed)
                        > e.persisted_last_used_nanos.load(Ordering::Relaxed)
            })
            .map(|e| (e.record(), e))
            .collect();
        if dirty.is_empty() {
            return Ok(0);
        }
        let records: Vec<StoredToken> = dirty.iter().map(|(r, _)| r.clone()).collect();
        let w = TokenWrite {
            put: records,
            ..TokenWrite::default()
        };
        write(store, "(last used of several)", w).await?;
        for (rec, e) in &dirty {
            e.persisted_last_used_nanos
                .fetch_max(rec.last_used_nanos, Ordering::Relaxed);
        }
        Ok(dirty.len())
    }

    fn write_map(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, std::collections::HashMap<String, Arc<TokenEntry>>> {
        self.by_hash
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A short description of a token for the audit trail (never the token or its hash).
pub fn describe(e: &TokenEntry) -> String {
    let scope = if e.selector.is_empty() {
        "unscoped".to_string()
    } else {
        format!("scope {}", e.selector)
    };
    let expires = if e.expires_nanos == 0 {
        "no expiry".to_string()
    } else {
        format!("expires {}", rfc3339(e.expires_nanos))
    };
    format!(
        "token {} (role {}, {scope}, {expires})",
        e.principal.name, e.principal.role
    )
}

/// Persists "last used" every `LAST_USED_PERSIST_EVERY` until aborted.
pub async fn persist_loop(tokens: Arc<TokenRegistry>, store: Arc<dyn Store>) {
    let mut tick = tokio::time::interval(LAST_USED_PERSIST_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = tokens.persist_last_used(&store).await {
            tracing::warn!(error = %e, "could not persist token last-used times");
        }
    }
}
