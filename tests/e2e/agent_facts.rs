//! The agent's fact collectors against the real machine and real tools: OS facts compared with
//! independent commands, packages with dpkg-query, VMs through the real `virsh` and libvirt's
//! test driver (`tests/fixtures/libvirt/node.xml`), external facts with real scripts.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use muster::pb;
use muster_agent::collect::{external, libvirt, os, packages};
use serde_json::Value;

/// stdout of a command that must succeed, trimmed.
fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn os_facts_match_independent_sources() {
    let snap = os::collect().unwrap();

    assert_eq!(snap.os.kernel, sh("uname -r"));
    assert_eq!(snap.os.hostname, sh("hostname"));
    assert_eq!(
        snap.os.release,
        sh(". /etc/os-release && echo \"$PRETTY_NAME\"")
    );
    assert_eq!(snap.os_release.id, sh(". /etc/os-release && echo \"$ID\""));
    assert_eq!(
        snap.os_release.version_id,
        sh(". /etc/os-release && echo \"$VERSION_ID\"")
    );
    assert_eq!(
        snap.boot_id,
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
    );
    if let Ok(tz) = std::fs::read_to_string("/etc/timezone") {
        assert_eq!(snap.os.timezone, tz.trim());
    } else {
        assert!(!snap.os.timezone.is_empty());
    }

    // Boot time: `uptime -s` computes it from the clock and /proc/uptime (local time, so ask
    // `date` for epoch seconds); the two may differ by a rounding second.
    let booted = snap.os.booted_at.unwrap().seconds;
    let uptime_s: i64 = sh("date -d \"$(uptime -s)\" +%s").parse().unwrap();
    assert!((booted - uptime_s).abs() <= 2, "{booted} vs {uptime_s}");
    let now = sh("date +%s").parse::<i64>().unwrap();
    let up = i64::try_from(snap.os.uptime_seconds).unwrap();
    assert!(
        (now - booted - up).abs() <= 3,
        "now {now} booted {booted} up {up}"
    );

    // CPU: online processors; the model as lscpu-independent /proc/cpuinfo grep.
    let online: u32 = sh("getconf _NPROCESSORS_ONLN").parse().unwrap();
    assert_eq!(snap.cpu.threads, online);
    assert_eq!(snap.cpu.threads, sh("nproc").parse::<u32>().unwrap());
    assert!(snap.cpu.sockets >= 1 && snap.cpu.sockets <= snap.cpu.cores);
    assert!(snap.cpu.cores <= snap.cpu.threads);
    let model = sh("grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'");
    if !model.is_empty() {
        assert_eq!(snap.cpu.model, model);
    }

    // Memory: free -b prints MemTotal in bytes.
    let free: u64 = sh("free -b | awk '/^Mem:/ {print $2}'").parse().unwrap();
    assert_eq!(snap.memory_bytes, free);

    // NICs: `ip -j addr` (iproute2, netlink) against sysfs + getifaddrs.
    let ip: Value = serde_json::from_str(&sh("ip -j addr")).unwrap();
    let mut expected: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for link in ip.as_array().unwrap() {
        let name = link["ifname"].as_str().unwrap().to_string();
        if name == "lo" {
            continue;
        }
        let mac = link["address"].as_str().unwrap_or_default().to_string();
        let mut addrs: Vec<String> = link["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    // The collector leaves out IPv6 link-local addresses (see group_addresses).
                    .filter(|i| !(i["family"] == "inet6" && i["scope"] == "link"))
                    .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                    .collect()
            })
            .unwrap_or_default();
        addrs.sort();
        expected.insert(name, (mac, addrs));
    }
    let got: BTreeMap<String, (String, Vec<String>)> = snap
        .nics
        .iter()
        .map(|n| {
            let mut a = n.addresses.clone();
            a.sort();
            (n.name.clone(), (n.mac.clone(), a))
        })
        .collect();
    assert_eq!(got, expected);
    assert!(snap.nics.windows(2).all(|w| w[0].name < w[1].name));

    // Disks: lsblk (udev/sysfs via util-linux), loop/zram/ram excluded on both sides.
    let lsblk = sh("lsblk -b -d -n -o NAME,SIZE,ROTA");
    let mut expected_disks = Vec::new();
    for line in lsblk.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if os::is_virtual_block_device(f[0]) {
            continue;
        }
        expected_disks.push((f[0].to_string(), f[1].parse::<u64>().unwrap(), f[2] == "1"));
    }
    expected_disks.sort();
    let got_disks: Vec<(String, u64, bool)> = snap
        .disks
        .iter()
        .map(|d| (d.name.clone(), d.size_bytes, d.rotational))
        .collect();
    assert_eq!(got_disks, expected_disks);
    assert!(!got_disks.is_empty(), "this machine has at least one disk");
}

#[tokio::test]
async fn packages_match_dpkg() {
    let list = packages::collect().await.unwrap();
    // dpkg -l marks installed packages with `i` in the second column ("ii", "hi", ...).
    let installed: usize = sh("COLUMNS=200 dpkg-query -l | grep -c '^.i'")
        .parse()
        .unwrap();
    assert_eq!(list.len(), installed);

    for name in ["bash", "coreutils"] {
        let version = sh(&format!("dpkg-query -W -f '${{Version}}' {name}"));
        let arch = sh(&format!("dpkg-query -W -f '${{Architecture}}' {name}"));
        let found: Vec<&pb::InstalledPackage> = list.iter().filter(|p| p.name == name).collect();
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        assert_eq!(found[0].version, version);
        assert_eq!(found[0].arch, arch);
    }
    assert!(
        list.windows(2)
            .all(|w| (&w[0].name, &w[0].arch) <= (&w[1].name, &w[1].arch))
    );
    assert!(list.iter().all(|p| !p.name.contains(':')));
}

fn node_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/libvirt/node.xml")
}

fn virsh() -> PathBuf {
    PathBuf::from("virsh")
}

fn vm(
    name: &str,
    uuid: &str,
    state: &str,
    vcpus: u32,
    memory_bytes: u64,
    disks: &[&str],
    macs: &[&str],
) -> pb::VirtualMachine {
    pb::VirtualMachine {
        name: name.into(),
        uuid: uuid.into(),
        state: state.into(),
        vcpus,
        memory_bytes,
        disks: disks.iter().map(|s| s.to_string()).collect(),
        macs: macs.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn libvirt_domains_through_real_virsh() {
    let uri = format!("test://{}", node_file().display());
    let vms = libvirt::collect(&virsh(), &uri).await.unwrap();
    assert_eq!(
        vms,
        vec![
            vm(
                "vm-db-1",
                "0c6ef0b2-3b2e-4d3a-9c51-2b1c0de7a001",
                "running",
                4,
                8 << 30,
                &[
                    "/var/lib/libvirt/images/vm-db-1-root.qcow2",
                    "/dev/vg0/vm-db-1-data"
                ],
                &["52:54:00:bb:00:01", "52:54:00:bb:00:02"],
            ),
            vm(
                "vm-old",
                "9d1c2f3e-7a41-4b6e-8f0d-5e6a7b8c9d0e",
                "shut off",
                1,
                1 << 30,
                &["hdc"],
                &["52:54:00:cc:00:01"],
            ),
            vm(
                "vm-web-1",
                "6695eb01-f6a4-8304-79aa-97f2502e193f",
                "running",
                2,
                2 << 30,
                &["/var/lib/libvirt/images/vm-web-1.qcow2"],
                &["52:54:00:aa:00:01"],
            ),
        ]
    );
}

#[tokio::test]
async fn libvirt_removed_domain_disappears() {
    let text = std::fs::read_to_string(node_file()).unwrap();
    // Cut the <domain> element that holds vm-web-1.
    let at = text.find("<name>vm-web-1</name>").unwrap();
    let start = text[..at].rfind("<domain").unwrap();
    let end = at + text[at..].find("</domain>").unwrap() + "</domain>".len();
    let trimmed = format!("{}{}", &text[..start], &text[end..]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.xml");
    std::fs::write(&path, trimmed).unwrap();

    let vms = libvirt::collect(&virsh(), &format!("test://{}", path.display()))
        .await
        .unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, vec!["vm-db-1", "vm-old"]);
}

#[tokio::test]
async fn libvirt_bad_uri_is_a_clear_error() {
    let err = libvirt::collect(&virsh(), "test:///nonexistent/node.xml")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, libvirt::LibvirtError::Failed { .. }), "{msg}");
    assert!(msg.contains("test:///nonexistent/node.xml"), "{msg}");
    assert!(msg.contains("failed to connect to the hypervisor"), "{msg}");
    assert!(msg.contains("/nonexistent/node.xml"), "{msg}");
}

fn write_script(dir: &Path, name: &str, body: &str, mode: u32) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// True when the process is gone or a zombie waiting for its (new) parent to reap it.
fn dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

#[tokio::test]
async fn external_facts_from_real_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pidfile = d.join(".sleeper.pid");
    write_script(
        d,
        "10-good",
        r#"echo '{"rack": "r12", "zeta": {"b": [2, {"y": 1, "x": 0}], "a": true}, "alpha": 1.5}'"#,
        0o755,
    );
    // Not executable: data beside the facts, never run.
    write_script(d, "20-notes", r#"echo '{"ignored": true}'"#, 0o644);
    write_script(d, "30-bad", "echo 'role=web'", 0o755);
    write_script(
        d,
        "40-sleepy",
        &format!("sleep 30 &\necho $! > {}\nwait", pidfile.display()),
        0o755,
    );
    write_script(d, "50-late", r#"echo '{"late": "still counted"}'"#, 0o755);
    std::fs::create_dir(d.join("60-subdir")).unwrap();
    std::fs::set_permissions(d.join("60-subdir"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let got = external::collect(d, timeout).await;
    let took = started.elapsed();
    assert!(took < timeout + Duration::from_secs(2), "took {took:?}");

    assert_eq!(got.errors.len(), 2, "{:?}", got.errors);
    assert!(
        got.errors[0].starts_with("30-bad: invalid JSON"),
        "{:?}",
        got.errors
    );
    assert!(
        got.errors[1].starts_with("40-sleepy: timed out"),
        "{:?}",
        got.errors
    );

    assert_eq!(
        external::canonical_json(&got.facts),
        r#"{"alpha":1.5,"late":"still counted","rack":"r12","zeta":{"a":true,"b":[2,{"x":0,"y":1}]}}"#
    );

    // The timed-out script's own child was killed with it (process group), not orphaned.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let pid = pid.trim();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !dead(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dead(pid), "sleep {pid} outlived its fact script");
}
