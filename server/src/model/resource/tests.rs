//! Unit tests of the per-kind rules.

use muster::pb::ObjectMeta;

use super::*;
use crate::model::ApiError;

fn device(name: &str) -> pb::Resource {
    pb::Resource {
        resource: Some(R::Device(pb::Device {
            meta: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            kind: pb::DeviceKind::Server as i32,
            ..Default::default()
        })),
    }
}

fn field_of(r: pb::Resource) -> String {
    match validate(&r) {
        Err(ApiError::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn device_validation_names_the_field() {
    assert!(validate(&device("web-01")).is_ok());
    assert_eq!(field_of(device("Web 01")), "meta.name");
    let mut r = device("web-01");
    let Some(R::Device(d)) = r.resource.as_mut() else {
        unreachable!()
    };
    d.management_address = "not an address".into();
    assert_eq!(field_of(r.clone()), "management_address");
    let Some(R::Device(d)) = r.resource.as_mut() else {
        unreachable!()
    };
    d.management_address = "10.0.0.1".into();
    d.kind = 0;
    assert_eq!(field_of(r.clone()), "kind");
    let Some(R::Device(d)) = r.resource.as_mut() else {
        unreachable!()
    };
    d.kind = 1;
    d.meta
        .as_mut()
        .unwrap()
        .labels
        .insert("bad key!".into(), "x".into());
    assert_eq!(field_of(r), "meta.labels[\"bad key!\"]");
}

#[test]
fn index_fields_and_references() {
    let mut r = device("web-01");
    let Some(R::Device(d)) = r.resource.as_mut() else {
        unreachable!()
    };
    d.site = "fra1".into();
    d.rack = "r1".into();
    d.serial = "SN1".into();
    let f = index_fields(&r);
    assert_eq!(f.get("kind").map(String::as_str), Some("SERVER"));
    assert_eq!(f.get("site").map(String::as_str), Some("fra1"));
    assert!(!f.contains_key("parent"));
    assert_eq!(references(&r).len(), 2);
}
