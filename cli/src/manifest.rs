//! Manifests: the YAML/JSON documents operators write and `get -o yaml|json` prints, converted
//! to and from `pb::Resource`.
//!
//! A manifest is one resource message in the proto3 JSON mapping (snake_case or camelCase
//! field names, enums by name, uint64 as numbers or strings, bytes as base64) plus a top-level
//! `kind:` naming the resource type: `Site`, `Rack`, `Device`, `Profile`, `Window`,
//! `Credential` or `Campaign` (case-insensitive on input). An optional `apiVersion: muster/v1`
//! is accepted and ignored.
//!
//! The type key collides with the `kind` field that `Device` (a `DeviceKind` such as `SERVER`)
//! and `Credential` (a `CredentialKind` such as `BMC_PASSWORD`) have of their own, so for those
//! two resources the manifest writes that field as `type:` and the conversion maps manifest
//! `type` ⇄ proto `kind` in both directions:
//!
//! ```yaml
//! kind: Device          # the resource type
//! type: SERVER          # pb::Device.kind
//! meta: {name: web-01, labels: {role: web}}
//! site: fra1
//! ```
//!
//! Rendering produces the same shape (with `kind` first and fields in proto order), so
//! `muster get device x -o yaml | muster apply -f -` round-trips. A file holds any number of
//! documents: YAML documents separated by `---`, concatenated JSON values, a JSON/YAML array,
//! or an object `{kind: List, items: [...]}`; they are numbered from 1 in that flattened order.

use anyhow::{Context, Result, anyhow, bail};
use muster::pb;
use muster::pb::resource::Resource as R;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_yaml_ng::{Mapping, Value as YamlValue};

use crate::kinds::Kind;

/// The manifest `apiVersion` accepted on input.
pub const API_VERSION: &str = "muster/v1";

/// One parsed document of a manifest file.
#[derive(Debug, Clone)]
pub struct Document {
    /// 1-based position in the file, for messages.
    pub index: usize,
    /// The resource type from `kind:`.
    pub kind: Kind,
    /// `meta.name`, required in every document.
    pub name: String,
    /// The message to send.
    pub resource: pb::Resource,
}

impl Document {
    /// `device/web-01`.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// Parses every document of a manifest file; the first bad document fails the whole file so
/// that nothing is sent from a half-understood input.
pub fn parse(input: &str) -> Result<Vec<Document>> {
    let values = split_documents(input)?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| to_document(i + 1, v))
        .collect()
}

/// Splits the input into one JSON value per document, flattening arrays and `kind: List`.
fn split_documents(input: &str) -> Result<Vec<Value>> {
    let trimmed = input.trim_start_matches('\u{feff}').trim_start();
    let raw: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        match parse_json_stream(trimmed) {
            Ok(values) => values,
            // Flow-style YAML also starts with a brace: give YAML a chance, but report the
            // JSON error if that fails too (it is the likelier intent).
            Err(json_err) => parse_yaml_stream(trimmed).map_err(|_| json_err)?,
        }
    } else {
        parse_yaml_stream(trimmed)?
    };
    let mut out = Vec::with_capacity(raw.len());
    for value in raw {
        flatten(value, &mut out)?;
    }
    Ok(out)
}

fn parse_json_stream(input: &str) -> Result<Vec<Value>> {
    serde_json::Deserializer::from_str(input)
        .into_iter::<Value>()
        .enumerate()
        .map(|(i, v)| v.with_context(|| format!("document {}: invalid JSON", i + 1)))
        .collect()
}

fn parse_yaml_stream(input: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let value =
            Value::deserialize(doc).with_context(|| format!("document {}: invalid YAML", i + 1))?;
        out.push(value);
    }
    Ok(out)
}

/// Appends a document, expanding arrays and `kind: List`; empty documents are skipped.
fn flatten(value: Value, out: &mut Vec<Value>) -> Result<()> {
    match value {
        Value::Null => {}
        Value::Array(items) => {
            for item in items {
                flatten(item, out)?;
            }
        }
        Value::Object(mut map)
            if map
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.eq_ignore_ascii_case("List")) =>
        {
            match map.remove("items") {
                Some(Value::Array(items)) => {
                    for item in items {
                        flatten(item, out)?;
                    }
                }
                None | Some(Value::Null) => {}
                Some(_) => bail!(
                    "document {}: `items` of a List must be an array",
                    out.len() + 1
                ),
            }
        }
        other => out.push(other),
    }
    Ok(())
}

/// Converts one document to a resource.
fn to_document(index: usize, value: Value) -> Result<Document> {
    let Value::Object(mut map) = value else {
        bail!(
            "document {index}: expected a mapping with `kind`, got {}",
            type_name(&value)
        );
    };
    let name = map
        .get("meta")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind_name = match map.remove("kind") {
        Some(Value::String(k)) => k,
        Some(other) => bail!(
            "document {index}: `kind` must be a string, got {}",
            type_name(&other)
        ),
        None => bail!(
            "document {index}: missing `kind` (one of Site, Rack, Device, Profile, Window, Credential, Campaign)"
        ),
    };
    let kind = Kind::from_manifest_name(&kind_name).ok_or_else(|| {
        anyhow!(
            "document {index}: unknown kind {kind_name:?} (expected one of Site, Rack, Device, \
             Profile, Window, Credential, Campaign)"
        )
    })?;
    let label = if name.is_empty() {
        format!("document {index} ({kind})")
    } else {
        format!("document {index} ({kind}/{name})")
    };
    match map.remove("apiVersion") {
        None => {}
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(other) => bail!("{label}: unsupported apiVersion {other} (expected {API_VERSION:?})"),
    }
    if renames_type(kind)
        && let Some(t) = map.remove("type")
    {
        map.insert("kind".to_string(), t);
    }
    let body = Value::Object(map);
    let resource = match kind {
        Kind::Site => R::Site(from_value(body, kind, &label)?),
        Kind::Rack => R::Rack(from_value(body, kind, &label)?),
        Kind::Device => R::Device(from_value(body, kind, &label)?),
        Kind::Profile => R::Profile(from_value(body, kind, &label)?),
        Kind::Window => R::Window(from_value(body, kind, &label)?),
        Kind::Credential => R::Credential(from_value(body, kind, &label)?),
        Kind::Campaign => R::Campaign(from_value(body, kind, &label)?),
    };
    if name.is_empty() {
        bail!("{label}: missing meta.name");
    }
    Ok(Document {
        index,
        kind,
        name,
        resource: pb::Resource {
            resource: Some(resource),
        },
    })
}

/// Deserializes with the path of the offending field in the message.
fn from_value<T: DeserializeOwned>(body: Value, kind: Kind, label: &str) -> Result<T> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let mut path = e.path().to_string();
        let mut message = e.inner().to_string();
        if renames_type(kind) && message.starts_with("unknown field") {
            message = message.replace("`kind`", "`type`");
        }
        // For an unknown field the path ends in that field, which the message already names.
        if message.starts_with("unknown field") {
            path = path
                .rsplit_once('.')
                .map(|(parent, _)| parent.to_string())
                .unwrap_or_default();
        }
        // The manifest spells a device's or credential's own `kind` as `type`.
        if renames_type(kind) && path == "kind" {
            path = "type".to_string();
        }
        if path == "." || path.is_empty() {
            anyhow!("{label}: {message}")
        } else {
            anyhow!("{label}: {path}: {message}")
        }
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a mapping",
    }
}

/// Whether the resource has its own `kind` field, written as `type` in manifests.
fn renames_type(kind: Kind) -> bool {
    matches!(kind, Kind::Device | Kind::Credential)
}

/// Renders a resource as a manifest mapping: `kind` first, then the fields in proto order.
pub fn render(resource: &pb::Resource) -> Result<YamlValue> {
    let (kind, body) = match resource.resource.as_ref() {
        Some(R::Site(r)) => (Kind::Site, serde_yaml_ng::to_value(r)),
        Some(R::Rack(r)) => (Kind::Rack, serde_yaml_ng::to_value(r)),
        Some(R::Device(r)) => (Kind::Device, serde_yaml_ng::to_value(r)),
        Some(R::Profile(r)) => (Kind::Profile, serde_yaml_ng::to_value(r)),
        Some(R::Window(r)) => (Kind::Window, serde_yaml_ng::to_value(r)),
        Some(R::Credential(r)) => (Kind::Credential, serde_yaml_ng::to_value(r)),
        Some(R::Campaign(r)) => (Kind::Campaign, serde_yaml_ng::to_value(r)),
        None => bail!("the server returned an empty resource"),
    };
    let body = body.context("cannot render resource")?;
    let YamlValue::Mapping(body) = body else {
        bail!("cannot render resource: not a mapping");
    };
    let mut out = Mapping::with_capacity(body.len() + 1);
    out.insert("kind".into(), kind.manifest_name().into());
    for (key, value) in body {
        if renames_type(kind) && key.as_str() == Some("kind") {
            out.insert("type".into(), value);
        } else {
            out.insert(key, value);
        }
    }
    Ok(YamlValue::Mapping(out))
}

/// `{"kind": "List", "items": [...]}` of rendered resources.
pub fn render_list(resources: &[pb::Resource]) -> Result<YamlValue> {
    let items = resources.iter().map(render).collect::<Result<Vec<_>>>()?;
    let mut out = Mapping::with_capacity(2);
    out.insert("kind".into(), "List".into());
    out.insert("items".into(), YamlValue::Sequence(items));
    Ok(YamlValue::Mapping(out))
}

/// Pretty JSON of a rendered value (keys stay in render order).
pub fn to_json_pretty(value: &YamlValue) -> Result<String> {
    serde_json::to_string_pretty(value).context("cannot encode JSON")
}

/// One YAML document (no leading `---`), ending in a newline.
pub fn to_yaml(value: &YamlValue) -> Result<String> {
    let mut s = serde_yaml_ng::to_string(value).context("cannot encode YAML")?;
    if let Some(rest) = s.strip_prefix("---\n") {
        s = rest.to_string();
    }
    if !s.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}

/// Several YAML documents separated by `---`.
pub fn to_yaml_stream(values: &[YamlValue]) -> Result<String> {
    let mut out = String::new();
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&to_yaml(value)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(doc: &Document) -> &pb::Device {
        match doc.resource.resource.as_ref() {
            Some(R::Device(d)) => d,
            other => panic!("not a device: {other:?}"),
        }
    }

    #[test]
    fn multi_document_yaml_with_site_and_device() {
        let input = "\
kind: Site
meta:
  name: fra1
region: eu-central
---
apiVersion: muster/v1
kind: device
type: SERVER
meta:
  name: web-01
  labels: {role: web}
site: fra1
heightU: 2
lifecycle: ACTIVE
---
";
        let docs = parse(input).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].kind, Kind::Site);
        assert_eq!(docs[0].qualified_name(), "site/fra1");
        match docs[0].resource.resource.as_ref() {
            Some(R::Site(s)) => assert_eq!(s.region, "eu-central"),
            other => panic!("not a site: {other:?}"),
        }
        assert_eq!(docs[1].index, 2);
        assert_eq!(docs[1].qualified_name(), "device/web-01");
        let d = device(&docs[1]);
        assert_eq!(d.kind(), pb::DeviceKind::Server);
        assert_eq!(d.height_u, 2);
        assert_eq!(d.lifecycle(), pb::Lifecycle::Active);
        let meta = d.meta.as_ref().unwrap();
        assert_eq!(meta.labels.get("role").map(String::as_str), Some("web"));
    }

    #[test]
    fn credential_type_maps_to_kind() {
        let docs = parse(
            "kind: Credential\ntype: BMC_PASSWORD\nmeta: {name: ipmi}\nsecret: aHVudGVyMg==\n",
        )
        .unwrap();
        match docs[0].resource.resource.as_ref() {
            Some(R::Credential(c)) => {
                assert_eq!(c.kind(), pb::CredentialKind::BmcPassword);
                assert_eq!(c.secret, b"hunter2");
            }
            other => panic!("not a credential: {other:?}"),
        }
    }

    #[test]
    fn json_array() {
        let input = r#"[
            {"kind": "Rack", "meta": {"name": "r1"}, "site": "fra1", "height_u": 42},
            {"kind": "Device", "type": "SWITCH", "meta": {"name": "sw-1"}, "rack": "r1"}
        ]"#;
        let docs = parse(input).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].qualified_name(), "rack/r1");
        match docs[0].resource.resource.as_ref() {
            Some(R::Rack(r)) => assert_eq!(r.height_u, 42),
            other => panic!("not a rack: {other:?}"),
        }
        assert_eq!(device(&docs[1]).kind(), pb::DeviceKind::Switch);
        assert_eq!(device(&docs[1]).rack, "r1");
    }

    #[test]
    fn kind_list_in_yaml_and_json() {
        let yaml = "kind: List\nitems:\n- kind: Site\n  meta: {name: a}\n- kind: Site\n  meta: {name: b}\n";
        let docs = parse(yaml).unwrap();
        let names: Vec<_> = docs.iter().map(Document::qualified_name).collect();
        assert_eq!(names, ["site/a", "site/b"]);
        assert_eq!(docs[1].index, 2);

        let json =
            r#"{"kind":"List","items":[{"kind":"Window","meta":{"name":"w"},"freeze":true}]}"#;
        let docs = parse(json).unwrap();
        match docs[0].resource.resource.as_ref() {
            Some(R::Window(w)) => assert!(w.freeze),
            other => panic!("not a window: {other:?}"),
        }
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let err = parse("kind: Site\nmeta: {name: a}\n---\nkind: Gadget\nmeta: {name: g}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("document 2"), "{err}");
        assert!(err.contains("unknown kind \"Gadget\""), "{err}");
    }

    #[test]
    fn unknown_field_names_document_and_resource() {
        let input =
            "kind: Site\nmeta: {name: a}\n---\nkind: Device\nmeta: {name: web-01}\nserail: X1\n";
        let err = format!("{:#}", parse(input).unwrap_err());
        assert!(
            err.starts_with("document 2 (device/web-01): unknown field `serail`"),
            "{err}"
        );
        assert!(
            err.contains("expected one of `meta`, `type`, `serial`"),
            "{err}"
        );

        let nested = "kind: Device\nmeta: {name: web-02, lables: {a: b}}\n";
        let err = format!("{:#}", parse(nested).unwrap_err());
        assert!(
            err.starts_with("document 1 (device/web-02): meta: "),
            "{err}"
        );
        assert!(err.contains("unknown field `lables`"), "{err}");
    }

    #[test]
    fn bad_values_and_structure_are_errors() {
        let err = parse("kind: Device\nmeta: {name: d}\ntype: TOASTER\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("document 1 (device/d)"), "{err}");
        assert!(err.contains("TOASTER"), "{err}");
        let err = parse("meta: {name: d}\n").unwrap_err().to_string();
        assert!(err.contains("missing `kind`"), "{err}");
        let err = parse("kind: Site\nregion: x\n").unwrap_err().to_string();
        assert!(err.contains("missing meta.name"), "{err}");
        let err = parse("kind: Site\nmeta: {name: [\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("document 1: invalid YAML"), "{err}");
        let err = parse("[{\"kind\": \"Site\"},").unwrap_err().to_string();
        assert!(err.contains("invalid JSON"), "{err}");
    }

    #[test]
    fn empty_input_has_no_documents() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("---\n").unwrap().is_empty());
    }

    fn sample_device() -> pb::Resource {
        let mut meta = pb::ObjectMeta {
            id: "01HX".into(),
            name: "web-01".into(),
            revision: 7,
            created_at: Some(pbjson_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        meta.labels.insert("role".into(), "web".into());
        let mut device = pb::Device {
            meta: Some(meta),
            serial: "SN123".into(),
            site: "fra1".into(),
            rack: "r1".into(),
            role: "web".into(),
            management_address: "10.0.0.5".into(),
            model: "R650".into(),
            status: Some(pb::ObservedState {
                health: pb::Health::Warning as i32,
                memory_bytes: 1 << 40,
                ..Default::default()
            }),
            ..Default::default()
        };
        device.set_kind(pb::DeviceKind::Server);
        device.set_lifecycle(pb::Lifecycle::Active);
        pb::Resource {
            resource: Some(R::Device(device)),
        }
    }

    #[test]
    fn device_round_trips_through_yaml_and_json() {
        let original = sample_device();
        let rendered = render(&original).unwrap();
        let yaml = to_yaml(&rendered).unwrap();
        assert!(yaml.starts_with("kind: Device\n"), "{yaml}");
        assert!(yaml.contains("type: SERVER\n"), "{yaml}");
        assert!(!yaml.contains("kind: SERVER"), "{yaml}");
        let docs = parse(&yaml).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].resource, original);

        let json = to_json_pretty(&rendered).unwrap();
        assert!(json.contains("\"type\": \"SERVER\""), "{json}");
        assert!(
            json.contains("\"memory_bytes\": \"1099511627776\""),
            "{json}"
        );
        let docs = parse(&json).unwrap();
        assert_eq!(docs[0].resource, original);

        let list = render_list(&[original.clone(), original.clone()]).unwrap();
        let json = to_json_pretty(&list).unwrap();
        assert!(
            json.starts_with("{\n  \"kind\": \"List\",\n  \"items\": ["),
            "{json}"
        );
        assert_eq!(parse(&json).unwrap().len(), 2);
        let stream = to_yaml_stream(&[rendered.clone(), rendered]).unwrap();
        assert_eq!(stream.matches("---\n").count(), 1);
        assert_eq!(parse(&stream).unwrap().len(), 2);
    }
}
