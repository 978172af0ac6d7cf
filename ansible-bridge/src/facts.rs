//! Agentless facts: what `ansible -m setup` (and `package_facts`) gathered, as muster facts.
//!
//! Input forms accepted (`read_results`): the per-host files of `ansible --tree DIR` (file name
//! = host), one JSON object holding `ansible_facts` (host named by the caller), a map of host →
//! result, the lines `HOST | SUCCESS => {...}` that `ansible` prints by default, and the
//! `plays[].tasks[].hosts` document of a JSON stdout callback.
//!
//! Mapping (`to_facts`) onto `muster.v1.Facts` sections:
//! - os: `ansible_hostname`, release `"<ansible_distribution> <ansible_distribution_version>"`,
//!   `ansible_kernel`, `ansible_uptime_seconds`, boot time (collection time − uptime),
//!   `ansible_date_time.tz`;
//! - cpu: model from `ansible_processor`, sockets `ansible_processor_count`, cores
//!   `ansible_processor_cores × count`, threads `ansible_processor_vcpus`;
//! - memory: `ansible_memtotal_mb` MiB;
//! - nics: `ansible_interfaces` except loopback, each from `ansible_<name>` (MAC, IPv4 and
//!   IPv6 "ADDR/PREFIX" without link-local, speed);
//! - disks: `ansible_devices` except virtual ones (loop, ram, zram, dm-, md, nbd, fd),
//!   size = sectors × sector size;
//! - packages: `ansible_facts.packages` when present (`package_facts`), version-release;
//! - external: the whole `ansible_facts` object except `packages`, as canonical JSON (keys
//!   sorted), so `expect` rules can address any Ansible fact.

// Generated messages gain fields as the contract evolves (protobuf's rules); `..Default` keeps
// this mapping compiling when they do, even where today it sets every field.
#![allow(clippy::needless_update)]

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use muster::pb;
use serde_json::Value;

/// Device-name-like prefixes that are not hardware (the agent skips the same ones).
const VIRTUAL_DISKS: [&str; 7] = ["loop", "ram", "zram", "dm-", "md", "nbd", "fd"];

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn u(v: &Value, k: &str) -> u64 {
    match v.get(k) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(x)) => x.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

fn u32_of(v: &Value, k: &str) -> u32 {
    u32::try_from(u(v, k)).unwrap_or(u32::MAX)
}

/// The `ansible_facts` object of one host's result (or the object itself when it already is
/// one).
pub fn facts_of(result: &Value) -> Option<&Value> {
    match result.get("ansible_facts") {
        Some(f) if f.is_object() => Some(f),
        _ if result.get("ansible_hostname").is_some() => Some(result),
        _ => None,
    }
}

fn cpu_model(f: &Value) -> String {
    // ["0", "GenuineIntel", "Intel(R) Xeon(R) ...", "1", ...]: the model follows the vendor.
    let Some(list) = f.get("ansible_processor").and_then(Value::as_array) else {
        return String::new();
    };
    let items: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
    items
        .iter()
        .find(|x| {
            x.parse::<u64>().is_err()
                && !matches!(
                    **x,
                    "GenuineIntel" | "AuthenticAMD" | "ARM" | "CentaurHauls"
                )
        })
        .map(|x| x.to_string())
        .unwrap_or_default()
}

fn addresses(nic: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut v4 = |a: &Value| {
        let addr = s(a, "address");
        if addr.is_empty() {
            return;
        }
        let prefix = s(a, "prefix");
        out.push(if prefix.is_empty() {
            addr
        } else {
            format!("{addr}/{prefix}")
        });
    };
    if let Some(a) = nic.get("ipv4") {
        v4(a);
    }
    for a in nic
        .get("ipv4_secondaries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        v4(a);
    }
    for a in nic
        .get("ipv6")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let addr = s(a, "address");
        if addr.is_empty() || s(a, "scope") == "link" || addr.starts_with("fe80:") {
            continue;
        }
        out.push(format!("{addr}/{}", s(a, "prefix")));
    }
    out
}

fn nics(f: &Value) -> Vec<pb::Nic> {
    let mut names: Vec<String> = f
        .get("ansible_interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            // Ansible names the variable after the interface with '-' and '.' as '_'.
            let key = format!("ansible_{}", name.replace(['-', '.', ':'], "_"));
            let nic = f.get(&key)?;
            if name == "lo" || s(nic, "type") == "loopback" {
                return None;
            }
            let speed = match nic.get("speed") {
                Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                _ => 0,
            };
            Some(pb::Nic {
                name,
                mac: s(nic, "macaddress").to_lowercase(),
                addresses: addresses(nic),
                speed_mbps: speed,
                ..Default::default()
            })
        })
        .collect()
}

fn disks(f: &Value) -> Vec<pb::BlockDevice> {
    let Some(devs) = f.get("ansible_devices").and_then(Value::as_object) else {
        return Vec::new();
    };
    let sorted: BTreeMap<&String, &Value> = devs.iter().collect();
    sorted
        .into_iter()
        .filter(|(n, _)| !VIRTUAL_DISKS.iter().any(|p| n.starts_with(p)))
        .map(|(name, d)| {
            let sector = match u(d, "sectorsize") {
                0 => 512,
                n => n,
            };
            pb::BlockDevice {
                name: name.clone(),
                size_bytes: u(d, "sectors").saturating_mul(sector),
                model: s(d, "model"),
                serial: s(d, "serial"),
                rotational: s(d, "rotational") == "1",
                ..Default::default()
            }
        })
        .collect()
}

fn packages(f: &Value) -> Option<Vec<pb::InstalledPackage>> {
    let map = f.get("packages")?.as_object()?;
    let mut out = Vec::new();
    for (name, versions) in map {
        for p in versions.as_array().into_iter().flatten() {
            let version = s(p, "version");
            let release = s(p, "release");
            out.push(pb::InstalledPackage {
                name: name.clone(),
                version: if release.is_empty() {
                    version
                } else {
                    format!("{version}-{release}")
                },
                arch: s(p, "arch"),
                ..Default::default()
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Some(out)
}

/// When the facts were gathered (`ansible_date_time.epoch`), in Unix seconds.
pub fn collected_at(f: &Value) -> Option<i64> {
    f.get("ansible_date_time")
        .map(|d| s(d, "epoch"))
        .and_then(|e| e.parse().ok())
}

/// Maps one host's `ansible_facts` onto muster's facts (see the module doc).
pub fn to_facts(f: &Value) -> Result<pb::Facts> {
    if !f.is_object() {
        bail!("ansible_facts is not an object");
    }
    let uptime = u(f, "ansible_uptime_seconds");
    let booted_at = collected_at(f)
        .filter(|_| uptime > 0)
        .map(|t| pbjson_types::Timestamp {
            seconds: t - i64::try_from(uptime).unwrap_or(0),
            nanos: 0,
        });
    let release = format!(
        "{} {}",
        s(f, "ansible_distribution"),
        s(f, "ansible_distribution_version")
    )
    .trim()
    .to_string();
    let os = pb::OsFacts {
        hostname: s(f, "ansible_hostname"),
        release,
        kernel: s(f, "ansible_kernel"),
        booted_at,
        uptime_seconds: uptime,
        timezone: f
            .get("ansible_date_time")
            .map(|d| s(d, "tz"))
            .unwrap_or_default(),
        dns_servers: f
            .get("ansible_dns")
            .and_then(|d| d.get("nameservers"))
            .and_then(|n| n.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        // How versions compare on this host, from the package manager Ansible found.
        package_format: match s(f, "ansible_pkg_mgr").as_str() {
            "apt" | "dpkg" => "deb".into(),
            "dnf" | "dnf5" | "yum" | "zypper" | "rpm" => "rpm".into(),
            _ => String::new(),
        },
        ..Default::default()
    };
    let count = u32_of(f, "ansible_processor_count");
    let cpu = pb::CpuFacts {
        model: cpu_model(f),
        sockets: count,
        cores: u32_of(f, "ansible_processor_cores").saturating_mul(count.max(1)),
        threads: u32_of(f, "ansible_processor_vcpus"),
        ..Default::default()
    };
    let mut external = f.clone();
    if let Some(o) = external.as_object_mut() {
        o.remove("packages");
    }
    let mem = u(f, "ansible_memtotal_mb");
    Ok(pb::Facts {
        os: Some(os),
        cpu: Some(cpu),
        memory_bytes: (mem > 0).then(|| mem.saturating_mul(1024 * 1024)),
        nics: Some(pb::NicList { items: nics(f) }),
        disks: Some(pb::BlockDeviceList { items: disks(f) }),
        packages: packages(f).map(|items| pb::PackageList { items }),
        // serde_json's map keeps keys sorted: this is the canonical form.
        external_json: Some(external.to_string()),
        ..Default::default()
    })
}

/// Host results from one input (file or directory). `host` names the host of a single-result
/// file.
pub fn read_results(path: &Path, host: Option<&str>) -> Result<Vec<(String, Value)>> {
    if path.is_dir() {
        let mut out = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for p in entries {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", p.display()))?;
            if facts_of(&v).is_some() {
                out.push((name, v));
            }
        }
        return Ok(out);
    }
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    parse_results(&text, host).with_context(|| format!("{}", path.display()))
}

/// Host results from text in any of the accepted forms.
pub fn parse_results(text: &str, host: Option<&str>) -> Result<Vec<(String, Value)>> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        if facts_of(&v).is_some() {
            let Some(h) = host else {
                bail!("a single host's result: name the host with --host NAME");
            };
            return Ok(vec![(h.to_string(), v)]);
        }
        if let Some(plays) = v.get("plays").and_then(Value::as_array) {
            let mut out = BTreeMap::new();
            for t in plays
                .iter()
                .filter_map(|p| p.get("tasks").and_then(Value::as_array))
                .flatten()
            {
                for (h, r) in t
                    .get("hosts")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    if facts_of(r).is_some() {
                        out.insert(h.clone(), r.clone());
                    }
                }
            }
            return Ok(out.into_iter().collect());
        }
        if let Some(map) = v.as_object() {
            let out: Vec<(String, Value)> = map
                .iter()
                .filter(|(_, r)| facts_of(r).is_some())
                .map(|(h, r)| (h.clone(), r.clone()))
                .collect();
            if !out.is_empty() {
                return Ok(out);
            }
        }
        bail!("no ansible_facts found in this JSON");
    }
    // `HOST | SUCCESS => {` ... `}` blocks, as the default and oneline callbacks print them.
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some((h, rest)) = line.split_once(" | SUCCESS => ") {
            if let Some((h0, body)) = current.take() {
                push_block(&mut out, h0, &body)?;
            }
            current = Some((h.trim().to_string(), rest.to_string()));
        } else if line.contains(" | FAILED") || line.contains(" | UNREACHABLE") {
            if let Some((h0, body)) = current.take() {
                push_block(&mut out, h0, &body)?;
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push('\n');
            body.push_str(line);
        }
    }
    if let Some((h, body)) = current {
        push_block(&mut out, h, &body)?;
    }
    if out.is_empty() {
        bail!("neither JSON nor `HOST | SUCCESS => {{...}}` output of ansible -m setup");
    }
    Ok(out)
}

fn push_block(out: &mut Vec<(String, Value)>, host: String, body: &str) -> Result<()> {
    let v: Value = serde_json::from_str(body.trim())
        .with_context(|| format!("the result of {host} is not JSON"))?;
    if facts_of(&v).is_some() {
        out.push((host, v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({"ansible_facts": {
            "ansible_hostname": "web-01",
            "ansible_distribution": "Debian",
            "ansible_distribution_version": "12.5",
            "ansible_kernel": "6.1.0-18-amd64",
            "ansible_uptime_seconds": 100,
            "ansible_date_time": {"epoch": "1700000000", "tz": "UTC"},
            "ansible_processor": ["0", "GenuineIntel", "Intel(R) Xeon(R) Gold", "1", "GenuineIntel", "Intel(R) Xeon(R) Gold"],
            "ansible_processor_count": 1,
            "ansible_processor_cores": 2,
            "ansible_processor_vcpus": 2,
            "ansible_memtotal_mb": 2048,
            "ansible_interfaces": ["lo", "eth0", "br-x"],
            "ansible_lo": {"type": "loopback", "ipv4": {"address": "127.0.0.1", "prefix": "8"}},
            "ansible_eth0": {"macaddress": "AA:BB:CC:00:11:22", "speed": 1000, "type": "ether",
                "ipv4": {"address": "10.0.0.5", "prefix": "24"},
                "ipv6": [{"address": "fe80::1", "prefix": "64", "scope": "link"}, {"address": "2001:db8::5", "prefix": "64", "scope": "global"}]},
            "ansible_br_x": {"macaddress": "aa:bb:cc:00:11:23", "speed": -1, "type": "bridge"},
            "ansible_devices": {"sda": {"sectors": "41943040", "sectorsize": "512", "model": "QEMU", "rotational": "1"}, "loop0": {"sectors": "8"}},
            "packages": {"bash": [{"name": "bash", "version": "5.2.15", "release": "2", "arch": "amd64"}]}
        }, "changed": false})
    }

    #[test]
    fn setup_output_maps_onto_sections() {
        let f = to_facts(facts_of(&sample()).unwrap()).unwrap();
        let os = f.os.clone().unwrap();
        assert_eq!(os.release, "Debian 12.5");
        assert_eq!(os.kernel, "6.1.0-18-amd64");
        assert_eq!(os.booted_at.unwrap().seconds, 1_699_999_900);
        let cpu = f.cpu.clone().unwrap();
        assert_eq!(
            (cpu.model.as_str(), cpu.sockets, cpu.cores, cpu.threads),
            ("Intel(R) Xeon(R) Gold", 1, 2, 2)
        );
        assert_eq!(f.memory_bytes, Some(2048 * 1024 * 1024));
        let nics = f.nics.clone().unwrap().items;
        assert_eq!(
            nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["br-x", "eth0"]
        );
        assert_eq!(nics[1].addresses, ["10.0.0.5/24", "2001:db8::5/64"]);
        assert_eq!(nics[1].mac, "aa:bb:cc:00:11:22");
        assert_eq!(nics[0].speed_mbps, 0);
        let disks = f.disks.clone().unwrap().items;
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].size_bytes, 41_943_040 * 512);
        assert_eq!(f.packages.clone().unwrap().items[0].version, "5.2.15-2");
        let ext: Value = serde_json::from_str(f.external_json.as_deref().unwrap()).unwrap();
        assert!(ext.get("packages").is_none());
        assert_eq!(ext["ansible_kernel"], "6.1.0-18-amd64");
    }

    #[test]
    fn input_forms() {
        let one = sample();
        let text = one.to_string();
        assert!(parse_results(&text, None).is_err());
        assert_eq!(parse_results(&text, Some("h")).unwrap()[0].0, "h");
        let map = json!({"a": one, "b": {"unreachable": true}}).to_string();
        assert_eq!(parse_results(&map, None).unwrap().len(), 1);
        let lines = format!(
            "a | SUCCESS => {}\nb | UNREACHABLE! => {{\n  \"msg\": \"x\"\n}}\nc | SUCCESS => {}\n",
            serde_json::to_string_pretty(&one).unwrap(),
            one
        );
        let r = parse_results(&lines, None).unwrap();
        assert_eq!(
            r.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        let cb = json!({"plays": [{"tasks": [{"hosts": {"z": one}}]}]}).to_string();
        assert_eq!(parse_results(&cb, None).unwrap()[0].0, "z");
        assert!(parse_results("nonsense", None).is_err());
    }
}
