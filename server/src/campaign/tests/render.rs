use muster::pb;

use super::*;
use crate::campaign::render::render_plan;

#[test]
fn the_plan_text_states_the_semantics() {
    let mut p = pb_spec();
    let s = p.strategy.as_mut().unwrap();
    s.canary_count = 1;
    s.batch_size = Some(pb::Count {
        value: Some(pb::count::Value::Hosts(2)),
    });
    s.failure_threshold = Some(pb::Count {
        value: Some(pb::count::Value::Hosts(3)),
    });
    s.max_per_rack = 1;
    let mut devs = fleet(6, 2);
    devs[5].health = HealthLevel::Critical;
    devs[5].health_reasons = vec!["sel.critical".into()];
    let cal = calendar(&[]);
    let plan = make_plan(&p, &devs, &cal);
    let text = render_plan("openssl", &spec(&p), &plan, "abc123");
    for want in [
        "Campaign openssl: 5 hosts planned, 1 skipped",
        "Digest: abc123",
        "halts at the 4th failed host",
        "Canaries: h00 (1 at a time); any canary failure halts",
        "waits for a non-author to promote",
        "Waves: 2",
        "  canary: 1 host(s): h00",
        "  wave 1: 2 host(s): h01, h02",
        "  wave 2: 2 host(s): h03, h04",
        "at most 1 per rack disrupted at once",
        "worst case of 20m",
        "h05: health is CRITICAL (sel.critical) (critical)",
        "strict: concurrency shrinks",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
