//! An index from a referenced Secret to the objects that reference it, so a rotation re-triggers
//! exactly those objects without caching any Secret's data.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

type Key = (String, String);

/// Referenced Secret (namespace, name) -> names of the referring objects in that namespace.
#[derive(Default)]
pub struct RefIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_secret: HashMap<Key, BTreeSet<String>>,
    by_referrer: HashMap<Key, BTreeSet<String>>,
}

impl RefIndex {
    /// Records that `referrer` in `namespace` references exactly `secrets` now.
    pub fn set(&self, namespace: &str, referrer: &str, secrets: BTreeSet<String>) {
        let mut inner = self.inner.lock().expect("ref index lock");
        let key = (namespace.to_string(), referrer.to_string());
        let old = inner.by_referrer.remove(&key).unwrap_or_default();
        for gone in old.difference(&secrets) {
            let skey = (namespace.to_string(), gone.clone());
            if let Some(set) = inner.by_secret.get_mut(&skey) {
                set.remove(referrer);
                if set.is_empty() {
                    inner.by_secret.remove(&skey);
                }
            }
        }
        for secret in &secrets {
            inner
                .by_secret
                .entry((namespace.to_string(), secret.clone()))
                .or_default()
                .insert(referrer.to_string());
        }
        if !secrets.is_empty() {
            inner.by_referrer.insert(key, secrets);
        }
    }

    /// Forgets a referrer (deleted).
    pub fn remove(&self, namespace: &str, referrer: &str) {
        self.set(namespace, referrer, BTreeSet::new());
    }

    /// The referrers of a Secret.
    pub fn referrers(&self, namespace: &str, secret: &str) -> Vec<String> {
        let inner = self.inner.lock().expect("ref index lock");
        inner
            .by_secret
            .get(&(namespace.to_string(), secret.to_string()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many (Secret, referrer) pairs are indexed.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .expect("ref index lock")
            .by_secret
            .values()
            .map(BTreeSet::len)
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
