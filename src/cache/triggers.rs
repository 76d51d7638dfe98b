//! What wakes a controller: a subscription to a [`Hub`](super::Hub), filtered to the changes a
//! controller reacts to, or mapped to the objects it reconciles.

use std::{collections::HashMap, hash::Hash, sync::Arc};

use futures::{Stream, StreamExt};
use kube::{
    Resource,
    runtime::reflector::{self, ObjectRef},
};

use super::{
    echoes::Echoes,
    index::{hash64, object_hash},
    secret::ManagedSecret,
    watch::{Change, Subscription},
};

/// The objects of a subscription whose `key` changed (or that are new, or deleted): what a
/// controller that cares only about those fields needs to see. Deletions always pass.
pub fn changes<K, T>(
    subscription: Subscription<K>,
    key: impl Fn(&K) -> T + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
    T: Hash,
{
    // Object hash -> hash of its key when last passed: 16 bytes per object. Objects whose hashes
    // collide share an entry, which can only let an extra change through.
    let mut seen: HashMap<u64, u64> = HashMap::new();
    subscription.filter_map(move |change| {
        let object = change.object().clone();
        let reference = object_hash(&*object);
        let pass = match &change {
            Change::Deleted(_) => {
                seen.remove(&reference);
                true
            }
            Change::Applied(obj) => {
                let value = hash64(&key(obj));
                seen.insert(reference, value) != Some(value)
            }
        };
        futures::future::ready(pass.then_some(object))
    })
}

/// Every change of a subscription, as objects (deletions included).
pub fn all<K: Send + Sync + 'static>(
    subscription: Subscription<K>,
) -> impl Stream<Item = Arc<K>> + Send + 'static {
    subscription.map(|change| change.object().clone())
}

/// The deletions of a subscription, as the objects were last (including those a relist finds
/// gone).
pub fn deletions<K: Send + Sync + 'static>(
    subscription: Subscription<K>,
) -> impl Stream<Item = Arc<K>> + Send + 'static {
    subscription.filter_map(|change| {
        futures::future::ready(match change {
            Change::Deleted(obj) => Some(obj),
            Change::Applied(_) => None,
        })
    })
}

/// Every change of a subscription of managed Secrets, as objects; a deleted Secret's echo record
/// is dropped on the way (so the records do not outlive their Secrets).
pub fn forgetting(
    subscription: Subscription<ManagedSecret>,
    echoes: Arc<Echoes>,
) -> impl Stream<Item = Arc<ManagedSecret>> + Send + 'static {
    subscription.map(move |change| {
        if let Change::Deleted(secret) = &change {
            echoes.forget(&**secret);
        }
        change.object().clone()
    })
}

/// The spec generation and the deletion mark: what a controller of the object itself reacts to
/// (its own status writes change neither).
pub fn generation<K: Resource>(obj: &K) -> (Option<i64>, bool) {
    (
        obj.meta().generation,
        obj.meta().deletion_timestamp.is_some(),
    )
}

/// `trigger`, each item mapped to the objects it wakes, for `Controller::reconcile_on`: the way
/// to trigger a controller from a stream whose items are not a kube `Resource` (a cached
/// [`ManagedSecret`]; `watches_shared_stream` asks for one). Such a reconcile's logged reason is
/// "unknown" rather than the related object.
pub fn mapped<T, K, I>(
    trigger: impl Stream<Item = T> + Send + 'static,
    mapper: impl Fn(T) -> I + Send + 'static,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: reflector::Lookup + 'static,
    I: IntoIterator<Item = ObjectRef<K>>,
    I::IntoIter: Send + 'static,
{
    trigger.flat_map(move |item| futures::stream::iter(mapper(item)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fixtures::config_map;

    use futures::channel::mpsc;

    #[tokio::test]
    async fn changes_pass_new_changed_and_deleted_objects_only() {
        let (mut tx, rx) = mpsc::channel(16);
        let a1 = Arc::new(config_map("a", 1, "1"));
        let a1_status = Arc::new(config_map("a", 1, "2"));
        let a2 = Arc::new(config_map("a", 2, "3"));
        for change in [
            Change::Applied(a1.clone()),
            Change::Applied(a1_status),
            Change::Applied(a2.clone()),
            Change::Deleted(a2.clone()),
        ] {
            futures::SinkExt::send(&mut tx, change).await.unwrap();
        }
        drop(tx);
        let passed: Vec<Option<String>> = changes(rx, generation)
            .map(|o| o.metadata.resource_version.clone())
            .collect()
            .await;
        assert_eq!(
            passed,
            [Some("1".into()), Some("3".into()), Some("3".into())],
            "the status-only change is filtered; the delete passes"
        );
    }
}
