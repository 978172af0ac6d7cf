//! `muster delete KIND NAME`.

use anyhow::Result;
use muster::pb;

use crate::args::DeleteArgs;
use crate::client::Clients;
use crate::output;

/// Deletes one resource and confirms kubectl-style: `device/web-01 deleted`.
pub async fn run(clients: &Clients, args: DeleteArgs) -> Result<()> {
    let request = pb::DeleteRequest {
        kind: args.kind.to_pb() as i32,
        name: args.name.clone(),
        expected_revision: args.expected_revision.unwrap_or(0),
        context: Some(super::change_context(&args.change)),
    };
    clients
        .unary(clients.inventory.clone().delete(clients.request(request)))
        .await?;
    output::println(&format!("{}/{} deleted", args.kind, args.name))
}
