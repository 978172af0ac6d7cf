//! What each inventory operation takes. The gRPC edge builds these from the generated request
//! types (`TryFrom`, naming the field that fails), so the domain never sees a `pb::*Request`
//! and every request-shape check happens before it, in one audited place.

use muster::pb::{self, ResourceKind};

use super::ChangeContext;

/// A Create: the resource and why.
#[derive(Debug, Clone)]
pub struct CreateInput {
    pub resource: pb::Resource,
    pub context: ChangeContext,
}

/// An Update: the new version, the revision it was read at (0: any) and why.
#[derive(Debug, Clone)]
pub struct UpdateInput {
    pub resource: pb::Resource,
    pub expected_revision: u64,
    pub context: ChangeContext,
}

/// An Apply of one resource.
#[derive(Debug, Clone)]
pub struct ApplyInput {
    pub resource: pb::Resource,
    pub context: ChangeContext,
    pub dry_run: bool,
}

/// A Delete: a valid kind and name, the revision it was read at (0: any) and why.
#[derive(Debug, Clone)]
pub struct DeleteInput {
    pub kind: ResourceKind,
    pub name: String,
    pub expected_revision: u64,
    pub context: ChangeContext,
}

/// A Get: a valid kind and name.
#[derive(Debug, Clone)]
pub struct GetInput {
    pub kind: ResourceKind,
    pub name: String,
}

/// A Watch: which kind (None: every kind), which labels, from which revision (0: now).
#[derive(Debug, Clone, Default)]
pub struct WatchParams {
    pub kind: Option<ResourceKind>,
    pub selector: String,
    pub since_revision: u64,
}
