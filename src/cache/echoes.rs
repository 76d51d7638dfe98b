//! Records of the operator's own writes, so their watch events do not wake it again, and so a
//! pass that runs before the cache shows its last status write does not write it again.

use std::{collections::HashMap, sync::Mutex};

use kube::{Resource, runtime::reflector};

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

/// The statuses this process wrote, so that a pass that finds its object in the cache as it was
/// before its own last status write (the watch event of a write comes a few milliseconds after
/// its answer, and a Secret's event can wake the next pass in between) does not apply the same
/// status again. Per object (kind, namespace, name): the resourceVersion the status was written
/// over and the status, as 64-bit hashes.
///
/// A write is skipped only when the object is cached at exactly the resourceVersion recorded
/// and the status is the one recorded: resourceVersions are never shared between objects, so two
/// objects whose keys collide can never make one skip the other's write. A record is dropped
/// once the cache has moved past it; the map is emptied when it reaches [`Self::CAPACITY`]
/// records (objects deleted before their next pass leave theirs), which costs at most one
/// redundant write per object.
#[derive(Default)]
pub struct StatusEchoes {
    written: Mutex<HashMap<u64, (u64, u64)>>,
}

impl StatusEchoes {
    /// Records kept at most (about 30 bytes each).
    pub const CAPACITY: usize = 100_000;

    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> u64 {
        let meta = obj.meta();
        hash64(&(
            K::kind(&()),
            meta.namespace.as_deref(),
            meta.name.as_deref(),
        ))
    }

    /// Whether `status` is what this process last wrote over `obj` as it is cached now.
    pub fn already_written<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        status: &serde_json::Value,
    ) -> bool {
        let Some(rv) = obj.meta().resource_version.as_deref() else {
            return false;
        };
        let key = Self::key(obj);
        let mut written = self.written.lock().expect("status echo lock");
        match written.get(&key) {
            Some(&(read, digest)) if read == hash64(rv) => digest == hash64(&status.to_string()),
            Some(_) => {
                written.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Records that `status` was written over `obj` as cached.
    pub fn record<K: Resource<DynamicType = ()>>(&self, obj: &K, status: &serde_json::Value) {
        let Some(rv) = obj.meta().resource_version.as_deref() else {
            return;
        };
        let mut written = self.written.lock().expect("status echo lock");
        if written.len() >= Self::CAPACITY {
            written.clear();
        }
        written.insert(Self::key(obj), (hash64(rv), hash64(&status.to_string())));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.written.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fixtures::config_map;
    use serde_json::json;

    #[test]
    fn a_status_is_skipped_only_while_the_cache_is_behind_the_write_and_unchanged() {
        let statuses = StatusEchoes::default();
        let (read, ready) = (config_map("c", 1, "10"), json!({ "ready": true }));
        assert!(
            !statuses.already_written(&read, &ready),
            "nothing written yet"
        );
        statuses.record(&read, &ready);
        assert!(
            statuses.already_written(&read, &ready),
            "the cache is behind"
        );
        assert!(
            !statuses.already_written(&read, &json!({ "ready": false })),
            "another status is written"
        );
        assert!(
            !statuses.already_written(&config_map("other", 1, "10"), &ready),
            "another object"
        );
        // The cache shows the write (or anyone's later one): the record is spent.
        assert!(!statuses.already_written(&config_map("c", 1, "11"), &ready));
        assert_eq!(statuses.len(), 0);
        assert!(!statuses.already_written(&read, &ready));
    }

    #[test]
    fn status_records_are_bounded() {
        let statuses = StatusEchoes::default();
        for i in 0..StatusEchoes::CAPACITY + 5 {
            statuses.record(&config_map(&format!("c{i}"), 1, "1"), &json!({}));
        }
        assert_eq!(statuses.len(), 5);
    }

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
