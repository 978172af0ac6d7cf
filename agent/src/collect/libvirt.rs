//! Virtual machines on a libvirt hypervisor, through `virsh`.
//!
//! `virsh` is used rather than the C library so the agent needs no libvirt headers or unsafe
//! bindings; `dumpxml` is libvirt's stable machine-readable form. For each domain the collector
//! runs `dumpxml` and `domstate`; the XML is parsed by a pure function.
//!
//! Memory is the domain's configured `<memory>` (its maximum allocation), vCPUs the `current`
//! attribute of `<vcpu>` when present (what the guest has now), else the element's value.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use muster::pb;
use tokio::process::Command;

/// Why the VM list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// virsh could not be started (not installed: Debian `libvirt-clients`, RHEL `libvirt-client`).
    #[error("cannot run {}: {source} (is libvirt-clients installed, and the virsh path right?)", virsh.display())]
    Spawn { virsh: PathBuf, source: io::Error },
    /// virsh ran and failed: a wrong URI, a daemon that is down, missing permissions...
    #[error("`virsh -c {uri} {command}` failed ({status}): {stderr}")]
    Failed {
        uri: String,
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// `dumpxml` printed something that is not a usable domain description.
    #[error("domain {domain}: bad dumpxml output: {reason}")]
    Xml { domain: String, reason: String },
}

/// Lists every domain (running or not) known at `uri` with name, UUID, state, vCPUs, memory,
/// disks and MACs, sorted by name. Every child is killed if the caller drops the future.
pub async fn collect(virsh: &Path, uri: &str) -> Result<Vec<pb::VirtualMachine>, LibvirtError> {
    let names = run(virsh, uri, &["list", "--all", "--name"]).await?;
    let mut vms = Vec::new();
    for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
        let dumpxml = ["dumpxml", "--domain", name];
        let domstate = ["domstate", "--domain", name];
        let (xml, state) = tokio::join!(run(virsh, uri, &dumpxml), run(virsh, uri, &domstate));
        let (xml, state) = match (xml, state) {
            (Ok(x), Ok(s)) => (x, s),
            // Undefined between `list` and now: it is gone, which the next report shows.
            (Err(e), _) | (_, Err(e)) if is_domain_gone(&e) => {
                tracing::debug!(domain = name, "domain vanished during collection");
                continue;
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let mut vm = parse_domain_xml(&xml).map_err(|reason| LibvirtError::Xml {
            domain: name.to_string(),
            reason,
        })?;
        vm.state = state.trim().to_string();
        vms.push(vm);
    }
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(vms)
}

fn is_domain_gone(e: &LibvirtError) -> bool {
    matches!(e, LibvirtError::Failed { stderr, .. } if stderr.contains("Domain not found")
        || stderr.contains("failed to get domain"))
}

async fn run(virsh: &Path, uri: &str, args: &[&str]) -> Result<String, LibvirtError> {
    let out = Command::new(virsh)
        .arg("-q")
        .arg("-c")
        .arg(uri)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| LibvirtError::Spawn {
            virsh: virsh.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // virsh prints "error: failed to connect to the hypervisor" then the cause: keep both.
        let stderr = stderr
            .lines()
            .map(|l| l.trim().trim_start_matches("error: "))
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        return Err(LibvirtError::Failed {
            uri: uri.to_string(),
            command: args.join(" "),
            status: out.status,
            stderr: stderr.chars().take(500).collect(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `virsh dumpxml` output into a VM (state left empty: the XML does not carry it).
pub fn parse_domain_xml(xml: &str) -> Result<pb::VirtualMachine, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let domain = doc.root_element();
    if !domain.has_tag_name("domain") {
        return Err(format!(
            "root element is <{}>, not <domain>",
            domain.tag_name().name()
        ));
    }
    let child = |name: &str| domain.children().find(|n| n.has_tag_name(name));
    let text_of = |name: &str| {
        child(name)
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    };

    let name = text_of("name");
    if name.is_empty() {
        return Err("no <name>".into());
    }

    let vcpus = match child("vcpu") {
        Some(v) => {
            let raw = v
                .attribute("current")
                .or(v.text())
                .unwrap_or_default()
                .trim();
            raw.parse::<u32>()
                .map_err(|_| format!("<vcpu> is {raw:?}, not a count"))?
        }
        None => 1,
    };

    let memory_bytes = match child("memory") {
        Some(m) => {
            let value = m.text().unwrap_or_default().trim();
            let value: u64 = value
                .parse()
                .map_err(|_| format!("<memory> is {value:?}, not a number"))?;
            let unit = m.attribute("unit").unwrap_or("KiB");
            let factor =
                unit_factor(unit).ok_or_else(|| format!("unknown memory unit {unit:?}"))?;
            value
                .checked_mul(factor)
                .ok_or_else(|| "memory size overflows".to_string())?
        }
        None => 0,
    };

    let mut disks = Vec::new();
    let mut macs = Vec::new();
    if let Some(devices) = child("devices") {
        for dev in devices.children().filter(|n| n.is_element()) {
            match dev.tag_name().name() {
                "disk" => {
                    if let Some(d) = disk_name(dev) {
                        disks.push(d);
                    }
                }
                "interface" => {
                    if let Some(mac) = dev
                        .children()
                        .find(|n| n.has_tag_name("mac"))
                        .and_then(|m| m.attribute("address"))
                    {
                        macs.push(mac.to_ascii_lowercase());
                    }
                }
                _ => {}
            }
        }
    }

    Ok(pb::VirtualMachine {
        name,
        uuid: text_of("uuid"),
        state: String::new(),
        vcpus,
        memory_bytes,
        disks,
        macs,
    })
}

/// What identifies a disk: its source (file, block device, directory, network or pool volume),
/// or its target device name when there is no source (an empty CD-ROM drive).
fn disk_name(disk: roxmltree::Node<'_, '_>) -> Option<String> {
    let find = |tag: &str| disk.children().find(|n| n.has_tag_name(tag));
    if let Some(src) = find("source") {
        for attr in ["file", "dev", "dir"] {
            if let Some(v) = src.attribute(attr).filter(|v| !v.is_empty()) {
                return Some(v.to_string());
            }
        }
        if let Some(n) = src.attribute("name").filter(|v| !v.is_empty()) {
            return Some(match src.attribute("protocol") {
                Some(p) => format!("{p}://{n}"),
                None => n.to_string(),
            });
        }
        if let (Some(pool), Some(vol)) = (src.attribute("pool"), src.attribute("volume")) {
            return Some(format!("{pool}/{vol}"));
        }
    }
    find("target")
        .and_then(|t| t.attribute("dev"))
        .map(str::to_string)
}

/// Bytes per unit for libvirt's memory `unit` attribute (see formatdomain: "Memory Allocation").
fn unit_factor(unit: &str) -> Option<u64> {
    Some(match unit {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        "PB" => 1_000_000_000_000_000,
        "P" | "PiB" => 1 << 50,
        "EB" => 1_000_000_000_000_000_000,
        "E" | "EiB" => 1 << 60,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = r#"<domain type='kvm' id='2'>
  <name>vm-db-1</name>
  <uuid>0c6ef0b2-3b2e-4d3a-9c51-2b1c0de7a001</uuid>
  <memory unit='KiB'>8388608</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static' current='4'>8</vcpu>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/vg0/data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='pool/image'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <source pool='default' volume='vol1'/>
      <target dev='vdd' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='hdc' bus='ide'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:BB:00:01'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:bb:00:02'/>
    </interface>
  </devices>
</domain>"#;

    #[test]
    fn parses_a_full_domain() {
        let vm = parse_domain_xml(DB).unwrap();
        assert_eq!(vm.name, "vm-db-1");
        assert_eq!(vm.uuid, "0c6ef0b2-3b2e-4d3a-9c51-2b1c0de7a001");
        assert_eq!(vm.vcpus, 4);
        assert_eq!(vm.memory_bytes, 8 << 30);
        assert_eq!(
            vm.disks,
            vec![
                "/var/lib/libvirt/images/root.qcow2",
                "/dev/vg0/data",
                "rbd://pool/image",
                "default/vol1",
                "hdc"
            ]
        );
        assert_eq!(vm.macs, vec!["52:54:00:bb:00:01", "52:54:00:bb:00:02"]);
        assert_eq!(vm.state, "");
    }

    #[test]
    fn memory_units() {
        let xml = |unit: &str, v: &str| {
            format!(
                "<domain><name>a</name><memory unit='{unit}'>{v}</memory><vcpu>1</vcpu></domain>"
            )
        };
        let mem = |unit: &str, v: &str| parse_domain_xml(&xml(unit, v)).map(|vm| vm.memory_bytes);
        assert_eq!(mem("GiB", "2"), Ok(2 << 30));
        assert_eq!(mem("MiB", "512"), Ok(512 << 20));
        assert_eq!(mem("GB", "1"), Ok(1_000_000_000));
        assert_eq!(mem("b", "4096"), Ok(4096));
        assert!(mem("furlongs", "1").unwrap_err().contains("furlongs"));
        assert!(mem("KiB", "lots").is_err());
        // No unit attribute means KiB.
        let vm = parse_domain_xml("<domain><name>a</name><memory>1024</memory></domain>").unwrap();
        assert_eq!(vm.memory_bytes, 1 << 20);
        assert_eq!(vm.vcpus, 1);
    }

    #[test]
    fn rejects_non_domains() {
        assert!(parse_domain_xml("<network><name>x</name></network>").is_err());
        assert!(parse_domain_xml("<domain></domain>").is_err());
        assert!(parse_domain_xml("not xml").is_err());
        assert!(
            parse_domain_xml("<domain><name>a</name><vcpu>many</vcpu></domain>")
                .unwrap_err()
                .contains("vcpu")
        );
    }

    #[tokio::test]
    async fn missing_virsh_is_a_spawn_error() {
        let err = collect(Path::new("/nonexistent/virsh"), "test:///default")
            .await
            .unwrap_err();
        assert!(matches!(err, LibvirtError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("libvirt-clients"), "{err}");
    }
}
