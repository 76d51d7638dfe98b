//! An index from a referenced Secret to the objects that reference it, so a rotation re-triggers
//! exactly those objects; the latest resourceVersion of every Secret the metadata watch lists; and
//! the data of referenced Secrets, keyed by resourceVersion, so a reconcile reads a Secret from the
//! API only when it changed since it was last read.
//!
//! Cached data is used only while its resourceVersion is the latest the watch reported, so a
//! rotation (or a read that raced one) is read again. The latest versions also let a reconcile
//! tell, without reading anything, that the Secrets a materialised Secret was made from are
//! unchanged (see [`crate::cache::secret::ManagedSecret::made_from`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{api::PartialObjectMeta, runtime::watcher};

use crate::cache::secret::{pack, unpack};

/// `namespace/name` (neither may contain a `/`): one allocation per key.
type Key = Box<str>;

fn key(namespace: &str, name: &str) -> Key {
    format!("{namespace}/{name}").into_boxed_str()
}

/// A resourceVersion as a number. The apiserver's are etcd revisions, decimal; one that is not
/// is never trusted (its Secret is read every time).
pub fn version(resource_version: Option<&str>) -> Option<u64> {
    resource_version?.parse().ok()
}

/// Referenced Secret (namespace, name) -> names of the referring objects in that namespace.
#[derive(Default)]
pub struct RefIndex {
    inner: Mutex<Inner>,
}

/// Name sets are sorted boxed slices: exactly their entries, a few bytes each (a `BTreeSet`
/// allocates a node for eleven).
#[derive(Default)]
struct Inner {
    by_secret: HashMap<Key, Vec<Box<str>>>,
    by_referrer: HashMap<Key, Box<[Box<str>]>>,
    /// Referenced Secret -> the data last read ([`pack`]ed), and its resourceVersion.
    data: HashMap<Key, (u64, Arc<[u8]>)>,
    /// Every listed Secret's latest resourceVersion, by a hash of (namespace, name): one 16-byte
    /// entry a Secret. Two Secrets that share a hash share an entry; as no two writes share a
    /// resourceVersion, that entry then matches neither one's recorded version, and both are
    /// read again: a collision costs reads, never a stale value.
    versions: HashMap<u64, u64>,
    /// While the watch lists again: what it listed so far (then replaces `versions`).
    relisting: Option<HashMap<u64, u64>>,
}

impl Inner {
    fn latest(&self, namespace: &str, name: &str) -> Option<u64> {
        let at = crate::cache::index::name_hash(Some(namespace), Some(name));
        self.versions.get(&at).copied()
    }
}

/// A Secret's data: key -> value.
pub type SecretValues = BTreeMap<String, Vec<u8>>;

impl RefIndex {
    /// Records that `referrer` in `namespace` references exactly `secrets` now.
    pub fn set(&self, namespace: &str, referrer: &str, secrets: BTreeSet<String>) {
        let mut inner = self.inner.lock().expect("ref index lock");
        let old = inner
            .by_referrer
            .remove(&key(namespace, referrer))
            .unwrap_or_default();
        for gone in old.iter().filter(|s| !secrets.contains(&***s)) {
            let skey = key(namespace, gone);
            if let Some(names) = inner.by_secret.get_mut(&skey) {
                if let Ok(i) = names.binary_search_by(|n| (**n).cmp(referrer)) {
                    names.remove(i);
                }
                if names.is_empty() {
                    // Nothing references it any more: forgotten, data included.
                    inner.by_secret.remove(&skey);
                    inner.data.remove(&skey);
                }
            }
        }
        for secret in &secrets {
            let names = inner.by_secret.entry(key(namespace, secret)).or_default();
            if let Err(i) = names.binary_search_by(|n| (**n).cmp(referrer)) {
                names.insert(i, referrer.into());
            }
        }
        if !secrets.is_empty() {
            let names = secrets.into_iter().map(String::into_boxed_str).collect();
            inner.by_referrer.insert(key(namespace, referrer), names);
        }
    }

    /// Forgets a referrer (deleted).
    pub fn remove(&self, namespace: &str, referrer: &str) {
        self.set(namespace, referrer, BTreeSet::new());
    }

    /// What the metadata watch of Secrets reported: their latest resourceVersions. A relist
    /// replaces them all when it completes (Secrets deleted while the watch was down go).
    pub fn saw(&self, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        let mut inner = self.inner.lock().expect("ref index lock");
        let entry = |s: &PartialObjectMeta<Secret>| {
            let meta = &s.metadata;
            let at =
                crate::cache::index::name_hash(meta.namespace.as_deref(), meta.name.as_deref());
            (at, version(meta.resource_version.as_deref()))
        };
        match event {
            watcher::Event::Init => inner.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(s) => {
                if let (at, Some(v)) = entry(s) {
                    inner.relisting.get_or_insert_default().insert(at, v);
                }
            }
            watcher::Event::InitDone => {
                let listed = inner.relisting.take().unwrap_or_default();
                inner.versions = listed;
                inner.versions.shrink_to_fit();
            }
            watcher::Event::Apply(s) => match entry(s) {
                (at, Some(v)) => {
                    inner.versions.insert(at, v);
                }
                (at, None) => {
                    inner.versions.remove(&at);
                }
            },
            watcher::Event::Delete(s) => {
                inner.versions.remove(&entry(s).0);
            }
        }
    }

    /// The latest resourceVersion the watch reported for Secret `name`.
    pub fn latest(&self, namespace: &str, name: &str) -> Option<u64> {
        self.inner
            .lock()
            .expect("ref index lock")
            .latest(namespace, name)
    }

    /// The data of Secret `name` and its resourceVersion, if it was read at the latest one.
    pub fn cached(&self, namespace: &str, name: &str) -> Option<(u64, SecretValues)> {
        let packed = {
            let inner = self.inner.lock().expect("ref index lock");
            let latest = inner.latest(namespace, name)?;
            match inner.data.get(&key(namespace, name)) {
                Some((read, data)) if *read == latest => (latest, data.clone()),
                _ => return None,
            }
        };
        Some((packed.0, unpack(&packed.1)))
    }

    /// Records what a read of Secret `name` returned (`None`: it does not exist); returns its
    /// resourceVersion (`None` when it is not a number) and data. Kept while it is referenced.
    pub fn read(
        &self,
        namespace: &str,
        name: &str,
        found: Option<(Option<String>, SecretValues)>,
    ) -> Option<(Option<u64>, SecretValues)> {
        let (rv, data) = found?;
        let rv = version(rv.as_deref());
        let mut inner = self.inner.lock().expect("ref index lock");
        let key = key(namespace, name);
        if let Some(rv) = rv
            && inner.by_secret.contains_key(&key)
        {
            let packed = pack(data.iter().map(|(k, v)| (k.as_str(), v)));
            inner.data.insert(key, (rv, packed.into()));
        }
        Some((rv, data))
    }

    /// The referrers of a Secret.
    pub fn referrers(&self, namespace: &str, secret: &str) -> Vec<String> {
        let inner = self.inner.lock().expect("ref index lock");
        inner
            .by_secret
            .get(&key(namespace, secret))
            .map(|s| s.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default()
    }

    /// How many (Secret, referrer) pairs are indexed.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .expect("ref index lock")
            .by_secret
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn secret(name: &str, rv: &str) -> PartialObjectMeta<Secret> {
        let mut s = PartialObjectMeta::<Secret>::default();
        s.metadata.namespace = Some("ns".into());
        s.metadata.name = Some(name.into());
        s.metadata.resource_version = Some(rv.into());
        s
    }

    fn listed(idx: &RefIndex, secrets: &[(&str, &str)]) {
        idx.saw(&watcher::Event::Init);
        for (name, rv) in secrets {
            idx.saw(&watcher::Event::InitApply(secret(name, rv)));
        }
        idx.saw(&watcher::Event::InitDone);
    }

    fn fresh_at(idx: &RefIndex, name: &str) -> Option<u64> {
        idx.cached("ns", name).map(|(rv, _)| rv)
    }

    #[test]
    fn data_is_used_only_at_the_latest_resource_version() {
        let idx = RefIndex::default();
        let data = || SecretValues::from([("k".to_string(), b"v".to_vec())]);
        listed(&idx, &[("creds", "1")]);
        // Not referenced: its data is not kept.
        idx.read("ns", "creds", Some((Some("1".into()), data())));
        assert_eq!(fresh_at(&idx, "creds"), None);

        idx.set("ns", "cfg", set(&["creds"]));
        assert_eq!(fresh_at(&idx, "creds"), None);
        let read = idx.read("ns", "creds", Some((Some("1".into()), data())));
        assert_eq!(read.map(|(rv, _)| rv), Some(Some(1)));
        assert_eq!(fresh_at(&idx, "creds"), Some(1));
        // Rotated: read again.
        idx.saw(&watcher::Event::Apply(secret("creds", "2")));
        assert_eq!(fresh_at(&idx, "creds"), None);
        // A read that raced the rotation (older data) is not trusted either.
        idx.read("ns", "creds", Some((Some("1".into()), data())));
        assert_eq!(fresh_at(&idx, "creds"), None);
        idx.read("ns", "creds", Some((Some("2".into()), data())));
        assert_eq!(fresh_at(&idx, "creds"), Some(2));
        // A resourceVersion that is not a number is never trusted.
        idx.saw(&watcher::Event::Apply(secret("creds", "x")));
        assert_eq!(idx.latest("ns", "creds"), None);
        assert_eq!(fresh_at(&idx, "creds"), None);
        // No longer referenced: its data is forgotten.
        idx.saw(&watcher::Event::Apply(secret("creds", "3")));
        idx.read("ns", "creds", Some((Some("3".into()), data())));
        idx.remove("ns", "cfg");
        assert_eq!(fresh_at(&idx, "creds"), None);
        assert!(idx.inner.lock().unwrap().data.is_empty());
    }

    #[test]
    fn latest_versions_follow_the_watch_and_a_relist_replaces_them() {
        let idx = RefIndex::default();
        assert_eq!(idx.latest("ns", "a"), None);
        listed(&idx, &[("a", "10"), ("b", "11")]);
        assert_eq!(idx.latest("ns", "a"), Some(10));
        assert_eq!(idx.latest("other", "a"), None);
        idx.saw(&watcher::Event::Apply(secret("a", "12")));
        assert_eq!(idx.latest("ns", "a"), Some(12));
        idx.saw(&watcher::Event::Delete(secret("b", "13")));
        assert_eq!(idx.latest("ns", "b"), None);
        // While relisting, the last complete list answers; then the new list alone.
        idx.saw(&watcher::Event::Init);
        idx.saw(&watcher::Event::InitApply(secret("c", "14")));
        assert_eq!(idx.latest("ns", "a"), Some(12));
        assert_eq!(idx.latest("ns", "c"), None);
        idx.saw(&watcher::Event::InitDone);
        assert_eq!(idx.latest("ns", "a"), None);
        assert_eq!(idx.latest("ns", "c"), Some(14));
    }

    #[test]
    fn tracks_changes_of_references() {
        let idx = RefIndex::default();
        idx.set("ns", "cfg-a", set(&["creds", "stripe"]));
        idx.set("ns", "cfg-b", set(&["creds"]));
        assert_eq!(idx.referrers("ns", "creds"), ["cfg-a", "cfg-b"]);
        assert!(idx.referrers("other", "creds").is_empty());

        idx.set("ns", "cfg-a", set(&["stripe"]));
        assert_eq!(idx.referrers("ns", "creds"), ["cfg-b"]);
        idx.remove("ns", "cfg-b");
        assert!(idx.referrers("ns", "creds").is_empty());
        assert_eq!(idx.len(), 1);
        idx.remove("ns", "cfg-a");
        assert!(idx.is_empty());
    }
}
