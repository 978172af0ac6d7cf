//! The Ansible bridge with real parts: the real `musterd`, `muster-inventory`, ansible-core
//! (`ansible-inventory`, `ansible`, `ansible-playbook` from the venv tests/run-all.sh makes) and
//! throwaway `sshd`s on 127.0.0.1 as hosts. Every expectation below is derived from the fixture
//! fleet, never copied from output.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use muster::pb;
use muster_tests::ssh::SshFleet;
use muster_tests::{OPERATOR_TOKEN, Options, TestServer, VIEWER_TOKEN, bin};
use prost::Message;
use serde_json::{Value, json};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The venv's bin directory holding ansible-core; fails clearly when it is missing.
pub(crate) fn ansible_bin() -> PathBuf {
    let venv = repo().join("target/test-peers/bin");
    if venv.join("ansible-inventory").exists() {
        return venv;
    }
    if let Some(dir) = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).find(|d| d.join("ansible-inventory").exists()))
    {
        return dir;
    }
    panic!(
        "ansible-core is not installed: run tests/run-all.sh once (it pip-installs ansible-core into target/test-peers)"
    );
}

/// A sandbox for Ansible runs: its own HOME, no ansible.cfg, failures of the inventory fatal,
/// the collection on the collections path, SSH pinned to the test known_hosts and key.
pub(crate) struct Ansible {
    pub(crate) dir: tempfile::TempDir,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

impl Ansible {
    pub(crate) fn new(server: &TestServer, token: &str, ssh: Option<&SshFleet>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin_dir = ansible_bin();
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), dir.path().display().to_string()),
            (
                "ANSIBLE_CONFIG".into(),
                dir.path().join("none.cfg").display().to_string(),
            ),
            ("ANSIBLE_INVENTORY_UNPARSED_FAILED".into(), "true".into()),
            ("ANSIBLE_NOCOLOR".into(), "1".into()),
            (
                "ANSIBLE_LOCAL_TEMP".into(),
                dir.path().join("tmp").display().to_string(),
            ),
            (
                "ANSIBLE_COLLECTIONS_PATH".into(),
                repo()
                    .join("ansible-bridge/collections")
                    .display()
                    .to_string(),
            ),
            (
                "ANSIBLE_PYTHON_INTERPRETER".into(),
                bin_dir.join("python3").display().to_string(),
            ),
            ("MUSTER_SERVER".into(), server.url()),
            ("MUSTER_TOKEN".into(), token.into()),
            (
                "MUSTER_INVENTORY".into(),
                bin("muster-inventory").display().to_string(),
            ),
        ];
        if let Some(f) = ssh {
            env.push((
                "ANSIBLE_PRIVATE_KEY_FILE".into(),
                f.client_key.display().to_string(),
            ));
            env.push((
                "ANSIBLE_SSH_ARGS".into(),
                format!(
                    "-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o ControlMaster=no",
                    f.known_hosts.display()
                ),
            ));
        }
        Self {
            dir,
            bin: bin_dir,
            env,
        }
    }

    pub(crate) fn run(&self, tool: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut c = Command::new(self.bin.join(tool));
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("MUSTER_TOKEN_FILE");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    pub(crate) fn plugin_config(&self, body: &str) -> String {
        let p = self.dir.path().join("fleet.muster.yml");
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    }
}

/// The fixture fleet: two SSH hosts (web-01, db-01), one switch without SSH, two windows.
fn fleet(web_port: u16, db_port: u16) -> String {
    format!(
        r#"
kind: Site
meta: {{name: fra1}}
region: eu
---
kind: Rack
meta: {{name: fra1-r01}}
site: fra1
---
kind: Device
type: SERVER
meta: {{name: web-01, labels: {{env: prod, app.kubernetes.io/name: shop}}}}
site: fra1
rack: fra1-r01
role: web
serial: SN-WEB-01
ssh: {{host: 127.0.0.1, port: {web_port}, user: root}}
---
kind: Device
type: SERVER
meta: {{name: db-01, labels: {{env: prod, tier: db}}}}
site: fra1
rack: fra1-r01
role: db
serial: SN-DB-01
ssh: {{host: 127.0.0.1, port: {db_port}, user: root}}
---
kind: Device
type: SWITCH
meta: {{name: sw-01, labels: {{env: lab}}}}
site: fra1
lifecycle: PLANNED
management_address: 10.9.9.9
---
kind: Window
meta: {{name: prod-nights}}
selector: env=prod
cron: "0 2 * * *"
duration: 3600s
timezone: Europe/Berlin
---
kind: Window
meta: {{name: db-freeze}}
selector: tier=db
freeze: true
ranges: [{{start: "2026-01-01T00:00:00Z", end: "2026-01-02T00:00:00Z"}}]
"#
    )
}

fn apply(s: &TestServer, yaml: &str) {
    let out = s.muster_with(&["apply", "-f", "-"], &s.token, Some(yaml.as_bytes()));
    assert!(out.status.success(), "apply failed: {}", text(&out.stderr));
}

/// Groups the fixture fleet must produce (none health: nothing reported yet → unknown).
fn expected_groups() -> BTreeMap<&'static str, Vec<&'static str>> {
    BTreeMap::from([
        ("kind_server", vec!["db-01", "web-01"]),
        ("kind_switch", vec!["sw-01"]),
        ("site_fra1", vec!["db-01", "sw-01", "web-01"]),
        ("rack_fra1_r01", vec!["db-01", "web-01"]),
        ("role_web", vec!["web-01"]),
        ("role_db", vec!["db-01"]),
        ("lifecycle_active", vec!["db-01", "web-01"]),
        ("lifecycle_planned", vec!["sw-01"]),
        ("health_unknown", vec!["db-01", "sw-01", "web-01"]),
        ("drift_no", vec!["db-01", "sw-01", "web-01"]),
        ("label_env_prod", vec!["db-01", "web-01"]),
        ("label_env_lab", vec!["sw-01"]),
        ("label_tier_db", vec!["db-01"]),
        ("label_app_kubernetes_io_name_shop", vec!["web-01"]),
    ])
}

/// `group -> hosts` from `ansible-inventory --list` output (hosts sorted).
fn groups_of(doc: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (g, v) in doc.as_object().unwrap() {
        if g == "_meta" || g == "all" {
            continue;
        }
        let mut hosts: Vec<String> = v
            .get("hosts")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|h| h.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        hosts.sort();
        if !hosts.is_empty() {
            out.insert(g.clone(), hosts);
        }
    }
    out
}

fn as_owned(m: BTreeMap<&str, Vec<&str>>) -> BTreeMap<String, Vec<String>> {
    m.into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
        .collect()
}

/// The JSON a tool printed, with Ansible's unsafe marking (`{"__ansible_unsafe": "..."}`, on
/// every string muster-inventory writes) taken off, so values compare as plain strings. That
/// the marking is there and works is `sec_ansible`'s subject.
pub(crate) fn json_out(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        text(&o.stderr),
        text(&o.stdout)
    );
    let v =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)));
    plain(v)
}

/// `{"__ansible_unsafe": s}` → `s`, everywhere in a document.
pub(crate) fn plain(v: Value) -> Value {
    match v {
        Value::Object(m)
            if m.len() == 1 && m.get("__ansible_unsafe").is_some_and(Value::is_string) =>
        {
            m.into_iter().next().map(|(_, s)| s).unwrap_or(Value::Null)
        }
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, plain(v))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(plain).collect()),
        other => other,
    }
}

#[tokio::test]
async fn inventory_script_and_plugin_give_the_fleet_groups_and_hostvars() {
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    apply(&s, &fleet(2201, 2202));
    let a = Ansible::new(&s, VIEWER_TOKEN, None);
    let script = bin("muster-inventory").display().to_string();

    // The legacy script profile.
    let doc = json_out(&a.run("ansible-inventory", &["-i", &script, "--list"], &[]));
    let mut want = expected_groups();
    // Windows are evaluated at the real clock: whether prod-nights is open depends on when the
    // test runs, so `in_window` is checked with a fixed clock below and left out here.
    let mut got = groups_of(&doc);
    got.remove("in_window");
    assert_eq!(got, as_owned(want.clone()));
    let hv = &doc["_meta"]["hostvars"];
    assert_eq!(hv.as_object().unwrap().len(), 3);
    assert_eq!(hv["web-01"]["ansible_host"], "127.0.0.1");
    assert_eq!(hv["web-01"]["ansible_port"], 2201);
    assert_eq!(hv["web-01"]["ansible_user"], "root");
    assert_eq!(hv["db-01"]["ansible_port"], 2202);
    assert_eq!(hv["web-01"]["muster_serial"], "SN-WEB-01");
    assert_eq!(hv["web-01"]["muster_role"], "web");
    assert_eq!(hv["web-01"]["muster_site"], "fra1");
    assert_eq!(hv["web-01"]["muster_kind"], "server");
    assert_eq!(hv["web-01"]["muster_health"], "unknown");
    assert_eq!(hv["web-01"]["muster_drift_count"], 0);
    assert_eq!(
        hv["web-01"]["muster_labels"],
        json!({"env": "prod", "app.kubernetes.io/name": "shop"})
    );
    // No SSH endpoint: the management address, default port, no user.
    assert_eq!(hv["sw-01"]["ansible_host"], "10.9.9.9");
    assert_eq!(hv["sw-01"]["ansible_port"], 22);
    assert!(hv["sw-01"].get("ansible_user").is_none());

    // --graph: every expected group with its hosts.
    let g = a.run("ansible-inventory", &["-i", &script, "--graph"], &[]);
    assert!(g.status.success(), "{}", text(&g.stderr));
    let graph = text(&g.stdout);
    for (group, hosts) in &want {
        assert!(
            graph.contains(&format!("@{group}:")),
            "{group} missing:\n{graph}"
        );
        for h in hosts {
            assert!(graph.contains(&format!("--{h}")), "{h} missing:\n{graph}");
        }
    }

    // The collection's plugin, with a keyed group and a composed group on muster hostvars.
    let cfg = a.plugin_config(
        "plugin: muster.fleet.muster\nkeyed_groups:\n  - key: muster_role\n    prefix: byrole\ngroups:\n  servers_with_ssh: \"ansible_user is defined\"\ncompose:\n  next_port: \"ansible_port + 1\"\n  is_db: \"inventory_hostname == 'db-01'\"\n",
    );
    let doc = json_out(&a.run("ansible-inventory", &["-i", &cfg, "--list"], &[]));
    want.insert("byrole_web", vec!["web-01"]);
    want.insert("byrole_db", vec!["db-01"]);
    want.insert("servers_with_ssh", vec!["db-01", "web-01"]);
    let mut got = groups_of(&doc);
    got.remove("in_window");
    assert_eq!(got, as_owned(want));
    assert_eq!(doc["_meta"]["hostvars"]["db-01"]["next_port"], 2203);
    assert_eq!(doc["_meta"]["hostvars"]["db-01"]["is_db"], true);
    assert_eq!(doc["_meta"]["hostvars"]["web-01"]["is_db"], false);
    assert_eq!(doc["_meta"]["hostvars"]["db-01"]["ansible_port"], 2202);

    // --selector narrows, through the script and the plugin.
    let doc = json_out(&a.run(
        "ansible-inventory",
        &["-i", &script, "--list"],
        &[("MUSTER_SELECTOR", "tier=db")],
    ));
    assert_eq!(
        doc["_meta"]["hostvars"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["db-01"]
    );
    let cfg = a.plugin_config("plugin: muster.fleet.muster\nselector: env=lab\n");
    let doc = json_out(&a.run("ansible-inventory", &["-i", &cfg, "--list"], &[]));
    assert_eq!(
        doc["_meta"]["hostvars"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["sw-01"]
    );

    // --host answers from the same export.
    let doc = json_out(&a.run(
        "ansible-inventory",
        &["-i", &script, "--host", "db-01"],
        &[],
    ));
    assert_eq!(doc["muster_serial"], "SN-DB-01");
}

#[tokio::test]
async fn in_window_lists_only_hosts_whose_window_is_open() {
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    apply(&s, &fleet(2201, 2202));
    let a = Ansible::new(&s, VIEWER_TOKEN, None);
    let script = bin("muster-inventory").display().to_string();
    let hosts_at = |now: &str, via_plugin: bool| -> BTreeSet<String> {
        let doc = if via_plugin {
            let cfg = a.plugin_config(&format!(
                "plugin: muster.fleet.muster\nin_window: true\nnow: \"{now}\"\n"
            ));
            json_out(&a.run("ansible-inventory", &["-i", &cfg, "--list"], &[]))
        } else {
            json_out(&a.run(
                "ansible-inventory",
                &["-i", &script, "--list"],
                &[("MUSTER_IN_WINDOW", "true"), ("MUSTER_NOW", now)],
            ))
        };
        doc["_meta"]["hostvars"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let set = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
    // 02:30 Berlin (winter: 01:30 UTC) on a normal day: both prod hosts.
    assert_eq!(
        hosts_at("2026-01-05T01:30:00Z", false),
        set(&["db-01", "web-01"])
    );
    // The same hour on 1 January: db-01 is frozen.
    assert_eq!(hosts_at("2026-01-01T01:30:00Z", false), set(&["web-01"]));
    assert_eq!(hosts_at("2026-01-01T01:30:00Z", true), set(&["web-01"]));
    // 03:30 Berlin: the window is closed.
    assert!(hosts_at("2026-01-05T02:30:00Z", false).is_empty());
    // Summer time: 02:30 Berlin is 00:30 UTC.
    assert_eq!(
        hosts_at("2026-07-06T00:30:00Z", true),
        set(&["db-01", "web-01"])
    );
}

#[tokio::test]
async fn failures_are_one_line_and_fatal_and_the_cache_follows_the_revision() {
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    apply(&s, &fleet(2201, 2202));
    let inv = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(bin("muster-inventory"));
        c.args(args)
            .env("MUSTER_SERVER", s.url())
            .env("MUSTER_TOKEN", VIEWER_TOKEN)
            .env_remove("MUSTER_TOKEN_FILE")
            .env_remove("MUSTER_INVENTORY_CONFIG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let one_line = |o: &Output, needle: &str| {
        let err = text(&o.stderr);
        assert!(!o.status.success());
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        assert!(o.stdout.is_empty());
    };
    one_line(
        &inv(&[("MUSTER_TOKEN", "mst_wrong")], &["--list"]),
        "UNAUTHENTICATED",
    );
    one_line(
        &inv(&[("MUSTER_SERVER", "http://127.0.0.1:1")], &["--list"]),
        "cannot connect to http://127.0.0.1:1",
    );
    one_line(
        &inv(&[("MUSTER_SELECTOR", "env in (")], &["--list"]),
        "INVALID_ARGUMENT",
    );
    one_line(&inv(&[], &[]), "use --list or --host");

    // Ansible fails too (with ANSIBLE_INVENTORY_UNPARSED_FAILED) and shows the line.
    let a = Ansible::new(&s, "mst_wrong", None);
    let script = bin("muster-inventory").display().to_string();
    let o = a.run("ansible-inventory", &["-i", &script, "--list"], &[]);
    assert!(!o.status.success(), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("UNAUTHENTICATED"),
        "{}",
        text(&o.stderr)
    );
    let cfg = a.plugin_config("plugin: muster.fleet.muster\n");
    let o = a.run("ansible-inventory", &["-i", &cfg, "--list"], &[]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("UNAUTHENTICATED"),
        "{}",
        text(&o.stderr)
    );

    // Cache: the first run fills it. A doctored cache file is what the second run answers
    // with, which proves the server only said "not modified"; a write makes it stale.
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().display().to_string();
    let env = [("MUSTER_INVENTORY_CACHE_DIR", dir.as_str())];
    let first = json_out(&inv(&env, &["--list"]));
    assert_eq!(
        first["_meta"]["hostvars"]["web-01"]["muster_serial"],
        "SN-WEB-01"
    );
    let file = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut e = pb::ExportChunk::decode(std::fs::read(&file).unwrap().as_slice()).unwrap();
    for d in &mut e.devices {
        if let Some(dev) = d.device.as_mut() {
            dev.serial = format!("CACHED-{}", dev.serial);
        }
    }
    std::fs::write(&file, e.encode_to_vec()).unwrap();
    let second = json_out(&inv(&env, &["--list"]));
    assert_eq!(
        second["_meta"]["hostvars"]["web-01"]["muster_serial"],
        "CACHED-SN-WEB-01"
    );
    apply(
        &s,
        "kind: Device\ntype: SERVER\nmeta: {name: web-02, labels: {env: prod}}\nsite: fra1\n",
    );
    let third = json_out(&inv(&env, &["--list"]));
    assert_eq!(
        third["_meta"]["hostvars"]["web-01"]["muster_serial"],
        "SN-WEB-01"
    );
    assert!(third["_meta"]["hostvars"].get("web-02").is_some());
}

#[tokio::test]
async fn ping_and_playbook_reach_sshd_hosts_through_the_bridge() {
    let mut ssh = SshFleet::new().unwrap();
    let web = ssh.start_host().unwrap();
    let db = ssh.start_host().unwrap();
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    apply(&s, &fleet(web, db));
    let a = Ansible::new(&s, VIEWER_TOKEN, Some(&ssh));
    let script = bin("muster-inventory").display().to_string();

    // Only hostvars from muster tell Ansible where the hosts are.
    let o = a.run(
        "ansible",
        &["-i", &script, "kind_server", "-m", "ping", "-o"],
        &[],
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    for h in ["web-01", "db-01"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{h} | SUCCESS")) && l.contains("pong")),
            "{h} not pinged:\n{out}"
        );
    }

    // A playbook through the plugin; the task fails where muster says role=db.
    let book = a.dir.path().join("site.yml");
    std::fs::write(
        &book,
        "- hosts: kind_server\n  gather_facts: false\n  tasks:\n    - name: check role\n      ansible.builtin.command: \"{{ 'true' if muster_role == 'web' else 'false' }}\"\n",
    )
    .unwrap();
    let cfg = a.plugin_config("plugin: muster.fleet.muster\n");
    let o = a.run(
        "ansible-playbook",
        &["-i", &cfg, &book.display().to_string()],
        &[("ANSIBLE_STDOUT_CALLBACK", "muster.fleet.results")],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let doc: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)));
    let hosts = &doc["plays"][0]["tasks"][0]["hosts"];
    assert_eq!(hosts["web-01"]["status"], "changed");
    assert_eq!(hosts["web-01"]["rc"], 0);
    assert_eq!(hosts["db-01"]["status"], "failed");
    assert_eq!(hosts["db-01"]["rc"], 1);
    assert_eq!(doc["stats"]["db-01"]["failures"], 1);
    assert_eq!(doc["stats"]["web-01"]["failures"], 0);
}

#[tokio::test]
async fn setup_facts_of_this_machine_become_observed_state() {
    let mut ssh = SshFleet::new().unwrap();
    let web = ssh.start_host().unwrap();
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    apply(&s, &fleet(web, 1));
    let a = Ansible::new(&s, VIEWER_TOKEN, Some(&ssh));
    let script = bin("muster-inventory").display().to_string();
    let tree = a.dir.path().join("facts");
    let o = a.run(
        "ansible",
        &[
            "-i",
            &script,
            "web-01",
            "-m",
            "setup",
            "--tree",
            &tree.display().to_string(),
        ],
        &[],
    );
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );

    let ingest = |token: &str, args: &[&str]| {
        Command::new(bin("muster-inventory"))
            .arg("ingest-facts")
            .args(args)
            .env("MUSTER_SERVER", s.url())
            .env("MUSTER_TOKEN", token)
            .env_remove("MUSTER_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let dir = tree.display().to_string();
    let mut client = s.inventory().await.unwrap();
    let before = muster_tests::snapshot(&mut client).await.unwrap();
    // Reading is not enough to write.
    let o = ingest(VIEWER_TOKEN, &[&dir]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("PERMISSION_DENIED"),
        "{}",
        text(&o.stderr)
    );
    // A host muster does not know: refused, nothing written.
    let copy = a.dir.path().join("unknown");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(tree.join("web-01"), copy.join("ghost-01")).unwrap();
    let o = ingest(OPERATOR_TOKEN, &[&dir, &copy.display().to_string()]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("NOT_FOUND"), "{}", text(&o.stderr));
    assert_eq!(muster_tests::snapshot(&mut client).await.unwrap(), before);

    let o = ingest(OPERATOR_TOKEN, &[&dir]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("web-01: facts stored"));

    // What this machine is, from the kernel, compared with what muster now holds.
    let kernel = text(&Command::new("uname").arg("-r").output().unwrap().stdout)
        .trim()
        .to_string();
    let d = client
        .get(pb::GetRequest {
            kind: pb::ResourceKind::Device as i32,
            name: "web-01".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::resource::Resource::Device(d)) = d.resource else {
        panic!("not a device")
    };
    let st = d.status.unwrap();
    assert_eq!(st.origin, "ansible");
    assert_eq!(st.os.as_ref().unwrap().kernel, kernel);
    assert!(st.memory_bytes > 0);
    assert!(st.cpu.as_ref().unwrap().threads > 0);
    let ext = st.external_facts.unwrap();
    let ext = serde_json::to_value(ext).unwrap();
    assert_eq!(ext["ansible_kernel"], kernel.as_str());
    assert_eq!(
        d.meta
            .unwrap()
            .annotations
            .get("agent.muster.io/facts-origin")
            .map(String::as_str),
        Some("ansible")
    );

    // The bridge shows the observed OS, and where it came from.
    let doc = json_out(&a.run(
        "ansible-inventory",
        &["-i", &script, "--host", "web-01"],
        &[],
    ));
    assert_eq!(doc["muster_kernel"], kernel.as_str());
    assert_eq!(doc["muster_facts_origin"], "ansible");

    // The audit trail names the operator and the origin.
    let mut audit = s.audit().await.unwrap();
    let changes = audit
        .list(pb::ListChangesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        changes
            .changes
            .iter()
            .any(|c| c.verb == "ingest-facts" && c.origin == "ansible" && c.principal == "oscar"),
        "no ingest-facts entry"
    );

    // Drift works on agentless facts: a newer kernel is pending, an expect rule on an
    // Ansible fact holds.
    let profile = format!(
        "kind: Profile\nmeta:\n  name: kernel\nselector: \"\"\npriority: 1\nspec:\n  kernel: \"{kernel}+new1\"\n  expect:\n    - {{ path: facts.external.ansible_kernel, op: \"==\", value: \"{kernel}\" }}\n"
    );
    let o = s.muster_with(
        &["apply", "-f", "-"],
        OPERATOR_TOKEN,
        Some(profile.as_bytes()),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = s.muster_with(&["drift", "-o", "json"], OPERATOR_TOKEN, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let drift: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let items = &drift["items"][0]["items"];
    assert_eq!(drift["items"][0]["device"], "web-01", "{drift}");
    assert_eq!(items.as_array().map(Vec::len), Some(1), "{drift}");
    assert_eq!(items[0]["field"], "kernel");
    assert_eq!(items[0]["cause"], "pending");
    assert_eq!(items[0]["observed"], kernel.as_str());
}
