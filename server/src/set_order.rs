//! The order a change set is written in: what others refer to first, and every device after
//! its parent however deep the chain. Computed once per set in O(n log n): the parent-chain
//! depth of every device is memoised (each device walked once), then one sort by key.

use std::collections::HashMap;

use muster::pb::{self, resource::Resource as R};

/// Dependency order between kinds: sites, racks, credentials, profiles and windows, devices
/// (those without a parent first), campaigns.
fn rank(r: &pb::Resource) -> u8 {
    match r.resource.as_ref() {
        Some(R::Site(_)) => 0,
        Some(R::Rack(_)) => 1,
        Some(R::Credential(_)) => 2,
        Some(R::Profile(_)) | Some(R::Window(_)) => 3,
        Some(R::Device(d)) if d.parent.is_empty() => 4,
        Some(R::Device(_)) => 5,
        Some(R::Campaign(_)) => 7,
        None => 8,
    }
}

/// The parent of `r` when it is a device with one.
fn parent_of(r: &pb::Resource) -> Option<&str> {
    match r.resource.as_ref() {
        Some(R::Device(d)) if !d.parent.is_empty() => Some(d.parent.as_str()),
        _ => None,
    }
}

/// Hops from each resource up its parent chain inside the set (0 for all but devices with a
/// parent). A chain that runs into a cycle gets `m + 1` (m: devices with a parent), deeper
/// than any real chain; the store's reference check reports the cycle itself.
fn depths(resources: &[pb::Resource]) -> Vec<usize> {
    // Devices with a parent, by name (names are unique per kind in a set: checked before).
    let by_name: HashMap<&str, usize> = resources
        .iter()
        .enumerate()
        .filter(|(_, r)| parent_of(r).is_some())
        .map(|(i, r)| (r.name(), i))
        .collect();
    let cycle = by_name.len() + 1;
    // The next resource up the chain that itself has a parent.
    let up: Vec<Option<usize>> = resources
        .iter()
        .map(|r| parent_of(r).and_then(|p| by_name.get(p).copied()))
        .collect();
    #[derive(Clone, Copy)]
    enum Seen {
        No,
        OnPath,
        Done(usize),
    }
    let mut seen = vec![Seen::No; resources.len()];
    let mut path = Vec::new();
    for start in 0..resources.len() {
        if parent_of(&resources[start]).is_none() {
            seen[start] = Seen::Done(0);
            continue;
        }
        // Walk up until a known depth, the top of the chain, or a node on this very walk.
        let mut cur = Some(start);
        let mut base = 0;
        while let Some(i) = cur {
            match seen[i] {
                Seen::Done(d) => {
                    base = d;
                    break;
                }
                Seen::OnPath => {
                    base = cycle;
                    break;
                }
                Seen::No => {
                    seen[i] = Seen::OnPath;
                    path.push(i);
                    cur = up[i];
                }
            }
        }
        for i in path.drain(..).rev() {
            base = (base + 1).min(cycle);
            seen[i] = Seen::Done(base);
        }
    }
    seen.into_iter()
        .map(|s| match s {
            Seen::Done(d) => d,
            Seen::No | Seen::OnPath => cycle,
        })
        .collect()
}

/// Indices of `resources` in write order: by kind rank, then chain depth, then position in
/// the request (so the order is stable and parents precede their children).
pub fn write_order(resources: &[pb::Resource]) -> Vec<usize> {
    let depth = depths(resources);
    let mut order: Vec<usize> = (0..resources.len()).collect();
    order.sort_by_key(|&i| (rank(&resources[i]), depth[i], i));
    order
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests measure or wait on real time
    use super::*;
    use rand::SeedableRng;
    use rand::seq::SliceRandom;

    fn device(name: &str, parent: &str) -> pb::Resource {
        pb::Resource {
            resource: Some(R::Device(pb::Device {
                meta: Some(pb::ObjectMeta {
                    name: name.into(),
                    ..Default::default()
                }),
                parent: parent.into(),
                ..Default::default()
            })),
        }
    }

    fn names(rs: &[pb::Resource], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| rs[i].name().to_string()).collect()
    }

    #[test]
    fn a_long_shuffled_chain_is_ordered_parents_first_quickly() {
        const N: usize = 20_000;
        let mut rs: Vec<pb::Resource> = (0..N)
            .map(|i| {
                let parent = if i == 0 {
                    String::new()
                } else {
                    format!("d{}", i - 1)
                };
                device(&format!("d{i}"), &parent)
            })
            .collect();
        rs.shuffle(&mut rand::rngs::StdRng::seed_from_u64(4));
        let t = std::time::Instant::now();
        let order = write_order(&rs);
        let took = t.elapsed();
        let expected: Vec<String> = (0..N).map(|i| format!("d{i}")).collect();
        assert_eq!(names(&rs, &order), expected);
        // Quadratic took minutes here; linear work is milliseconds even unoptimised.
        assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    }

    #[test]
    fn kinds_first_then_depth_then_request_order() {
        let site = pb::Resource {
            resource: Some(R::Site(pb::Site {
                meta: Some(pb::ObjectMeta {
                    name: "s".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let rs = vec![
            device("vm", "blade"),
            device("blade", "chassis"),
            device("other", "outside"),
            device("chassis", ""),
            site,
        ];
        // "other"'s parent is not in the set: depth 1, like "blade"; request order decides.
        assert_eq!(
            names(&rs, &write_order(&rs)),
            ["s", "chassis", "blade", "other", "vm"]
        );
    }

    #[test]
    fn a_cycle_ends_the_walk_and_sorts_last() {
        let rs = vec![
            device("a", "b"),
            device("b", "a"),
            device("c", "a"),
            device("top", ""),
            device("x", "top"),
        ];
        assert_eq!(depths(&rs), vec![5, 5, 5, 0, 1]);
        assert_eq!(names(&rs, &write_order(&rs)), ["top", "x", "a", "b", "c"]);
    }
}
