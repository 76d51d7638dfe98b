//! An index from a referenced Secret to the objects that reference it, so a rotation re-triggers
//! exactly those objects; and the data of referenced Secrets, keyed by resourceVersion, so a
//! reconcile reads a Secret from the API only when it changed since it was last read.
//!
//! Only Secrets that something references are tracked. The metadata watch of Secrets reports each
//! one's latest resourceVersion ([`RefIndex::observed`]); cached data is used only while its
//! resourceVersion is that latest one, so a rotation (or a read that raced one) is read again.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

/// `namespace/name` (neither may contain a `/`): one allocation per key.
type Key = Box<str>;

fn key(namespace: &str, name: &str) -> Key {
    format!("{namespace}/{name}").into_boxed_str()
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
    /// Referenced Secret -> what is known of it.
    secrets: HashMap<Key, Known>,
}

/// A referenced Secret's latest resourceVersion (from the watch) and the data last read.
#[derive(Default)]
struct Known {
    latest: Option<String>,
    read: Option<(String, Arc<SecretValues>)>,
}

/// A Secret's data: key -> value.
pub type SecretValues = BTreeMap<String, Vec<u8>>;

/// A referenced Secret, as the cache knows it.
pub enum Cached {
    /// Read at the latest resourceVersion: use it.
    Fresh(Arc<SecretValues>),
    /// Not read, or changed since: read it.
    Stale,
}

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
                    inner.secrets.remove(&skey);
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

    /// The watch saw Secret `name` at `resource_version` (or deleted: a new resourceVersion
    /// too). Tracked only while something references it.
    pub fn observed(&self, namespace: &str, name: &str, resource_version: Option<String>) {
        let mut inner = self.inner.lock().expect("ref index lock");
        let key = key(namespace, name);
        if !inner.by_secret.contains_key(&key) {
            return;
        }
        inner.secrets.entry(key).or_default().latest = resource_version;
    }

    /// The data of Secret `name`, if it was read at its latest resourceVersion.
    pub fn cached(&self, namespace: &str, name: &str) -> Cached {
        let inner = self.inner.lock().expect("ref index lock");
        match inner.secrets.get(&key(namespace, name)) {
            Some(Known {
                latest: Some(latest),
                read: Some((rv, data)),
            }) if latest == rv => Cached::Fresh(data.clone()),
            _ => Cached::Stale,
        }
    }

    /// Records what a read of Secret `name` returned (`None`: it does not exist).
    pub fn read(
        &self,
        namespace: &str,
        name: &str,
        found: Option<(String, SecretValues)>,
    ) -> Option<Arc<SecretValues>> {
        let mut inner = self.inner.lock().expect("ref index lock");
        let key = key(namespace, name);
        let data = found.map(|(rv, data)| (rv, Arc::new(data)));
        let result = data.as_ref().map(|(_, d)| d.clone());
        if inner.by_secret.contains_key(&key) {
            let known = inner.secrets.entry(key).or_default();
            if known.latest.is_none() {
                known.latest = data.as_ref().map(|(rv, _)| rv.clone());
            }
            known.read = data;
        }
        result
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

    #[test]
    fn data_is_used_only_at_the_latest_resource_version() {
        let idx = RefIndex::default();
        let data = || SecretValues::from([("k".to_string(), b"v".to_vec())]);
        // Not referenced: not tracked.
        idx.observed("ns", "creds", Some("1".into()));
        idx.read("ns", "creds", Some(("1".into(), data())));
        assert!(matches!(idx.cached("ns", "creds"), Cached::Stale));

        idx.set("ns", "cfg", set(&["creds"]));
        assert!(matches!(idx.cached("ns", "creds"), Cached::Stale));
        idx.read("ns", "creds", Some(("1".into(), data())));
        assert!(matches!(idx.cached("ns", "creds"), Cached::Fresh(_)));
        idx.observed("ns", "creds", Some("1".into()));
        assert!(matches!(idx.cached("ns", "creds"), Cached::Fresh(_)));
        // Rotated: read again.
        idx.observed("ns", "creds", Some("2".into()));
        assert!(matches!(idx.cached("ns", "creds"), Cached::Stale));
        // A read that raced the rotation (older data) is not trusted either.
        idx.read("ns", "creds", Some(("1".into(), data())));
        assert!(matches!(idx.cached("ns", "creds"), Cached::Stale));
        idx.read("ns", "creds", Some(("2".into(), data())));
        assert!(matches!(idx.cached("ns", "creds"), Cached::Fresh(_)));
        // No longer referenced: forgotten.
        idx.remove("ns", "cfg");
        assert!(matches!(idx.cached("ns", "creds"), Cached::Stale));
        assert!(idx.inner.lock().unwrap().secrets.is_empty());
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
