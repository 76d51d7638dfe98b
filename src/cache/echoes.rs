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
/// its answer, and a Secret's event can wake the next pass in between) compares what it would
/// write with what it wrote, not with the cache's older status: it neither applies the same
/// status again nor takes a stale cached status for the server's. Per object (kind, namespace,
/// name): the resourceVersion the status was written over and the status, as 64-bit hashes.
///
/// A record speaks only while the object is cached at exactly the resourceVersion recorded:
/// resourceVersions are never shared between objects, so two objects whose keys collide can never
/// answer for each other. A record is dropped once the cache has moved past it, and the map is
/// replaced when it reaches [`Self::CAPACITY`] records (a record is needed only for the moments
/// before the cache shows its write; losing one costs at most one redundant write).
#[derive(Default)]
pub struct StatusEchoes {
    written: Mutex<HashMap<u64, (u64, u64)>>,
}

impl StatusEchoes {
    /// Records kept at most (about 30 bytes each): far more than the writes of the few seconds a
    /// watch event can lag its write, at the operator's write rate.
    pub const CAPACITY: usize = 4096;

    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> u64 {
        let meta = obj.meta();
        hash64(&(
            K::kind(&()),
            meta.namespace.as_deref(),
            meta.name.as_deref(),
        ))
    }

    /// The [`Self::digest`] of the status this process wrote over `obj` as it is cached now;
    /// `None` when it wrote nothing over this resourceVersion (the cache is the truth).
    pub fn written_over<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Option<u64> {
        let rv = obj.meta().resource_version.as_deref()?;
        let key = Self::key(obj);
        let mut written = self.written.lock().expect("status echo lock");
        let &(read, digest) = written.get(&key)?;
        if read == hash64(rv) {
            Some(digest)
        } else {
            written.remove(&key);
            None
        }
    }

    /// What a status is recorded by.
    pub fn digest(status: &serde_json::Value) -> u64 {
        hash64(&status.to_string())
    }

    /// Records that `status` was written over `obj` as cached.
    pub fn record<K: Resource<DynamicType = ()>>(&self, obj: &K, status: &serde_json::Value) {
        let Some(rv) = obj.meta().resource_version.as_deref() else {
            return;
        };
        let mut written = self.written.lock().expect("status echo lock");
        if written.len() >= Self::CAPACITY {
            *written = HashMap::new();
        }
        written.insert(Self::key(obj), (hash64(rv), Self::digest(status)));
    }

    /// Whether the status written over `obj` as cached was `status` (tests).
    #[cfg(test)]
    fn same<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        status: &serde_json::Value,
    ) -> Option<bool> {
        self.written_over(obj)
            .map(|digest| digest == Self::digest(status))
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
    fn a_record_speaks_only_while_the_cache_is_behind_the_write() {
        let statuses = StatusEchoes::default();
        let (read, ready) = (config_map("c", 1, "10"), json!({ "ready": true }));
        assert_eq!(statuses.same(&read, &ready), None, "nothing written yet");
        statuses.record(&read, &ready);
        assert_eq!(statuses.same(&read, &ready), Some(true), "the same again");
        // Back to the status the stale cache shows: still a write, the server holds `ready`.
        let stale = json!({ "ready": false });
        assert_eq!(statuses.same(&read, &stale), Some(false));
        assert_eq!(
            statuses.same(&config_map("other", 1, "10"), &ready),
            None,
            "another object"
        );
        // The cache shows the write (or anyone's later one): the record is spent.
        assert_eq!(statuses.same(&config_map("c", 1, "11"), &ready), None);
        assert_eq!(statuses.len(), 0);
        assert_eq!(statuses.same(&read, &ready), None);
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
