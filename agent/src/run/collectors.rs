//! The collectors under their deadlines: each runs on its own (blocking ones in
//! `spawn_blocking`), a failed or late one keeps its last good section and its status says so.
//! The IPMI collector never runs twice at once, so a dead BMC cannot pile up threads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster::clock::SharedClock;
use muster::pb;

use super::AgentError;
use crate::collect;
use crate::config::AgentConfig;

/// Last good data per collector.
#[derive(Debug, Clone, Default)]
struct Freshness {
    last_success: BTreeMap<&'static str, pbjson_types::Timestamp>,
}

impl Freshness {
    /// The status of a collector that just ran (at `now`, taking `took`): a success is
    /// remembered, a failure reports the last success.
    fn status(
        &mut self,
        name: &'static str,
        error: Option<String>,
        took: Duration,
        now: pbjson_types::Timestamp,
    ) -> pb::CollectorStatus {
        let took = Duration::from_millis(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        if error.is_none() {
            self.last_success.insert(name, now);
        }
        pb::CollectorStatus {
            name: name.into(),
            error: error.unwrap_or_default(),
            last_success: self.last_success.get(name).cloned(),
            took: Some(pbjson_types::Duration {
                seconds: i64::try_from(took.as_secs()).unwrap_or(0),
                nanos: i32::try_from(took.subsec_nanos()).unwrap_or(0),
            }),
        }
    }
}

/// One collection: complete facts (collectors that failed keep their last good section),
/// new SEL events, and each collector's status.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub facts: pb::Facts,
    pub sel: Vec<pb::SelEntry>,
    pub sel_reset: bool,
    pub collectors: Vec<pb::CollectorStatus>,
    pub boot_id: String,
    /// CPU time this process spent on the collection.
    pub cpu_time: Duration,
}

/// Collectors and what they remember between runs.
pub struct Collectors {
    cfg: AgentConfig,
    ipmi: Option<Arc<Mutex<collect::ipmi::IpmiCollector>>>,
    ipmi_busy: Arc<AtomicBool>,
    /// SEL cursor of the last spooled report: every IPMI collection starts from it, so events
    /// of a snapshot that was lost (deadline, error) are read again.
    spooled_cursor: Option<u16>,
    /// SEL cursor of the latest collection, persisted once its report is spooled.
    collected_cursor: Option<u16>,
    freshness: Freshness,
    /// The complete facts as of the last collection.
    pub(super) current: pb::Facts,
    boot_id: String,
    /// The package manager the packages collector last got its list from ("deb" or "rpm"). It
    /// overrides the OS collector's guess from the package databases in `OsFacts.package_format`,
    /// since it is what the reported versions were written by.
    package_format: Option<&'static str>,
    clock: SharedClock,
}

impl std::fmt::Debug for Collectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collectors").finish_non_exhaustive()
    }
}

fn process_cpu_time() -> Duration {
    // utime + stime from /proc/self/stat, in clock ticks (100 Hz on Linux).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

impl Collectors {
    /// Sets up the collectors the config asks for; `clock` times them and stamps successes.
    pub fn new(
        cfg: &AgentConfig,
        sel_cursor: Option<u16>,
        clock: SharedClock,
    ) -> Result<Self, AgentError> {
        let ipmi = match &cfg.bmc {
            Some(spec) => {
                let password = match &cfg.bmc_password_file {
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .map_err(|e| AgentError::Config(format!("{}: {e}", p.display())))?
                            .trim_end_matches(['\n', '\r'])
                            .to_string(),
                    ),
                    None => None,
                };
                let ep = collect::ipmi::BmcEndpoint::parse(spec, password)
                    .map_err(|e| AgentError::Config(format!("bmc: {e}")))?;
                // Each network wait gets a share of the deadline; the collector makes several.
                let c = collect::ipmi::IpmiCollector::new(ep, cfg.deadlines.ipmi / 4);
                Some(Arc::new(Mutex::new(c)))
            }
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            ipmi,
            ipmi_busy: Arc::new(AtomicBool::new(false)),
            spooled_cursor: sel_cursor,
            collected_cursor: sel_cursor,
            freshness: Freshness::default(),
            current: pb::Facts::default(),
            boot_id: String::new(),
            package_format: None,
            clock,
        })
    }

    /// The status of collector `name`, started at `started`, that ended with `error`.
    fn finish(
        &mut self,
        name: &'static str,
        error: Option<String>,
        started: Instant,
    ) -> pb::CollectorStatus {
        let took = self.clock.now_instant().saturating_duration_since(started);
        let now = super::timestamp(&self.clock);
        self.freshness.status(name, error, took, now)
    }

    /// The report carrying the latest collection's SEL events is spooled: its cursor is now
    /// the one to persist and to start from.
    pub fn sel_spooled(&mut self) -> Option<u16> {
        self.spooled_cursor = self.collected_cursor;
        self.spooled_cursor
    }

    /// Runs every collector under its deadline.
    pub async fn collect(&mut self) -> Collected {
        let cpu_before = process_cpu_time();
        let d = self.cfg.deadlines.clone();
        let mut out = Collected::default();
        let mut statuses = Vec::new();

        // OS facts.
        let t = self.clock.now_instant();
        let sysctl_keys = self.cfg.sysctl_keys.clone();
        let boot_id_file = self.cfg.boot_id_file.clone();
        let os = tokio::time::timeout(
            d.os,
            tokio::task::spawn_blocking(move || {
                let mut s = collect::os::collect_with(&sysctl_keys)?;
                s.boot_id = collect::os::read_boot_id(&boot_id_file)?;
                Ok::<_, collect::os::OsError>(s)
            }),
        )
        .await;
        let err = match os {
            Ok(Ok(Ok(s))) => {
                self.current.os = Some(s.os);
                self.current.cpu = Some(s.cpu);
                self.current.memory_bytes = Some(s.memory_bytes);
                self.current.nics = Some(pb::NicList { items: s.nics });
                self.current.disks = Some(pb::BlockDeviceList { items: s.disks });
                self.boot_id = s.boot_id;
                None
            }
            Ok(Ok(Err(e))) => Some(e.to_string()),
            Ok(Err(e)) => Some(format!("collector panicked: {e}")),
            Err(_) => Some(format!(
                "timed out after {}",
                humantime::format_duration(d.os)
            )),
        };
        statuses.push(self.finish("os", err, t));

        if self.cfg.packages {
            let t = self.clock.now_instant();
            let listing = collect::packages::collect_listing(
                std::path::Path::new("dpkg-query"),
                std::path::Path::new("rpm"),
            );
            let err = match tokio::time::timeout(d.packages, listing).await {
                Ok(Ok((format, p))) => {
                    self.current.packages = Some(pb::PackageList { items: p });
                    self.package_format = Some(format.as_str());
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "timed out after {}",
                    humantime::format_duration(d.packages)
                )),
            };
            statuses.push(self.finish("packages", err, t));
        }

        if let Some(ipmi) = &self.ipmi {
            let t = self.clock.now_instant();
            let err = if self.ipmi_busy.swap(true, Ordering::SeqCst) {
                // The previous collection is still stuck in the BMC: never pile up threads.
                Some("the previous IPMI collection has not finished; BMC unresponsive".to_string())
            } else {
                let ipmi = Arc::clone(ipmi);
                let busy = Arc::clone(&self.ipmi_busy);
                let from = self.spooled_cursor;
                let task = tokio::task::spawn_blocking(move || {
                    let r = ipmi
                        .lock()
                        .map_err(|_| "IPMI collector poisoned".to_string())
                        .and_then(|mut c| {
                            c.set_sel_cursor(from);
                            let snap = c.collect().map_err(|e| e.to_string())?;
                            Ok((snap, c.sel_cursor()))
                        });
                    busy.store(false, Ordering::SeqCst);
                    r
                });
                match tokio::time::timeout(d.ipmi, task).await {
                    Ok(Ok(Ok((snap, cursor)))) => {
                        self.collected_cursor = cursor;
                        self.current.sensors = Some(pb::SensorList {
                            items: snap.sensors,
                        });
                        if snap.fru.is_some() {
                            self.current.fru = snap.fru;
                        }
                        self.current.power = Some(snap.power as i32);
                        if let Some(fw) = snap.firmware {
                            let f = self.current.firmware.get_or_insert_with(Default::default);
                            f.bmc = fw;
                        }
                        out.sel = snap.new_sel;
                        out.sel_reset = snap.sel_reset;
                        None
                    }
                    Ok(Ok(Err(e))) => Some(e),
                    Ok(Err(e)) => Some(format!("collector panicked: {e}")),
                    Err(_) => Some(format!(
                        "BMC did not answer within {}",
                        humantime::format_duration(d.ipmi)
                    )),
                }
            };
            statuses.push(self.finish("ipmi", err, t));
        }

        if self.cfg.smart {
            let t = self.clock.now_instant();
            let smartctl = self.cfg.smartctl.clone();
            let disks = self.cfg.disks.clone();
            let run = async move {
                let refs = if disks.is_empty() {
                    collect::smart::scan(&smartctl)
                        .await
                        .map_err(|e| e.to_string())?
                } else {
                    disks
                        .iter()
                        .map(|s| collect::smart::DiskRef::parse(s))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string())?
                };
                let (found, errors) = collect::smart::collect_all(&smartctl, &refs).await;
                Ok::<_, String>((found, errors))
            };
            let err = match tokio::time::timeout(d.smart, run).await {
                Ok(Ok((found, errors))) => {
                    self.current.smart = Some(pb::SmartList { items: found });
                    if errors.is_empty() {
                        None
                    } else {
                        Some(
                            errors
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; "),
                        )
                    }
                }
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!(
                    "timed out after {}",
                    humantime::format_duration(d.smart)
                )),
            };
            statuses.push(self.finish("smart", err, t));
        }

        if let Some(uri) = self.cfg.libvirt_uri.clone() {
            let t = self.clock.now_instant();
            let err = match tokio::time::timeout(
                d.libvirt,
                collect::libvirt::collect(&self.cfg.virsh, &uri),
            )
            .await
            {
                Ok(Ok(vms)) => {
                    self.current.vms = Some(pb::VirtualMachineList { items: vms });
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "timed out after {}",
                    humantime::format_duration(d.libvirt)
                )),
            };
            statuses.push(self.finish("libvirt", err, t));
        }

        if let Some(dir) = self.cfg.external_facts_dir.clone() {
            let t = self.clock.now_instant();
            let each = d.external / 2;
            let err = match tokio::time::timeout(d.external, collect::external::collect(&dir, each))
                .await
            {
                Ok(ext) => {
                    self.current.external_json =
                        Some(collect::external::canonical_json(&ext.facts));
                    if ext.errors.is_empty() {
                        None
                    } else {
                        Some(ext.errors.join("; "))
                    }
                }
                Err(_) => Some(format!(
                    "timed out after {}",
                    humantime::format_duration(d.external)
                )),
            };
            statuses.push(self.finish("external", err, t));
        }

        if let (Some(format), Some(os)) = (self.package_format, self.current.os.as_mut()) {
            os.package_format = format.to_string();
        }
        out.facts = self.current.clone();
        out.collectors = statuses;
        out.boot_id = self.boot_id.clone();
        out.cpu_time = process_cpu_time().saturating_sub(cpu_before);
        out
    }
}

#[cfg(test)]
mod tests {
    use muster::clock::ManualClock;

    use super::*;

    fn ts(seconds: i64) -> pbjson_types::Timestamp {
        pbjson_types::Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn a_failure_reports_the_last_success() {
        let mut f = Freshness::default();
        let ok = f.status("os", None, Duration::from_micros(2_500), ts(100));
        assert_eq!(ok.last_success, Some(ts(100)));
        assert_eq!(ok.error, "");
        // Durations are reported in whole milliseconds.
        assert_eq!(
            ok.took,
            Some(pbjson_types::Duration {
                seconds: 0,
                nanos: 2_000_000
            })
        );
        let failed = f.status("os", Some("boom".into()), Duration::ZERO, ts(200));
        assert_eq!(
            (failed.error.as_str(), failed.last_success),
            ("boom", Some(ts(100)))
        );
        let never = f.status("smart", Some("no smartctl".into()), Duration::ZERO, ts(300));
        assert_eq!(never.last_success, None);
    }

    /// Only the OS collector (the host's own /proc): its status is stamped and timed by the
    /// injected clock, not the system's.
    #[tokio::test]
    async fn statuses_are_stamped_by_the_injected_clock() {
        let manual = ManualClock::at_unix_nanos(1_000_000_000_000_000_000);
        let cfg = AgentConfig {
            packages: false,
            smart: false,
            ..AgentConfig::default()
        };
        let mut c = Collectors::new(&cfg, None, manual.clone()).unwrap();
        let got = c.collect().await;
        let names: Vec<&str> = got.collectors.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["os"]);
        let os = &got.collectors[0];
        assert_eq!(os.error, "");
        assert_eq!(os.last_success, Some(ts(1_000_000_000)));
        // The manual clock did not move while the collector ran.
        assert_eq!(os.took, Some(pbjson_types::Duration::default()));
        assert!(got.facts.os.is_some() && !got.boot_id.is_empty());
    }

    /// The boot id comes from the configured file (a test host's stand-in for the kernel's);
    /// an unreadable one fails the OS collector naming it, never a silent kernel fallback.
    #[tokio::test]
    async fn boot_id_comes_from_the_configured_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("boot_id");
        std::fs::write(&file, "aaaaaaaa-0000-0000-0000-000000000001\n").unwrap();
        let cfg = AgentConfig {
            packages: false,
            smart: false,
            boot_id_file: file.clone(),
            ..AgentConfig::default()
        };
        let mut c = Collectors::new(&cfg, None, muster::clock::system()).unwrap();
        assert_eq!(
            c.collect().await.boot_id,
            "aaaaaaaa-0000-0000-0000-000000000001"
        );
        std::fs::write(&file, "aaaaaaaa-0000-0000-0000-000000000002\n").unwrap();
        assert_eq!(
            c.collect().await.boot_id,
            "aaaaaaaa-0000-0000-0000-000000000002"
        );
        std::fs::remove_file(&file).unwrap();
        let got = c.collect().await;
        assert!(got.collectors[0].error.contains("boot_id"), "{got:?}");
    }

    #[test]
    fn an_unreadable_bmc_password_file_is_a_config_error_naming_it() {
        let cfg = AgentConfig {
            bmc: Some("rmcp://admin@127.0.0.1:623".into()),
            bmc_password_file: Some("/nonexistent/bmc-password".into()),
            ..AgentConfig::default()
        };
        let err = Collectors::new(&cfg, None, muster::clock::system())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/bmc-password"), "{err}");
    }

    #[test]
    fn cpu_time_of_this_process_is_read() {
        let before = process_cpu_time();
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_time() >= before);
    }
}
