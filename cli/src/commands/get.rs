//! `muster get KIND [NAME]`: list (following pages) or fetch, then print in the chosen format.

use std::time::SystemTime;

use anyhow::{Result, bail};
use muster::pb;

use crate::args::GetArgs;
use crate::client::Clients;
use crate::kinds::{Kind, qualified_name};
use crate::manifest;
use crate::output::{self, Format};

/// Page size used when listing.
const PAGE_SIZE: u32 = 500;

/// Fetches and prints.
pub async fn run(clients: &Clients, args: GetArgs) -> Result<()> {
    let selector = super::check_selector(args.selector.as_deref())?;
    let mut field_selector = super::check_field_selector(args.field_selector.as_deref())?;
    if let Some(h) = &args.health {
        if args.kind != Kind::Device {
            bail!("--health applies to devices only");
        }
        let wanted = match h.to_ascii_lowercase().as_str() {
            "ok" => "OK",
            "warning" => "WARNING",
            "critical" => "CRITICAL",
            "unknown" => "UNKNOWN",
            other => bail!("--health {other:?}: use ok, warning, critical or unknown"),
        };
        if !field_selector.is_empty() {
            field_selector.push(',');
        }
        field_selector.push_str(&format!("health={wanted}"));
    }
    if let Some(name) = &args.name {
        if !selector.is_empty() || !field_selector.is_empty() {
            bail!("a name cannot be combined with --selector or --field-selector");
        }
        let resource = super::fetch(clients, args.kind, name).await?;
        return print_one(args.kind, &resource, args.output, clients.now());
    }
    let mut resources = list(clients, args.kind, &selector, &field_selector, args.limit).await?;
    // The server pages in creation order; people read lists by name, as kubectl prints them.
    resources.sort_by(|a, b| a.name().cmp(b.name()));
    print_list(args.kind, &resources, args.output, clients.now())
}

/// Lists every matching resource, page by page, up to `limit`.
pub async fn list(
    clients: &Clients,
    kind: Kind,
    selector: &str,
    field_selector: &str,
    limit: Option<usize>,
) -> Result<Vec<pb::Resource>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let remaining = limit.map(|l| l.saturating_sub(out.len()));
        if remaining == Some(0) {
            break;
        }
        let page_size = match remaining {
            Some(r) => u32::try_from(r).unwrap_or(PAGE_SIZE).min(PAGE_SIZE),
            None => PAGE_SIZE,
        };
        let page = clients
            .unary(
                clients
                    .inventory
                    .clone()
                    .list(clients.request(pb::ListRequest {
                        kind: kind.to_pb() as i32,
                        selector: selector.to_string(),
                        field_selector: field_selector.to_string(),
                        page_size,
                        page_token: page_token.clone(),
                    })),
            )
            .await?;
        out.extend(page.resources);
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }
    if let Some(limit) = limit {
        out.truncate(limit);
    }
    Ok(out)
}

fn print_one(kind: Kind, resource: &pb::Resource, format: Format, now: SystemTime) -> Result<()> {
    match format {
        Format::Table | Format::Wide => output::print(&output::resource_table(
            kind,
            std::slice::from_ref(resource),
            format == Format::Wide,
            now,
        )),
        Format::Json => output::println(&manifest::to_json_pretty(&manifest::render(resource)?)?),
        Format::Yaml => output::print(&manifest::to_yaml(&manifest::render(resource)?)?),
        Format::Name => output::println(&qualified_name(resource)),
    }
}

fn print_list(
    kind: Kind,
    resources: &[pb::Resource],
    format: Format,
    now: SystemTime,
) -> Result<()> {
    match format {
        Format::Table | Format::Wide => {
            if resources.is_empty() {
                eprintln!("No resources found.");
                return Ok(());
            }
            output::print(&output::resource_table(
                kind,
                resources,
                format == Format::Wide,
                now,
            ))
        }
        Format::Json => output::println(&manifest::to_json_pretty(&manifest::render_list(
            resources,
        )?)?),
        Format::Yaml => {
            let docs = resources
                .iter()
                .map(manifest::render)
                .collect::<Result<Vec<_>>>()?;
            output::print(&manifest::to_yaml_stream(&docs)?)
        }
        Format::Name => {
            let mut text = String::new();
            for r in resources {
                text.push_str(&qualified_name(r));
                text.push('\n');
            }
            output::print(&text)
        }
    }
}
