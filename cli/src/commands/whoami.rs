//! `muster whoami`: the principal and role the server derives from the token.

use anyhow::Result;
use muster::pb;

use crate::client::Clients;
use crate::output;

/// Prints `principal`, `role` and the store's current `revision`.
pub async fn run(clients: &Clients) -> Result<()> {
    let me = clients
        .unary(
            clients
                .admin
                .clone()
                .who_am_i(clients.request(pb::WhoAmIRequest {})),
        )
        .await?;
    output::print(&format!(
        "principal: {}\nrole: {}\nrevision: {}\n",
        me.principal, me.role, me.revision
    ))
}
