//! Principals, roles and permissions.

use std::fmt;
use std::str::FromStr;

/// What a request needs to be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read inventory, audit and watch.
    Read,
    /// Create, update, delete inventory objects.
    Write,
    /// Write credentials (still never read them back).
    WriteSecrets,
    /// Approve campaigns.
    Approve,
    /// Operate the server itself (backup, tokens).
    Admin,
}

/// A token's role. Roles are sets of permissions, not a ladder: an approver may approve but
/// not write, so the author of a change cannot also approve it with the same token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Operator,
    Approver,
    Admin,
}

impl Role {
    /// Whether this role grants `p`.
    pub fn allows(self, p: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Admin => true,
            Role::Viewer => p == P::Read,
            Role::Operator => matches!(p, P::Read | P::Write | P::WriteSecrets),
            Role::Approver => matches!(p, P::Read | P::Approve),
        }
    }

    /// Name as written in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "approver" => Ok(Role::Approver),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}; expected viewer, operator, approver or admin"
            )),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token name, recorded as the author of changes.
    pub name: String,
    pub role: Role,
    /// Label selector limiting what the token may write (see `scope.rs`); None: unscoped.
    pub scope: Option<muster::selector::Selector>,
}

impl Principal {
    /// An unscoped principal.
    pub fn new(name: impl Into<String>, role: Role) -> Self {
        Self {
            name: name.into(),
            role,
            scope: None,
        }
    }
}

impl Role {
    /// Whether this role grants every permission `other` grants (a token may only be given
    /// a role that its creator's role covers).
    pub fn covers(self, other: Role) -> bool {
        use Permission as P;
        [P::Read, P::Write, P::WriteSecrets, P::Approve, P::Admin]
            .iter()
            .all(|p| !other.allows(*p) || self.allows(*p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_permission_sets() {
        assert!(Role::Viewer.allows(Permission::Read));
        assert!(!Role::Viewer.allows(Permission::Write));
        assert!(Role::Operator.allows(Permission::Write));
        assert!(!Role::Operator.allows(Permission::Approve));
        assert!(!Role::Approver.allows(Permission::Write));
        assert!(Role::Approver.allows(Permission::Approve));
        assert!(Role::Admin.allows(Permission::Admin));
        assert!(!Role::Operator.allows(Permission::Admin));
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
    }
}
