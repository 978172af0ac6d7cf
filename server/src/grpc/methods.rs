//! The RPC paths musterd serves, derived from the descriptor sets of the registered services,
//! so that metrics label only known methods: a raw request path is attacker-chosen, and every
//! label set a metrics family has seen stays in memory for the life of the process.

use std::collections::HashSet;

use prost::Message;

/// The label every path outside the known set is counted under.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The `/package.Service/Method` paths of every registered service.
#[derive(Debug, Clone, Default)]
pub struct KnownMethods(HashSet<String>);

impl KnownMethods {
    /// The services `Server::run` registers: muster's own, grpc.health and both reflection
    /// versions. Derived from the same descriptor sets the reflection service serves, so the
    /// list cannot drift from what is actually routed.
    pub fn served() -> Self {
        Self::from_descriptor_sets(&[
            muster::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])
    }

    /// Every method of every service in `sets` (encoded `FileDescriptorSet`s). A set that does
    /// not decode contributes nothing (they are compiled in; a unit test decodes them all).
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Self {
        let mut paths = HashSet::new();
        for bytes in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*bytes) else {
                tracing::error!("a compiled-in descriptor set does not decode");
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    let full = if package.is_empty() {
                        service_name
                    } else {
                        format!("{package}.{service_name}")
                    };
                    for method in service.method {
                        paths.insert(format!("/{full}/{}", method.name.unwrap_or_default()));
                    }
                }
            }
        }
        Self(paths)
    }

    /// `path` itself when it names a served method, else `UNKNOWN_METHOD`.
    pub fn label<'a>(&self, path: &'a str) -> &'a str {
        if self.0.contains(path) {
            path
        } else {
            UNKNOWN_METHOD
        }
    }

    /// How many methods are known.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no method is known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_are_known_and_others_are_not() {
        let m = KnownMethods::served();
        assert_eq!(
            m.label("/muster.v1.InventoryService/Get"),
            "/muster.v1.InventoryService/Get"
        );
        assert_eq!(
            m.label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(
            m.label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        );
        assert_eq!(
            m.label("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        );
        assert_eq!(m.label("/muster.v1.InventoryService/Nope"), UNKNOWN_METHOD);
        assert_eq!(m.label("/x"), UNKNOWN_METHOD);
        assert_eq!(m.label(""), UNKNOWN_METHOD);
        // Each of the six muster services contributes methods.
        assert!(m.len() > 20, "only {} methods known", m.len());
    }
}
