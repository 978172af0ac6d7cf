//! How many entries each list or map of a resource may hold. Every request is bounded as a
//! whole (`max_message_bytes`, `planning::MAX_SET`), but work grows with the entries inside a
//! resource too (drift compares every package, every expect rule, on every plan), so each is
//! capped by itself; the limits are documented in README.md ("Limits").

use muster::names::InvalidField;

/// Labels on one resource.
pub const MAX_LABELS: usize = 64;
/// Package requirements in one desired state (device spec or profile).
pub const MAX_PACKAGES: usize = 1024;
/// Sysctl entries in one desired state.
pub const MAX_SYSCTL: usize = 512;
/// Expect rules in one desired state.
pub const MAX_EXPECT: usize = 256;
/// NTP servers, and DNS servers, in one desired state.
pub const MAX_SERVERS: usize = 16;
/// Network interfaces of one device.
pub const MAX_INTERFACES: usize = 256;
/// Fixed ranges of one maintenance window.
pub const MAX_RANGES: usize = 256;
/// Longest selector of a profile or window, in bytes (it is evaluated against every device).
pub const MAX_SELECTOR_BYTES: usize = 1024;

/// Refuses a list of `n` entries when it holds more than `max`, naming the field and limit.
pub fn entries(field: &str, n: usize, max: usize) -> Result<(), InvalidField> {
    if n > max {
        return Err(InvalidField::new(
            field,
            format!("holds {n} entries; the limit is {max}"),
        ));
    }
    Ok(())
}
