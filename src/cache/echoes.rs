//! Records of the operator's own writes, so their watch events do not wake it again.

use std::{collections::HashMap, sync::Mutex};

use kube::runtime::reflector;

use super::index::{hash64, object_hash};

/// The resourceVersions of the operator's own writes to its managed Secrets, so that the watch
/// event a write causes does not wake the controller that made it (it already knows the result).
/// Another writer's change has another resourceVersion and passes.
///
/// Kept as hashes (object -> resourceVersion, 16 bytes per Secret). A resourceVersion is never
/// reused, so an event is taken for an echo only when its resourceVersion hashes like the one
/// written (a 64-bit collision); two Secrets whose names collide share an entry, which can only
/// make an echo pass as a change.
#[derive(Default)]
pub struct Echoes {
    written: Mutex<HashMap<u64, u64>>,
}

impl Echoes {
    /// Records that the operator's write left `obj` at its resourceVersion.
    pub fn record<K: reflector::Lookup>(&self, obj: &K) {
        let (Some(_), Some(rv)) = (obj.namespace(), obj.resource_version()) else {
            return;
        };
        self.written
            .lock()
            .expect("echo lock")
            .insert(object_hash(obj), hash64(&*rv));
    }

    /// Whether `obj` is exactly as the operator's last write left it.
    pub fn is_echo<K: reflector::Lookup>(&self, obj: &K) -> bool {
        let (Some(_), Some(rv)) = (obj.namespace(), obj.resource_version()) else {
            return false;
        };
        self.written
            .lock()
            .expect("echo lock")
            .get(&object_hash(obj))
            == Some(&hash64(&*rv))
    }

    /// Forgets a deleted object.
    pub fn forget<K: reflector::Lookup>(&self, obj: &K) {
        if obj.namespace().is_some() {
            self.written
                .lock()
                .expect("echo lock")
                .remove(&object_hash(obj));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fixtures::config_map;

    #[test]
    fn echoes_are_the_operators_own_writes_only() {
        let echoes = Echoes::default();
        let written = config_map("s", 1, "10");
        echoes.record(&written);
        assert!(echoes.is_echo(&written));
        assert!(!echoes.is_echo(&config_map("s", 1, "11")), "another writer");
        assert!(!echoes.is_echo(&config_map("t", 1, "10")));
        echoes.forget(&written);
        assert!(!echoes.is_echo(&written));
    }
}
