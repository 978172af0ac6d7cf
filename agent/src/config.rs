//! Agent configuration: a TOML file, overridden by flags. Every collector has its own
//! deadline, so a dead BMC or a hung smartctl never delays a report past it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where the agent keeps its identity, sequence and spool by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/muster-agent";

/// Per-collector deadlines.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Deadlines {
    #[serde(with = "humantime_serde_compat")]
    pub os: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub packages: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub ipmi: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub smart: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub libvirt: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub external: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            os: Duration::from_secs(5),
            packages: Duration::from_secs(30),
            ipmi: Duration::from_secs(10),
            smart: Duration::from_secs(30),
            libvirt: Duration::from_secs(10),
            external: Duration::from_secs(30),
        }
    }
}

/// Everything the agent needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// musterd's address, e.g. `https://muster.example:7070`.
    pub server: String,
    /// Allow plaintext `http://` to a non-loopback server (enrollment's token in clear text).
    pub insecure: bool,
    /// CA certificate (PEM) that signed musterd's certificate; after enrollment the CA the
    /// server returned is kept in the state dir and used when this is unset.
    pub ca: Option<PathBuf>,
    /// Identity, sequence numbers, SEL cursor and the spool live here.
    pub state_dir: PathBuf,
    /// BMC: "local" (/dev/ipmi0), "local:/dev/ipmiN", "rmcp://user@host:port"; unset: no IPMI.
    pub bmc: Option<String>,
    /// File holding the BMC password (for rmcp://).
    pub bmc_password_file: Option<PathBuf>,
    /// smartctl binary; `smart = false` turns SMART off.
    pub smartctl: PathBuf,
    pub smart: bool,
    /// Disks to query ("/dev/sda", "/dev/sda:sat", "replay:/path"); empty: `smartctl --scan-open`.
    pub disks: Vec<String>,
    /// virsh binary and libvirt URI; unset URI: no VM discovery.
    pub virsh: PathBuf,
    pub libvirt_uri: Option<String>,
    /// Directory of external-fact executables.
    pub external_facts_dir: Option<PathBuf>,
    /// Collect installed packages (dpkg or rpm).
    pub packages: bool,
    /// Kernel parameters to report besides the default list (`collect::os::DEFAULT_SYSCTL_KEYS`),
    /// as dotted names, e.g. `net.ipv4.conf.all.rp_filter`: desired state can only be checked
    /// against parameters the agent reads.
    pub sysctl_keys: Vec<String>,
    /// The file the boot id is read from (the kernel's by default); a new id tells musterd the
    /// host rebooted, so a test host can "reboot" by writing a new one.
    pub boot_id_file: PathBuf,
    /// Report interval until the server assigns one.
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    pub deadlines: Deadlines,
    /// Most reports kept in the spool while the server is unreachable (older ones are
    /// coalesced, never their SEL events).
    pub spool_max_reports: usize,
    /// Renew the client certificate when less than this fraction of its lifetime remains
    /// (or when the server says so); 0 turns renewal off. At most 0.5: the server refuses
    /// renewals in the first half of a certificate's lifetime.
    pub renew_fraction: f64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            server: "https://127.0.0.1:7070".into(),
            insecure: false,
            ca: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            bmc: None,
            bmc_password_file: None,
            smartctl: PathBuf::from("smartctl"),
            smart: true,
            disks: Vec::new(),
            virsh: PathBuf::from("virsh"),
            libvirt_uri: None,
            external_facts_dir: None,
            packages: true,
            sysctl_keys: Vec::new(),
            boot_id_file: PathBuf::from(crate::collect::os::DEFAULT_BOOT_ID_FILE),
            interval: Duration::from_secs(60),
            deadlines: Deadlines::default(),
            spool_max_reports: 1000,
            renew_fraction: 1.0 / 3.0,
        }
    }
}

impl AgentConfig {
    /// Parses a TOML config file's text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let f = self.renew_fraction;
        if !(0.0..=0.5).contains(&f) {
            return Err(format!(
                "renew_fraction must be between 0 (off) and 0.5, not {f}"
            ));
        }
        Ok(())
    }

    /// Where the spooled reports live.
    pub fn spool_dir(&self) -> PathBuf {
        self.state_dir.join("spool")
    }
}

/// Durations written as humantime strings ("10s", "1m 30s") in the config file.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn file_overrides_defaults() {
        let c = AgentConfig::from_toml(
            "server = \"https://m:7070\"\ninterval = \"15s\"\ndisks = [\"/dev/sda\"]\n[deadlines]\nipmi = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(15));
        assert_eq!(c.deadlines.ipmi, Duration::from_secs(2));
        assert_eq!(c.deadlines.smart, Duration::from_secs(30));
        assert!(c.sysctl_keys.is_empty());
        assert_eq!(
            c.boot_id_file,
            PathBuf::from("/proc/sys/kernel/random/boot_id")
        );
        let c = AgentConfig::from_toml("boot_id_file = \"/run/test/boot_id\"\n").unwrap();
        assert_eq!(c.boot_id_file, PathBuf::from("/run/test/boot_id"));
        assert!(AgentConfig::from_toml("intervall = \"1s\"").is_err());
        assert!(AgentConfig::from_toml("interval = \"soon\"").is_err());
    }

    #[test]
    fn extra_sysctl_keys() {
        let c = AgentConfig::from_toml(
            "sysctl_keys = [\"kernel.pid_max\", \"net.ipv4.conf.all.rp_filter\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.sysctl_keys,
            ["kernel.pid_max", "net.ipv4.conf.all.rp_filter"]
        );
        assert!(AgentConfig::from_toml("sysctl_keys = \"vm.swappiness\"").is_err());
    }
}
