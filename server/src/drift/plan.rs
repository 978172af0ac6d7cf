//! Desired state as a whole: plan a change, apply it atomically as one change set, accept an
//! observed value as desired. Domain operations over `Inventory` (validation, merging, the
//! store) and `DriftEngine` (effective state, conflicts, drift); no gRPC here.

use std::sync::Arc;
use std::time::Duration;

use muster::pb::{self, ResourceKind, resource::Resource as R};
use muster::selector::Selector;

use super::compare::{self, NOT_REPORTED};
use super::desired::CompiledProfile;
use super::handle::DriftEngine;
use super::query::{PlannedChange, PlannedDevice};
use crate::inventory::{ApplyAction, ChangeContext, Inventory, PreparedWrite};
use crate::model::{ApiError, Principal, kind_name};
use crate::plan_pool::PlanPool;

/// Most resources one change set may hold.
pub const MAX_SET: usize = 20_000;
/// Most profiles one change set may hold: planning costs (profiles x devices), so 20,000
/// profiles against a large fleet would hold the planner for minutes.
pub const MAX_SET_PROFILES: usize = 1_000;
/// How long a read waits for the drift engine to take in earlier writes.
const CATCH_UP: Duration = Duration::from_secs(10);

/// Plans and applies change sets.
#[derive(Debug, Clone)]
pub struct Planner {
    pub inventory: Arc<Inventory>,
    pub drift: DriftEngine,
    /// Where the CPU-heavy preparation and planning run, off the async workers.
    pool: PlanPool,
}

fn action_pb(a: ApplyAction) -> pb::ApplyAction {
    match a {
        ApplyAction::Created => pb::ApplyAction::Created,
        ApplyAction::Updated => pb::ApplyAction::Updated,
        ApplyAction::Unchanged => pb::ApplyAction::Unchanged,
    }
}

/// The kind and name of every resource of a set, for auditing a refusal.
fn set_names(resources: &[pb::Resource]) -> Vec<(ResourceKind, String)> {
    resources
        .iter()
        .map(|r| {
            (
                crate::model::resource::kind_of(r).unwrap_or_default(),
                r.name().to_string(),
            )
        })
        .collect()
}

/// Refuses an empty set or one above `MAX_SET` or `MAX_SET_PROFILES`: cheap, so it runs
/// before queueing.
fn check_size(resources: &[pb::Resource]) -> Result<(), ApiError> {
    if resources.is_empty() {
        return Err(ApiError::invalid("resources", "is empty: nothing to do"));
    }
    if resources.len() > MAX_SET {
        return Err(ApiError::invalid(
            "resources",
            format!(
                "holds {} resources; one change set may hold at most {MAX_SET}",
                resources.len()
            ),
        ));
    }
    let profiles = resources
        .iter()
        .filter(|r| matches!(r.resource, Some(R::Profile(_))))
        .count();
    if profiles > MAX_SET_PROFILES {
        return Err(ApiError::invalid(
            "resources",
            format!(
                "holds {profiles} profiles; one change set may hold at most {MAX_SET_PROFILES}"
            ),
        ));
    }
    Ok(())
}

/// Names the resource at `index` in an error about it.
fn locate(index: usize, r: &pb::Resource, e: ApiError) -> ApiError {
    let kind = crate::model::resource::kind_of(r).unwrap_or_default();
    let at = format!("resources[{index}] ({} {:?})", kind_name(kind), r.name());
    match e {
        ApiError::InvalidArgument { field, problem } => ApiError::InvalidArgument {
            field: format!("{at}.{field}"),
            problem,
        },
        ApiError::FailedPrecondition(m) => ApiError::FailedPrecondition(format!("{at}: {m}")),
        other => other,
    }
}

impl Planner {
    /// A planner over `inventory` and `drift`, with its own bounded pool.
    pub fn new(inventory: Arc<Inventory>, drift: DriftEngine) -> Self {
        Self {
            inventory,
            drift,
            pool: PlanPool::default(),
        }
    }

    /// Validates every resource and works out its write; any bad one fails the whole set.
    /// CPU-heavy for a large set: call it on the pool, never on an async worker.
    fn prepare(
        &self,
        who: &Principal,
        resources: Vec<pb::Resource>,
        ctx: &ChangeContext,
    ) -> Result<Vec<PreparedWrite>, ApiError> {
        check_size(&resources)?;
        let mut seen = std::collections::HashSet::with_capacity(resources.len());
        for (i, r) in resources.iter().enumerate() {
            let kind = crate::model::resource::kind_of(r).unwrap_or_default();
            if !seen.insert((kind, r.name())) {
                return Err(ApiError::invalid(
                    format!("resources[{i}]"),
                    format!("{} {:?} appears twice", kind_name(kind), r.name()),
                ));
            }
        }
        drop(seen);
        // Parents before children, however deep (a VM on a blade in a chassis).
        let order = crate::set_order::write_order(&resources);
        let mut slots: Vec<Option<pb::Resource>> = resources.into_iter().map(Some).collect();
        let now = self.inventory.now_unix_nanos();
        order
            .into_iter()
            .filter_map(|i| slots.get_mut(i).and_then(Option::take).map(|r| (i, r)))
            .map(|(i, r)| {
                let shown = r.clone();
                self.inventory
                    .prepare_write(who, r, ctx, now)
                    .map_err(|e| locate(i, &shown, e))
            })
            .collect()
    }

    fn planned_change(prepared: &[PreparedWrite]) -> PlannedChange {
        let mut change = PlannedChange::default();
        for p in prepared
            .iter()
            .filter(|p| p.action != ApplyAction::Unchanged)
        {
            match p.resource.resource.as_ref() {
                Some(R::Profile(pr)) => change.profiles.push(CompiledProfile::new(pr)),
                Some(R::Device(d)) => change.devices.push(PlannedDevice::new(d)),
                _ => {}
            }
        }
        change
    }

    fn resources_pb(prepared: &[PreparedWrite]) -> Vec<pb::ResourcePlan> {
        prepared
            .iter()
            .map(|p| pb::ResourcePlan {
                kind: p.kind as i32,
                name: p.name.clone(),
                action: action_pb(p.action) as i32,
            })
            .collect()
    }

    /// What applying `resources` would do. Writes nothing; a refusal is audited.
    pub async fn plan(
        &self,
        who: &Principal,
        resources: Vec<pb::Resource>,
        include_unchanged: bool,
    ) -> Result<pb::PlanResponse, ApiError> {
        let names = set_names(&resources);
        let result = self.plan_inner(who, resources, include_unchanged).await;
        match &result {
            // Not a refusal of the request: the log says what went wrong.
            Err(ApiError::Internal(_) | ApiError::Unavailable(_) | ApiError::ShuttingDown) => {}
            Err(e) => self
                .inventory
                .refuse_set(who, "plan", &names, &ChangeContext::default(), e),
            Ok(_) => {}
        }
        result
    }

    async fn plan_inner(
        &self,
        who: &Principal,
        resources: Vec<pb::Resource>,
        include_unchanged: bool,
    ) -> Result<pb::PlanResponse, ApiError> {
        check_size(&resources)?;
        self.drift.caught_up(CATCH_UP).await;
        let this = self.clone();
        let who = who.clone();
        let name = who.name.clone();
        // Preparation on a blocking thread, evaluation on the engine's: one worker for both,
        // so a plan never keeps two cores busy while Gets wait.
        self.pool
            .run_async(&name, "plan", async move {
                let drift = this.drift.clone();
                let (resources, change) = tokio::task::spawn_blocking(move || {
                    let prepared = this.prepare(&who, resources, &ChangeContext::default())?;
                    Ok::<_, ApiError>((
                        Self::resources_pb(&prepared),
                        Self::planned_change(&prepared),
                    ))
                })
                .await
                .map_err(|e| ApiError::Internal(format!("plan task failed: {e}")))??;
                let mut resp = drift.plan(change, include_unchanged).await?;
                resp.resources = resources;
                Ok(resp)
            })
            .await
    }

    /// Writes every resource as one atomic change set, or nothing; refused when profiles of
    /// equal priority would set one field of a device to different values.
    pub async fn apply(
        &self,
        who: &Principal,
        resources: Vec<pb::Resource>,
        ctx: &ChangeContext,
    ) -> Result<pb::ApplySetResponse, ApiError> {
        let names = set_names(&resources);
        let result = self.apply_inner(who, resources, ctx).await;
        if let Err(e) = &result {
            self.inventory.refuse_set(who, "apply", &names, ctx, e);
        }
        result
    }

    async fn apply_inner(
        &self,
        who: &Principal,
        resources: Vec<pb::Resource>,
        ctx: &ChangeContext,
    ) -> Result<pb::ApplySetResponse, ApiError> {
        ctx.check()?;
        check_size(&resources)?;
        let (this, who_, ctx_) = (self.clone(), who.clone(), ctx.clone());
        let (prepared, change) = self
            .pool
            .run(&who.name, "apply", move || {
                let prepared = this.prepare(&who_, resources, &ctx_)?;
                let change = Self::planned_change(&prepared);
                Ok((prepared, change))
            })
            .await?;
        if !change.profiles.is_empty() || !change.devices.is_empty() {
            // A stopped engine answers the conflict check below with UNAVAILABLE.
            if !self.drift.caught_up(CATCH_UP).await && self.drift.answering() {
                return Err(ApiError::Aborted(
                    "the drift engine is still taking in earlier changes, so conflicts cannot be checked yet; retry shortly".into(),
                ));
            }
            let drift = self.drift.clone();
            let plan = self
                .pool
                .run_async(&who.name, "conflict check", async move {
                    drift.plan(change, false).await
                })
                .await?;
            if let Some(c) = plan.conflicts.first() {
                return Err(ApiError::FailedPrecondition(format!(
                    "profiles {} have equal priority {} and set {} of device {:?} differently{}; \
                     give one a higher priority, narrow a selector, or set the field on the device",
                    c.profiles
                        .iter()
                        .map(|p| format!("{p:?}"))
                        .collect::<Vec<_>>()
                        .join(" and "),
                    c.priority,
                    c.field,
                    c.device,
                    match plan.conflicts.len() {
                        1 => String::new(),
                        n => format!(" ({} more conflicts)", n - 1),
                    }
                )));
            }
        }
        let mut mutations = Vec::new();
        let mut names = Vec::new();
        for p in &prepared {
            if let Some(m) = &p.mutation {
                mutations.push(m.clone());
                names.push((p.kind, p.name.clone()));
            }
        }
        let revisions = self.inventory.commit_set(mutations, &names).await?;
        Ok(pb::ApplySetResponse {
            resources: Self::resources_pb(&prepared),
            change_set: revisions.first().copied().unwrap_or_default(),
            revision: revisions
                .last()
                .copied()
                .unwrap_or_else(|| self.inventory.store().revision()),
        })
    }

    /// Drift of the devices `selector` chooses.
    pub async fn drift(&self, req: &pb::DriftRequest) -> Result<pb::DriftResponse, ApiError> {
        let selector = Selector::parse(&req.selector)
            .map_err(|e| ApiError::invalid("selector", e.to_string()))?;
        self.drift.caught_up(CATCH_UP).await;
        self.drift
            .drift(selector, req.field_prefix.clone(), req.summary_only)
            .await
    }

    /// Makes the observed value of a drifting field the device's own desired value.
    pub async fn accept(
        &self,
        who: &Principal,
        device: &str,
        field: &str,
        ctx: &ChangeContext,
    ) -> Result<pb::AcceptDriftResponse, ApiError> {
        muster::names::validate_name("device", device)?;
        // Before anything else, so a scoped token learns nothing by trying (and is audited).
        if let Err(e) = crate::scope::check_device(&self.inventory, who, device) {
            let names = [(pb::ResourceKind::Device, device.to_string())];
            self.inventory
                .refuse_set(who, "drift accept", &names, ctx, &e);
            return Err(e);
        }
        self.drift.caught_up(CATCH_UP).await;
        let item = self.drift.item(device, field).await?;
        let item = item.ok_or_else(|| {
            ApiError::FailedPrecondition(format!(
                "device {device:?} has no drift in field {field:?}; see `muster drift -l` for its fields"
            ))
        })?;
        if item.observed == NOT_REPORTED {
            return Err(ApiError::FailedPrecondition(format!(
                "{field} of device {device:?} was never reported; there is no observed value to adopt"
            )));
        }
        let current = self
            .inventory
            .get(pb::ResourceKind::Device as i32, device)
            .await?;
        let Some(R::Device(mut d)) = current.resource else {
            return Err(ApiError::Internal("device body is not a device".into()));
        };
        let revision = d.meta.as_ref().map(|m| m.revision).unwrap_or_default();
        adopt(&mut d, field, &item.observed)?;
        d.status = None;
        let ctx = ChangeContext {
            reason: if ctx.reason.is_empty() {
                format!("accept observed {field} = {}", item.observed)
            } else {
                ctx.reason.clone()
            },
            ticket: ctx.ticket.clone(),
            origin: ctx.origin.clone(),
        };
        let updated = self
            .inventory
            .update_as(
                who,
                pb::Resource {
                    resource: Some(R::Device(d)),
                },
                revision,
                "drift accept",
                &ctx,
            )
            .await?;
        let revision = updated.meta().map(|m| m.revision).unwrap_or_default();
        Ok(pb::AcceptDriftResponse {
            device: Some(updated),
            revision,
        })
    }
}

/// Writes an observed value into a device's own desired state (or declared hardware).
fn adopt(d: &mut pb::Device, field: &str, observed: &str) -> Result<(), ApiError> {
    if let Some(v) = field.strip_prefix("inventory.") {
        match v {
            "serial" => d.serial = observed.into(),
            "model" => d.model = observed.into(),
            _ => return Err(unknown_field(field)),
        }
        return Ok(());
    }
    let spec = d.spec.get_or_insert_with(Default::default);
    if let Some(name) = field.strip_prefix("packages.") {
        let req = compare::accepted_requirement(name, observed);
        spec.packages.retain(|p| p.name != name);
        spec.packages.push(req);
        spec.packages.sort_by(|a, b| a.name.cmp(&b.name));
        return Ok(());
    }
    if let Some(key) = field.strip_prefix("sysctl.") {
        spec.sysctl.insert(key.into(), observed.into());
        return Ok(());
    }
    match field {
        "os.release" => spec.os_release = observed.into(),
        "kernel" => spec.kernel = observed.into(),
        "timezone" => spec.timezone = observed.into(),
        "firmware.bios" => {
            spec.firmware.get_or_insert_with(Default::default).bios = observed.into()
        }
        "firmware.bmc" => spec.firmware.get_or_insert_with(Default::default).bmc = observed.into(),
        "ntp_servers" => spec.ntp_servers = observed.split(',').map(str::to_string).collect(),
        "dns_servers" => spec.dns_servers = observed.split(',').map(str::to_string).collect(),
        "power" => {
            spec.power = match observed {
                "on" => pb::PowerState::PowerOn as i32,
                "off" => pb::PowerState::PowerOff as i32,
                _ => return Err(unknown_field(field)),
            }
        }
        f if f.starts_with("expect.") => {
            return Err(ApiError::FailedPrecondition(format!(
                "{field} is a rule, not a value: change or remove the expect rule instead"
            )));
        }
        _ => return Err(unknown_field(field)),
    }
    Ok(())
}

fn unknown_field(field: &str) -> ApiError {
    ApiError::invalid("field", format!("{field:?} cannot be adopted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(kind: &str, name: &str) -> pb::Resource {
        let meta = Some(pb::ObjectMeta {
            name: name.into(),
            ..Default::default()
        });
        pb::Resource {
            resource: Some(match kind {
                "profile" => R::Profile(pb::Profile {
                    meta,
                    ..Default::default()
                }),
                _ => R::Device(pb::Device {
                    meta,
                    ..Default::default()
                }),
            }),
        }
    }

    #[test]
    fn set_sizes_are_checked_before_any_work() {
        let e = check_size(&[]).unwrap_err();
        assert!(e.to_string().contains("nothing to do"), "{e}");
        let many: Vec<pb::Resource> = (0..=MAX_SET_PROFILES)
            .map(|i| named("profile", &format!("p{i}")))
            .collect();
        let e = check_size(&many).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("at most {MAX_SET_PROFILES}")),
            "{e}"
        );
        assert!(check_size(&many[..MAX_SET_PROFILES]).is_ok());
    }

    #[test]
    fn errors_name_the_resource_of_the_set_they_are_about() {
        let r = named("device", "web-1");
        let e = locate(3, &r, ApiError::invalid("meta.labels", "bad"));
        let ApiError::InvalidArgument { field, .. } = e else {
            panic!("kind changed")
        };
        assert_eq!(field, "resources[3] (device \"web-1\").meta.labels");
        let e = locate(0, &r, ApiError::FailedPrecondition("rack missing".into()));
        assert!(e.to_string().starts_with("resources[0] (device"), "{e}");
        // Others pass through unchanged.
        assert!(matches!(
            locate(0, &r, ApiError::ShuttingDown),
            ApiError::ShuttingDown
        ));
    }

    #[test]
    fn accepting_drift_writes_the_observed_value_as_the_device_own() {
        let mut d = pb::Device::default();
        adopt(&mut d, "kernel", "6.1.0-13-amd64").unwrap();
        adopt(&mut d, "sysctl.vm.swappiness", "10").unwrap();
        adopt(&mut d, "ntp_servers", "a,b").unwrap();
        adopt(&mut d, "power", "off").unwrap();
        adopt(&mut d, "inventory.serial", "SN1").unwrap();
        adopt(&mut d, "packages.openssl", "3.0.1").unwrap();
        adopt(&mut d, "packages.telnet", compare::NOT_INSTALLED).unwrap();
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.kernel, "6.1.0-13-amd64");
        assert_eq!(spec.sysctl["vm.swappiness"], "10");
        assert_eq!(spec.ntp_servers, ["a", "b"]);
        assert_eq!(spec.power, pb::PowerState::PowerOff as i32);
        assert_eq!(d.serial, "SN1");
        let pkgs: Vec<(&str, i32)> = spec
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.r#match))
            .collect();
        assert_eq!(
            pkgs,
            [
                ("openssl", pb::VersionMatch::Exact as i32),
                ("telnet", pb::VersionMatch::Absent as i32)
            ]
        );
        // Accepting again replaces, never duplicates.
        adopt(&mut d, "packages.openssl", "3.0.2").unwrap();
        assert_eq!(d.spec.as_ref().unwrap().packages.len(), 2);
    }

    #[test]
    fn rules_and_unknown_fields_cannot_be_adopted() {
        let mut d = pb::Device::default();
        let rule = adopt(&mut d, "expect.facts.cpu.cores", "8").unwrap_err();
        assert!(matches!(rule, ApiError::FailedPrecondition(_)), "{rule:?}");
        for field in ["inventory.color", "nonsense", "power"] {
            let e = adopt(&mut d, field, "sideways").unwrap_err();
            assert!(
                matches!(e, ApiError::InvalidArgument { .. }),
                "{field}: {e:?}"
            );
        }
    }
}
