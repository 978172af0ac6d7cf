//! Security of the Ansible bridge and of the clients' connections (issue 12 items 2 and 12),
//! with real parts: the real `musterd`, `muster-inventory`, `muster`, `muster-agent` (libvirt's
//! test driver for VMs) and ansible-core (`ansible`, `ansible-inventory`).
//!
//! - Strings from the store (device fields, facts hosts reported) reach Ansible as data: a
//!   `{{ lookup('pipe', ...) }}` payload is printed literally and runs nothing, through the
//!   script and through the `muster.fleet.muster` plugin.
//! - VMs an agent reported are not hosts until an operator adopted them.
//! - No bearer token goes over plaintext to a non-loopback address unless `--insecure`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use muster_tests::{OPERATOR_TOKEN, Options, TestServer, VIEWER_TOKEN, bin};
use serde_json::Value;

use crate::agent::{AgentHost, add_device, ok, tls_server, token_for};
use crate::ansible::{Ansible, json_out};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A template that, if Ansible ever rendered it, would create `dir/name` on the controller.
fn payload(dir: &Path, name: &str) -> String {
    format!(
        "{{{{ lookup('pipe','touch {}') }}}}",
        dir.join(name).display()
    )
}

#[tokio::test]
async fn host_provided_strings_are_never_templated_by_ansible() {
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    let marks = tempfile::tempdir().unwrap();
    let model = payload(marks.path(), "model");
    let vendor = payload(marks.path(), "vendor");
    let serial = payload(marks.path(), "serial");
    let manifest = format!(
        "kind: Device\ntype: SERVER\nmeta: {{name: web-01, labels: {{env: prod}}}}\nrole: web\n\
         ssh: {{host: 127.0.0.1, port: 2201, user: root}}\nmodel: \"{model}\"\nvendor: \"{vendor}\"\nserial: \"{serial}\"\n"
    );
    let out = s.muster_with(&["apply", "-f", "-"], &s.token, Some(manifest.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // OS facts as a host reports them (here through ingest-facts, as `ansible -m setup` would).
    let release = payload(marks.path(), "release");
    let kernel = payload(marks.path(), "kernel");
    let facts = marks.path().join("web-01.json");
    std::fs::write(
        &facts,
        serde_json::json!({"ansible_facts": {
            "ansible_hostname": "web-01",
            "ansible_distribution": release,
            "ansible_distribution_version": "",
            "ansible_kernel": kernel,
        }})
        .to_string(),
    )
    .unwrap();
    let o = Command::new(bin("muster-inventory"))
        .args(["ingest-facts", "--host", "web-01"])
        .arg(&facts)
        .env("MUSTER_SERVER", s.url())
        .env("MUSTER_TOKEN", OPERATOR_TOKEN)
        .env_remove("MUSTER_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::fs::remove_file(&facts).unwrap();

    let a = Ansible::new(&s, VIEWER_TOKEN, None);
    let script = bin("muster-inventory").display().to_string();
    let plugin = a.plugin_config("plugin: muster.fleet.muster\n");
    let msg = "msg=[{{ muster_model }}|{{ muster_vendor }}|{{ muster_serial }}|{{ muster_os_release }}|{{ muster_kernel }}|{{ muster_labels.env }}]";
    for source in [&plugin, &script] {
        let o = a.run(
            "ansible",
            &["-i", source, "web-01", "-m", "debug", "-a", msg],
            &[],
        );
        let stdout = text(&o.stdout);
        assert!(
            o.status.success(),
            "{source}: {stdout}\n{}",
            text(&o.stderr)
        );
        let want = format!(
            "[{model}|{vendor}|{serial}|{}|{kernel}|prod]",
            release.trim()
        );
        assert!(
            stdout.contains(&want),
            "{source}: not printed literally:\n{stdout}"
        );
        let created: Vec<_> = std::fs::read_dir(marks.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(created.is_empty(), "{source}: templates ran: {created:?}");
    }
    // The script's own output marks every string hostvar.
    let raw = Command::new(bin("muster-inventory"))
        .arg("--list")
        .env("MUSTER_SERVER", s.url())
        .env("MUSTER_TOKEN", VIEWER_TOKEN)
        .env_remove("MUSTER_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(raw.status.success(), "{}", text(&raw.stderr));
    let doc: Value = serde_json::from_slice(&raw.stdout).unwrap();
    let hv = &doc["_meta"]["hostvars"]["web-01"];
    assert_eq!(hv["muster_model"]["__ansible_unsafe"], model.as_str());
    assert_eq!(hv["muster_os_release"]["__ansible_unsafe"], release.trim());
    assert!(
        hv.as_object().unwrap().values().all(|v| !v.is_string()),
        "a plain string hostvar: {hv}"
    );

    // ansible-inventory prints the values as they are, and renders nothing either.
    let o = a.run(
        "ansible-inventory",
        &["-i", &script, "--host", "web-01"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["muster_model"], model.as_str(), "{v}");
    assert_eq!(std::fs::read_dir(marks.path()).unwrap().count(), 0);
}

/// The host names Ansible would act on with `all` (what `--list-hosts` prints).
fn hosts_of(o: &Output) -> Vec<String> {
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let mut hosts: Vec<String> = text(&o.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hosts ("))
        .map(str::to_string)
        .collect();
    hosts.sort();
    hosts
}

#[tokio::test(flavor = "multi_thread")]
async fn discovered_vms_are_not_hosts_until_an_operator_adopts_them() {
    let s = tls_server(&[]);
    add_device(&s, "hv-01");
    let mut agent = AgentHost::new(&s);
    ok(&agent.enroll(&token_for(&s, "hv-01", "1h"), "0s"));
    let node = agent.dir().join("node.xml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/libvirt/node.xml"),
        &node,
    )
    .unwrap();
    agent.run(
        &format!(
            "interval = \"1s\"\nsmart = false\npackages = false\nlibvirt_uri = \"test://{}\"\n",
            node.display()
        ),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ok(&s.muster(&[
            "get",
            "devices",
            "-l",
            "muster.io/discovered=true",
            "-o",
            "name",
        ]));
        if out.lines().count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "3 VMs not discovered: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.stop();

    let a = Ansible::new(&s, &s.token, None);
    let ca = s.ca_path().display().to_string();
    let env = [("MUSTER_CA_CERT", ca.as_str())];
    let script = bin("muster-inventory").display().to_string();
    let plugin = a.plugin_config("plugin: muster.fleet.muster\n");
    for source in [&script, &plugin] {
        let o = a.run("ansible", &["-i", source, "all", "--list-hosts"], &env);
        assert_eq!(hosts_of(&o), ["hv-01"], "{source}");
        let doc = json_out(&a.run("ansible-inventory", &["-i", source, "--list"], &env));
        let all = doc.to_string();
        assert!(!all.contains("vm-web-1"), "{source}: {all}");
        assert!(doc.get("kind_vm").is_none(), "{source}: {all}");
    }
    // Ansible does not know the name; the script's --host answers nothing for it either.
    let o = a.run(
        "ansible-inventory",
        &["-i", &script, "--host", "vm-web-1"],
        &env,
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("single valid host"),
        "{}",
        text(&o.stderr)
    );
    let o = Command::new(bin("muster-inventory"))
        .args(["--host", "vm-web-1"])
        .env("MUSTER_SERVER", s.url())
        .env("MUSTER_TOKEN", &s.token)
        .env("MUSTER_CA_CERT", &ca)
        .env_remove("MUSTER_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(json_out(&o), serde_json::json!({}));

    // Adopted: the label removed and an address given. Now it is a host, reached there.
    let vm = crate::agent::device(&s, "vm-web-1").await;
    let adopt = format!(
        "kind: Device\ntype: VM\nmeta: {{name: vm-web-1}}\nparent: hv-01\nserial: {}\n\
         ssh: {{host: 127.0.0.1, port: 2299, user: ops}}\n",
        vm.serial
    );
    ok(&s.muster_with(&["apply", "-f", "-"], &s.token, Some(adopt.as_bytes())));
    for source in [&script, &plugin] {
        let o = a.run("ansible", &["-i", source, "all", "--list-hosts"], &env);
        assert_eq!(hosts_of(&o), ["hv-01", "vm-web-1"], "{source}");
        let doc = json_out(&a.run("ansible-inventory", &["-i", source, "--list"], &env));
        let hv = &doc["_meta"]["hostvars"]["vm-web-1"];
        assert_eq!(hv["ansible_host"], "127.0.0.1", "{source}: {doc}");
        assert_eq!(hv["ansible_port"], 2299, "{source}: {doc}");
        assert!(doc.to_string().find("vm-db-1").is_none(), "{source}");
    }
}

/// TEST-NET-1 (RFC 5737): never routed, so nothing could answer even if something were sent.
const REMOTE: &str = "http://192.0.2.10:7070";

/// Runs a client binary with a token and no ambient settings; returns its output and how long
/// it took.
fn timed(tool: &str, args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let home = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin(tool));
    c.args(args)
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("MUSTER_SERVER")
        .env_remove("MUSTER_INSECURE")
        .env_remove("MUSTER_TOKEN_FILE")
        .env_remove("MUSTER_INVENTORY_CONFIG")
        .env("MUSTER_TOKEN", "mst_secret_token_value");
    for (k, v) in env {
        c.env(k, v);
    }
    let started = Instant::now();
    let out = c.output().unwrap();
    (out, started.elapsed())
}

/// A client run: binary, arguments, environment.
type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);

#[tokio::test]
async fn no_token_goes_over_plaintext_to_a_remote_host_without_insecure() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().display().to_string();
    let refused: [Case<'_>; 5] = [
        ("muster", vec!["--server", REMOTE, "whoami"], vec![]),
        (
            "muster",
            vec!["get", "devices"],
            vec![("MUSTER_SERVER", REMOTE)],
        ),
        (
            "muster-inventory",
            vec!["--list"],
            vec![("MUSTER_SERVER", REMOTE)],
        ),
        (
            "muster-inventory",
            vec!["--server", "http://muster.example:7070", "--host", "x"],
            vec![],
        ),
        (
            "muster-agent",
            vec![
                "--server",
                REMOTE,
                "--state-dir",
                &state_dir,
                "enroll",
                "--token",
                "mst_enroll_secret",
            ],
            vec![],
        ),
    ];
    for (tool, args, env) in &refused {
        let (o, took) = timed(tool, args, env);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{tool} {args:?}: {err}");
        assert!(
            err.contains("refusing to send credentials over plaintext http://")
                && err.contains("--insecure"),
            "{tool} {args:?}: {err}"
        );
        assert!(
            err.contains("192.0.2.10") || err.contains("muster.example"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{tool}: {err}");
        // Refused before any connection: no connect timeout was waited for.
        assert!(took < Duration::from_secs(2), "{tool} took {took:?}");
    }
    // The refused enrollment created no key or CSR either.
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);

    // --insecure (or MUSTER_INSECURE) lets the clients try: they fail to connect instead.
    let (o, _) = timed(
        "muster",
        &[
            "--server",
            REMOTE,
            "--insecure",
            "--timeout",
            "1s",
            "whoami",
        ],
        &[],
    );
    let err = text(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cannot connect to http://192.0.2.10:7070"),
        "{err}"
    );
    let (o, _) = timed(
        "muster-inventory",
        &["--list", "--timeout", "1"],
        &[("MUSTER_SERVER", REMOTE), ("MUSTER_INSECURE", "true")],
    );
    let err = text(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cannot connect to http://192.0.2.10:7070"),
        "{err}"
    );

    // Loopback in clear text works as before: 127.0.0.1 and localhost.
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    let port = s.addr.port();
    for url in [s.url(), format!("http://localhost:{port}")] {
        let (o, _) = timed(
            "muster",
            &["--server", &url, "whoami"],
            &[("MUSTER_TOKEN", VIEWER_TOKEN)],
        );
        assert!(o.status.success(), "{url}: {}", text(&o.stderr));
        let (o, _) = timed(
            "muster-inventory",
            &["--list"],
            &[("MUSTER_SERVER", &url), ("MUSTER_TOKEN", VIEWER_TOKEN)],
        );
        assert!(o.status.success(), "{url}: {}", text(&o.stderr));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_enrolls_over_loopback_plaintext() {
    let s = TestServer::start().unwrap();
    add_device(&s, "web-01");
    let token = token_for(&s, "web-01", "1h");
    let state = tempfile::tempdir().unwrap();
    let o = Command::new(bin("muster-agent"))
        .arg("--server")
        .arg(s.url())
        .arg("--state-dir")
        .arg(state.path())
        .args(["enroll", "--token", &token])
        .env_remove("MUSTER_INSECURE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("enrolled as device web-01"));
}
