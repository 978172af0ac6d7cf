//! A fleet of test hosts for campaign tests: each host is a real `sshd` on a loopback port and
//! its own real, enrolled `muster-agent`, both started by the host's `bin/start` script and
//! stopped by `bin/stop`, so a host can "reboot" itself (`bin/reboot`: stop both, write a new
//! boot id, start both again) from inside an SSH session.
//!
//! Every host has a directory `H` (its sshd sets `MUSTER_TEST_HOST=H` in sessions, so one
//! campaign command, never templated, finds the right host):
//! - `state.json` `{"patch": {"version", "runs", "rollbacks"}}`, which the agent reports as
//!   external facts (`facts/patch` cats it): `facts.external.patch.version`;
//! - `bin/patch apply VERSION [SECONDS]` counts a run first, sleeps, then fails when `H/fail`
//!   exists, does nothing more when `H/noop` exists, else writes VERSION; `bin/patch rollback
//!   VERSION` counts a rollback and writes VERSION;
//! - `boot_id` (the agent's `boot_id_file`), `reboots` (count), `never-return` (a reboot that
//!   stops the host for good);
//! - `root/` a dpkg root (`dpkg --root`), whose database the agent's `dpkg-query` reads through
//!   a wrapper on its PATH (`path/dpkg-query`), so every host has its own package state.
// The kit waits on real processes, so it reads real time.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use muster::pb::{self, resource::Resource as R};

use crate::ssh::{SSHD, keygen, require_sshd};
use crate::{Options, TestServer, bin};

/// The report interval agents get (server `--agent-interval`).
pub const INTERVAL: &str = "1s";
/// The credential every fleet device's SSH endpoint names.
pub const CREDENTIAL: &str = "fleet-ssh-key";
/// What `reboot` steps run (`[campaigns] reboot_command` of the fleet's musterd, always set:
/// never the real `systemctl reboot`).
pub const REBOOT_COMMAND: &str = "\"$MUSTER_TEST_HOST/bin/reboot\"";

/// One host of the fleet.
#[derive(Debug, Clone)]
pub struct FleetHost {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    /// `SHA256:...` of its host key, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
}

/// The patch state a host's agent reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PatchState {
    pub version: String,
    pub runs: u64,
    pub rollbacks: u64,
}

/// How to build the fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetOptions {
    /// Extra musterd config (TOML), after the fleet's own `[campaigns]` lines.
    pub config: String,
    /// Agents also report packages (through the host's own dpkg database).
    pub packages: bool,
}

/// A musterd with role tokens and auto-TLS, plus the hosts.
#[derive(Debug)]
pub struct CampaignFleet {
    pub server: TestServer,
    pub dir: tempfile::TempDir,
    pub client_key: PathBuf,
    pub hosts: Vec<FleetHost>,
    packages: bool,
}

fn write_exec(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn sh(script: &Path) -> anyhow::Result<()> {
    let o = Command::new("sh").arg(script).output()?;
    if !o.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

fn fingerprint(pubkey: &Path) -> anyhow::Result<String> {
    let o = Command::new("ssh-keygen").arg("-lf").arg(pubkey).output()?;
    let text = String::from_utf8_lossy(&o.stdout);
    text.split_whitespace()
        .nth(1)
        .filter(|f| f.starts_with("SHA256:"))
        .map(str::to_string)
        .with_context(|| format!("ssh-keygen -lf printed {text:?}"))
}

fn new_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap_or_default()
        .trim()
        .to_string()
}

impl CampaignFleet {
    /// A musterd for campaigns (fails clearly when sshd cannot run here, see `SshFleet`).
    pub fn new(opts: FleetOptions) -> anyhow::Result<Self> {
        require_sshd()?;
        let dir = tempfile::tempdir()?;
        let client_key = dir.path().join("client_ed25519");
        keygen(&client_key, "muster-campaign-client")?;
        std::fs::copy(
            dir.path().join("client_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )?;
        // Detached runs live in the fleet's directory, not in root's home (all hosts share it).
        let runs = dir.path().join("runs");
        let server = TestServer::start_with(Options {
            role_tokens: true,
            tls_auto: true,
            args: vec!["--agent-interval".into(), INTERVAL.into()],
            config: format!(
                "[campaigns]\nrun_dir = '{}'\nssh_connect_timeout_secs = 5\n\
                 reboot_command = '{REBOOT_COMMAND}'\n{}",
                runs.display(),
                opts.config
            ),
            ..Options::default()
        })?;
        Ok(Self {
            server,
            dir,
            client_key,
            hosts: Vec::new(),
            packages: opts.packages,
        })
    }

    /// Stores the client key as the fleet's SSH credential.
    pub async fn add_credential(&self) -> anyhow::Result<()> {
        let secret = std::fs::read(&self.client_key)?;
        let mut inv = self.server.inventory().await?;
        inv.create(pb::CreateRequest {
            resource: Some(pb::Resource {
                resource: Some(R::Credential(pb::Credential {
                    meta: Some(pb::ObjectMeta {
                        name: CREDENTIAL.into(),
                        ..Default::default()
                    }),
                    kind: pb::CredentialKind::SshPrivateKey as i32,
                    secret,
                    fingerprint: String::new(),
                })),
            }),
            context: None,
        })
        .await?;
        Ok(())
    }

    /// Starts `n` hosts named `PREFIX-01..`, each registered as a device labelled
    /// `fleet=PREFIX` with its SSH endpoint, enrolled, and reported at least once.
    pub async fn start_hosts(&mut self, prefix: &str, n: usize) -> anyhow::Result<()> {
        if self.hosts.is_empty() {
            self.add_credential().await?;
        }
        for k in 1..=n {
            let name = format!("{prefix}-{k:02}");
            let host = self.start_host(&name)?;
            // Owned before anything else can fail, so Drop stops it.
            self.hosts.push(host.clone());
            self.register(&host, prefix, &host.fingerprint).await?;
            self.enroll_and_run(&host)?;
        }
        for h in self.hosts.clone() {
            self.wait_reported(&h.name, Duration::from_secs(20)).await?;
        }
        Ok(())
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> &FleetHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    fn start_host(&self, name: &str) -> anyhow::Result<FleetHost> {
        let d = self.dir.path().join(name);
        for sub in ["bin", "facts", "path", "agent", "root/var/lib/dpkg/updates"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        std::fs::create_dir_all(d.join("root/var/lib/dpkg/info"))?;
        std::fs::write(d.join("root/var/lib/dpkg/status"), "")?;
        std::fs::write(d.join("name"), name)?;
        std::fs::write(d.join("boot_id"), new_boot_id())?;
        std::fs::write(d.join("version"), "1.0")?;
        let hostkey = d.join("hostkey_ed25519");
        keygen(&hostkey, &format!("muster-campaign-{name}"))?;
        let fp = fingerprint(&d.join("hostkey_ed25519.pub"))?;
        self.write_scripts(&d)?;
        sh(&d.join("bin/patch-state"))?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            std::fs::write(
                d.join("sshd_config"),
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {d}/sshd.pid\n\
                     AuthorizedKeysFile {ak}\nPubkeyAuthentication yes\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n\
                     PrintMotd no\nLogLevel VERBOSE\nMaxStartups 64\n\
                     SetEnv MUSTER_TEST_HOST={d}\n",
                    hk = hostkey.display(),
                    d = d.display(),
                    ak = self.dir.path().join("authorized_keys").display(),
                ),
            )?;
            std::fs::write(d.join("port"), port.to_string())?;
            let o = Command::new("sh").arg(d.join("bin/start-sshd")).output()?;
            if o.status.success() && wait_port(port, Duration::from_secs(10)) {
                return Ok(FleetHost {
                    name: name.into(),
                    dir: d,
                    port,
                    fingerprint: fp,
                });
            }
            sh(&d.join("bin/stop"))?;
            last = std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default();
        }
        bail!("sshd for {name} did not start; its log:\n{last}")
    }

    fn write_scripts(&self, d: &Path) -> anyhow::Result<()> {
        let h = d.display();
        let agent = bin("muster-agent");
        write_exec(
            &d.join("bin/patch-state"),
            &format!(
                "#!/bin/sh\nH={h}\nc() {{ cat \"$H/$1\" 2>/dev/null || echo 0; }}\n\
                 printf '{{\"patch\": {{\"version\": \"%s\", \"runs\": %s, \"rollbacks\": %s}}}}\\n' \
                 \"$(cat \"$H/version\")\" \"$(c runs)\" \"$(c rollbacks)\" > \"$H/state.json.tmp\"\n\
                 mv \"$H/state.json.tmp\" \"$H/state.json\"\n"
            ),
        )?;
        write_exec(
            &d.join("bin/patch"),
            &format!(
                "#!/bin/sh\nH={h}\nset -e\ninc() {{ n=$(cat \"$H/$1\" 2>/dev/null || echo 0); \
                 echo $((n + 1)) > \"$H/$1\"; }}\n\
                 case \"$1\" in\n\
                 apply)\n  inc runs; sh \"$H/bin/patch-state\"\n  [ -z \"$3\" ] || sleep \"$3\"\n\
                 \x20 if [ -e \"$H/fail\" ]; then echo \"patch failed on $(cat \"$H/name\")\" >&2; exit 1; fi\n\
                 \x20 if [ -e \"$H/noop\" ]; then echo \"nothing changed on $(cat \"$H/name\")\"; exit 0; fi ;;\n\
                 rollback) inc rollbacks ;;\n\
                 *) echo \"usage: patch apply|rollback VERSION [SECONDS]\" >&2; exit 2 ;;\n\
                 esac\n\
                 echo \"$2\" > \"$H/version\"\nsh \"$H/bin/patch-state\"\n\
                 echo \"$1 $2 on $(cat \"$H/name\")\"\n"
            ),
        )?;
        write_exec(
            &d.join("facts/patch"),
            &format!("#!/bin/sh\nexec cat {h}/state.json\n"),
        )?;
        write_exec(
            &d.join("path/dpkg-query"),
            &format!(
                "#!/bin/sh\nexec /usr/bin/dpkg-query --admindir={h}/root/var/lib/dpkg \"$@\"\n"
            ),
        )?;
        write_exec(
            &d.join("bin/start-sshd"),
            &format!("#!/bin/sh\nexec {SSHD} -f {h}/sshd_config -E {h}/sshd.log\n"),
        )?;
        // The agent runs in its own session (a reboot from an SSH session must not take it
        // down with the session), with the host's dpkg-query first on its PATH.
        write_exec(
            &d.join("bin/start-agent"),
            &format!(
                "#!/bin/sh\ncd /\nPATH={h}/path:$PATH MUSTER_LOG=info setsid {agent} \
                 --server {url} --ca {ca} --state-dir {h}/agent --config {h}/agent.toml run \
                 < /dev/null > /dev/null 2>> {h}/agent.log &\necho $! > {h}/agent.pid\n",
                agent = agent.display(),
                url = self.server.url(),
                ca = self.server.ca_path().display(),
            ),
        )?;
        write_exec(
            &d.join("bin/start"),
            &format!(
                "#!/bin/sh\n[ -e {h}/never-return ] && exit 0\n\
                 sh {h}/bin/start-sshd && sh {h}/bin/start-agent\n"
            ),
        )?;
        write_exec(
            &d.join("bin/stop"),
            &format!(
                "#!/bin/sh\nfor p in sshd agent; do\n  if [ -f {h}/$p.pid ]; then \
                 kill -9 \"$(cat {h}/$p.pid)\" 2>/dev/null; rm -f {h}/$p.pid; fi\ndone\nexit 0\n"
            ),
        )?;
        // The reboot returns at once; in its own session it stops the host, takes a new boot
        // id and comes back 2 s later (unless told never to): down long enough for musterd's
        // probes to see it go.
        write_exec(
            &d.join("bin/reboot"),
            &format!(
                "#!/bin/sh\nsetsid sh -c 'sleep 0.3; sh {h}/bin/stop; \
                 cat /proc/sys/kernel/random/uuid > {h}/boot_id; \
                 n=$(cat {h}/reboots 2>/dev/null || echo 0); echo $((n + 1)) > {h}/reboots; \
                 [ -e {h}/never-return ] && exit 0; sleep 2; sh {h}/bin/start' \
                 < /dev/null > /dev/null 2>&1 &\necho rebooting\n"
            ),
        )?;
        std::fs::write(
            d.join("agent.toml"),
            format!(
                "interval = \"{INTERVAL}\"\nsmart = false\npackages = {}\n\
                 external_facts_dir = \"{h}/facts\"\nboot_id_file = \"{h}/boot_id\"\n",
                self.packages
            ),
        )?;
        Ok(())
    }

    /// Creates the device with its SSH endpoint pinned to `fingerprint`.
    pub async fn register(
        &self,
        host: &FleetHost,
        fleet: &str,
        fingerprint: &str,
    ) -> anyhow::Result<()> {
        let mut inv = self.server.inventory().await?;
        inv.create(pb::CreateRequest {
            resource: Some(pb::Resource {
                resource: Some(R::Device(pb::Device {
                    meta: Some(pb::ObjectMeta {
                        name: host.name.clone(),
                        labels: [("fleet".to_string(), fleet.to_string())].into(),
                        ..Default::default()
                    }),
                    kind: pb::DeviceKind::Server as i32,
                    serial: format!("SN-{}", host.name),
                    role: "web".into(),
                    ssh: Some(pb::SshEndpoint {
                        host: "127.0.0.1".into(),
                        port: u32::from(host.port),
                        user: "root".into(),
                        credential_ref: CREDENTIAL.into(),
                        host_key_fingerprint: fingerprint.into(),
                    }),
                    ..Default::default()
                })),
            }),
            context: None,
        })
        .await?;
        Ok(())
    }

    fn enroll_and_run(&self, host: &FleetHost) -> anyhow::Result<()> {
        let o = self
            .server
            .muster(&["agent", "token", "create", &host.name, "--ttl", "1h"]);
        if !o.status.success() {
            bail!("token create: {}", String::from_utf8_lossy(&o.stderr));
        }
        let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let o = Command::new(bin("muster-agent"))
            .arg("--server")
            .arg(self.server.url())
            .arg("--ca")
            .arg(self.server.ca_path())
            .arg("--state-dir")
            .arg(host.dir.join("agent"))
            .args(["enroll", "--token", &token, "--wait", "0s"])
            .output()?;
        if !o.status.success() {
            bail!(
                "enroll {}: {}",
                host.name,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        sh(&host.dir.join("bin/start-agent"))
    }

    /// The device as the server has it.
    pub async fn device(&self, name: &str) -> anyhow::Result<pb::Device> {
        let mut inv = self.server.inventory().await?;
        let r = inv
            .get(pb::GetRequest {
                kind: pb::ResourceKind::Device as i32,
                name: name.into(),
            })
            .await?
            .into_inner();
        match r.resource {
            Some(R::Device(d)) => Ok(d),
            other => bail!("{name} is not a device: {other:?}"),
        }
    }

    /// Waits until the device has a report whose external facts carry the patch state.
    pub async fn wait_reported(&self, name: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let d = self.device(name).await?;
            if reported_patch(&d).is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not report within {within:?}; agent log:\n{}",
                    self.agent_log(name)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the host's state file says now (run and rollback counters, version).
    pub fn state(&self, name: &str) -> PatchState {
        let text =
            std::fs::read_to_string(self.host(name).dir.join("state.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        PatchState {
            version: v["patch"]["version"].as_str().unwrap_or_default().into(),
            runs: v["patch"]["runs"].as_u64().unwrap_or(0),
            rollbacks: v["patch"]["rollbacks"].as_u64().unwrap_or(0),
        }
    }

    /// A marker file in the host's directory (`fail`, `noop`, `never-return`).
    pub fn set_marker(&self, name: &str, marker: &str, on: bool) {
        let p = self.host(name).dir.join(marker);
        if on {
            std::fs::write(p, "").expect("writing a marker");
        } else {
            let _ = std::fs::remove_file(p);
        }
    }

    /// How many times the host "rebooted".
    pub fn reboots(&self, name: &str) -> u64 {
        std::fs::read_to_string(self.host(name).dir.join("reboots"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The boot id the host's agent reports.
    pub fn boot_id(&self, name: &str) -> String {
        std::fs::read_to_string(self.host(name).dir.join("boot_id"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    pub fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.host(name).dir.join("agent.log")).unwrap_or_default()
    }
}

/// The `patch` external fact of a device's latest report.
pub fn reported_patch(d: &pb::Device) -> Option<PatchState> {
    let ext = d.status.as_ref()?.external_facts.as_ref()?;
    let v = serde_json::to_value(ext).ok()?;
    let p = v.get("patch")?;
    Some(PatchState {
        version: p["version"].as_str()?.into(),
        runs: p["runs"].as_f64()? as u64,
        rollbacks: p["rollbacks"].as_f64()? as u64,
    })
}

fn wait_port(port: u16, within: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Drop for CampaignFleet {
    fn drop(&mut self) {
        for h in &self.hosts {
            // A reboot still in progress must not bring the host back after this.
            let _ = std::fs::write(h.dir.join("never-return"), "");
            let _ = Command::new("sh").arg(h.dir.join("bin/stop")).status();
        }
    }
}
