//! Accessors every crate needs on `pb::Resource`: the metadata and name of whichever resource
//! it holds, so that no crate matches on the seven variants for them.

use crate::pb::{ObjectMeta, Resource, resource::Resource as R};

impl Resource {
    /// The held resource's metadata, if it has any.
    pub fn meta(&self) -> Option<&ObjectMeta> {
        match self.resource.as_ref()? {
            R::Site(x) => x.meta.as_ref(),
            R::Rack(x) => x.meta.as_ref(),
            R::Device(x) => x.meta.as_ref(),
            R::Profile(x) => x.meta.as_ref(),
            R::Window(x) => x.meta.as_ref(),
            R::Credential(x) => x.meta.as_ref(),
            R::Campaign(x) => x.meta.as_ref(),
        }
    }

    /// The held resource's metadata, created empty when missing; None only without a resource.
    pub fn meta_mut(&mut self) -> Option<&mut ObjectMeta> {
        let slot = match self.resource.as_mut()? {
            R::Site(x) => &mut x.meta,
            R::Rack(x) => &mut x.meta,
            R::Device(x) => &mut x.meta,
            R::Profile(x) => &mut x.meta,
            R::Window(x) => &mut x.meta,
            R::Credential(x) => &mut x.meta,
            R::Campaign(x) => &mut x.meta,
        };
        Some(slot.get_or_insert_with(ObjectMeta::default))
    }

    /// The held resource's name ("" when unset).
    pub fn name(&self) -> &str {
        self.meta().map_or("", |m| m.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use crate::pb::{self, Resource, resource::Resource as R};

    #[test]
    fn meta_of_any_variant() {
        let mut r = Resource {
            resource: Some(R::Rack(pb::Rack::default())),
        };
        assert!(r.meta().is_none());
        assert_eq!(r.name(), "");
        r.meta_mut().unwrap().name = "r1".into();
        assert_eq!(r.name(), "r1");
        assert!(Resource { resource: None }.meta_mut().is_none());
    }
}
