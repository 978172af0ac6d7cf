//! Tests of the parent module: sample values in, text out (insta snapshots).
use super::*;

/// Monday 2024-05-06 10:00:00 UTC.
const NOW: i64 = 1_714_989_600;

fn window(name: &str, selector: &str, cron: &str, hours: i64, freeze: bool) -> pb::Window {
    pb::Window {
        meta: Some(pb::ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        selector: selector.into(),
        cron: cron.into(),
        duration: (hours > 0).then_some(pbjson_types::Duration {
            seconds: hours * 3600,
            nanos: 0,
        }),
        timezone: "Europe/Berlin".into(),
        freeze,
        ..Default::default()
    }
}

fn range(name: &str, selector: &str, from: i64, to: i64, freeze: bool) -> pb::Window {
    pb::Window {
        meta: Some(pb::ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        selector: selector.into(),
        ranges: vec![pb::TimeRange {
            start: Some(pbjson_types::Timestamp {
                seconds: from,
                nanos: 0,
            }),
            end: Some(pbjson_types::Timestamp {
                seconds: to,
                nanos: 0,
            }),
        }],
        freeze,
        ..Default::default()
    }
}

fn fleet() -> Vec<pb::Window> {
    vec![
        // Every night 02:00-06:00 Berlin (00:00-04:00 UTC in May).
        window("nightly-web", "role=web", "0 2 * * *", 4, false),
        // Saturdays 22:00 Berlin for 8h.
        window("weekend-db", "role=db", "0 22 * * 6", 8, false),
        // Open right now: 08:00-14:00 UTC today.
        range("hotfix", "env=prod", NOW - 7200, NOW + 4 * 3600, false),
        // Freezes the web fleet Wednesday night (month-end close).
        range(
            "month-end",
            "role=web",
            NOW + 2 * 86_400 - 36_000,
            NOW + 2 * 86_400 + 7_200,
            true,
        ),
        window("broken", "role=web", "0 25 * * *", 1, false),
    ]
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

#[test]
fn list_shows_now_and_next() {
    let rows = rows(&fleet(), NOW, None);
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["broken", "hotfix", "month-end", "nightly-web", "weekend-db"]
    );
    assert_eq!(
        rows[1].state,
        WindowState::Open {
            until: NOW + 4 * 3600
        }
    );
    // 02:00 Berlin tomorrow = 00:00 UTC on 2024-05-07.
    assert_eq!(
        rows[3].state,
        WindowState::Opens {
            at: 1_715_040_000,
            until: 1_715_040_000 + 4 * 3600
        }
    );
    assert!(matches!(rows[0].state, WindowState::Invalid { .. }));
    insta::assert_snapshot!("window_list", render_list(&rows, NOW));
}

#[test]
fn next_for_a_web_host() {
    let web = labels(&[("role", "web"), ("env", "prod")]);
    let v = next("web-01", &fleet(), &web, NOW, Duration::ZERO, 4);
    // Open now (hotfix), then nightly; the month-end freeze cuts Wednesday's night out.
    assert_eq!(v.slots[0], (NOW, NOW + 4 * 3600));
    assert_eq!(v.slots[1], (1_715_040_000, 1_715_040_000 + 4 * 3600));
    assert!(v.frozen_now.is_none());
    let text = render_next(&v, NOW);
    insta::assert_snapshot!("window_next_web", text);
    assert!(
        text.starts_with("device/web-01 may be changed now\n"),
        "{text}"
    );
    // The db window does not select it and is not listed.
    assert!(!text.contains("weekend-db"), "{text}");

    // Needing 5 hours, nothing fits (every slot is 4 h).
    let v = next(
        "web-01",
        &fleet(),
        &web,
        NOW,
        Duration::from_secs(5 * 3600),
        3,
    );
    assert!(v.slots.is_empty());
    assert!(
        render_next(&v, NOW).contains("no slot for 5h in the next 30 days: the longest is 4h"),
        "{}",
        render_next(&v, NOW)
    );
    let json = encoded(&v, StreamFormat::Json).unwrap();
    assert!(
        json.contains("\"horizon_end\": \"2024-06-05T10:00:00Z\""),
        "{json}"
    );
}

#[test]
fn a_freeze_open_now_wins() {
    let mut ws = fleet();
    ws.push(range("incident", "env=prod", NOW - 60, NOW + 3600, true));
    let web = labels(&[("role", "web"), ("env", "prod")]);
    let v = next("web-01", &ws, &web, NOW, Duration::ZERO, 2);
    assert_eq!(v.frozen_now, Some(("incident".to_string(), NOW + 3600)));
    assert_eq!(
        v.slots[0],
        (NOW + 3600, NOW + 4 * 3600),
        "the rest of hotfix after the freeze"
    );
    let text = render_next(&v, NOW);
    assert!(
        text.starts_with("device/web-01 is FROZEN by incident until 2024-05-06T11:00:00Z"),
        "{text}"
    );
}

#[test]
fn a_broken_freeze_closes_everything() {
    let mut ws = fleet();
    ws.push(window("bad-freeze", "role=web", "not cron", 1, true));
    let web = labels(&[("role", "web")]);
    let v = next("web-01", &ws, &web, NOW, Duration::ZERO, 3);
    assert!(v.slots.is_empty(), "{:?}", v.slots);
    assert_eq!(
        v.frozen_now.as_ref().map(|f| f.0.as_str()),
        Some("bad-freeze")
    );
}

// Interval union and subtraction are muster::window's (tested there).

#[test]
fn hostile_names_are_escaped() {
    let ws = vec![range("x\u{1b}[2J", "", NOW, NOW + 60, false)];
    let text = render_list(&rows(&ws, NOW, None), NOW);
    assert!(!text.contains('\u{1b}'), "{text:?}");
    let json = encoded(&rows(&ws, NOW, None), StreamFormat::Json).unwrap();
    assert!(json.contains("\"name\": \"x\\u001b[2J\""), "{json}");
}
