//! `muster campaign ...`: thin calls to `CampaignService`; what they print is rendered by the
//! pure functions in `table`, `progress`, `report` and `stepout` (snapshot-tested), and every
//! string that came from the server is escaped on the way out (`crate::safe`).

use std::path::Path;

use anyhow::{Result, bail};
use muster::pb;
use muster::pb::resource::Resource as R;

use crate::args::{CampaignAction, CampaignCommand, ChangeArgs, HostAction, HostCommand};
use crate::client::Clients;
use crate::kinds::Kind;
use crate::output::{self, Format, StreamFormat};
use crate::safe;

mod progress;
mod report;
mod stepout;
mod table;
mod watch;

/// Manifests a command reads, parsed before connecting so a bad file fails with no server.
#[derive(Debug, Default)]
pub struct Loaded(Vec<pb::Campaign>);

/// Reads the manifest of `create`, `edit` and `plan -f`.
pub fn preload(command: &CampaignCommand) -> Result<Loaded> {
    let file = match command {
        CampaignCommand::Create { file, .. } | CampaignCommand::Edit { file, .. } => Some(file),
        CampaignCommand::Plan { file, .. } => file.as_ref(),
        _ => None,
    };
    let Some(file) = file else {
        return Ok(Loaded::default());
    };
    let campaigns = load(file)?;
    let one = matches!(
        command,
        CampaignCommand::Edit { .. } | CampaignCommand::Plan { .. }
    );
    if one && campaigns.len() != 1 {
        bail!(
            "{}: this command takes exactly one campaign, the file holds {}",
            file.display(),
            campaigns.len()
        );
    }
    Ok(Loaded(campaigns))
}

/// The campaigns of a manifest file; any other kind is refused (it belongs to `apply`).
fn load(file: &Path) -> Result<Vec<pb::Campaign>> {
    let docs = super::apply::load_file(file)?;
    docs.into_iter()
        .map(|d| match d.resource.resource {
            Some(R::Campaign(c)) => Ok(c),
            _ => bail!(
                "{}: document {} is {}, not a Campaign (use `muster apply -f` for other kinds)",
                file.display(),
                d.index,
                d.qualified_name()
            ),
        })
        .collect()
}

/// Runs one campaign subcommand.
pub async fn run(clients: &Clients, command: CampaignCommand, loaded: Loaded) -> Result<()> {
    dispatch(clients, command, loaded).await.map_err(|e| {
        let unimplemented = e
            .downcast_ref::<crate::errors::RpcError>()
            .is_some_and(|r| r.code() == tonic::Code::Unimplemented);
        if unimplemented {
            anyhow::anyhow!(
                "UNIMPLEMENTED: this server has no campaign service (a musterd older than this muster?)"
            )
        } else {
            e
        }
    })
}

async fn dispatch(clients: &Clients, command: CampaignCommand, loaded: Loaded) -> Result<()> {
    let svc = || clients.campaign.clone();
    match command {
        CampaignCommand::Create { change, .. } => {
            for campaign in loaded.0 {
                let request = pb::CreateCampaignRequest {
                    campaign: Some(campaign),
                    context: Some(super::change_context(&change)),
                };
                let r = clients
                    .unary(svc().create(clients.request(request)))
                    .await?;
                output::println(&table::action_line(&r, "created"))?;
            }
            Ok(())
        }
        CampaignCommand::Plan { name, output, .. } => {
            let request = pb::PlanCampaignRequest {
                name: name.unwrap_or_default(),
                campaign: loaded.0.into_iter().next(),
            };
            let plan = clients.unary(svc().plan(clients.request(request))).await?;
            match output {
                StreamFormat::Table => output::print(&table::plan_text(&plan)),
                StreamFormat::Json => output::println(&table::json(&plan)?),
                StreamFormat::Yaml => output::print(&table::yaml(&plan)?),
            }
        }
        CampaignCommand::Submit(a) => {
            let r = action(clients, &a, |s, r| Box::pin(s.submit(r))).await?;
            output::print(&table::submitted(&r))
        }
        CampaignCommand::Edit { change, .. } => {
            let Some(campaign) = loaded.0.into_iter().next() else {
                bail!("no campaign in the file");
            };
            let name = campaign
                .meta
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            let request = pb::EditCampaignRequest {
                name,
                spec: campaign.spec,
                context: Some(super::change_context(&change)),
            };
            let r = clients.unary(svc().edit(clients.request(request))).await?;
            output::println(&table::action_line(&r, "edited"))
        }
        CampaignCommand::Approve {
            name,
            digest,
            change,
        } => {
            let digest = digest.trim().to_ascii_lowercase();
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "--digest must be the full 64-hex-digit digest `muster campaign plan {name}` shows"
                );
            }
            let request = pb::ApproveCampaignRequest {
                name,
                digest,
                context: Some(super::change_context(&change)),
            };
            let r = clients
                .unary(svc().approve(clients.request(request)))
                .await?;
            output::println(&table::action_line(&r, "approved"))
        }
        CampaignCommand::Promote(a) => {
            print_action(clients, &a, "promoted", |s, r| Box::pin(s.promote(r))).await
        }
        CampaignCommand::Start(a) => {
            print_action(clients, &a, "started", |s, r| Box::pin(s.start(r))).await
        }
        CampaignCommand::Pause(a) => {
            print_action(clients, &a, "paused", |s, r| Box::pin(s.pause(r))).await
        }
        CampaignCommand::Resume(a) => {
            print_action(clients, &a, "resumed", |s, r| Box::pin(s.resume(r))).await
        }
        CampaignCommand::Abort(a) => {
            print_action(clients, &a, "aborted", |s, r| Box::pin(s.abort(r))).await
        }
        CampaignCommand::Get { name, output } => {
            let request = pb::GetCampaignRequest {
                name,
                summary_only: !matches!(output, Format::Json | Format::Yaml),
            };
            let r = clients.unary(svc().get(clients.request(request))).await?;
            print_one(&r, output, clients)
        }
        CampaignCommand::List { output } => {
            let r = clients
                .unary(svc().list(clients.request(pb::ListCampaignsRequest {})))
                .await?;
            let mut list = r.campaigns;
            list.sort_by(|a, b| a.name.cmp(&b.name));
            match output {
                Format::Table | Format::Wide => output::print(&table::summaries(
                    &list,
                    output == Format::Wide,
                    clients.now(),
                )),
                Format::Json => output::println(&table::json(&list)?),
                Format::Yaml => output::print(&table::yaml(&list)?),
                Format::Name => output::print(&table::names(&list)),
            }
        }
        CampaignCommand::Watch { name, output } => watch::run(clients, &name, output).await,
        CampaignCommand::Report { name, output } => {
            let request = pb::CampaignReportRequest { name };
            let r = clients
                .unary(svc().report(clients.request(request)))
                .await?;
            output::print(&report::render(&r, output)?)
        }
        CampaignCommand::Host { command } => {
            let (a, verb, call): (HostAction, &str, HostCall) = match command {
                HostCommand::Retry(a) => (a, "retried", |s, r| Box::pin(s.host_retry(r))),
                HostCommand::MarkFailed(a) => {
                    (a, "marked failed", |s, r| Box::pin(s.host_mark_failed(r)))
                }
                HostCommand::Rollback(a) => {
                    (a, "rolling back", |s, r| Box::pin(s.host_rollback(r)))
                }
            };
            let request = pb::HostActionRequest {
                name: a.campaign.clone(),
                host: a.host.clone(),
                context: Some(super::change_context(&a.change)),
            };
            let mut s = svc();
            let r = clients
                .unary(call(&mut s, clients.request(request)))
                .await?;
            output::println(&table::host_action_line(&r, &a.host, verb))
        }
        CampaignCommand::Output {
            campaign,
            host,
            step,
            attempt,
            raw,
        } => stepout::run(clients, &campaign, &host, step.as_deref(), attempt, raw).await,
    }
}

type Svc = pb::campaign_service_client::CampaignServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        muster::client::Bearer,
    >,
>;
type Answer<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tonic::Response<pb::CampaignResponse>, tonic::Status>,
            > + Send
            + 'a,
    >,
>;
type ActionCall = for<'a> fn(&'a mut Svc, tonic::Request<pb::CampaignActionRequest>) -> Answer<'a>;
type HostCall = for<'a> fn(&'a mut Svc, tonic::Request<pb::HostActionRequest>) -> Answer<'a>;

/// A name-only action (submit, promote, start, pause, resume, abort) with its audit context.
async fn action(
    clients: &Clients,
    a: &CampaignAction,
    call: ActionCall,
) -> Result<pb::CampaignResponse> {
    let request = pb::CampaignActionRequest {
        name: a.name.clone(),
        context: Some(context(&a.change)),
    };
    let mut svc = clients.campaign.clone();
    clients
        .unary(call(&mut svc, clients.request(request)))
        .await
}

async fn print_action(
    clients: &Clients,
    a: &CampaignAction,
    verb: &str,
    call: ActionCall,
) -> Result<()> {
    let r = action(clients, a, call).await?;
    output::println(&table::action_line(&r, verb))
}

fn context(change: &ChangeArgs) -> pb::ChangeContext {
    super::change_context(change)
}

/// `campaign get NAME` in the chosen format; json and yaml print the campaign as a manifest
/// (`kind: Campaign`), so it can be edited and fed back to `campaign edit -f`.
fn print_one(r: &pb::CampaignResponse, format: Format, clients: &Clients) -> Result<()> {
    let resource = || pb::Resource {
        resource: r.campaign.clone().map(R::Campaign),
    };
    match format {
        Format::Table | Format::Wide => {
            let created = r
                .campaign
                .as_ref()
                .and_then(|c| c.meta.as_ref())
                .and_then(|m| m.created_at);
            let summary = r.summary.clone().unwrap_or_default();
            output::print(&table::summaries_with_age(
                &[(summary, created)],
                format == Format::Wide,
                clients.now(),
            ))
        }
        Format::Json => output::println(&safe::json(&crate::manifest::to_json_pretty(
            &crate::manifest::render(&resource())?,
        )?)),
        Format::Yaml => output::print(&safe::yaml(&crate::manifest::to_yaml(
            &crate::manifest::render(&resource())?,
        )?)),
        Format::Name => {
            let name = r.summary.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            output::println(&format!("{}/{}", Kind::Campaign, safe::line(name)))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::output::StreamFormat;

    const MANIFEST: &str = r#"
kind: Campaign
meta:
  name: openssl-3.0.13
spec:
  selector: role=web,env=prod
  description: CVE-2024-0727
  desired:
    packages:
      - {name: openssl, version: "3.0.13-1"}
  steps:
    - name: install
      ssh_command: apt-get install -y openssl=3.0.13-1
      timeout: 300s
    - name: reboot
      reboot: true
      timeout: 900s
  verify:
    - {path: "packages.openssl", op: ">=", value: "3.0.13-1"}
  rollback:
    - name: downgrade
      sshCommand: apt-get install -y --allow-downgrades openssl=3.0.11-1
      timeout: 300s
  strategy:
    canary_count: 2
    canary_soak: 1800s
    batch_size: {percent: 25}
    max_concurrency: 5
    failure_threshold: {hosts: 3}
    max_per_rack: 1
  windows: [nightly-web]
  approval: {required: 2}
"#;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn create(path: &Path) -> CampaignCommand {
        CampaignCommand::Create {
            file: path.to_path_buf(),
            change: ChangeArgs {
                reason: None,
                ticket: None,
            },
        }
    }

    #[test]
    fn campaign_manifests_load() {
        let f = file(MANIFEST);
        let loaded = match preload(&create(f.path())) {
            Ok(l) => l,
            Err(e) => panic!("{e:#}"),
        };
        let c = &loaded.0[0];
        assert_eq!(c.meta.as_ref().unwrap().name, "openssl-3.0.13");
        let spec = c.spec.as_ref().unwrap();
        assert_eq!(spec.steps.len(), 2);
        assert_eq!(
            spec.steps[0].action,
            Some(pb::campaign_step::Action::SshCommand(
                "apt-get install -y openssl=3.0.13-1".into()
            ))
        );
        assert_eq!(
            spec.steps[1].action,
            Some(pb::campaign_step::Action::Reboot(true))
        );
        assert_eq!(spec.steps[0].timeout.as_ref().map(|d| d.seconds), Some(300));
        let st = spec.strategy.as_ref().unwrap();
        assert_eq!(
            st.batch_size.as_ref().and_then(|c| c.value),
            Some(pb::count::Value::Percent(25))
        );
        assert_eq!(
            st.failure_threshold.as_ref().and_then(|c| c.value),
            Some(pb::count::Value::Hosts(3))
        );
        assert_eq!(spec.approval.as_ref().map(|a| a.required), Some(2));
    }

    #[test]
    fn other_kinds_and_counts_are_refused() {
        let f = file("kind: Device\nmeta: {name: web-01}\n");
        let err = format!("{:#}", preload(&create(f.path())).unwrap_err());
        assert!(
            err.contains("document 1 is device/web-01, not a Campaign"),
            "{err}"
        );
        assert!(err.contains("muster apply -f"), "{err}");

        let two = file(&format!(
            "{MANIFEST}\n---\n{}",
            MANIFEST.replace("openssl-3.0.13", "b")
        ));
        assert_eq!(preload(&create(two.path())).unwrap().0.len(), 2);
        let plan = CampaignCommand::Plan {
            name: None,
            file: Some(two.path().to_path_buf()),
            output: StreamFormat::Table,
        };
        let err = preload(&plan).unwrap_err().to_string();
        assert!(
            err.contains("exactly one campaign, the file holds 2"),
            "{err}"
        );

        let typo = file(&MANIFEST.replace("ssh_command", "ssh_comand"));
        let err = format!("{:#}", preload(&create(typo.path())).unwrap_err());
        assert!(err.contains("ssh_comand"), "{err}");
    }
}
