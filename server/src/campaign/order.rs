//! Host order: round-robin across racks, then by name, so every wave (and the first N
//! canaries) spreads over as many racks as it can. Stable: the same fleet gives the same order.

use std::collections::BTreeMap;

/// The group name of hosts without a rack (and without any topology label).
pub const NONE_GROUP: &str = "<none>";

/// Indices of `items` in round-robin rack order: the first host (by name) of each rack in
/// rack-name order, then the second of each, and so on. Hosts without a rack form the rack
/// `<none>`, placed after the named racks.
pub fn round_robin<'a, T>(
    items: &'a [T],
    rack: impl Fn(&'a T) -> Option<&'a str>,
    name: impl Fn(&'a T) -> &'a str,
) -> Vec<usize> {
    let mut racks: BTreeMap<(bool, &str), Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        let key = rack(it).map_or((true, NONE_GROUP), |r| (false, r));
        racks.entry(key).or_default().push(i);
    }
    let mut queues: Vec<Vec<usize>> = racks
        .into_values()
        .map(|mut v| {
            v.sort_by(|&a, &b| name(&items[a]).cmp(name(&items[b])));
            v.reverse(); // pop() takes the first name
            v
        })
        .collect();
    let mut out = Vec::with_capacity(items.len());
    while out.len() < items.len() {
        for q in &mut queues {
            if let Some(i) = q.pop() {
                out.push(i);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_across_racks_then_names() {
        let hosts = [
            ("b1", Some("b")),
            ("a2", Some("a")),
            ("a1", Some("a")),
            ("x", None),
            ("a3", Some("a")),
            ("c1", Some("c")),
        ];
        let order = round_robin(&hosts, |h| h.1, |h| h.0);
        let names: Vec<&str> = order.iter().map(|&i| hosts[i].0).collect();
        assert_eq!(names, ["a1", "b1", "c1", "x", "a2", "a3"]);
    }
}
