//! Indexes over a cache: the objects of one kind by a key derived from each, kept in step by the
//! kind's [`Hub`](super::Hub); and the 64-bit hashes the per-object records beside the caches
//! are keyed by.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Arc,
};

use kube::{
    Resource,
    runtime::reflector::{self, ObjectRef, Store},
};

use super::watch::{Change, Indexer};

/// A 64-bit hash of `value` (SipHash with fixed keys: the same in every process and run).
pub(super) fn hash64<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The hash of an object's (namespace, name): a small fixed-size key for the per-object records
/// kept beside the caches (change filters, own-write records). Where two objects could share one
/// (a 64-bit collision), those records only ever let an extra event through.
pub(super) fn object_hash<K: reflector::Lookup>(obj: &K) -> u64 {
    name_hash(obj.namespace().as_deref(), obj.name().as_deref())
}

/// `object_hash` of the object `namespace`/`name`.
pub fn name_hash(namespace: Option<&str>, name: Option<&str>) -> u64 {
    hash64(&(namespace, name))
}

/// The objects of one kind by a key derived from each (an object may have several keys), kept in
/// step with the cache by its [`Hub`](super::Hub): lookups by key instead of scans of the whole cache.
///
/// Keys are held as 64-bit hashes and names as boxed strings (a few dozen bytes per object and
/// key, not an `ObjectRef` and a copy of every key). A lookup checks each object it returns
/// against the key itself, so a hash collision can never return an object of another key.
pub struct Index<K: Resource<DynamicType = ()> + 'static, Q> {
    keys: fn(&K) -> Vec<Q>,
    inner: std::sync::RwLock<IndexMaps>,
}

#[derive(Default)]
struct IndexMaps {
    /// Key hash -> the names under it, sorted.
    by_key: HashMap<u64, Vec<Box<str>>>,
    /// `namespace/name` -> the hashes of the object's keys.
    keys_of: HashMap<Box<str>, Box<[u64]>>,
}

/// The `keys_of` entry of an object: its namespace and name (neither may contain a `/`).
fn qualified<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

impl<K, Q> Index<K, Q>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    Q: Hash + Eq + Clone,
{
    pub fn new(keys: fn(&K) -> Vec<Q>) -> Arc<Self> {
        Arc::new(Index {
            keys,
            inner: std::sync::RwLock::new(IndexMaps::default()),
        })
    }

    fn remove(maps: &mut IndexMaps, qualified: &str, name: &str) {
        for key in maps.keys_of.remove(qualified).unwrap_or_default() {
            if let Some(names) = maps.by_key.get_mut(&key) {
                if let Ok(i) = names.binary_search_by(|n| (**n).cmp(name)) {
                    names.remove(i);
                }
                if names.is_empty() {
                    maps.by_key.remove(&key);
                }
            }
        }
    }

    fn insert(&self, maps: &mut IndexMaps, obj: &K) {
        let name = obj.meta().name.as_deref().unwrap_or_default();
        let mut keys: Vec<u64> = (self.keys)(obj).iter().map(hash64).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in &keys {
            let names = maps.by_key.entry(*key).or_default();
            if let Err(i) = names.binary_search_by(|n| (**n).cmp(name)) {
                names.insert(i, name.into());
            }
        }
        maps.keys_of
            .insert(qualified(obj).into_boxed_str(), keys.into_boxed_slice());
    }

    /// The names of the objects filed under `key`'s hash (in the key's namespace), sorted. May
    /// include objects of another key of the same hash: [`Index::objects`] checks.
    fn names(&self, key: &Q) -> Vec<Box<str>> {
        let maps = self.inner.read().expect("index lock");
        maps.by_key.get(&hash64(key)).cloned().unwrap_or_default()
    }

    /// The cached objects under `key`, in namespace `ns`, sorted by name.
    pub fn objects(&self, store: &Store<K>, ns: &str, key: &Q) -> Vec<Arc<K>> {
        self.names(key)
            .iter()
            .filter_map(|name| store.get(&ObjectRef::new(name).within(ns)))
            .filter(|obj| (self.keys)(obj).contains(key))
            .collect()
    }
}

impl<K, Q> Indexer<K> for Index<K, Q>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    Q: Hash + Eq + Clone + Send + Sync,
{
    fn apply(&self, change: &Change<K>) {
        let mut maps = self.inner.write().expect("index lock");
        let obj = change.object();
        let name = obj.meta().name.as_deref().unwrap_or_default();
        Self::remove(&mut maps, &qualified(&**obj), name);
        if let Change::Applied(obj) = change {
            self.insert(&mut maps, obj);
        }
    }

    fn rebuild(&self, all: &[Arc<K>]) {
        let mut maps = self.inner.write().expect("index lock");
        *maps = IndexMaps::default();
        for obj in all {
            self.insert(&mut maps, obj);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fixtures::config_map;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;

    #[test]
    fn an_index_follows_changes_deletions_and_relists() {
        fn by_label(cm: &ConfigMap) -> Vec<(String, String)> {
            cm.labels()
                .get("team")
                .map(|t| vec![(cm.namespace().unwrap_or_default(), t.clone())])
                .unwrap_or_default()
        }
        let index = Index::new(by_label);
        let labelled = |name: &str, team: &str| {
            let mut cm = config_map(name, 1, "1");
            cm.metadata.labels = Some([("team".to_string(), team.to_string())].into());
            Arc::new(cm)
        };
        let key = |team: &str| ("ns".to_string(), team.to_string());
        let names = |team: &str| -> Vec<String> {
            index
                .names(&key(team))
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        index.apply(&Change::Applied(labelled("a", "crm")));
        index.apply(&Change::Applied(labelled("b", "crm")));
        assert_eq!(names("crm"), ["a", "b"]);
        // A key change moves it.
        index.apply(&Change::Applied(labelled("a", "billing")));
        assert_eq!(names("crm"), ["b"]);
        assert_eq!(names("billing"), ["a"]);
        index.apply(&Change::Deleted(labelled("b", "crm")));
        assert!(names("crm").is_empty());
        index.rebuild(&[labelled("c", "crm")]);
        assert_eq!(names("crm"), ["c"]);
        assert!(names("billing").is_empty());
    }
}
